"""CUDA: the model in bfloat16 on a GPU agrees with float32 on CPU (run where a GPU exists)."""

import pytest
import torch

from fathom.model import testing as T
from fathom.model.demo import demo_checkpoint_dir
from fathom.model.loader import load_model
from fathom.parallel.context import ParallelContext

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_demo_bf16_on_cuda_matches_cpu_float32():
    path = demo_checkpoint_dir()
    cpu = load_model(path)
    gpu = load_model(path, ParallelContext.single("cuda"), dtype=torch.bfloat16)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8], [300, 12, 99]]
    ref = T.full_logits(cpu, prompts)
    out = [o.cpu() for o in T.full_logits(gpu, prompts)]
    for r, o in zip(ref, out):
        assert o.dtype == torch.float32
        assert float((o - r).abs().max()) <= 0.05 * float(r.abs().max())
    assert T.greedy_decode(gpu, prompts, 4)[1] is not None
