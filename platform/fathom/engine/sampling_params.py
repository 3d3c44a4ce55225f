"""Sampling parameters as OpenAI (and vLLM) users know them, validated on construction."""

import math
from dataclasses import dataclass, field

from fathom.engine.errors import InvalidRequestError

MAX_LOGPROBS = 20
MAX_TOP_K = 1 << 20  # above any vocabulary; the engine checks top_k <= its vocabulary size
MAX_TOKEN_ID = (1 << 31) - 1
MAX_STOP_TOKEN_IDS = 256
MAX_STOP_CHARS = 256
MAX_LOGIT_BIAS = 300  # entries of `logit_bias` (OpenAI's limit)
LOGIT_BIAS_RANGE = 100.0  # |bias| bound (OpenAI's): -100 bans a token, +100 all but forces it


@dataclass(frozen=True)
class StructuredSpec:
    """Grammar-constrained decoding of one request (OpenAI `response_format`, forced or strict tool calls).

    kind "json_object": any JSON object; "json_schema": JSON matching `schema` (a JSON string),
    `strict` as OpenAI's flag (no properties beyond the schema's); "structural_tag": `schema` is an
    xgrammar structural tag (JSON; tool_choice "auto" with strict functions). `after_token_id`: the grammar
    applies only once this token (an R1-style model's `</think>`) has been sampled."""

    kind: str
    schema: str | None = None
    strict: bool = True
    after_token_id: int | None = None


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one request. Every bad value raises `InvalidRequestError` naming the field.

    `temperature=0` is greedy. `top_k=-1` and `top_p=1` are off. `logprobs=k` returns, for each
    sampled token, its logprob and the k most likely tokens' (raw model distribution, before
    temperature and penalties). `seed` makes sample i of the request reproducible whatever
    else is in the batch. Presence/frequency penalties apply to generated tokens (OpenAI);
    `repetition_penalty` (>1 discourages) to prompt and generated tokens (CTRL / HF).
    """

    n: int = 1
    max_tokens: int | None = None
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] | str | None = field(default_factory=list)
    stop_token_ids: list[int] | None = field(default_factory=list)
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    structured: StructuredSpec | None = None

    def __post_init__(self) -> None:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "stop_token_ids", list(self.stop_token_ids or []))
        if isinstance(self.logit_bias, dict):
            object.__setattr__(self, "logit_bias", dict(self.logit_bias) or None)
        self._validate()

    def _validate(self) -> None:
        _check(_is_int(self.n) and 1 <= self.n <= 128, "n", "an integer in [1, 128]", self.n)
        _check(self.max_tokens is None or (_is_int(self.max_tokens) and self.max_tokens >= 1),
               "max_tokens", "a positive integer or None", self.max_tokens)
        _check(_is_int(self.min_tokens) and self.min_tokens >= 0, "min_tokens", ">= 0", self.min_tokens)
        if self.max_tokens is not None:
            _check(self.min_tokens <= self.max_tokens, "min_tokens", "<= max_tokens", self.min_tokens)
        _check(_is_num(self.temperature) and 0 <= self.temperature <= 100, "temperature",
               "a number in [0, 100]", self.temperature)
        _check(_is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", "a number in (0, 1]", self.top_p)
        _check(_is_int(self.top_k) and (self.top_k == -1 or 1 <= self.top_k <= MAX_TOP_K), "top_k",
               f"-1 (off) or an integer in [1, {MAX_TOP_K}] (at most the vocabulary size)", self.top_k)
        _check(_is_num(self.min_p) and 0 <= self.min_p <= 1, "min_p", "a number in [0, 1]", self.min_p)
        _check(self.seed is None or (_is_int(self.seed) and -(1 << 63) <= self.seed < 1 << 64), "seed",
               "a 64-bit integer or None", self.seed)
        _check(all(isinstance(s, str) and s for s in self.stop), "stop", "non-empty strings", self.stop)
        _check(len(self.stop) <= 16, "stop", "at most 16 strings", len(self.stop))
        _check(all(len(s) <= MAX_STOP_CHARS for s in self.stop), "stop", f"strings of at most {MAX_STOP_CHARS} "
               "characters", max(map(len, self.stop), default=0))
        _check(len(self.stop_token_ids) <= MAX_STOP_TOKEN_IDS, "stop_token_ids",
               f"at most {MAX_STOP_TOKEN_IDS} ids", len(self.stop_token_ids))
        _check(all(_is_int(t) and 0 <= t <= MAX_TOKEN_ID for t in self.stop_token_ids), "stop_token_ids",
               "token ids (non-negative integers)", self.stop_token_ids)
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(_is_num(value) and -2 <= value <= 2, name, "a number in [-2, 2]", value)
        _check(_is_num(self.repetition_penalty) and 0 < self.repetition_penalty <= 10,
               "repetition_penalty", "a number in (0, 10]", self.repetition_penalty)
        _check(self.structured is None or self.structured.kind in ("json_object", "json_schema", "structural_tag"),
               "structured", "None or a json_object / json_schema / structural_tag spec", self.structured)
        _check(self.logprobs is None or (_is_int(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS),
               "logprobs", f"None or an integer in [0, {MAX_LOGPROBS}]", self.logprobs)
        _check(self.prompt_logprobs is None or (_is_int(self.prompt_logprobs)
                                                and 0 <= self.prompt_logprobs <= MAX_LOGPROBS),
               "prompt_logprobs", f"None or an integer in [0, {MAX_LOGPROBS}]", self.prompt_logprobs)
        self._validate_logit_bias()

    def _validate_logit_bias(self) -> None:
        bias = self.logit_bias
        _check(bias is None or isinstance(bias, dict), "logit_bias", "a dict {token id: bias} or None", bias)
        _check(len(bias or ()) <= MAX_LOGIT_BIAS, "logit_bias", f"at most {MAX_LOGIT_BIAS} entries",
               len(bias or ()))
        for t, b in (bias or {}).items():
            _check(_is_int(t) and 0 <= t <= MAX_TOKEN_ID, "logit_bias", "keyed by token ids", t)
            _check(_is_num(b) and -LOGIT_BIAS_RANGE <= b <= LOGIT_BIAS_RANGE, "logit_bias",
                   f"biases in [-{LOGIT_BIAS_RANGE:g}, {LOGIT_BIAS_RANGE:g}]", b)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def has_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check(ok: bool, name: str, expected: str, got) -> None:
    if not ok:
        raise InvalidRequestError(f"sampling parameter `{name}` must be {expected}, got {got!r}")
