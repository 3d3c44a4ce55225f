"""FairSharePolicy inside the real LLMEngine scheduler, over the pure-Python FakeExecutor
(which checks every block table and position: fair preemption must keep tokens exact)."""

import statistics

from fathom.engine.fair_share import FairSharePolicy
from fathom.engine.llm_engine import EngineConfig, LLMEngine
from fathom.engine.sampling_params import SamplingParams
from fathom.engine.scheduling_policy import FcfsPolicy
from support.engine_fakes import VOCAB, FakeExecutor, reference_greedy

SLOTS = 4


def make_engine(policy, num_blocks=256, block_size=4, max_num_seqs=SLOTS):
    cfg = EngineConfig(block_size=block_size, max_model_len=256, max_num_seqs=max_num_seqs,
                       max_num_batched_tokens=64)
    return LLMEngine(cfg, FakeExecutor(num_blocks, block_size), policy=policy)


def prompt(n, seed):
    return [(seed * 13 + i * 7) % VOCAB for i in range(n)]


class Load:
    """Drives an engine step by step: tenants kept at a queue depth, plus timed arrivals.
    Records each request's tokens, and the steps from arrival to first token."""

    def __init__(self, engine, max_tokens=12):
        self.engine, self.params = engine, SamplingParams(temperature=0, max_tokens=max_tokens)
        self.prompts, self.tenant_of, self.tokens, self.ttft = {}, {}, {}, {}
        self.arrived, self.step_no, self.n = {}, 0, 0

    def add(self, tenant, weight_key=None):
        rid = f"{tenant}{self.n}"
        p = prompt(5 + self.n % 7, self.n)
        self.n += 1
        self.engine.add_request(rid, p, self.params, fairness_key=tenant)
        self.prompts[rid], self.tenant_of[rid], self.arrived[rid] = p, tenant, self.step_no
        return rid

    def live(self, tenant):
        return sum(1 for rid in self.engine.requests if self.tenant_of.get(rid) == tenant)

    def run(self, steps, depth=None, every=None):
        """depth: {tenant: queued+running to keep}; every: {tenant: add one each k steps}."""
        for _ in range(steps):
            for t, d in (depth or {}).items():
                while self.live(t) < d:
                    self.add(t)
            for t, k in (every or {}).items():
                if self.step_no % k == k - 1:
                    self.add(t)
            for out in self.engine.step():
                for c in out.outputs:
                    if c.token_ids and out.request_id not in self.ttft:
                        self.ttft[out.request_id] = self.step_no - self.arrived[out.request_id]
                    self.tokens.setdefault(out.request_id, []).extend(c.token_ids)
            self.step_no += 1

    def drain(self):
        self.run(0)
        while self.engine.has_unfinished_requests():
            self.run(1)

    def served(self, tenant):
        return sum(len(v) for rid, v in self.tokens.items() if self.tenant_of[rid] == tenant)

    def check_exact(self):
        for rid, p in self.prompts.items():
            if len(self.tokens.get(rid, [])) == self.params.max_tokens:
                assert self.tokens[rid] == reference_greedy(p, self.params.max_tokens), rid


def steady_ttft(policy, flood: bool) -> tuple[float, Load]:
    load = Load(make_engine(policy))
    load.run(200, depth={"a": 4 * SLOTS} if flood else None, every={"b": 10})
    b = [s for rid, s in load.ttft.items() if load.tenant_of[rid] == "b"]
    return statistics.median(b), load


def test_flooding_tenant_does_not_delay_the_steady_one_and_tokens_stay_exact():
    alone, _ = steady_ttft(FairSharePolicy(), flood=False)
    crowded, load = steady_ttft(FairSharePolicy(), flood=True)
    assert crowded <= 2 * max(alone, 1)
    assert load.engine.scheduler.num_preemptions > 0  # b took slots from a
    load.drain()
    load.check_exact()
    assert load.engine.blocks.num_used == 0


def test_first_come_first_served_would_make_it_wait():
    fair, _ = steady_ttft(FairSharePolicy(), flood=True)
    fcfs, _ = steady_ttft(FcfsPolicy(), flood=True)
    assert fcfs > 3 * max(fair, 1)


def test_backlogged_tenants_get_tokens_in_proportion_to_weights():
    load = Load(make_engine(FairSharePolicy({"a": 3.0, "b": 1.0})))
    load.run(60, depth={"a": 4 * SLOTS})  # a alone first: b must not be owed this time
    before = load.served("a"), load.served("b")
    load.run(400, depth={"a": 4 * SLOTS, "b": 4 * SLOTS})
    a, b = load.served("a") - before[0], load.served("b") - before[1]
    assert 0.8 * 3 <= a / b <= 1.2 * 3, (a, b)
    load.drain()
    load.check_exact()


def test_memory_preemption_takes_from_the_tenant_over_its_share():
    policy = FairSharePolicy()
    load = Load(make_engine(policy, num_blocks=24, max_num_seqs=8), max_tokens=40)
    for _ in range(6):
        load.add("a")
    load.run(3)
    load.add("b")
    victims = []
    orig = load.engine.scheduler.preempt

    def spy(seq):
        victims.append(seq.request.fairness_key)
        orig(seq)

    load.engine.scheduler.preempt = spy
    load.run(60)
    assert victims and set(victims) == {"a"}, victims
    load.drain()
    load.check_exact()
