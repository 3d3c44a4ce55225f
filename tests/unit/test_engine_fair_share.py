"""FairSharePolicy with fake sequences and a fake continuous-batching loop."""

import itertools
from dataclasses import dataclass, field

import pytest

from fathom.engine.fair_share import FairSharePolicy

_order = itertools.count()


@dataclass(eq=False)
class Req:
    fairness_key: str | None
    priority: int = 0
    arrival_order: int = field(default_factory=lambda: next(_order))


@dataclass(eq=False)
class Seq:
    request: Req
    index: int = 0
    left: int = 8  # tokens still to compute


def seq(tenant, priority=0, left=8):
    return Seq(Req(tenant, priority), left=left)


def test_order_is_priority_then_least_weighted_service_then_arrival():
    p = FairSharePolicy({"a": 1.0, "b": 2.0})
    a1, b1, a2, hi = seq("a"), seq("b"), seq("a"), seq("c", priority=-1)
    p.begin_step([a1, b1, a2, hi], [], 4)
    p.on_scheduled(a1, 10)  # a: 10
    p.on_scheduled(b1, 16)  # b: 8 (weight 2)
    assert sorted([a1, a2, b1, hi], key=p.key) == [hi, b1, a1, a2]


def test_share_counts_the_tenants_earlier_waiting_sequences():
    """Two free slots, shares 1.5 : 0.5: b's first waiting sequence is within its share, its
    second is not, so a (served less) takes the other slot in the same step."""
    p = FairSharePolicy({"a": 1.0, "b": 3.0})
    a1, b1 = seq("a"), seq("b")
    p.begin_step([], [a1, b1], 2)
    p.on_scheduled(b1, 300)  # b: 100, a: 0
    a2, b3, b4 = seq("a"), seq("b"), seq("b")
    p.begin_step([b3, b4, a2], [], 2)
    assert sorted([b4, a2, b3], key=p.key) == [b3, a2, b4]


def test_returning_tenant_is_lifted_to_the_busy_tenants_service():
    p = FairSharePolicy()
    a, b = seq("a"), seq("b")
    p.begin_step([], [a, b], 4)
    p.on_scheduled(a, 5)
    p.on_scheduled(b, 5)
    p.begin_step([], [a], 4)  # b goes idle
    for _ in range(10):
        p.on_scheduled(a, 10)
    b2 = seq("b")
    p.begin_step([b2], [a], 4)  # b is back: owed nothing for its idle time
    assert p.counters["b"] == p.counters["a"] == 105
    c = seq("c")
    p.begin_step([c], [a, b2], 4)  # a new tenant starts level with the least busy one
    assert p.counters["c"] == 105


def test_alone_keeps_its_counter():
    p = FairSharePolicy()
    a = seq("a")
    p.begin_step([a], [], 4)
    assert p.counters["a"] == 0


def test_after_an_idle_engine_newcomers_start_level_with_the_last_busy_tenant():
    p = FairSharePolicy()
    b = seq("b")
    p.begin_step([b], [], 4)
    p.on_scheduled(b, 500)
    p.begin_step([], [], 4)  # b finished; the engine is idle
    a, b2 = seq("a"), seq("b")
    p.begin_step([a, b2], [], 4)
    assert p.counters["a"] == p.counters["b"] == 500  # a is not owed b's past service


def test_running_order_puts_lowest_priority_then_most_over_share_then_newest_last():
    p = FairSharePolicy({"a": 1.0, "b": 1.0})
    a1, a2, a3, b1 = seq("a"), seq("a"), seq("a"), seq("b")
    low = seq("b", priority=5)
    p.begin_step([], [low, a1, a2, a3, b1], 4)
    assert sorted([low, a1, a2, a3, b1], key=p.running_key) == [b1, a1, a2, a3, low]
    p.begin_step([], [a1, a2, a3, b1], 4)
    assert max([a1, a2, a3, b1], key=p.running_key) is a3  # a holds 3 of 4, share 2


def test_weights_decide_who_is_over_share():
    p = FairSharePolicy({"a": 3.0, "b": 1.0})
    a1, a2, b1, b2 = seq("a"), seq("a"), seq("b"), seq("b")
    p.begin_step([], [a1, a2, b1, b2], 4)
    assert max([a1, a2, b1, b2], key=p.running_key) is b2  # b's share is 1 of 4


