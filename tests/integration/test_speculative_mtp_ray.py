"""MTP speculative decoding on Ray rank workers, TP = 2 / EP = 2 over gloo: every rank loads its
shard of the MTP module, rank 0 verifies and broadcasts what it accepted, and greedy outputs equal
those of one process without speculation, token for token (chunked prefill, prefix caching, and
continuous batching of prompts of different lengths)."""

import pytest

import fathom
from fathom.engine.sampling_params import SamplingParams
from support import model_testing as T

pytestmark = pytest.mark.timeout(300)
SHARED = [7, 7, 19, 200, 3, 41, 8, 99, 12, 250, 60, 61]
PROMPTS = [SHARED + [5, 17, 99, 3], SHARED + [1, 77], [9, 9, 12, 130, 64], list(range(40, 61))]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
ENGINE = {"block_size": 4, "max_num_batched_tokens": 16, "max_model_len": 128, "kv_cache_memory": 1 << 22,
          "dtype": "float32"}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(ray_multinode, tmp_path_factory):
    path = str(T.save_mtp_checkpoint(tmp_path_factory.mktemp("v3-mtp"), seed=0, predictable=0.15))
    llm = fathom.LLM(path, engine_core_process=False, **ENGINE)
    return path, [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_tp2_ep2_greedy_equals_one_process_without_speculation(checkpoint, k):
    path, reference = checkpoint
    llm = fathom.LLM(path, tensor_parallel_size=2, expert_parallel_size=2,
                     speculative_config={"method": "mtp", "num_speculative_tokens": k}, **ENGINE)  # fmt: skip
    try:
        assert [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)] == reference
        spec = llm.engine.stats().spec_decode
        assert spec.num_draft_tokens > spec.num_accepted_tokens > 0
    finally:
        llm.shutdown()
