"""Ray rank workers on a real two-node Ray cluster (`ray.cluster_utils.Cluster`: two raylets with
2 CPUs each): TP=2/EP=2 through `fathom.LLM` equals transformers; W=4 must span both nodes and
gives the same greedy tokens as W=1; a rank worker that dies fails in-flight requests clearly."""

import asyncio

import pytest
import ray
import torch

from fathom.engine.sampling_params import SamplingParams
from support.model_testing import reference_logits, save_reference

pytestmark = pytest.mark.timeout(240)
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def cluster(ray_multinode):
    """The session's two-node cluster."""
    return ray_multinode


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("v3")
    return path, save_reference(path, "v3", seed=5)


def prompts(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in (7, 19, 3, 12)]


def hf_greedy(hf, p, n=8):
    return hf.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, len(p):].tolist()


def worker_nodes(llm):
    return ray.get([w.node_id.remote() for w in llm.engine.executor.workers])


def llm(path, tp, ep, **settings):
    import fathom

    return fathom.LLM(str(path), tensor_parallel_size=tp, expert_parallel_size=ep, dtype="float32", block_size=4,
                      max_num_batched_tokens=16, kv_cache_memory=1 << 20, **settings)


def test_llm_tp2_ep2_equals_transformers_on_one_node(cluster, checkpoint):
    path, hf = checkpoint
    engine = llm(path, 2, 2)
    try:
        assert len(set(worker_nodes(engine))) == 1, "2 ranks fit one node: STRICT_PACK"
        ps = prompts()
        outs = engine.generate(ps, GREEDY)
        for p, out in zip(ps, outs):
            assert out.outputs[0].token_ids == hf_greedy(hf, p)
            assert out.outputs[0].finish_reason == "length" and out.usage.prompt_tokens == len(p)
        # prompt logprobs: every rank computes the logits (the TP group gathers them), rank 0 answers
        [scored] = engine.generate([ps[1]], SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=2))
        ref = torch.log_softmax(reference_logits(hf, ps[1]), -1)
        got = [lp.logprob for lp in scored.prompt_logprobs[1:]]
        assert got == pytest.approx([ref[i - 1, ps[1][i]].item() for i in range(1, len(ps[1]))], abs=1e-4)
    finally:
        engine.shutdown()


def test_llm_dp2_with_eplb_equals_transformers(cluster, checkpoint):
    """Data-parallel attention (D = 2 groups of TP = 1, experts all-to-all over both ranks) with 2
    redundant experts rebalanced every 3 steps: each group has its requests, and the groups finish
    their prefills at different steps (one idles while the other works)."""
    path, hf = checkpoint
    engine = llm(path, 1, 1, data_parallel_size=2, eplb={"num_redundant_experts": 2, "step_interval": 3})
    try:
        ps = prompts(2)
        outs = engine.generate(ps, GREEDY)
        for p, out in zip(ps, outs):
            assert out.outputs[0].token_ids == hf_greedy(hf, p)
        stats = engine.engine.stats()
        assert stats.kv_blocks_total == 2 * engine.engine.executor.num_kv_blocks
        # EPLB reported its windows' counts: every prompt and generated token of the 3 MoE layers, top-3
        routed = sum(len(p) + 7 for p in ps) * 3 * 3  # the last sampled token is never fed back
        assert 0 < sum(stats.moe_expert_tokens) <= routed and stats.moe_imbalance >= 1.0
        # prompt logprobs from both groups in one step come back in the step's order
        scored = engine.generate(ps, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1))
        for p, out in zip(ps, scored):
            ref = torch.log_softmax(reference_logits(hf, p), -1)
            got = [lp.logprob for lp in out.prompt_logprobs[1:]]
            assert got == pytest.approx([ref[i - 1, p[i]].item() for i in range(1, len(p))], abs=1e-4)
    finally:
        engine.shutdown()


def test_w4_spans_two_nodes_and_matches_w1(cluster, checkpoint):
    path, _ = checkpoint
    ps = prompts(1)
    w1 = llm(path, 1, 1)
    expected = [o.outputs[0].token_ids for o in w1.generate(ps, GREEDY)]
    engine = llm(path, 4, 2)
    try:
        assert len(set(worker_nodes(engine))) == 2, "4 one-CPU ranks cannot fit a 2-CPU node"
        assert [o.outputs[0].token_ids for o in engine.generate(ps, GREEDY)] == expected
    finally:
        engine.shutdown()


async def test_dead_rank_worker_fails_requests_and_marks_unhealthy(cluster, checkpoint):
    from fathom.engine.async_engine import AsyncEngine
    from fathom.engine.engine_core import ThreadCore
    from fathom.engine.errors import EngineDeadError

    path, _ = checkpoint
    offline = llm(path, 2, 1)
    engine = AsyncEngine(ThreadCore(offline.engine), offline.tokenizer)
    stream = engine.generate("r", prompts()[1], SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))
    await stream.__anext__()
    ray.kill(offline.engine.executor.workers[1], no_restart=True)
    with pytest.raises(EngineDeadError, match="rank worker 1"):
        async with asyncio.timeout(60):
            async for _ in stream:
                pass
    assert not engine.healthy
    with pytest.raises(EngineDeadError):
        async for _ in engine.generate("s", [1, 2, 3], GREEDY):
            pass
    await engine.shutdown()
