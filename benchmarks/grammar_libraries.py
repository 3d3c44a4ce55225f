"""Which grammar library enforces structured outputs: xgrammar vs llguidance, measured on the
same schemas and the same vocabulary, in one run.

    python benchmarks/grammar_libraries.py [--vocab 32000] [--steps 64]

Vocabulary: a byte-level BPE (DeepSeek's tokenizer family) of `--vocab` tokens trained here on
this virtualenv's Python sources (no download), plus the demo model's special tokens. Schemas:
tests/support/json_schemas.py (the ones the end-to-end tests use) plus EXTRA (features
real agents' schemas use). For each library and schema: does it compile, compile time (cold,
no cache), and the time to compute one next-token mask along a random walk of allowed tokens
(`--steps` tokens, seeded, the same policy for both). Prints a table and the medians.
"""

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT / "tests")]

import llguidance
import llguidance.hf
import llguidance.torch as llt
import xgrammar as xgr

from fathom.worker.demo import SPECIAL_TOKENS
from fathom.worker.structured import SchemaError, check_spec, tokenizer_info
from support.json_schemas import SCHEMAS

EXTRA = {
    "date_time_format": {"type": "object", "properties": {"at": {"type": "string", "format": "date-time"}},
                         "required": ["at"], "additionalProperties": False},
    "one_of": {"oneOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
                          "additionalProperties": False},
                         {"type": "object", "properties": {"b": {"type": "string", "maxLength": 4}}, "required": ["b"],
                          "additionalProperties": False}]},
    "min_length": {"type": "object", "properties": {"s": {"type": "string", "minLength": 3, "maxLength": 6}},
                   "required": ["s"], "additionalProperties": False},
    "exclusive_bounds": {"type": "object", "properties": {"n": {"type": "integer", "exclusiveMinimum": 0,
                                                                "exclusiveMaximum": 10}},
                         "required": ["n"], "additionalProperties": False},
    "recursive": {"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer", "minimum": 0,
                                                                           "maximum": 9},
                                                                     "kids": {"type": "array", "maxItems": 2,
                                                                              "items": {"$ref": "#/$defs/node"}}},
                                     "required": ["v"], "additionalProperties": False}},
                  "$ref": "#/$defs/node"},
    "unique_items": {"type": "array", "items": {"enum": [1, 2, 3]}, "uniqueItems": True, "maxItems": 3},
    "multiple_of": {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 100},
}


def train_vocab(path: Path, size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    files = sorted(str(p) for p in Path(llguidance.__file__).parents[1].glob("*/*.py"))[:3000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train(files, trainer)
    tok.save(str(path / "tokenizer.json"))
    eos = tok.token_to_id(SPECIAL_TOKENS[1])
    (path / "config.json").write_text(json.dumps({"eos_token_id": eos}))


class XGrammar:
    def __init__(self, path: Path, vocab: int):
        self.info = tokenizer_info(path, vocab)

    def compile(self, schema: dict):
        try:
            check_spec("json_schema", json.dumps(schema))  # Fathom refuses what xgrammar would not enforce
        except SchemaError as e:
            raise ValueError(str(e)) from None
        compiler = xgr.GrammarCompiler(self.info, cache_enabled=False)
        return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)

    def walk(self, compiled, vocab: int, steps: int, rng: random.Random) -> list[float]:
        m, bm, times = xgr.GrammarMatcher(compiled), xgr.allocate_token_bitmask(1, vocab), []
        for _ in range(steps):
            if m.is_terminated():
                break
            t = time.perf_counter()
            m.fill_next_token_bitmask(bm, 0)
            times.append(time.perf_counter() - t)
            ok = xgr.testing._get_masked_tokens_from_bitmask(bm, vocab)
            allowed = sorted(set(range(vocab)) - set(ok))
            m.accept_token(rng.choice(allowed))
        return times


class LLGuidance:
    def __init__(self, path: Path, vocab: int):
        from transformers import PreTrainedTokenizerFast

        hf = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), eos_token=SPECIAL_TOKENS[1])
        self.tok = llguidance.hf.from_tokenizer(hf, n_vocab=vocab)

    def compile(self, schema: dict):
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False})
        err = llguidance.LLMatcher.validate_grammar(grammar, self.tok)  # "" when valid
        if err:
            raise ValueError(err)
        m = llguidance.LLMatcher(self.tok, grammar)
        if m.is_error():
            raise ValueError(m.get_error())
        return grammar

    def walk(self, grammar, vocab: int, steps: int, rng: random.Random) -> list[float]:
        m, bm, times = llguidance.LLMatcher(self.tok, grammar), llt.allocate_token_bitmask(1, vocab), []
        for _ in range(steps):
            if m.is_stopped():
                break
            t = time.perf_counter()
            llt.fill_next_token_bitmask(m, bm, 0)
            times.append(time.perf_counter() - t)
            words = bm[0].tolist()
            allowed = [i for i in range(vocab) if (words[i // 32] >> (i % 32)) & 1]
            m.consume_token(rng.choice(allowed))
        return times


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--steps", type=int, default=64)
    a = ap.parse_args()
    schemas = {**SCHEMAS, **EXTRA}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d)
        train_vocab(path, a.vocab)
        vocab = json.loads((path / "tokenizer.json").read_text())
        n_vocab = len(vocab["model"]["vocab"]) + len(SPECIAL_TOKENS)
        libs = {"xgrammar": XGrammar(path, n_vocab), "llguidance": LLGuidance(path, n_vocab)}
        print(f"vocabulary: {n_vocab} tokens; {len(schemas)} schemas")
        print(f"{'schema':<20}" + "".join(f"{n + ' compile ms':>22}{n + ' mask us':>20}" for n in libs))
        summary = {n: {"ok": 0, "compile": [], "mask": []} for n in libs}
        for name, schema in schemas.items():
            row = f"{name:<20}"
            for lib_name, lib in libs.items():
                try:
                    t = time.perf_counter()
                    compiled = lib.compile(schema)
                    ms = (time.perf_counter() - t) * 1e3
                    mask = statistics.mean(lib.walk(compiled, n_vocab, a.steps, random.Random(0))) * 1e6
                except Exception as e:  # noqa: BLE001 - a schema a library refuses is a result here
                    row += f"{'refused':>22}{type(e).__name__:>20}"
                    continue
                s = summary[lib_name]
                s["ok"] += 1
                s["compile"].append(ms)
                s["mask"].append(mask)
                row += f"{ms:>22.2f}{mask:>20.1f}"
            print(row)
        for n, s in summary.items():
            if not s["ok"]:
                print(f"{n}: compiled 0/{len(schemas)}")
                continue
            print(f"{n}: compiled {s['ok']}/{len(schemas)}, median compile {statistics.median(s['compile']):.2f} ms, "
                  f"median mask {statistics.median(s['mask']):.1f} us/token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
