"""KV-cache sizing: vLLM's meaning of gpu_memory_utilization (a share of the GPU's total memory
for the whole instance, what is in use counting against it), as arithmetic on (free, total)."""

import pytest
import torch

from fathom.worker.kv_budget import gpu_kv_budget, num_kv_blocks

GIB = 1 << 30


def test_the_kv_cache_gets_what_utilization_leaves_after_everything_in_use():
    assert gpu_kv_budget(free=70 * GIB, total=80 * GIB, utilization=0.9) == 62 * GIB  # 72 allowed - 10 in use
    assert gpu_kv_budget(free=40 * GIB, total=80 * GIB, utilization=0.9) == 32 * GIB  # another process holds 30
    with pytest.raises(ValueError, match=r"gpu_memory_utilization 0.5 allows 40.0 GiB of the GPU's 80.0 GiB, "
                                         r"but 50.0 GiB are already in use"):
        gpu_kv_budget(free=30 * GIB, total=80 * GIB, utilization=0.5)


def test_cpu_sizing_keeps_the_memory_fraction_and_an_explicit_budget_wins():
    cpu = torch.device("cpu")
    capped = num_kv_blocks(100, 16, cpu, kv_cache_memory=None, memory_fraction=0.9, max_useful_tokens=1600,
                           gpu_memory_utilization=0.01)
    assert capped == 100  # max_num_seqs × max_model_len tokens, not a share of RAM
    assert num_kv_blocks(100, 16, cpu, kv_cache_memory=3200, memory_fraction=0.9, max_useful_tokens=1600) == 2
