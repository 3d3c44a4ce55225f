"""LLMEngine over the pure-Python FakeExecutor: every scheduling path must keep the tokens
equal to the reference computed on the true history."""

import pytest

from fathom.engine.errors import InvalidRequestError, PromptTooLongError
from fathom.engine.fair_share import FairSharePolicy
from fathom.engine.llm_engine import EngineConfig, LLMEngine
from fathom.engine.sampling_params import SamplingParams
from support.engine_fakes import VOCAB, FakeExecutor, reference_greedy

GREEDY = SamplingParams(temperature=0, max_tokens=12)


def make_engine(num_blocks=64, block_size=4, policy=None, eos=None, **cfg):
    cfg.setdefault("max_model_len", 256)
    return LLMEngine(EngineConfig(block_size=block_size, **cfg), FakeExecutor(num_blocks, block_size),
                     eos_token_ids=eos, policy=policy)


def run(engine, arrivals=None, max_steps=2000):
    """Step until idle; arrivals: {step_index: [(id, prompt, params, kwargs)]}. Returns id -> outputs."""
    arrivals = arrivals or {}
    results: dict[str, dict[int, list[int]]] = {}
    finish: dict[str, dict[int, str]] = {}
    for step in range(max_steps):
        for rid, prompt, params, kw in arrivals.get(step, []):
            engine.add_request(rid, prompt, params, **kw)
        if not engine.has_unfinished_requests() and step > max(arrivals, default=0):
            break
        for out in engine.step():
            for c in out.outputs:
                results.setdefault(out.request_id, {}).setdefault(c.index, []).extend(c.token_ids)
                if c.finish_reason:
                    finish.setdefault(out.request_id, {})[c.index] = c.finish_reason
    return results, finish


def prompt(n, seed):
    return [(seed * 13 + i * 7) % VOCAB for i in range(n)]


def test_mixed_lengths_arriving_at_different_steps_with_chunked_prefill():
    engine = make_engine(max_num_batched_tokens=16, enable_chunked_prefill=True)
    prompts = {f"r{i}": prompt(n, i) for i, n in enumerate([3, 40, 17, 1, 29])}
    arrivals = {0: [("r0", prompts["r0"], GREEDY, {}), ("r1", prompts["r1"], GREEDY, {})],
                2: [("r2", prompts["r2"], GREEDY, {})], 5: [("r3", prompts["r3"], GREEDY, {}),
                                                         ("r4", prompts["r4"], GREEDY, {})]}
    results, finish = run(engine, arrivals)
    for rid, p in prompts.items():
        assert results[rid][0] == reference_greedy(p, 12), rid
        assert finish[rid][0] == "length"
    steps = engine.executor.steps
    assert all(sum(s.query_lens) <= 16 for s in steps)
    chunked = [s for s in steps if any(q > 1 and r not in s.sample_rows for r, q in enumerate(s.query_lens))]
    assert chunked, "a long prompt must have been prefilled in several chunks"
    mixed = [s for s in steps if 1 in s.query_lens and max(s.query_lens) > 1]
    assert mixed, "decodes and prefills must share steps"
    assert engine.blocks.num_used == 0


def test_without_chunked_prefill_whole_prompts_are_scheduled():
    engine = make_engine(max_num_batched_tokens=256, enable_chunked_prefill=False)
    results, _ = run(engine, {0: [("a", prompt(50, 1), GREEDY, {}), ("b", prompt(9, 2), GREEDY, {})]})
    assert results["a"][0] == reference_greedy(prompt(50, 1), 12)
    assert engine.executor.steps[0].query_lens == [50, 9]
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        EngineConfig(max_model_len=512, max_num_batched_tokens=256, enable_chunked_prefill=False)


def test_prefix_cache_hits_are_reused_and_reported():
    engine = make_engine(max_num_batched_tokens=64)
    shared = prompt(21, 3)
    results, _ = run(engine, {0: [("a", shared + [5, 6], GREEDY, {})],
                              3: [("b", shared + [9], GREEDY, {}), ("c", shared + [9], GREEDY, {"cache_salt": "t2"})]})
    assert results["b"][0] == reference_greedy(shared + [9], 12)
    assert results["c"][0] == reference_greedy(shared + [9], 12)
    stats = engine.stats()
    assert stats.prefix_cache_hit_tokens == 20  # b reuses 5 full blocks; c (other salt) none
    assert stats.prefix_cache_queried_tokens == 23 + 22 + 22
    b_step = next(s for s in engine.executor.steps if len(s.seq_ids) and 22 - 20 in s.query_lens)
    assert b_step is not None


def _second_of_two_sharing_a_prefix(engine, shared):
    """Run "a" to completion, then "b" with the same 20-token prefix; b's last output."""
    engine.add_request("a", shared + [1], GREEDY)
    while engine.has_unfinished_requests():
        engine.step()
    engine.add_request("b", shared + [2], GREEDY)
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    return outs[-1]


def test_cached_tokens_in_usage_and_disabled_prefix_cache():
    shared = prompt(20, 4)
    engine = make_engine(enable_prefix_caching=False)
    last = _second_of_two_sharing_a_prefix(engine, shared)
    assert last.usage.cached_tokens == 0 and engine.stats().prefix_cache_hit_tokens == 0

    last = _second_of_two_sharing_a_prefix(make_engine(enable_prefix_caching=True), shared)
    assert last.usage.cached_tokens == 20
    assert last.usage.prompt_tokens == 21 and last.usage.completion_tokens == 12


