"""Scheduling policies: the order in which waiting sequences are admitted.

Lower `priority` always goes first. Within a priority, `FcfsPolicy` is first come first
served; `fathom.engine.fair_share.FairSharePolicy` shares slots and tokens between fairness
keys (tenants) by weight, so one busy tenant cannot starve the others."""

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

    def set_weight(self, key: str, weight: float) -> None:
        """A fairness key's weight (policies without weights ignore it)."""


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

    def set_weight(self, key: str, weight: float) -> None:
        pass  # first come, first served knows no weights
