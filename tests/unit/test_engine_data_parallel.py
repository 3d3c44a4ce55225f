"""Data-parallel attention in the real LLMEngine: D attention groups, each with its own scheduler,
block manager and (simulated) KV cache; the step is split per group and merged back by the real
`fathom.worker.dp_step` functions (engine_fakes.DataParallelFakeExecutor)."""

from fathom.engine.llm_engine import EngineConfig, LLMEngine
from fathom.engine.sampling_params import SamplingParams
from fathom.engine.step_input import SamplingSpec, StepInput, StepOutput
from fathom.worker.dp_step import group_input, merge_outputs
from support.engine_fakes import VOCAB, DataParallelFakeExecutor, FakeExecutor, reference_greedy


def make_engine(groups, num_blocks=64, block_size=4, max_num_seqs=8, max_tokens=64):
    cfg = EngineConfig(block_size=block_size, max_model_len=128, max_num_seqs=max_num_seqs,
                       max_num_batched_tokens=max_tokens, data_parallel_size=groups)  # fmt: skip
    executor = (
        DataParallelFakeExecutor(groups, num_blocks, block_size)
        if groups > 1
        else FakeExecutor(num_blocks, block_size)
    )
    return LLMEngine(cfg, executor)


def prompt(n, seed):
    return [(seed * 13 + i * 7) % VOCAB for i in range(n)]


def run(engine, requests):
    """{request id: [tokens per sample]} after running ``requests`` {id: (prompt, params)} to the end."""
    for rid, (p, params) in requests.items():
        engine.add_request(rid, p, params)
    tokens: dict[str, dict[int, list[int]]] = {rid: {} for rid in requests}
    while engine.has_unfinished_requests():
        for out in engine.step():
            for c in out.outputs:  # deltas
                tokens[out.request_id].setdefault(c.index, []).extend(c.token_ids)
    return {rid: [t[i] for i in sorted(t)] for rid, t in tokens.items()}


def test_groups_share_the_work_and_every_token_is_exact():
    engine = make_engine(2, num_blocks=12, max_tokens=16)  # few blocks: preemption; 16 tokens a step: chunks
    greedy = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    requests = {f"r{i}": (prompt(5 + 3 * i, i), greedy) for i in range(6)}
    requests["shared"] = (prompt(9, 0), greedy)  # the prefix of r0's prompt: a prefix-cache hit in r0's group
    done = run(engine, requests)
    for rid, (p, _) in requests.items():
        assert done[rid] == [reference_greedy(p, 10)], rid
    ex = engine.executor
    assert all(rows > 0 for rows in ex.rows_per_group)
    assert engine.stats().kv_blocks_total == 24 and engine.stats().num_preemptions > 0


def test_samples_of_a_request_stay_in_its_group():
    engine = make_engine(2)
    params = SamplingParams(temperature=1.0, n=3, max_tokens=4, seed=5)
    engine.add_request("a", prompt(6, 1), params)
    engine.add_request("b", prompt(7, 2), params)
    seen: dict[str, set[int]] = {"a": set(), "b": set()}
    while engine.has_unfinished_requests():
        sched = engine.scheduler
        for seq_id, g in sched.group_of.items():
            for rid, req in engine.requests.items():
                if any(s.seq_id == seq_id for s in req.seqs):
                    seen[rid].add(g)
        engine.step()
    assert seen == {"a": {0}, "b": {1}}


def test_per_rank_latent_kv_at_d4_is_a_quarter_of_tp4():
    """The same 8 requests: with TP = 4 every rank caches all of them (MLA's one latent head is
    replicated over TP ranks); with D = 4 a rank caches only its group's two."""
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    requests = {f"r{i}": (prompt(16, 100 + i), params) for i in range(8)}
    used = {}
    for d in (1, 4):
        engine = make_engine(d, num_blocks=64, max_num_seqs=8, max_tokens=256)
        for rid, (p, ps) in requests.items():
            engine.add_request(rid, p, ps)
        engine.step()  # every prompt prefilled at once
        blocks = engine.blocks.groups if d > 1 else [engine.blocks]
        used[d] = max(b.num_used for b in blocks)  # blocks (and so latent bytes) held by the fullest rank
    assert used[1] == 8 * 4 and used[4] * 4 == used[1]  # 16-token prompts: 4 blocks each


def test_group_input_and_merge_outputs_round_trip():
    spec = SamplingSpec(2, SamplingParams(), 0)
    step = StepInput(seq_ids=[1, 2, 3], token_ids=[10, 11, 20, 30, 31, 32], starts=[0, 5, 0], query_lens=[2, 1, 3],
                     block_tables=[[0], [1, 2], [3]], sample_rows=[0, 1, 2], new_specs=[spec], freed_seq_ids=[9],
                     groups=[0, 1, 0])  # fmt: skip
    g0, g1 = group_input(step, 0), group_input(step, 1)
    assert (g0.seq_ids, g0.token_ids, g0.query_lens, g0.block_tables, g0.sample_rows) == (
        [1, 3],
        [10, 11, 30, 31, 32],
        [2, 3],
        [[0], [3]],
        [0, 1],
    )
    assert (g1.seq_ids, g1.token_ids, g1.starts, g1.new_specs, g1.freed_seq_ids) == (
        [2],
        [20],
        [5],
        [spec],
        [9],
    )
    assert g0.new_specs == []
    out0 = StepOutput([7, 8], [None, None], [None, None], errors={1: "bad row"})
    out1 = StepOutput([5], [-0.5], [None])
    merged = merge_outputs(step, [out0, out1])
    assert (
        merged.token_ids == [7, 5, 8]
        and merged.logprobs == [None, -0.5, None]
        and merged.errors == {2: "bad row"}
    )


def test_fair_share_spans_the_groups():
    """One FairSharePolicy for all groups: a tenant with 6 queued requests does not starve one
    with 2, and every token stays exact."""
    from fathom.engine.fair_share import FairSharePolicy

    cfg = EngineConfig(
        block_size=4, max_model_len=128, max_num_seqs=2, max_num_batched_tokens=64, data_parallel_size=2
    )
    engine = LLMEngine(cfg, DataParallelFakeExecutor(2, 64, 4), policy=FairSharePolicy())
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    prompts = {f"big{i}": prompt(8, i) for i in range(6)} | {f"small{i}": prompt(8, 10 + i) for i in range(2)}
    for rid, p in prompts.items():
        engine.add_request(rid, p, params, fairness_key=rid.rstrip("0123456789"))
    first_step: dict[str, int] = {}
    tokens: dict[str, list[int]] = {rid: [] for rid in prompts}
    step = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            first_step.setdefault(out.request_id, step)
            tokens[out.request_id] += out.outputs[0].token_ids if out.outputs else []
        step += 1
    assert all(tokens[rid] == reference_greedy(p, 6) for rid, p in prompts.items())
    assert max(first_step[f"small{i}"] for i in range(2)) <= 1  # admitted in the first steps, not after "big"
