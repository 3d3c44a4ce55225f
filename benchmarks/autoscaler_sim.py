"""Replay a bursty day of traffic through the operator's autoscaling policy.

    python benchmarks/autoscaler_sim.py [--seed 7] [--cold-start 90]

A day-long trace (diurnal curve plus random spikes, Poisson arrivals, fixed seed) drives a
fluid model of model replicas: each replica runs up to `concurrency` requests at once, each for
`service_s` seconds; a new replica serves only after `cold_start_s` (pod start + weight load).
Every `interval` the controller sees the app's metrics (waiting, running, KV usage, tokens/s)
and sets the replica count. Four fleets run on the same trace, side by side:

- fixed: sized for the trace's peak minute (what you provision without an autoscaler);
- hpa-conc T: a Kubernetes-HPA rule on concurrency only ((running + waiting) per replica,
  target T x a replica's slots, 10 % tolerance, up at most max(4, 100 %) per period, 300 s
  down stabilisation), at T = 0.8 (usual) and 0.5 (the burst headroom the fathom default keeps);
- fathom defaults: `fathom_operator.scaling_policy.decide` with the ModelService defaults (KV target
  0.5, headroom for a 2x burst during a cold start; 2 waiting per replica, 300 s down window,
  minReplicas 1);
- fathom kv 0.8: the same with a KV target of 0.8 (the former default), for comparison;
- fathom defaults min 0: the defaults with scale to zero after 15 idle minutes.

Three traces: the bursty day; the same day as office hours (no traffic 20:00-08:00); and the
scale-to-zero day: office hours whose nights are not quite empty (a trickle of requests, one
every ~30 minutes on average, as stray batch jobs and on-call checks send), so a fleet at zero
wakes for them and goes back to zero after the idle period.

SLO attainment is the share of seconds whose queue wait (queued requests / service rate of the
ready replicas) stays under `slo_wait_s`; replica-hours count every provisioned replica,
starting or ready. Printed: both, and the ratios to the fixed fleet. Requests that arrive while
no replica is ready are held by the ingress (first come, first served) and, past
`cold_start_timeout_s`, refused with 503; for them the table gives how many there were, their
wait until a replica took them (median, p95, max) and how many were refused. Target: fathom
(defaults) keeps >= 99 % of the fixed fleet's SLO attainment at <= 60 % of its replica-hours.
"""

import argparse
import collections
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT / "operators")]

from fathom.api.model_service import Autoscaling
from fathom_operator.scaling_policy import decide, history_span
from fathom_operator.scrape import Sample

DAY = 86_400


@dataclass(frozen=True)
class Capacity:
    concurrency: int = 64  # max_num_seqs of one model instance
    service_s: float = 20.0  # time a request holds a slot (prefill + decode)
    cold_start_s: float = 90.0  # new replica: pod start + weight load
    tokens_per_request: int = 400
    slo_wait_s: float = 2.0
    cold_start_timeout_s: float = 600.0  # autoscaling.coldStartTimeoutSeconds: then 503

    @property
    def rate(self) -> float:
        """Requests per second one saturated replica completes."""
        return self.concurrency / self.service_s


def trace(seed: int, low: float = 3.0, high: float = 30.0, spikes: int = 10, office_hours: bool = False,
          night_rate: float = 0.0) -> np.ndarray:
    """Arrivals per second over a day: diurnal (trough 04:00, peak 16:00) times random spikes;
    `office_hours` keeps only 08:00-20:00 (an internal fleet idle at night), plus `night_rate`
    requests per second outside them."""
    rng = np.random.default_rng(seed)
    t = np.arange(DAY)
    rate = low + (high - low) * (1 - np.cos(2 * np.pi * (t - 4 * 3600) / DAY)) / 2
    if office_hours:
        rate = np.where((t >= 8 * 3600) & (t < 20 * 3600), rate, night_rate)
    boost = np.ones(DAY)
    for _ in range(spikes):
        start, length = rng.integers(0, DAY - 3600), rng.integers(180, 720)
        height = rng.uniform(1.5, 3.0)
        ramp = np.interp(t, [start, start + 60, start + 60 + length, start + 180 + length], [1, height, height, 1])
        boost = np.maximum(boost, ramp)
    return rng.poisson(rate * boost).astype(float)


@dataclass
class Fleet:
    """Provisioned replicas; each becomes ready `cold_start_s` after it was added."""

    ready_at: list[float] = field(default_factory=list)

    def set(self, n: int, now: float, cold_start_s: float) -> None:
        while len(self.ready_at) < n:
            self.ready_at.append(now + cold_start_s)
        self.ready_at.sort()
        del self.ready_at[n:]  # remove the youngest (still starting) first

    def ready(self, now: float) -> int:
        return sum(1 for r in self.ready_at if r <= now)


