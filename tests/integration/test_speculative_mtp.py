"""MTP speculative decoding end to end through `fathom.LLM` (W = 1) on random checkpoints with an
MTP module: greedy outputs equal those with speculation off, token for token, for k = 1, 2, 3
under continuous batching of prompts of different lengths, chunked prefill, prefix caching,
preemption, n > 1, stop strings and logprobs; sampled outputs have the target's distribution."""

import math

import pytest
import torch

import fathom
from fathom.engine.errors import InvalidRequestError
from fathom.engine.sampling_params import SamplingParams, StructuredSpec
from support import model_testing as T

pytestmark = pytest.mark.timeout(300)
SHARED = [7, 7, 19, 200, 3, 41, 8, 99, 12, 250, 60, 61]  # prompts 0 and 1 share 3 blocks of 4
PROMPTS = [SHARED + [5, 17, 99, 3], SHARED + [1, 77], [9, 9, 12, 130, 64], list(range(40, 77)), [3]]
GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, logprobs=2)
ENGINE = {"block_size": 4, "max_num_batched_tokens": 16, "max_model_len": 128, "engine_core_process": False}


@pytest.fixture(scope="module", autouse=True)
def threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(T.save_mtp_checkpoint(tmp_path_factory.mktemp("v3-mtp"), seed=0, predictable=0.15))


def run(path, prompts, params, k=0, **kw):
    spec = {"speculative_config": {"method": "mtp", "num_speculative_tokens": k}} if k else {}
    llm = fathom.LLM(path, **{**ENGINE, **kw}, **spec)
    outs = llm.generate(prompts, params)
    return outs, llm.engine.stats()


@pytest.fixture(scope="module")
def reference(checkpoint):
    return run(checkpoint, PROMPTS, GREEDY, kv_cache_memory=1 << 22)[0]


def same(outs, ref):
    for o, r in zip(outs, ref, strict=True):
        a, b = o.outputs[0], r.outputs[0]
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert o.usage.completion_tokens == r.usage.completion_tokens == len(b.token_ids)
        for x, y in zip(a.logprobs, b.logprobs, strict=True):
            assert x.token_id == y.token_id and x.logprob == pytest.approx(y.logprob, abs=1e-3)
            assert [t for t, _ in x.top_logprobs] == [t for t, _ in y.top_logprobs]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_greedy_equals_no_speculation(checkpoint, reference, k):
    outs, stats = run(checkpoint, PROMPTS, GREEDY, k, kv_cache_memory=1 << 22)
    same(outs, reference)
    spec = stats.spec_decode
    assert spec.num_draft_tokens > spec.num_accepted_tokens > 0  # drafts both accepted and rejected
    assert len(spec.accepted_per_position) == k and spec.accepted_per_position[0] == max(
        spec.accepted_per_position
    )
    assert stats.prefix_cache_hit_tokens > 0


def test_greedy_equals_no_speculation_under_preemption(checkpoint, reference):
    """A cache of 24 blocks of 4 cannot hold every sequence: some are preempted and recomputed."""
    outs, stats = run(checkpoint, PROMPTS, GREEDY, 2, kv_cache_memory=24 * 4 * 4 * 48 * 4)
    assert stats.num_preemptions > 0
    same(outs, reference)


def test_stop_strings_n_and_max_tokens(checkpoint):
    """Emitted tokens past a stop are dropped and never charged; n > 1 samples share the prompt."""
    params = [SamplingParams(temperature=0, max_tokens=9, ignore_eos=True, n=2),
              SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop_token_ids=[]),
              SamplingParams(temperature=0.8, seed=3, max_tokens=12, ignore_eos=True, n=3)]  # fmt: skip
    ref, _ = run(checkpoint, PROMPTS[:3], params[:2] + [params[1]], kv_cache_memory=1 << 22)
    stop_at = ref[1].outputs[0].token_ids[6]  # a token the greedy run emits: stop there
    params[1] = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop_token_ids=[stop_at])
    outs, _ = run(checkpoint, PROMPTS[:3], params, 3, kv_cache_memory=1 << 22)
    assert [o.token_ids for o in outs[0].outputs] == [ref[0].outputs[0].token_ids] * 2
    first = ref[1].outputs[0].token_ids.index(stop_at)
    assert outs[1].outputs[0].token_ids == ref[1].outputs[0].token_ids[: first + 1]
    assert outs[1].outputs[0].finish_reason == "stop" and outs[1].usage.completion_tokens == first + 1
    assert [len(o.token_ids) for o in outs[2].outputs] == [12] * 3 and outs[2].usage.completion_tokens == 36


