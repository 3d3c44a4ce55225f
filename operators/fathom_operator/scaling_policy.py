"""The autoscaling policy: a pure function of (metrics history, spec, current replicas) → replicas.

Per sample, each target asks for a count (`recommend`), as the Kubernetes HPA does:
- proportional signals, which fall with load: KV cache usage → ceil(Σ usage / target);
  tokens/s → ceil(rate / target); running requests → ceil(running / target);
- queueing signals, which only ever push up (a short queue says nothing about spare capacity):
  waiting requests → ceil(waiting / target); TTFT p95 above target → ceil(n × p95 / target).
The recommendation is the largest ask, clamped to [max(minReplicas, 1), maxReplicas].

Over time (`decide`), HPA v2 stabilisation: scale up to the *smallest* recommendation of the
scale-up window (0 s = at once), scale down to the *largest* of the scale-down window, so one
quiet sample never drops capacity. With minReplicas 0, a service idle (nothing running, waiting
or generated) for `scaleToZeroAfterSeconds` goes to zero; at zero, the first request queued at
the ingress (which stays up on the Ray head) brings it back to one at once.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fathom.api.model_service import Autoscaling
from fathom_operator.scrape import Sample


@dataclass(frozen=True)
class ScalingDecision:
    replicas: int
    reason: str


def asks(sample: Sample, auto: Autoscaling) -> dict[str, int]:
    """Replica count each configured target asks for at `sample` (0 = no opinion)."""
    t = auto.targets
    n = max(sample.replicas, 1)
    out: dict[str, int] = {}
    if t.kv_cache_utilization:
        out["kvCacheUtilization"] = math.ceil(sample.kv_usage_sum / t.kv_cache_utilization - 1e-9)
    if t.tokens_per_second_per_replica:
        out["tokensPerSecondPerReplica"] = math.ceil(sample.tokens_per_second / t.tokens_per_second_per_replica - 1e-9)
    if t.running_requests_per_replica:
        out["runningRequestsPerReplica"] = math.ceil(sample.running / t.running_requests_per_replica - 1e-9)
    if t.waiting_requests_per_replica:
        out["waitingRequestsPerReplica"] = math.ceil(sample.waiting / t.waiting_requests_per_replica - 1e-9)
    if t.ttft_p95_seconds and sample.ttft_p95 is not None and sample.ttft_p95 > t.ttft_p95_seconds:
        out["ttftP95Seconds"] = math.ceil(n * sample.ttft_p95 / t.ttft_p95_seconds - 1e-9)
    return out


def recommend(sample: Sample, auto: Autoscaling) -> tuple[int, str]:
    """The largest ask at `sample`, clamped to [max(min, 1), max], and the target that set it."""
    by_target = asks(sample, auto)
    target, count = max(by_target.items(), key=lambda kv: kv[1], default=("none", 0))
    floor = max(auto.min_replicas, 1)
    return max(floor, min(auto.max_replicas, count)), target


def _idle_for(history: Sequence[Sample], now: float) -> float:
    """Seconds the load has been idle up to `now` (0 if the newest sample is busy)."""
    since = now
    for s in reversed(history):
        if not s.idle:
            break
        since = s.t
    return now - since


def decide(history: Sequence[Sample], auto: Autoscaling, current: int) -> ScalingDecision:
    """Replicas to run after the newest sample of `history` (oldest first), given `current`."""
    if not history:
        return ScalingDecision(current, "no metrics yet")
    latest = history[-1]
    now = latest.t
    rec, target = recommend(latest, auto)
    if current == 0:
        if latest.waiting > 0 or latest.running > 0:
            return ScalingDecision(max(1, rec), f"request queued while at zero ({latest.waiting:g} waiting)")
        if auto.min_replicas > 0:
            return ScalingDecision(rec, f"minReplicas is {auto.min_replicas}")
        return ScalingDecision(0, "idle at zero")
    covered = now - history[0].t
    idle = _idle_for(history, now)
    if auto.min_replicas == 0 and idle >= auto.scale_to_zero_after_seconds and covered >= auto.scale_to_zero_after_seconds:
        return ScalingDecision(0, f"idle for {idle:.0f}s")
    up = min(recommend(s, auto)[0] for s in history if s.t >= now - auto.scale_up_stabilization_seconds)
    down = max(recommend(s, auto)[0] for s in history if s.t >= now - auto.scale_down_stabilization_seconds)
    if up > current:
        return ScalingDecision(up, f"{target} asks for {rec} (up, smallest over {auto.scale_up_stabilization_seconds:g}s)")
    if down < current and covered >= auto.scale_down_stabilization_seconds:
        return ScalingDecision(down, f"largest recommendation over {auto.scale_down_stabilization_seconds:g}s is {down}")
    if current > auto.max_replicas or current < max(auto.min_replicas, 1):
        return ScalingDecision(max(max(auto.min_replicas, 1), min(auto.max_replicas, current)), "clamped to min/max")
    return ScalingDecision(current, f"{target} asks for {rec}; within stabilisation")


def history_span(auto: Autoscaling) -> float:
    """Seconds of samples `decide` needs to see."""
    return max(auto.scale_up_stabilization_seconds, auto.scale_down_stabilization_seconds,
               auto.scale_to_zero_after_seconds if auto.min_replicas == 0 else 0.0) + auto.interval_seconds
