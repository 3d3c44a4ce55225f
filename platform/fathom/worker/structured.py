"""Grammar-constrained decoding (structured outputs) with xgrammar.

Why xgrammar: see docs/structured_outputs.md (measured against llguidance on the same schemas).

`GrammarBackend` holds the model's vocabulary compiled once (`xgrammar.TokenizerInfo` from
tokenizer.json) and a cache of compiled grammars keyed by the request's `StructuredSpec`.
`Grammars` keeps one `GrammarMatcher` per constrained sequence on the driver rank: before
sampling it fills each sequence's next-token bitmask on the CPU (the model runner calls it
while the forward pass runs on the accelerator) and returns a [B, V] allowed-token mask;
after sampling it advances the matchers. A reasoning-aware spec (`after_token_id`, R1's
`</think>`) leaves the sequence free until that token is sampled.

A "structural_tag" spec (tool_choice "auto" with strict functions) is an xgrammar structural
tag: it spells special tokens (DeepSeek's tool-call markers), so it is compiled against a second
view of the vocabulary in which exactly the special tokens it spells are visible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import xgrammar as xgr

from fathom.engine.sampling_params import StructuredSpec
from fathom.engine.tokenizer import bytes_to_unicode


class SchemaError(ValueError):
    """The grammar library cannot compile this schema."""


# JSON-Schema keywords xgrammar 0.2 accepts but does not enforce (measured: an output that
# breaks them still matches the grammar), so a schema using them is refused, never half-enforced.
_UNENFORCED = {"not", "if", "then", "else", "dependentRequired", "dependentSchemas", "unevaluatedProperties",
               "unevaluatedItems", "oneOf"}
_NAMED = {"properties", "patternProperties", "$defs", "definitions"}  # maps of name -> subschema
_VALUES = {"enum", "const", "default", "examples", "required", "title", "description"}  # data, not subschemas


def _unenforced(node) -> set[str]:
    found: set[str] = set()
    if isinstance(node, list):
        for x in node:
            found |= _unenforced(x)
    elif isinstance(node, dict):
        for k, v in node.items():
            if k in _NAMED and isinstance(v, dict):
                found |= _unenforced(list(v.values()))
            elif k not in _VALUES:
                if k in _UNENFORCED or (k == "uniqueItems" and v) or (k == "allOf" and len(v or []) > 1):
                    found.add(k)
                found |= _unenforced(v)
    return found


@lru_cache(maxsize=256)
def check_spec(kind: str, schema: str | None, strict: bool = True) -> None:
    """Raise SchemaError when `schema` cannot become a grammar (no vocabulary needed), or uses
    a keyword the grammar would not enforce."""
    if kind == "structural_tag":
        try:
            xgr.Grammar.from_structural_tag(schema)
        except (RuntimeError, ValueError, TypeError) as e:
            raise SchemaError(str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__) from None
        return
    if kind != "json_schema":
        return
    bad = _unenforced(json.loads(schema))
    if bad:
        raise SchemaError(f"unsupported JSON-Schema keyword(s): {', '.join(sorted(bad))}")
    try:
        xgr.Grammar.from_json_schema(schema, any_whitespace=False, strict_mode=strict)
    except (RuntimeError, ValueError, TypeError) as e:  # xgrammar raises RuntimeError / ValueError with the reason
        raise SchemaError(str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__) from None


def tokenizer_info(model_dir: Path, vocab_size: int, visible: frozenset[str] | None = None) -> xgr.TokenizerInfo:
    """The vocabulary as xgrammar needs it: token strings by id, special tokens blanked (never
    allowed inside structured text) except those in `visible`, EOS ids from config.json and
    tokenizer_config.json. A structural tag's view (`visible` not None) keeps tokens carrying
    control characters: its formats spell newlines, and its JSON strings exclude control
    characters in the grammar itself."""
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = [""] * vocab_size
    for piece, i in tok["model"]["vocab"].items():
        if i < vocab_size:
            vocab[i] = piece
    for added in tok.get("added_tokens", []):
        if added["id"] < vocab_size:
            vocab[added["id"]] = "" if added.get("special") and added["content"] not in (visible or ()) else added["content"]
    decoder = json.dumps(tok.get("decoder") or {})
    kind = xgr.VocabType.BYTE_LEVEL if "ByteLevel" in decoder else (
        xgr.VocabType.BYTE_FALLBACK if "ByteFallback" in decoder else xgr.VocabType.RAW)
    if kind == xgr.VocabType.BYTE_LEVEL and visible is None:
        # xgrammar's JSON strings admit raw control characters, which JSON (and every parser)
        # forbids; compact JSON never needs them (they are written escaped), so no token
        # carrying one is ever allowed.
        control = {ch for b, ch in bytes_to_unicode().items() if b < 0x20}
        vocab = ["" if control.intersection(piece) else piece for piece in vocab]
    return xgr.TokenizerInfo(vocab, kind, vocab_size=vocab_size, stop_token_ids=sorted(_eos_ids(model_dir, tok)))


def _eos_ids(model_dir: Path, tok: dict) -> set[int]:
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        f = model_dir / name
        eos = json.loads(f.read_text()).get("eos_token_id") if f.is_file() else None
        ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    cfg_file = model_dir / "tokenizer_config.json"
    eos_tok = json.loads(cfg_file.read_text()).get("eos_token") if cfg_file.is_file() else None
    eos_tok = eos_tok.get("content") if isinstance(eos_tok, dict) else eos_tok
    ids.update(a["id"] for a in tok.get("added_tokens", []) if a["content"] == eos_tok)
    return ids


class GrammarBackend:
    """One model's vocabulary (compiled once) and its compiled grammars."""

    def __init__(self, model_dir: str | Path, vocab_size: int):
        self.model_dir, self.vocab_size = Path(model_dir), vocab_size
        self.info = tokenizer_info(self.model_dir, vocab_size)
        self.compiler = xgr.GrammarCompiler(self.info, cache_enabled=True)
        self.special = {a["content"] for a in json.loads((self.model_dir / "tokenizer.json").read_text())
                        .get("added_tokens", []) if a.get("special")}
        self.tag_compilers: dict[frozenset[str], xgr.GrammarCompiler] = {}  # by the special tokens made visible

    def compile(self, spec: StructuredSpec) -> xgr.CompiledGrammar:
        if spec.kind == "structural_tag":
            text = json.dumps(json.loads(spec.schema), ensure_ascii=False)
            visible = frozenset(s for s in self.special if s in text)
            if visible not in self.tag_compilers:
                info = tokenizer_info(self.model_dir, self.vocab_size, visible)
                self.tag_compilers[visible] = xgr.GrammarCompiler(info, cache_enabled=True)
            return self.tag_compilers[visible].compile_structural_tag(spec.schema)
        if spec.kind == "json_object":
            return self.compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
        return self.compiler.compile_json_schema(spec.schema, any_whitespace=False, strict_mode=spec.strict)


