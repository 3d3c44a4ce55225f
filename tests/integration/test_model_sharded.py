"""TP/EP-sharded model in real processes over gloo: logits and greedy tokens equal transformers'.

One spawn per (TP, EP) runs every checkpoint (V3 with YaRN + noaux_tc + nonzero correction bias,
V2-Lite-style softmax + group_limited_greedy + q_lora_rank=None, and an FP8 block-quantised V3
held FP8-resident, against transformers on its dequantised weights) in both attention forms and decodes token by token over a paged cache of 3-token blocks.
"""

import socket

import pytest
import torch
import torch.multiprocessing as mp

from support import model_testing as T

PROMPTS = [[5, 17, 99, 3, 200, 41, 8, 249, 1, 77, 33], [9, 9, 12, 130, 64]]
DECODE = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """{name: (checkpoint dir, logits per prompt, greedy tokens per prompt, full param counts)}."""
    from fathom.model.loader import load_model

    refs = {}
    # the V2 vocab (250) does not divide over 4 ranks: the last rank holds a shorter vocab slice
    for name, kind, vocab in (("v3", "v3", 256), ("v2", "v2", 250)):
        d = tmp_path_factory.mktemp(name)
        hf = T.save_reference(d, kind, seed=7, vocab_size=vocab)
        refs[name] = (d, hf)
    fp8_dir = tmp_path_factory.mktemp("v3-fp8")
    deq_dir = tmp_path_factory.mktemp("v3-dequantised")
    T.quantize_checkpoint(refs["v3"][0], fp8_dir, deq_dir)
    refs["v3-fp8"] = (fp8_dir, T.load_reference(deq_dir))
    out = {}
    for name, (d, hf) in refs.items():
        logits = [T.reference_logits(hf, p) for p in PROMPTS]
        greedy = [T.reference_greedy(hf, p, DECODE) for p in PROMPTS]
        out[name] = (str(d), logits, greedy, T.param_counts(load_model(d)))
    return out


@pytest.mark.timeout(180)
@pytest.mark.parametrize("tp, ep", [(2, 1), (2, 2), (4, 2)])
def test_sharded_model_matches_transformers(references, tmp_path, tp, ep):
    jobs = [{"path": d, "prompts": PROMPTS, "decode": DECODE} for d, *_ in references.values()]
    mp.spawn(T.run_rank, args=(tp, ep, free_port(), jobs, str(tmp_path)), nprocs=tp, join=True)
    saved = [torch.load(tmp_path / f"{r}.pt") for r in range(tp)]
    ranks = [s["jobs"] for s in saved]
    for j, (name, (_, logits, greedy, full)) in enumerate(references.items()):
        for r, results in enumerate(ranks):
            res = results[j]
            for mode in ("expand", "absorb", "grouped"):  # grouped: MoE without the dense path
                for ours, ref in zip(res[mode], logits):
                    err = float((ours - ref).abs().max())
                    assert err <= T.tolerance(ref), f"{name} rank {r} {mode}: max |diff| {err}"
            assert res["greedy"] == greedy, f"{name} rank {r}"
            assert res["greedy_general"] == greedy, f"{name} rank {r} without batched decode / dense MoE"
            # memory: 1/TP of the head-split attention, 1/TP of the routed experts (1/EP per shard)
            assert res["params"]["attention_heads"] * tp == full["attention_heads"]
            assert res["params"]["routed_experts"] * tp == full["routed_experts"]
            # the FP8 checkpoint ran FP8-resident: every routed expert and attention projection in fp8
            if name.endswith("fp8"):
                assert res["params"]["fp8"] >= res["params"]["routed_experts"] + res["params"]["attention_heads"]
            else:
                assert res["params"]["fp8"] == 0
        shards = [results[j]["experts"] for results in ranks]
        per = 8 // ep
        assert shards == [list(range(r // (tp // ep) * per, (r // (tp // ep) + 1) * per)) for r in range(tp)]

