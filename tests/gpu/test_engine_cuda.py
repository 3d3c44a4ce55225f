"""CUDA: the engine (paged latent cache, batched MLA decode, dense small-batch MoE, per-sequence
CUDA generators) on a GPU gives the CPU engine's greedy tokens, and seeded sampling runs."""

import pytest
import torch

from fathom.api.engine import EngineSettings
from fathom.engine.sampling_params import SamplingParams
from fathom.model.loader import load_model
from fathom.parallel.context import ParallelContext
from fathom.worker.factory import create_engine, resolve_model_dir
from fathom.worker.in_process import InProcessExecutor
from fathom.worker.kv_budget import cache_spec
from fathom.worker.model_runner import ModelRunner

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8] * 5, [300, 12, 99], list(range(40, 100))]


def generate(engine, params):
    for i, p in enumerate(PROMPTS):
        engine.add_request(str(i), p, params)
    out = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            out.setdefault(o.request_id, []).extend(o.outputs[0].token_ids if o.outputs else [])
    return [out[str(i)] for i in range(len(PROMPTS))]


def test_cuda_engine_matches_cpu_engine():
    settings = EngineSettings(dtype="float32", block_size=16, kv_cache_memory=64 << 20, max_num_batched_tokens=32)
    path = resolve_model_dir(settings)
    gpu_model = load_model(path, ParallelContext.single("cuda:0"), torch.float32)
    spec = cache_spec(settings, 512)
    gpu = create_engine(settings, executor=InProcessExecutor(ModelRunner(gpu_model, 256, spec.block_size)))
    cpu_model = load_model(path)
    cpu = create_engine(settings, executor=InProcessExecutor(ModelRunner(cpu_model, 256, spec.block_size)))
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    assert generate(gpu, greedy) == generate(cpu, greedy)
    seeded = SamplingParams(temperature=0.9, top_p=0.9, seed=3, max_tokens=8, ignore_eos=True)
    first, again = generate(gpu, seeded), generate(gpu, seeded)
    assert first == again and all(len(t) == 8 for t in first)


def test_bfloat16_auto_dtype_and_gpu_memory_utilization_sizing():
    free, total = torch.cuda.mem_get_info()
    utilization = (total - free) / total + 0.01  # 1% of the GPU beyond what is in use now
    engine = create_engine(EngineSettings(gpu_memory_utilization=utilization))
    runner = engine.executor.runner
    assert runner.model.dtype == torch.bfloat16 and runner.kv_caches[0].is_cuda
    out = generate(engine, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    assert all(len(t) == 8 for t in out)
