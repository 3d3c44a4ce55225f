"""The engine-side kernels (batched MLA decode, dense small-batch MoE) compute what the model's
own per-sequence / per-expert loops compute, on mixed decode + prefill batches."""

import copy

import pytest
import torch

from fathom.engine import mla_decode, moe_dense
from fathom.model.attention_metadata import AttentionMetadata
from fathom.model.kv_cache import allocate_kv_caches
from fathom.model.loader import load_model
from fathom.model.testing import save_reference


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("v3")
    save_reference(path, "v3", seed=9)
    plain = load_model(path)
    fast = copy.deepcopy(plain)
    assert mla_decode.install(fast) and moe_dense.install(fast, max_dense=4096)
    return plain, fast


def run(model, query_lens, seq_lens, block_size=4):
    g = torch.Generator().manual_seed(0)
    tables, nxt = [], 0
    for s in seq_lens:
        n = -(-s // block_size)
        tables.append(list(range(nxt + n - 1, nxt - 1, -1)))  # scattered, reversed blocks
        nxt += n
    caches = allocate_kv_caches(model.config, nxt, block_size)
    for c in caches:
        c.copy_(torch.randn(c.shape, generator=g))
    meta = AttentionMetadata.build(query_lens, seq_lens, tables, block_size)
    ids = torch.randint(0, model.config.vocab_size, (sum(query_lens),), generator=g)
    with torch.inference_mode():
        return model(ids, meta.positions(), caches, meta), caches


@pytest.mark.parametrize("query_lens, seq_lens", [
    ([1, 1, 1, 1], [5, 17, 9, 30]),  # pure decode
    ([1, 6, 1, 3], [12, 6, 3, 20]),  # decodes mixed with (chunked) prefills
])
def test_fast_paths_equal_the_model(models, query_lens, seq_lens):
    plain, fast = models
    ref, ref_caches = run(plain, query_lens, seq_lens)
    got, got_caches = run(fast, query_lens, seq_lens)
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), float((got - ref).abs().max())
    assert all(torch.allclose(a, b, atol=1e-4, rtol=1e-4) for a, b in zip(ref_caches, got_caches))


def test_install_refuses_unknown_layouts():
    class Other(torch.nn.Module):
        pass

    assert not mla_decode.install(Other()) and not moe_dense.install(Other())