class FixedFleet:
    name = "fixed (peak)"

    def __init__(self, n: int):
        self.n = n

    def __call__(self, now: float, sample: Sample, current: int) -> int:
        return self.n


class HpaConcurrency:
    """Kubernetes HPA v2 on one metric: (running + waiting) per replica vs a target."""

    def __init__(self, target: float, max_replicas: int, period: float, down_window: float = 300.0,
                 name: str = "hpa-concurrency"):
        self.target, self.max, self.period, self.window, self.name = target, max_replicas, period, down_window, name
        self.recs: collections.deque = collections.deque()

    def __call__(self, now: float, sample: Sample, current: int) -> int:
        ready = max(sample.replicas, 1)
        ratio = (sample.running + sample.waiting) / ready / self.target
        rec = current if abs(ratio - 1) <= 0.1 else math.ceil(ready * ratio)
        rec = max(1, min(self.max, rec))
        self.recs.append((now, rec))
        while self.recs[0][0] < now - self.window:
            self.recs.popleft()
        if rec > current:
            return min(rec, current + max(4, current))  # scale-up policy: max(4 pods, 100 %) per period
        return min(current, max(r for _, r in self.recs))


class FathomPolicy:
    def __init__(self, auto: Autoscaling, name: str):
        self.auto, self.name = auto, name
        self.history: collections.deque[Sample] = collections.deque()

    def __call__(self, now: float, sample: Sample, current: int) -> int:
        self.history.append(sample)
        while self.history[0].t < now - history_span(self.auto):
            self.history.popleft()
        return decide(list(self.history), self.auto, current).replicas


