"""Scheduling policies: the order in which waiting sequences are admitted.

Lower `priority` always goes first. Within a priority, `FcfsPolicy` is first come first
served; `FairSharePolicy` serves the fairness key (tenant) that has received the fewest
weighted tokens so far, so one busy tenant cannot starve the others."""

from collections import defaultdict
from typing import Protocol

from fathom.engine.sequence import Sequence


class SchedulingPolicy(Protocol):
    def key(self, seq: Sequence) -> tuple:
        """Sort key of a waiting sequence; smallest is admitted first."""

    def on_scheduled(self, seq: Sequence, num_tokens: int) -> None:
        """Accounting hook: `num_tokens` of `seq` were scheduled this step."""

    def begin_step(self, waiting: list[Sequence], running: list[Sequence], capacity: int) -> None:
        """Called at the start of each step, before anything is scheduled."""

    def running_key(self, seq: Sequence) -> tuple:
        """Sort key of a running sequence: smallest is scheduled first, largest preempted first."""

    def preempt_for(self, seq: Sequence, running: list[Sequence], capacity: int) -> Sequence | None:
        """A running sequence to preempt so that waiting `seq`, which does not fit (slots,
        blocks or step budget), is admitted now; None to let it wait."""


class FcfsPolicy:
    def key(self, seq: Sequence) -> tuple:
        return seq.priority_key

    def on_scheduled(self, seq: Sequence, num_tokens: int) -> None:
        pass

    def begin_step(self, waiting: list[Sequence], running: list[Sequence], capacity: int) -> None:
        pass

    def running_key(self, seq: Sequence) -> tuple:
        return seq.priority_key

    def preempt_for(self, seq: Sequence, running: list[Sequence], capacity: int) -> Sequence | None:
        victim = max(running, key=lambda s: s.priority_key, default=None)  # lowest priority, newest
        return victim if victim is not None and victim.request.priority > seq.request.priority else None


class FairSharePolicy(FcfsPolicy):
    """Weighted fair queueing over fairness keys by tokens served (prefill + decode).

    A key seen for the first time starts at the least-served active key's count, so it is
    not owed the whole history of the others."""

    def __init__(self, weights: dict[str, float] | None = None, default_weight: float = 1.0):
        self.weights = dict(weights or {})
        self.default_weight = default_weight
        self.served: dict[str | None, float] = defaultdict(float)

    def key(self, seq: Sequence) -> tuple:
        fk = seq.request.fairness_key
        if fk not in self.served:
            self.served[fk] = min(self.served.values(), default=0.0)
        return (seq.request.priority, self.served[fk], seq.request.arrival_order, seq.index)

    def on_scheduled(self, seq: Sequence, num_tokens: int) -> None:
        fk = seq.request.fairness_key
        self.served[fk] += num_tokens / self.weights.get(fk, self.default_weight)
