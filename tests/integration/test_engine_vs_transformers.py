"""Greedy tokens through the engine (W=1, in process) equal transformers `generate()` on a small
random DeepSeek-V3 checkpoint saved with `save_pretrained`, on every scheduling path: mixed
prompt lengths arriving at different steps, chunked prefill, prefix caching, preemption."""

import pytest
import torch

from fathom.api.engine import EngineSettings
from fathom.engine.sampling_params import SamplingParams
from fathom.model.kv_cache import bytes_per_token
from fathom.worker.factory import create_engine
from support.model_testing import reference_logits, save_reference

NEW = 10
GREEDY = SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True)


class Recording:
    """Wraps the real executor and keeps every StepInput (to assert which path was taken)."""

    def __init__(self, inner):
        self.inner, self.steps = inner, []
        self.num_kv_blocks, self.vocab_size = inner.num_kv_blocks, inner.vocab_size

    def execute(self, step):
        self.steps.append(step)
        return self.inner.execute(step)

    def check_health(self):
        self.inner.check_health()

    def shutdown(self):
        self.inner.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.set_num_threads(2)
    path = tmp_path_factory.mktemp("v3")
    hf = save_reference(path, "v3", seed=3)
    return path, hf


def hf_greedy(hf, prompt, n=NEW):
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(prompt):].tolist()


def make(path, **kw):
    from fathom.worker.factory import in_process_executor, max_model_len_of

    settings = EngineSettings(model=str(path), dtype="float32", block_size=4, **kw)
    executor = Recording(in_process_executor(path, settings, max_model_len_of(settings, path)))
    return create_engine(settings, executor=executor)


def run(engine, arrivals):
    results, step = {}, 0
    while engine.has_unfinished_requests() or step <= max(arrivals):
        for rid, prompt in arrivals.get(step, []):
            engine.add_request(rid, prompt, GREEDY)
        for out in engine.step():
            results.setdefault(out.request_id, []).extend(out.outputs[0].token_ids if out.outputs else [])
        step += 1
    return results


def prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in lengths]


def test_mixed_arrivals_with_chunked_prefill_equal_transformers(checkpoint):
    path, hf = checkpoint
    engine = make(path, max_num_batched_tokens=16, enable_chunked_prefill=True, enable_prefix_caching=False)
    ps = prompts([5, 37, 12, 1, 23])
    arrivals = {0: [("a", ps[0]), ("b", ps[1])], 2: [("c", ps[2])], 4: [("d", ps[3]), ("e", ps[4])]}
    results = run(engine, arrivals)
    for rid, p in zip("abcde", ps):
        assert results[rid] == hf_greedy(hf, p), rid
    steps = engine.executor.steps
    assert any(len(s.query_lens) > 1 and 1 in s.query_lens and max(s.query_lens) > 1 for s in steps)
    assert any(q > 1 and r not in s.sample_rows for s in steps for r, q in enumerate(s.query_lens)), \
        "the 37-token prompt must have been prefilled in chunks"


def test_prefix_cache_hits_equal_transformers(checkpoint):
    path, hf = checkpoint
    engine = make(path, enable_prefix_caching=True)
    shared = prompts([30], seed=1)[0]
    a, b = shared + [7, 8], shared + [9]
    results = run(engine, {0: [("a", a)], 3: [("b", b)]})
    assert engine.stats().prefix_cache_hit_tokens == 28  # 7 full blocks of 4 reused by b
    assert results["a"] == hf_greedy(hf, a) and results["b"] == hf_greedy(hf, b)


def test_preemption_equal_transformers(checkpoint):
    path, hf = checkpoint
    per_block = bytes_per_token(hf.config, torch.float32) * 4
    engine = make(path, kv_cache_memory=14 * per_block, max_num_batched_tokens=64, enable_prefix_caching=False)
    assert engine.blocks.num_blocks == 14
    ps = prompts([9, 14, 11, 6], seed=2)
    results = run(engine, {0: [(f"p{i}", p) for i, p in enumerate(ps)]})
    assert engine.stats().num_preemptions > 0
    for i, p in enumerate(ps):
        assert results[f"p{i}"] == hf_greedy(hf, p), i