def test_structured_outputs_are_refused(checkpoint):
    llm = fathom.LLM(checkpoint, **ENGINE, speculative_config={"method": "mtp", "num_speculative_tokens": 1})
    params = SamplingParams(structured=StructuredSpec(kind="json_object"))
    with pytest.raises(InvalidRequestError, match="speculative decoding"):
        llm.engine.add_request("r", [1, 2, 3], params)


def test_sampled_tokens_have_the_target_distribution(tmp_path):
    """Two tokens after one prompt, many seeds, k = 2: the first and second tokens' frequencies
    against their exact distributions (the second: sum over the first of p(t1) p(t2 | t1)),
    computed from the target model's logits; chi-square at 0.999 over the bins expecting >= 5."""
    from fathom.model.loader import load_model

    path = T.save_mtp_checkpoint(tmp_path, seed=2, predictable=0.15, vocab_size=24)
    prompt, temperature, trials = [3, 11, 5, 20, 7], 2.5, 800
    model = load_model(path)
    p1 = torch.softmax(T.full_logits(model, [prompt])[0][-1] / temperature, -1)
    seconds = T.full_logits(model, [prompt + [t] for t in range(24)])
    p2 = sum(p1[t] * torch.softmax(seconds[t][-1] / temperature, -1) for t in range(24))
    params = [
        SamplingParams(temperature=temperature, seed=s, max_tokens=2, ignore_eos=True) for s in range(trials)
    ]
    outs, stats = run(str(path), [prompt] * trials, params, 2, max_num_seqs=128, max_num_batched_tokens=512,
                      enable_prefix_caching=True, kv_cache_memory=1 << 23)  # fmt: skip
    assert stats.spec_decode.num_accepted_tokens > 0.2 * trials  # the second token often comes from a draft
    for i, p in enumerate((p1, p2)):
        counts = torch.bincount(torch.tensor([o.outputs[0].token_ids[i] for o in outs]), minlength=24).float()
        assert chi2_ok(counts, p * trials), (i, counts, p * trials)


def chi2_ok(counts: torch.Tensor, expected: torch.Tensor) -> bool:
    """Pearson's chi-square below its 0.999 quantile (Wilson-Hilferty), rare bins pooled."""
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    stat = float(((obs - exp) ** 2 / exp.clamp_min(1e-9)).sum())
    df = len(obs) - 1
    quantile = df * (1 - 2 / (9 * df) + 3.09 * math.sqrt(2 / (9 * df))) ** 3
    return stat < quantile


async def test_engine_core_process_serves_with_speculation(checkpoint, reference):
    """`fathom serve`'s W = 1 engine (the core in a child process): the same greedy tokens, and
    the speculative-decoding counters cross the process boundary in its stats."""
    from fathom.api.engine import EngineSettings
    from fathom.worker.factory import start_async_engine

    settings = EngineSettings(model=checkpoint, **{**ENGINE, "engine_core_process": True}, kv_cache_memory=1 << 22,
                              speculative_config={"method": "mtp", "num_speculative_tokens": 2})  # fmt: skip
    engine = start_async_engine(settings)
    try:
        for i, (prompt, ref) in enumerate(zip(PROMPTS, reference, strict=True)):
            ids = []
            async for out in engine.generate(f"r{i}", prompt, GREEDY):
                ids += out.outputs[0].token_ids if out.outputs else []
            assert ids == ref.outputs[0].token_ids
        spec = engine.stats().spec_decode
        assert spec.num_drafts > 0 and spec.num_accepted_tokens > 0 and len(spec.accepted_per_position) == 2
    finally:
        await engine.shutdown()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_demo_model_greedy_equals_no_speculation(k):
    """The trained demo model (its MTP layer trained with the main one): the same answers, token for
    token, and most drafts accepted."""
    from fathom.worker.demo_model import demo_model_dir

    questions = ["What is 47 + 38?", "Compute 93 - 56.", "What is 12 times 31?", "Hello!"]
    base = fathom.LLM(str(demo_model_dir()), engine_core_process=False, max_num_batched_tokens=16)
    params = SamplingParams(temperature=0, max_tokens=48)
    chats = [[{"role": "user", "content": q}] for q in questions]
    reference = [o.outputs[0].token_ids for o in base.chat(chats, params)]
    llm = fathom.LLM(str(demo_model_dir()), engine_core_process=False, max_num_batched_tokens=16,
                     speculative_config={"method": "mtp", "num_speculative_tokens": k})  # fmt: skip
    assert [o.outputs[0].token_ids for o in llm.chat(chats, params)] == reference
    spec = llm.engine.stats().spec_decode
    assert spec.accepted_per_position[0] > 0.7 * spec.num_drafts
