"""CUDA, two GPUs: data-parallel attention + all-to-all experts over nccl equal transformers
(the gloo test's (D, TP, EP) = (2, 1, 2) case, with an idle group and a mid-decode rebalance)."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

from support import model_testing as T
from support.wide_ep import run_wide_rank

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                       reason="needs two CUDA devices (nccl: one rank per GPU)"),
]
PROMPTS = [[5, 17, 99, 3, 200, 41, 8, 249, 1, 77, 33], [9, 9, 12, 130, 64]]
DECODE = 5


def test_dp2_ep2_over_nccl_matches_transformers(tmp_path):
    hf = T.save_reference(tmp_path / "v3", "v3", seed=7)
    greedy = [T.reference_greedy(hf, p, DECODE) for p in PROMPTS]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = {"path": str(tmp_path / "v3"), "groups": [PROMPTS[:1], PROMPTS[1:]], "decode": DECODE,
           "delays": [0, 2], "rebalance_at": 3, "cuda": True}  # fmt: skip
    mp.spawn(run_wide_rank, args=(2, 2, 2, port, job, str(tmp_path)), nprocs=2, join=True)
    saved = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    assert saved[0]["greedy"] == greedy[:1] and saved[1]["greedy"] == greedy[1:]