class Ingress:
    """Requests not yet taken by a replica, first come first served, as cohorts of one second.
    Those that arrived while no replica was ready are the cold-start waits; the ingress answers
    503 to any held past `timeout_s`."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.cohorts: collections.deque[list] = collections.deque()  # [arrival, count, at zero]
        self.waits: list[tuple[float, float]] = []  # (wait, count) of requests that arrived at zero
        self.at_zero = self.refused = 0.0

    @property
    def queued(self) -> float:
        return sum(c[1] for c in self.cohorts)

    def arrive(self, now: int, n: float, at_zero: bool) -> None:
        if n:
            self.cohorts.append([now, n, at_zero])
            self.at_zero += n if at_zero else 0.0

    def admit(self, now: int, room: float) -> float:
        """Hand up to `room` requests to the replicas; returns how many."""
        taken = 0.0
        while self.cohorts and now - self.cohorts[0][0] > self.timeout_s:
            self.refused += self.cohorts.popleft()[1]
        while self.cohorts and room - taken > 1e-9:
            cohort = self.cohorts[0]
            n = min(cohort[1], room - taken)
            if cohort[2]:
                self.waits.append((now - cohort[0], n))
            cohort[1] -= n
            taken += n
            if cohort[1] <= 1e-9:
                self.cohorts.popleft()
        return taken

    def wait_quantiles(self) -> tuple[float, float, float]:
        """Median, p95 and max wait of the requests that arrived at zero (0s when none did)."""
        if not self.waits:
            return 0.0, 0.0, 0.0
        waits = sorted(self.waits)
        total = sum(n for _, n in waits)
        def q(p: float) -> float:
            acc = 0.0
            for w, n in waits:
                acc += n
                if acc >= p * total:
                    return w
            return waits[-1][0]
        return q(0.5), q(0.95), waits[-1][0]


def simulate(arrivals: np.ndarray, controller, cap: Capacity, interval: float, start: int) -> dict:
    """Fluid queue model, 1 s steps; the controller acts every `interval` seconds."""
    fleet = Fleet()
    fleet.set(start, -cap.cold_start_s, cap.cold_start_s)  # the day starts warm
    ingress = Ingress(cap.cold_start_timeout_s)
    running = 0.0
    good = replica_seconds = completed_window = 0.0
    peak = 0
    for now in range(len(arrivals)):
        ready = fleet.ready(now)
        done = running / cap.service_s if running >= 0.01 else running  # the last request's tail ends
        running -= done
        completed_window += done
        ingress.arrive(now, arrivals[now], at_zero=ready == 0)
        running += ingress.admit(now, max(0.0, ready * cap.concurrency - running))
        queue = ingress.queued
        wait = queue / (ready * cap.rate) if ready else (math.inf if queue > 0.5 else 0.0)
        good += wait <= cap.slo_wait_s
        replica_seconds += len(fleet.ready_at)
        peak = max(peak, len(fleet.ready_at))
        if now % interval == 0:
            sample = Sample(t=float(now), waiting=queue, running=running, kv_usage_sum=running / cap.concurrency,
                            replicas=ready, tokens_per_second=completed_window * cap.tokens_per_request / interval)
            completed_window = 0.0
            fleet.set(controller(float(now), sample, len(fleet.ready_at)), now, cap.cold_start_s)
    p50, p95, worst = ingress.wait_quantiles()
    return {"slo": good / len(arrivals), "replica_hours": replica_seconds / 3600, "peak": peak,
            "at_zero": ingress.at_zero, "wait_p50": p50, "wait_p95": p95, "wait_max": worst,
            "refused": ingress.refused}


def scenario(title: str, arrivals: np.ndarray, cap: Capacity, interval: int) -> dict:
    """Run every fleet on `arrivals`; print a table with ratios to the fixed fleet."""
    peak_minute = np.convolve(arrivals, np.ones(60) / 60, mode="valid").max()
    n_fixed = max(1, math.ceil(peak_minute / cap.rate))
    defaults = Autoscaling(min_replicas=1, max_replicas=n_fixed, interval_seconds=interval)
    kv_08 = defaults.model_copy(update={"targets": defaults.targets.model_copy(update={"kv_cache_utilization": 0.8})})
    controllers = [
        FixedFleet(n_fixed),
        HpaConcurrency(0.8 * cap.concurrency, n_fixed, interval, name="hpa-conc 0.8"),
        HpaConcurrency(0.5 * cap.concurrency, n_fixed, interval, name="hpa-conc 0.5"),
        FathomPolicy(defaults, "fathom defaults"),
        FathomPolicy(kv_08, "fathom kv 0.8"),
        FathomPolicy(defaults.model_copy(update={"min_replicas": 0}), "fathom defaults min 0"),
    ]
    print(f"\n{title}: {arrivals.sum():.0f} requests/day, mean {arrivals.mean():.1f}/s, "
          f"peak minute {peak_minute:.1f}/s -> fixed fleet {n_fixed}")
    rows = {c.name: simulate(arrivals, c, cap, interval, start=n_fixed if isinstance(c, FixedFleet) else 1)
            for c in controllers}
    base = rows[controllers[0].name]
    print(f"{'fleet':<22}{'SLO attained':>14}{'replica-h':>11}{'peak':>6}{'SLO/fixed':>11}{'hours/fixed':>13}"
          f"{'at zero':>9}{'wait p50/p95/max (s)':>22}{'503':>5}")
    for name, r in rows.items():
        r["slo_ratio"], r["hours_ratio"] = r["slo"] / base["slo"], r["replica_hours"] / base["replica_hours"]
        waits = f"{r['wait_p50']:.0f}/{r['wait_p95']:.0f}/{r['wait_max']:.0f}" if r["at_zero"] else "-"
        print(f"{name:<22}{r['slo']:>13.2%}{r['replica_hours']:>11.1f}{r['peak']:>6}"
              f"{r['slo_ratio']:>11.4f}{r['hours_ratio']:>13.3f}{r['at_zero']:>9.0f}{waits:>22}{r['refused']:>5.0f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--cold-start", type=float, default=90.0, help="seconds before a new replica serves")
    p.add_argument("--interval", type=int, default=15, help="controller period, seconds")
    p.add_argument("--cold-start-timeout", type=float, default=600.0,
                   help="seconds the ingress holds a request at zero replicas before 503")
    p.add_argument("--start-hour", type=float, default=0.0, help="replay from this hour of the day (smoke runs)")
    p.add_argument("--hours", type=float, default=24.0, help="replay this many hours (smoke runs)")
    args = p.parse_args(argv)
    cut = slice(int(args.start_hour * 3600), int((args.start_hour + args.hours) * 3600))
    cap = Capacity(cold_start_s=args.cold_start, cold_start_timeout_s=args.cold_start_timeout)
    print(f"replica: {cap.concurrency} slots x {cap.service_s:.0f} s = {cap.rate:.1f} req/s, cold start "
          f"{cap.cold_start_s:.0f} s, controller every {args.interval} s; SLO: queue wait <= {cap.slo_wait_s:.0f} s; "
          f"seed {args.seed}")
    rows = scenario("bursty day (diurnal + 10 spikes)", trace(args.seed)[cut], cap, args.interval)
    scenario("office hours (idle 20:00-08:00)", trace(args.seed, office_hours=True)[cut], cap, args.interval)
    scenario("scale-to-zero day (office hours; nights at zero but for a request every ~30 min)",
             trace(args.seed, office_hours=True, night_rate=1 / 1800)[cut], cap, args.interval)
    ours = rows["fathom defaults"]
    ok = ours["slo_ratio"] >= 0.99 and ours["hours_ratio"] <= 0.6
    print(f"\ntarget on the bursty day, fathom defaults (>= 0.99 x fixed SLO at <= 0.60 x its replica-hours): "
          f"{ours['slo_ratio']:.4f} x SLO at {ours['hours_ratio']:.3f} x hours -> {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
