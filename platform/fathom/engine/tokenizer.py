"""Tokenizer of a Hugging Face checkpoint directory (tokenizer.json + tokenizer_config.json),
its chat template, and an incremental detokeniser for streaming.

Only data files are read: the fast tokenizer's JSON and the Jinja chat template, rendered in
a sandbox. No code shipped with a checkpoint is executed."""

import functools
import json
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


class Tokenizer:
    def __init__(self, tokenizer: HFTokenizer, config: dict):
        self._tok = tokenizer
        self.config = config
        self.bos_token = _token_str(config.get("bos_token"))
        self.eos_token = _token_str(config.get("eos_token"))
        self.eos_token_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        self.bos_token_id = self._tok.token_to_id(self.bos_token) if self.bos_token else None
        self.chat_template = _pick_template(config.get("chat_template"))
        self._template: jinja2.Template | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {path}")
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        return cls(HFTokenizer.from_file(str(file)), config)

    @functools.cached_property
    def max_token_bytes(self) -> int | None:
        """The most UTF-8 bytes of text one token can stand for, or None when the text's length
        bounds nothing. A text of B bytes then needs at least B / max_token_bytes tokens, so a
        text longer than max_model_len × this cannot fit and is refused without tokenising.

        Only for byte-level BPE without a normalizer (DeepSeek's, GPT-2's): every input byte is
        in some token and a regular token's string has one character per byte; an added
        (special) token matches its content literally. Other tokenizers may drop or merge text
        (a normalizer, a whitespace pre-tokenizer, WordPiece's one [UNK] for a long word)."""
        spec = json.loads(self._tok.to_str())
        model, pre = spec.get("model") or {}, json.dumps(spec.get("pre_tokenizer"))
        if (model.get("type") != "BPE" or spec.get("normalizer") is not None or '"ByteLevel"' not in pre
                or '"Removed"' in pre or "Whitespace" in pre):
            return None
        regular = max((len(t) for t in self._tok.get_vocab(with_added_tokens=False)), default=1)
        added = (len(t.content.encode()) for t in self._tok.get_added_tokens_decoder().values())
        return max(regular, *added) if self._tok.get_added_tokens_decoder() else regular

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Render the checkpoint's chat template (Jinja, sandboxed, as transformers does)."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat_template in tokenizer_config.json")
        if self._template is None:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
            env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, indent=indent, ensure_ascii=False)
            env.globals["raise_exception"] = _raise
            self._template = env.from_string(self.chat_template)
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "", **kwargs)


class IncrementalDetokenizer:
    """Streams text for a growing list of token ids without ever emitting a broken UTF-8
    sequence: text that decodes to a trailing U+FFFD is held back until the next token
    completes it (or until `flush`). A few prompt tokens give context for the first piece."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int], skip_special_tokens: bool = True,
                 context: int = 4):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids = list(prompt_ids[-context:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def add(self, token_ids: list[int]) -> str:
        """Append tokens; return the text they complete (possibly empty)."""
        self.ids.extend(token_ids)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset], self.skip)
        full = self.tokenizer.decode(self.ids[self.prefix_offset:], self.skip)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix):]
        return ""

    def flush(self) -> str:
        """Whatever is held back (the sequence ended on an incomplete character)."""
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset], self.skip)
        full = self.tokenizer.decode(self.ids[self.prefix_offset:], self.skip)
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix):]


def _token_str(tok) -> str | None:
    if isinstance(tok, dict):
        return tok.get("content")
    return tok


def _pick_template(template) -> str | None:
    if isinstance(template, list):
        by_name = {t.get("name"): t.get("template") for t in template}
        return by_name.get("default") or next(iter(by_name.values()), None)
    return template


def _raise(message: str):
    raise jinja2.TemplateError(message)