def test_preemption_by_recompute_keeps_tokens_exact():
    engine = make_engine(num_blocks=12, block_size=4, max_num_batched_tokens=32)
    params = SamplingParams(temperature=0, max_tokens=20)
    prompts = {f"p{i}": prompt(9 + 3 * i, 10 + i) for i in range(4)}
    results, _ = run(engine, {0: [(k, v, params, {}) for k, v in prompts.items()]})
    assert engine.stats().num_preemptions > 0, "the cache was sized so that sequences must be preempted"
    for k, v in prompts.items():
        assert results[k][0] == reference_greedy(v, 20), k
    assert engine.blocks.num_used == 0


def test_n_samples_share_the_prompt_blocks():
    engine = make_engine(max_num_batched_tokens=64)
    p = prompt(18, 5)
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=6)
    results, _finish = run(engine, {0: [("n", p, params, {})]})
    assert sorted(results["n"]) == [0, 1, 2] and all(len(v) == 6 for v in results["n"].values())
    first = engine.executor.steps[0]
    assert first.query_lens == [18]
    later = [s for s in engine.executor.steps[1:] if len(s.seq_ids) >= 2]
    assert any(q == 2 for s in later for q in s.query_lens), "samples 1..n recompute only the tail block"
    engine2 = make_engine(max_num_batched_tokens=64)
    results2, _ = run(engine2, {0: [("other", prompt(30, 9), SamplingParams(temperature=1.0, max_tokens=4), {})],
                                1: [("n", p, params, {})]})
    assert results2["n"] == results["n"], "seeded samples do not depend on the batch"


def test_abort_frees_blocks_at_once_and_reports_abort():
    engine = make_engine()
    engine.add_request("x", prompt(30, 1), SamplingParams(temperature=0, max_tokens=100))
    engine.step()
    assert engine.blocks.num_used > 0
    engine.abort_request("x")
    assert engine.blocks.num_used == 0
    outs = engine.step()
    assert outs[0].finished and outs[0].outputs[0].finish_reason == "abort"
    assert not engine.has_unfinished_requests()


def test_admission_errors_are_clear():
    engine = make_engine(num_blocks=8, block_size=4, max_model_len=64)
    with pytest.raises(PromptTooLongError, match="max_model_len is 64"):
        engine.add_request("a", [1] * 64, GREEDY)
    with pytest.raises(PromptTooLongError, match="KV cache holds only 32"):
        engine.add_request("a", [1] * 40, GREEDY)
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.add_request("a", [], GREEDY)
    with pytest.raises(InvalidRequestError, match=r"\[0, 97\)"):
        engine.add_request("a", [1, 500], GREEDY)
    engine.add_request("a", [1, 2], GREEDY)
    with pytest.raises(InvalidRequestError, match="already in flight"):
        engine.add_request("a", [1, 2], GREEDY)


def test_generation_capped_at_max_model_len():
    engine = make_engine(max_model_len=16)
    results, finish = run(engine, {0: [("a", prompt(10, 1), SamplingParams(temperature=0), {})]})
    assert len(results["a"][0]) == 6 and finish["a"][0] == "length"


def test_stop_token_ids_and_eos():
    p = prompt(7, 2)
    ref = reference_greedy(p, 12)
    engine = make_engine()
    results, finish = run(engine, {0: [("a", p, SamplingParams(temperature=0, max_tokens=12,
                                                               stop_token_ids=[ref[3]]), {})]})
    stop_at = ref.index(ref[3])
    assert results["a"][0] == ref[:stop_at + 1] and finish["a"][0] == "stop"
    engine = make_engine(eos={ref[2]})
    results, finish = run(engine, {0: [("a", p, GREEDY, {}), ("b", p, SamplingParams(temperature=0, max_tokens=12,
                                                                                      ignore_eos=True), {})]})
    assert results["a"][0] == ref[:ref.index(ref[2]) + 1] and finish["a"][0] == "stop"
    assert results["b"][0] == ref


def test_priority_runs_first_when_slots_are_scarce():
    engine = make_engine(max_num_seqs=1)
    engine.add_request("low", prompt(5, 1), GREEDY, priority=5)
    engine.add_request("high", prompt(5, 2), GREEDY, priority=-1)
    first = engine.step()
    assert [o.request_id for o in first] == ["high"]


def test_fair_share_interleaves_tenants():
    engine = make_engine(max_num_seqs=1, policy=FairSharePolicy())
    params = SamplingParams(temperature=0, max_tokens=2)
    for i in range(3):
        engine.add_request(f"a{i}", prompt(4, i), params, fairness_key="A")
    engine.add_request("b0", prompt(4, 9), params, fairness_key="B")
    order = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                order.append(out.request_id)
    assert order.index("b0") == 1, order


@pytest.mark.parametrize("high_priority, preempts", [(0, True), (1, False)])
def test_higher_priority_arrival_preempts_lower_priority_running(high_priority, preempts):
    engine = make_engine(num_blocks=10, block_size=4, max_num_batched_tokens=64)
    params = SamplingParams(temperature=0, max_tokens=10)
    low = {f"low{i}": prompt(14, 20 + i) for i in range(2)}  # seq ids 0, 1
    high = prompt(12, 30)  # seq id 2, arrives at step 2 when only 2 blocks are free
    results, _ = run(engine, {0: [(k, v, params, {"priority": 1}) for k, v in low.items()],
                              2: [("high", high, params, {"priority": high_priority})]})
    first = next(i for i, s in enumerate(engine.executor.steps) if 2 in s.seq_ids)
    assert (first == 2) == preempts, first
    assert engine.stats().num_preemptions > 0 or not preempts
    assert results["high"][0] == reference_greedy(high, 10)
    for k, v in low.items():
        assert results[k][0] == reference_greedy(v, 10)
