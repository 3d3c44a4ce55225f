"""Fair scheduling across fairness keys (tenants) for the engine scheduler's policy hook:
`FairSharePolicy`, the one fair policy (fathom.serve installs it when tenants are configured;
`fathom.LLM` or a caller may pass it to the engine with their own keys and weights).

Order among waiting sequences: priority first (the engine's convention: lower value runs
first; the ingress passes `-priorityClass`), then the tenant with the least weighted service,
then arrival. Service is counted as in the Virtual Token Counter of Sheng et al., "Fairness
in Serving Large Language Models" (OSDI '24): each tenant's counter grows by the tokens the
engine computes for it (prefill chunks and decodes) divided by its weight, and a tenant that
comes back from idle is lifted to the least counter of the tenants still busy, so it is not
owed the time it was away and cannot starve the others to catch up.

Shares of the engine: a tenant's share of the running slots (`max_num_seqs`) is
proportional to its weight among the tenants with work in the same priority. Waiting
sequences whose tenant is within its share sort before those whose tenant is over it; when
the head waiting sequence cannot be admitted, `preempt_for` names a running sequence to give
way: any sequence of a lower priority, or one of the tenant most over its share if the
waiting tenant is within its own. Running sequences are ordered (`running_key`) so that
memory preemption, which takes from the back, takes from the tenant most over its share. So a flood
from one tenant cannot hold every slot while another tenant waits, and backlogged tenants
get slots, hence tokens, in proportion to their weights.

Hooks of the engine's SchedulingPolicy used: `key`, `on_scheduled`, `begin_step`,
`running_key`, `preempt_for`. Plain Python, duck-typed on the engine's Sequence (`seq.request.priority`, `.fairness_key`,
`.arrival_order`, `seq.index`): unit-tested with fakes.
"""

from collections import Counter
from collections.abc import Callable, Iterable, Mapping


class FairSharePolicy:
    """Priority, then share of running slots, then weighted tokens served (VTC): the engine's
    `SchedulingPolicy` (`key`, `on_scheduled`, `begin_step`, `running_key`, `preempt_for`).

    `weights`: a mapping or a function from fairness key (tenant name, None for anonymous)
    to a positive weight; unknown keys weigh `default_weight`.
    """

    def __init__(self, weights: Mapping[str, float] | Callable[[str | None], float] | None = None,
                 default_weight: float = 1.0):
        self._weights = weights if weights is not None else {}
        self.default_weight = default_weight
        self.counters: dict[str | None, float] = {}
        self._active: set[Group] = set()  # (priority, key) with work at the last begin_step
        self._running: Counter[Group] = Counter()
        self._last_floor: float | None = None  # least counter of the last busy tenants
        self._capacity = 1
        self._ranks: dict[int, int] = {}
        self._queued: Counter[Group] = Counter()

    def weight(self, key: str | None) -> float:
        if callable(self._weights):
            w = self._weights(key)
        else:
            w = self._weights.get(key) if key is not None else None
        return w if w is not None and w > 0 else self.default_weight

    def set_weight(self, key: str, weight: float) -> None:
        """Record a tenant's weight (when weights travel with requests); mapping form only."""
        if callable(self._weights):
            raise TypeError("weights are given by a function; change them there")
        if self._weights.get(key) != weight:
            self._weights = {**self._weights, key: weight}  # copy: the step thread may be reading

    # --- ordering -------------------------------------------------------------------------

    def begin_step(self, waiting: Iterable, running: Iterable, capacity: int) -> None:
        """Called once per step before admission: who has work, who runs, and how many
        sequences the engine runs at most. A tenant that comes back (or arrives) is lifted to
        the least counter of the tenants that stayed busy, or, if the engine went idle, of
        those busy last (VTC), so counters never drift apart while tenants are away."""
        running = list(running)
        active = {_group(s) for s in (*waiting, *running)}
        if self._active:
            self._last_floor = min(self.counters.get(k, 0.0) for _, k in self._active)
        stayed = [self.counters.get(k, 0.0) for _, k in active & self._active]
        floor = min(stayed) if stayed else self._last_floor
        for _, key in active - self._active:
            current = self.counters.get(key, 0.0)
            self.counters[key] = current if floor is None else max(current, floor)
        self._active = active
        self._running = Counter(_group(s) for s in running)
        self._capacity = max(1, capacity)
        self._ranks, self._queued = {}, Counter()  # place of each waiting seq in its tenant's line
        for s in sorted(waiting, key=lambda s: (s.request.arrival_order, s.index)):
            g = _group(s)
            self._ranks[id(s)] = self._queued[g]
            self._queued[g] += 1

    def key(self, seq) -> tuple:
        """Sort key of a waiting sequence: priority; sequences whose tenant would stay within
        its share of the slots (counting its earlier waiting sequences, which go first) before
        the others; least weighted tokens served; arrival."""
        r = seq.request
        ahead = self._ranks.get(id(seq), self._queued[_group(seq)])  # admitted before it this step
        over = self._excess(self._running, self._capacity)(seq, extra=1 + ahead) > 1e-9
        return (r.priority, over, self.counters.get(r.fairness_key, 0.0), r.arrival_order, seq.index)

    def on_scheduled(self, seq, num_tokens: int) -> None:
        k = seq.request.fairness_key
        self.counters[k] = self.counters.get(k, 0.0) + num_tokens / self.weight(k)

    # --- preemption -------------------------------------------------------------------------

    def running_key(self, seq) -> tuple:
        """Sort key of a running sequence (the engine schedules from the front and preempts
        from the back when KV blocks run out): priority, then the tenant furthest over its
        share of the running sequences last, then the most served, then the newest."""
        r = seq.request
        excess = self._excess(self._running, sum(self._running.values()))(seq)
        return (r.priority, excess, self.counters.get(r.fairness_key, 0.0), r.arrival_order, seq.index)

    def preempt_for(self, seq, running: list, capacity: int):
        """A running sequence that should give way to waiting `seq` (the engine is full at
        `capacity` sequences, or out of blocks), or None."""
        prio = seq.request.priority
        lower = [s for s in running if s.request.priority > prio]
        if lower:
            return self._pick(lower, self._excess(Counter(map(_group, lower)), len(lower)))
        peers = [s for s in running if s.request.priority == prio]
        excess = self._excess(Counter(map(_group, peers)), capacity)
        if excess(seq, extra=1) > 1e-9:
            return None  # admitting it would put the waiting tenant over its share
        over = [s for s in peers if excess(s) > 1e-9]
        return self._pick(over, excess) if over else None

    def _pick(self, seqs: list, excess: Callable):
        return max(seqs, key=lambda s: (s.request.priority, excess(s), self._counter(s),
                                        s.request.arrival_order, s.index))

    def _excess(self, running: Counter, capacity: int) -> Callable:
        """(seq, extra) -> running sequences of its tenant (+ extra) minus its fair share of
        `capacity`: its weight over the weights of all tenants with work in its priority."""

        def excess(s, extra: int = 0) -> float:
            g = _group(s)
            peers = {k for p, k in (*self._active, *running, g) if p == g[0]}
            total = sum(self.weight(k) for k in peers)
            return running[g] + extra - capacity * self.weight(g[1]) / total

        return excess

    def _counter(self, seq) -> float:
        return self.counters.get(seq.request.fairness_key, 0.0)


Group = tuple[int, str | None]


def _group(seq) -> Group:
    return (seq.request.priority, seq.request.fairness_key)
