import json

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from fathom.engine.llm_engine import EngineConfig, LLMEngine
from fathom.engine.sampling_params import SamplingParams
from fathom.engine.tokenizer import IncrementalDetokenizer, Tokenizer
from support.engine_fakes import FakeExecutor, reference_greedy

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world", "the quick brown fox", "hello there"] * 10, trainer)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<bos>"}, "eos_token": "<eos>", "chat_template": TEMPLATE}))
    return d


def test_encode_decode_and_special_tokens(tok_dir):
    tok = Tokenizer.from_pretrained(tok_dir)
    assert tok.eos_token_id == 0 and tok.bos_token_id == 1
    ids = tok.encode("hello wörld 🌍")
    assert tok.decode(ids) == "hello wörld 🌍"
    assert tok.decode(ids + [0]) == "hello wörld 🌍" and tok.decode([0], skip_special_tokens=False) == "<eos>"


def test_incremental_detokenizer_never_emits_broken_utf8(tok_dir):
    tok = Tokenizer.from_pretrained(tok_dir)
    text = "héllo 🌍🌍 wörld ✓ 中文 hello"
    ids = tok.encode(text)
    assert len(ids) > len(text) // 2  # multibyte characters span several byte-level tokens
    detok = IncrementalDetokenizer(tok, tok.encode("prompt: "))
    pieces = [detok.add([t]) for t in ids] + [detok.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text
    assert "" in pieces, "some tokens complete no character and must be held back"


def test_chat_template_renders_like_transformers(tok_dir):
    tok = Tokenizer.from_pretrained(tok_dir)
    messages = [{"role": "user", "content": "hi"}]
    out = tok.apply_chat_template(messages)
    assert out == "<bos><|user|>hi<eos><|assistant|>"
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"), bos_token="<bos>",
                                 eos_token="<eos>")
    hf.chat_template = TEMPLATE
    assert out == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_pretrained(tok_dir / "missing")


def test_stop_strings_cut_text_and_hold_back_partial_matches(tok_dir):
    tok = Tokenizer.from_pretrained(tok_dir)
    prompt = [40, 41, 42]
    ref = reference_greedy(prompt, 30)
    full = tok.decode(ref)
    stop = full[9:13]
    assert len(stop) == 4
    engine = LLMEngine(EngineConfig(max_model_len=128, block_size=4), FakeExecutor(64, 4), tokenizer=tok)
    engine.add_request("s", prompt, SamplingParams(temperature=0, max_tokens=30, stop=[stop, "\x00never"]))
    deltas, last = [], None
    while engine.has_unfinished_requests():
        for out in engine.step():
            deltas += [c.text for c in out.outputs]
            last = out.outputs[-1] if out.outputs else last
    text = "".join(deltas)
    assert text == full[:full.index(stop)]
    assert last.finish_reason == "stop" and last.stop_reason == stop
    # never streamed a prefix of the stop string that later had to be taken back
    assert not any(stop in d for d in deltas)


def test_streamed_text_equals_decode_of_all_tokens(tok_dir):
    tok = Tokenizer.from_pretrained(tok_dir)
    engine = LLMEngine(EngineConfig(max_model_len=128, block_size=4), FakeExecutor(64, 4), tokenizer=tok)
    engine.add_request("s", [40, 41, 42], SamplingParams(temperature=0, max_tokens=25))
    text, tokens = "", []
    while engine.has_unfinished_requests():
        for out in engine.step():
            for c in out.outputs:
                text += c.text
                tokens += c.token_ids
    assert text == tok.decode(tokens) and len(tokens) == 25
