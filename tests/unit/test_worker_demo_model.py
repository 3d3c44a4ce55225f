"""The trained built-in demo model: its corpus and training are deterministic, and the shipped
checkpoint is a DeepSeek-V3 checkpoint with one MTP layer in V3's layout that Fathom and
transformers load and decode alike. (Its accuracy through the API: tests/integration/test_demo_model_answers.py.)"""

import itertools
import json
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fathom.engine.tokenizer import Tokenizer
from fathom.model.config import DeepseekConfig
from fathom.model.loader import load_model
from fathom.worker.demo_model import demo_model_dir
from fathom.worker.demo_model import train as T
from fathom.worker.demo_model.corpus import OPS, Problem, conversations, trace, train_problems
from fathom.worker.demo_model.corpus import test_problems as held_out_problems
from support import model_testing as MT


def test_corpus_is_deterministic_and_never_shows_a_held_out_problem():
    a, b = list(itertools.islice(conversations(0), 300)), list(itertools.islice(conversations(0), 300))
    assert a == b and a != list(itertools.islice(conversations(1), 300))
    held_out = held_out_problems()
    assert held_out == held_out_problems() and len(set(held_out)) == 300
    assert {p.op for p in held_out} == set(OPS) and all(10 <= p.a < 100 and 10 <= p.b < 100 for p in held_out)
    import random

    seen = set(itertools.islice(train_problems(random.Random(0)), 20000))
    assert not seen & set(held_out) and len(seen) > 10000


@pytest.mark.parametrize(("p", "text"), [
    (Problem("+", 47, 38), "47+38: 7+8=15, carry 1; 4+3+1=8. So 85."),
    (Problem("-", 83, 47), "83-47: 3-7, borrow 1, 13-7=6; 8-4-1=3. So 36."),
    (Problem("-", 38, 83), "38-83: 38<83, so -(83-38). 3-8, borrow 1, 13-8=5; 8-3-1=4. So -45."),
    (Problem("*", 47, 38), ("47*38: 47*8: 7*8=56, 4*8+5=37, so 376; 47*30: 7*3=21, 4*3+2=14, so 1410; "
                            "376+1410=1786. So 1786.")),
])  # fmt: skip
def test_traces_are_digit_wise_and_right(p, text):
    assert trace(p) == text and text.endswith(f"So {p.result}.")


@pytest.fixture
def training_setup():
    """T.setup() (one thread, deterministic algorithms), undone afterwards for the other tests."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    T.setup()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def test_training_steps_are_bit_identical_across_runs(training_setup):
    def run():
        with tempfile.TemporaryDirectory() as tmp:
            tok = T.tokenizer(Path(tmp))
        return T.checkpoint_tensors(T.train(tok, 2, log_every=0))

    a, b = run(), run()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], T.checkpoint_tensors(T.init_model())["lm_head.weight"])


def test_shipped_checkpoint_has_v3s_mtp_layer_and_the_demo_tokenizer(tmp_path):
    d = demo_model_dir()
    config = json.loads((d / "config.json").read_text())
    assert config == T.CONFIG and DeepseekConfig.from_pretrained(d).num_nextn_predict_layers == 1
    w = load_file(d / "model.safetensors")
    n, h, v = config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]
    mtp = f"model.layers.{n}."
    assert w[mtp + "eh_proj.weight"].shape == (h, 2 * h)
    assert w[mtp + "enorm.weight"].shape == w[mtp + "hnorm.weight"].shape == w[mtp + "shared_head.norm.weight"].shape
    assert torch.equal(w[mtp + "embed_tokens.weight"], w["model.embed_tokens.weight"])
    assert torch.equal(w[mtp + "shared_head.head.weight"], w["lm_head.weight"])
    assert w[mtp + "mlp.gate.e_score_correction_bias"].dtype == torch.float32 and (mtp + "mlp.shared_experts.up_proj.weight") in w
    assert w["lm_head.weight"].shape == (v, h) and (d / "model.safetensors").stat().st_size < 8 * 2**20
    T.export(T.init_model(), tmp_path)  # the tokenizer files are the random demo's, byte for byte
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (d / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_shipped_checkpoint_decodes_as_in_transformers():
    import transformers as tf

    d = demo_model_dir()
    tok = Tokenizer.from_pretrained(d)
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "What is 47 + 38?"}]),
                        add_special_tokens=False)
    hf = tf.AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    ours = load_model(d)
    ref = MT.reference_logits(hf, prompt)
    assert float((MT.full_logits(ours, [prompt])[0] - ref).abs().max()) <= MT.tolerance(ref)
    (greedy,) = MT.greedy_decode(ours, [prompt], n=24)
    assert greedy == MT.reference_greedy(hf, prompt, 24)
    assert tok.decode(greedy, skip_special_tokens=False).startswith("<think>47+38: 7+8=")


def test_shipped_mtp_layer_predicts_the_token_after_next():
    """The MTP branch, run from the file's tensors by the training-time model, guesses token t+2
    of held-out answers mostly right (what speculative decoding's acceptance rests on)."""
    d = demo_model_dir()
    w = load_file(d / "model.safetensors")
    model = T.DemoDeepseekV3(T.CONFIG)
    n = T.CONFIG["num_hidden_layers"]
    copies = (f"model.layers.{n}.embed_tokens.weight", f"model.layers.{n}.shared_head.head.weight")
    model.load_state_dict({k: t.float() for k, t in w.items() if k not in copies})
    tok = Tokenizer.from_pretrained(d)
    ids, mask = next(T.batches(tok, 16, seed=12345))
    with torch.no_grad():
        _, mtp = model(ids)
    hits = (mtp[:, :-1].argmax(-1) == ids[:, 2:])[mask[:, 2:]]
    assert hits.float().mean() > 0.6, hits.float().mean()