@dataclass
class _Seq:
    matcher: xgr.GrammarMatcher
    after_token_id: int | None  # free until this token (R1's </think>) is sampled


class Grammars:
    """The constrained sequences of one driver rank."""

    def __init__(self, model_dir: str | Path | None, device: torch.device):
        self.model_dir, self.device = model_dir, device
        self.backend: GrammarBackend | None = None
        self.seqs: dict[int, _Seq] = {}

    def add(self, seq_id: int, spec: StructuredSpec, vocab_size: int) -> None:
        if self.backend is None:
            if self.model_dir is None:
                raise ValueError("structured outputs need the checkpoint's tokenizer.json")
            self.backend = GrammarBackend(self.model_dir, vocab_size)
        self.seqs[seq_id] = _Seq(xgr.GrammarMatcher(self.backend.compile(spec)), spec.after_token_id)

    def free(self, seq_id: int) -> None:
        self.seqs.pop(seq_id, None)

    def allowed(self, seq_ids: list[int], vocab_size: int) -> torch.Tensor | None:
        """[B, V] bool on the model's device (True = may be sampled), or None when no row is constrained."""
        rows = [(j, s) for j, sid in enumerate(seq_ids) if (s := self.seqs.get(sid)) is not None
                and s.after_token_id is None and not s.matcher.is_terminated()]
        if not rows:
            return None
        bitmask = xgr.allocate_token_bitmask(len(rows), vocab_size)  # [R, ceil(V/32)] int32, CPU
        for r, (_, s) in enumerate(rows):
            s.matcher.fill_next_token_bitmask(bitmask, r)
        # bit k of int32 word w is token 32 w + k: little-endian bytes, little-endian bits
        unpacked = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")[:, :vocab_size]
        allowed = np.ones((len(seq_ids), vocab_size), dtype=bool)
        allowed[[j for j, _ in rows]] = unpacked
        return torch.from_numpy(allowed).to(self.device, non_blocking=True)

    def accept(self, seq_ids: list[int], tokens: list[int]) -> None:
        for sid, t in zip(seq_ids, tokens):
            s = self.seqs.get(sid)
            if s is None:
                continue
            if s.after_token_id is not None:
                if t == s.after_token_id:
                    s.after_token_id = None  # reasoning ended: the grammar applies from the next token
            elif not s.matcher.is_terminated():
                s.matcher.accept_token(t)