def test_preempt_for_waiting_tenant_under_its_share():
    p = FairSharePolicy()
    running = [seq("a") for _ in range(4)]
    b = seq("b")
    p.begin_step([b], running, 4)
    assert p.preempt_for(b, running, capacity=4) is running[-1]  # newest of a
    # b already at its share (2 of 4): no preemption
    mixed = running[:2] + [seq("b"), seq("b")]
    b3 = seq("b")
    p.begin_step([b3], mixed, 4)
    assert p.preempt_for(b3, mixed, capacity=4) is None
    # the flooding tenant never preempts the other one to get over its share
    a5 = seq("a")
    p.begin_step([a5], mixed, 4)
    assert p.preempt_for(a5, mixed, capacity=4) is None


def test_higher_priority_preempts_lower_priority_only():
    p = FairSharePolicy()
    low = [seq("a", priority=1) for _ in range(2)]
    same = [seq("b") for _ in range(2)]
    urgent = seq("c", priority=0)
    p.begin_step([urgent], low + same, 4)
    assert p.preempt_for(urgent, low + same, capacity=4) in low
    p.begin_step([seq("d", priority=1)], same, 4)
    assert p.preempt_for(seq("d", priority=1), same, capacity=2) is None


def test_weight_function_and_updates():
    p = FairSharePolicy(lambda k: {"a": 4.0}.get(k))
    assert (p.weight("a"), p.weight("zzz"), p.weight(None)) == (4.0, 1.0, 1.0)
    with pytest.raises(TypeError):
        p.set_weight("a", 2.0)
    q = FairSharePolicy()
    q.set_weight("a", 2.0)
    assert q.weight("a") == 2.0


def simulate(policy, backlog: dict[str, int], arrivals, steps: int, capacity: int, decode: int = 8):
    """A fake continuous-batching loop: each running sequence computes one token per step.
    `backlog`: tenants kept at that many waiting sequences; `arrivals(step)`: extra seqs.
    Returns tokens computed per tenant and the wait (steps) of each arrival."""
    waiting, running, tokens, waits, born = [], [], {}, [], {}
    for step in range(steps):
        for tenant, depth in backlog.items():
            while sum(s.request.fairness_key == tenant for s in waiting + running) < depth:
                waiting.append(seq(tenant, left=decode))
        for s in arrivals(step):
            born[id(s)] = step
            waiting.append(s)
        policy.begin_step(waiting, running, capacity)
        waiting.sort(key=policy.key)
        while waiting:
            head = waiting[0]
            if len(running) >= capacity:
                victim = policy.preempt_for(head, running, capacity)
                if victim is None:
                    break
                running.remove(victim)
                waiting.append(victim)
            running.append(waiting.pop(0))
            if id(head) in born:
                waits.append(step - born.pop(id(head)))
        for s in list(running):
            s.left -= 1
            policy.on_scheduled(s, 1)
            tokens[s.request.fairness_key] = tokens.get(s.request.fairness_key, 0) + 1
            if s.left == 0:
                running.remove(s)
    return tokens, waits


@pytest.mark.parametrize("weights", [(1.0, 1.0), (3.0, 1.0)])
def test_backlogged_tenants_get_tokens_in_proportion_to_weights(weights):
    p = FairSharePolicy({"a": weights[0], "b": weights[1]})
    tokens, _ = simulate(p, {"a": 16, "b": 16}, lambda step: [], steps=2000, capacity=4)
    assert tokens["a"] / tokens["b"] == pytest.approx(weights[0] / weights[1], rel=0.05)


def test_flood_does_not_delay_a_steady_tenant():
    def steady(step):
        return [seq("b")] if step % 10 == 5 else []

    _, waits = simulate(FairSharePolicy(), {"a": 16}, steady, steps=500, capacity=4)
    assert len(waits) == 50 and max(waits) == 0  # b is admitted in the step it arrives, every time


def test_without_fair_preemption_a_flood_delays_the_steady_tenant():
    """The same loop with a policy that never preempts shows what the test above guards."""

    class NoPreemption(FairSharePolicy):
        def preempt_for(self, seq, running, capacity):
            return None

    def steady(step):
        return [seq("b")] if step % 10 == 5 else []

    _, waits = simulate(NoPreemption(), {"a": 16}, steady, steps=500, capacity=4)
    assert sum(waits) / len(waits) > 0.5
