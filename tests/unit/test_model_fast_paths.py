"""The model's small-batch paths compute what its general paths compute, each path forced:
batched MLA decode vs attending sequence by sequence, dense routed experts vs grouped by expert,
on pure-decode and mixed decode + (chunked) prefill batches over scattered cache blocks."""

import pytest
import torch

from fathom.model.attention_metadata import AttentionMetadata
from fathom.model.config import DeepseekConfig
from fathom.model.kv_cache import allocate_kv_caches
from fathom.model.layers.moe import DENSE_LIMIT, MoE, RoutedExperts, grouped_mm_runs
from fathom.model.loader import load_model
from fathom.parallel.context import ParallelContext
from support.model_testing import save_reference, tiny_v3_kwargs

BATCHES = [
    ([1, 1, 1, 1], [5, 17, 9, 30]),  # pure decode
    ([1, 6, 1, 3], [12, 6, 3, 20]),  # decodes mixed with (chunked) prefills
    ([7, 5], [7, 9]),  # no decode at all
    ([2, 4, 1, 6], [9, 12, 3, 6]),  # decodes verifying 1 and 3 drafts (speculative decoding), a prefill
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("v3")
    save_reference(path, "v3", seed=9)
    m = load_model(path)
    yield m
    m.set_fast_paths(batch_decode=True, moe_dense_limit=2048)
    m.set_attention_mode("auto")


def run(model, query_lens, seq_lens, block_size=4, cache_dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    tables, nxt = [], 0
    for s in seq_lens:
        n = -(-s // block_size)
        tables.append(list(range(nxt + n - 1, nxt - 1, -1)))  # scattered, reversed blocks
        nxt += n
    caches = allocate_kv_caches(model.config, nxt, block_size, cache_dtype)
    for c in caches:
        c.copy_(torch.randn(c.shape, generator=g))
    meta = AttentionMetadata.build(query_lens, seq_lens, tables, block_size)
    ids = torch.randint(0, model.config.vocab_size, (sum(query_lens),), generator=g)
    return model(ids, meta.positions(), caches, meta), caches


def compare(model, batch, fast: dict, slow: dict, **kw):
    model.set_fast_paths(**slow)
    ref, ref_caches = run(model, *batch, **kw)
    model.set_fast_paths(**fast)
    got, got_caches = run(model, *batch, **kw)
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), float((got - ref).abs().max())
    # layer 0 writes the same latents; later layers' inputs differ by rounding only
    assert torch.equal(ref_caches[0], got_caches[0])
    assert all(
        torch.allclose(a, b, atol=1e-4, rtol=1e-4) for a, b in zip(ref_caches, got_caches, strict=True)
    )


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("mode", ["auto", "absorb"])
def test_batched_decode_equals_per_sequence_attention(model, batch, mode):
    model.set_attention_mode(mode)
    compare(model, batch, {"batch_decode": True}, {"batch_decode": False})
    model.set_attention_mode("auto")


def test_batched_decode_reads_a_lower_precision_cache(model):
    compare(model, BATCHES[1], {"batch_decode": True}, {"batch_decode": False}, cache_dtype=torch.bfloat16)


def test_batched_decode_follows_the_attention_mode(model):
    """Forced 'expand' attends sequence by sequence, so batching is off (it is absorbed only)."""
    model.set_attention_mode("expand")
    compare(model, BATCHES[0], {"batch_decode": True}, {"batch_decode": False})
    attn = model.model.layers[0].self_attn
    calls = []
    attn._decode_batched = lambda *a: calls.append(a)  # would break the forward if used
    run(model, *BATCHES[0])
    del attn._decode_batched
    model.set_attention_mode("auto")
    assert not calls


@pytest.mark.parametrize("batch", BATCHES)
def test_dense_experts_equal_grouped_experts(model, batch):
    compare(model, batch, {"moe_dense_limit": 10**9}, {"moe_dense_limit": 0})


def test_all_fast_paths_equal_all_general_paths(model):
    on = {"batch_decode": True, "moe_dense_limit": 10**9}
    off = {"batch_decode": False, "moe_dense_limit": 0}
    for batch in BATCHES:
        compare(model, batch, on, off)


def test_dense_limit_picks_the_path(model):
    """T × local experts <= limit runs dense, above it grouped (seen through which one is called)."""
    experts = next(layer.mlp.experts for layer in model.model.layers if isinstance(layer.mlp, MoE))
    x = torch.randn(4, model.config.hidden_size)
    seen = []
    for name in ("_dense", "_grouped"):
        real = getattr(experts, name)
        setattr(experts, name, lambda *a, _n=name, _f=real: seen.append(_n) or _f(*a))
    E = len(experts.local)
    try:
        with torch.inference_mode():
            for limit in (4 * E, 4 * E - 1):
                experts.dense_limit = limit
                experts(x, *model.model.layers[1].mlp.gate(x))
    finally:
        del experts._dense, experts._grouped
        experts.dense_limit = 2048
    assert seen == ["_dense", "_grouped"]


def test_grouped_gemm_equals_expert_by_expert(model):
    """The grouped path's two grouped GEMMs compute exactly what its per-expert fallback computes,
    experts without tokens included."""
    experts = next(layer.mlp.experts for layer in model.model.layers if isinstance(layer.mlp, MoE))
    x = torch.randn(9, model.config.hidden_size)  # sorted by expert: 3, 0, 4, 0, 0, 2, 0, 0 rows
    counts = torch.tensor([3, 0, 4, 0, 0, 2, 0, 0])
    if not grouped_mm_runs(x, experts.inter):
        pytest.skip("this torch has no grouped GEMM (F.grouped_mm) for float32 on the CPU")
    with torch.inference_mode():
        assert torch.equal(experts._swiglu_grouped_mm(x, counts), experts._swiglu_per_expert(x, counts))


DEMO_SIZED = {
    "hidden_size": 256,
    "moe_intermediate_size": 64,
    "n_routed_experts": 16,
    "num_experts_per_tok": 4,
}


@pytest.mark.parametrize("overrides, dense", [({}, True), (DEMO_SIZED, False)])
def test_dense_runs_only_where_its_waste_is_cheap(overrides, dense):
    """Dense computes every expert for every token: E/k × 3·I·H multiply-adds per routed choice.
    The test model's experts (8/3 × 3·32·64 = 16K) run dense; the demo's (16/4 × 3·64·256 = 197K)
    are past the measured crossover and always run grouped."""
    config = DeepseekConfig.from_dict({"model_type": "deepseek_v3", **tiny_v3_kwargs(**overrides)})
    experts = RoutedExperts(config, ParallelContext.single(), torch.float32)
    assert experts.dense_limit == (DENSE_LIMIT if dense else 0)


def test_both_paths_read_the_parameters_as_they_are_now(model):
    """No second copy of the expert weights: after the layer is cast, both paths use the new ones
    (in float64, which F.grouped_mm does not take, grouped runs expert by expert)."""
    moe = next(layer.mlp for layer in model.model.layers if isinstance(layer.mlp, MoE))
    x = torch.randn(3, model.config.hidden_size, dtype=torch.float64)
    moe.to(torch.float64)
    try:
        with torch.inference_mode():
            moe.experts.dense_limit = 10**9
            dense = moe(x)
            moe.experts.dense_limit = 0
            grouped = moe(x)
        assert dense.dtype == grouped.dtype == torch.float64
        assert torch.allclose(dense, grouped, atol=1e-10)
    finally:
        moe.to(torch.float32)
        moe.experts.dense_limit = 2048


def test_set_fast_paths_rejects_a_bad_limit(model):
    for bad in (-1, True):
        with pytest.raises(ValueError, match="moe_dense_limit"):
            model.set_fast_paths(moe_dense_limit=bad)


def test_decode_batch_layout():
    meta = AttentionMetadata.build([1, 5, 1], [6, 5, 2], [[4, 1], [0, 3], [2]], block_size=4)
    dec = meta.decode_batch(4)
    assert dec is meta.decode_batch(4)  # built once per step, shared by the layers
    assert dec.seqs == [0, 2] and dec.rows.tolist() == [0, 6] and not dec.every_row
    assert dec.block_tables.tolist() == [4, 1, 2, 0]  # cut to the longest context (2 blocks)
    assert dec.valid.sum(dim=1).tolist() == [6, 2]
    assert AttentionMetadata.build([5], [5], [[0, 1]], 4).decode_batch(4) is None
    assert AttentionMetadata.build([1, 1], [1, 5], [[0], [1, 2]], 4).decode_batch(4).every_row
    # a few queries of one sequence (drafts to verify): one row each, over its causal context
    dec = AttentionMetadata.build([3, 1], [7, 2], [[5, 6], [1]], 4).decode_batch(4)
    assert dec.rows.tolist() == [0, 1, 2, 3] and dec.every_row
    assert dec.valid.sum(dim=1).tolist() == [5, 6, 7, 2] and dec.block_tables.tolist() == [5, 6] * 3 + [1, 0]
