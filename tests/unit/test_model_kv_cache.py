import pytest
import torch

from fathom.model.attention_metadata import AttentionMetadata, contiguous_layout
from fathom.model.config import DeepseekConfig
from fathom.model.kv_cache import allocate_kv_caches, bytes_per_token, kv_cache_shape
from support.model_testing import tiny_v3_kwargs


def config() -> DeepseekConfig:
    kw = tiny_v3_kwargs()
    kw.pop("num_key_value_heads")
    return DeepseekConfig.from_dict({"model_type": "deepseek_v3", **kw})


def test_cache_shape_and_bytes():
    c = config()
    assert kv_cache_shape(c, 10, 16) == (10, 16, c.kv_lora_rank + c.qk_rope_head_dim)
    assert bytes_per_token(c, torch.bfloat16) == c.num_hidden_layers * (32 + 16) * 2
    caches = allocate_kv_caches(c, 3, 4, torch.float32)
    assert len(caches) == c.num_hidden_layers and caches[0].shape == (3, 4, 48)


def test_metadata_layout():
    # seq 0: 2 cached + 3 new in blocks [7, 2]; seq 1: decode of token 5 in blocks [0, 4]
    meta = AttentionMetadata.build([3, 1], [5, 6], [[7, 2], [0, 4]], block_size=4)
    assert meta.query_start_loc.tolist() == [0, 3, 4] and meta.seq_lens.tolist() == [5, 6]
    assert meta.slot_mapping.tolist() == [7 * 4 + 2, 7 * 4 + 3, 2 * 4 + 0, 4 * 4 + 1]
    assert meta.positions().tolist() == [2, 3, 4, 5]
    assert meta.num_seqs == 2 and meta.num_tokens == 4 and meta.block_tables.shape == (2, 2)


def test_metadata_rejects_bad_layouts():
    with pytest.raises(ValueError, match="cannot hold"):
        AttentionMetadata.build([1], [9], [[0, 1]], block_size=4)
    with pytest.raises(ValueError, match="query_len"):
        AttentionMetadata.build([3], [2], [[0]], block_size=4)
    assert contiguous_layout([5, 1, 8], 4) == ([[0, 1], [2], [3, 4]], 5)