def test_seeded_sampling_is_independent_of_the_batch(checkpoint):
    path, _ = checkpoint
    params = SamplingParams(temperature=0.8, top_p=0.95, seed=1234, max_tokens=12, n=2)
    p = prompts([11], seed=4)[0]

    def sample(others):
        engine = make(path)
        for i, o in enumerate(others):
            engine.add_request(f"o{i}", o, SamplingParams(temperature=1.0, max_tokens=12))
        engine.add_request("x", p, params)
        got = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.request_id == "x":
                    for c in out.outputs:
                        got.setdefault(c.index, []).extend(c.token_ids)
        return got

    alone = sample([])
    assert alone[0] != alone[1]
    assert sample(prompts([20, 3, 7], seed=5)) == alone


def test_kv_cache_holds_latents_only(checkpoint):
    path, hf = checkpoint
    engine = make(path, kv_cache_memory=1 << 20)
    runner = engine.executor.inner.runner
    c = hf.config
    per_token = c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 4
    assert bytes_per_token(runner.model.config, torch.float32) == per_token
    total = sum(t.numel() * t.element_size() for t in runner.kv_caches)
    assert total == runner.num_blocks * 4 * per_token
    assert total <= 1 << 20 and runner.num_blocks == (1 << 20) // (4 * per_token)
    assert all(t.shape[-1] == c.kv_lora_rank + c.qk_rope_head_dim for t in runner.kv_caches)


def test_quantization_and_kv_cache_dtype_settings_reach_the_rank(checkpoint):
    """`--quantization fp8 --kv-cache-dtype fp8`: projections quantised at load, an FP8 latent cache
    sized at 1 byte per value, and the engine generates over them."""
    path, hf = checkpoint
    engine = make(path, kv_cache_memory=1 << 20, quantization="fp8", kv_cache_dtype="fp8")
    runner = engine.executor.inner.runner
    c = hf.config
    per_token = c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim)
    assert all(t.dtype == torch.float8_e4m3fn for t in runner.kv_caches)
    assert runner.num_blocks == (1 << 20) // (4 * per_token)
    assert runner.model.model.layers[1].mlp.experts.w13.dtype == torch.float8_e4m3fn
    results = run(engine, {0: [("a", prompts([9])[0])]})
    assert len(results["a"]) == NEW


def test_prompt_logprobs_equal_transformers_with_chunked_prefill_and_prefix_caching(checkpoint, monkeypatch):
    """Prompt logprobs are log_softmax of transformers' logits, whether the prompt is prefilled in
    chunks or not, and even when its prefix is in the cache (such a request recomputes it)."""
    from fathom.worker import model_runner

    monkeypatch.setattr(model_runner, "PROMPT_LOGITS_ROWS", 5)  # a chunk's logits in several slices
    path, hf = checkpoint
    engine = make(path, max_num_batched_tokens=16, enable_chunked_prefill=True, enable_prefix_caching=True)
    prompt = prompts([37], seed=5)[0]
    ref = torch.log_softmax(reference_logits(hf, prompt), -1)
    plain = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    wanted = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True, prompt_logprobs=3, n=2)
    outs = {}
    for rid, params in [("warm", plain), ("a", wanted), ("b", wanted), ("c", plain)]:
        engine.add_request(rid, prompt, params)
        while engine.has_unfinished_requests():
            for out in engine.step():
                outs.setdefault(rid, []).append(out)
    assert all(o.prompt_logprobs is None for o in outs["warm"] + outs["c"])
    assert outs["c"][-1].usage.cached_tokens > 0  # the cache works for requests that need no logits
    for rid in "ab":
        got = [o.prompt_logprobs for o in outs[rid] if o.prompt_logprobs is not None]
        assert len(got) == 1, "prompt logprobs come exactly once"
        got = got[0]
        assert len(got) == len(prompt) and got[0] is None
        assert outs[rid][-1].usage.cached_tokens == 0  # sample 0 recomputed the cached prefix
        for pos in range(1, len(prompt)):
            lp = got[pos]
            assert lp.token_id == prompt[pos]
            assert lp.logprob == pytest.approx(ref[pos - 1, prompt[pos]].item(), abs=1e-4)
            assert [t for t, _ in lp.top_logprobs] == ref[pos - 1].topk(3).indices.tolist()
        prefill = [s for s in engine.executor.steps if s.prompt_logprobs]
        assert len(prefill) > 1  # chunked: several steps each scored their slice
