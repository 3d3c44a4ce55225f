"""OpenAI wire protocol: request bodies (validated), response bodies and stream chunks.

Requests forbid unknown fields so a typo is an error naming the field, not a silent default,
and validate strictly as OpenAI does (`"n": "2"` and `"stream": "false"` are type errors, not
coerced). Every field is bounded (lengths, counts, ranges), and a known OpenAI field that this
server does not implement is refused with a 400 naming it (`_NOT_IMPLEMENTED`), never ignored.
One request fans out to at most `MAX_CHOICES` engine sequences (prompts × n): OpenAI caps prompt
arrays too, and every limit counts engine work, so one HTTP request cannot become thousands.
Responses mirror OpenAI's shapes field for field, so the official `openai` client parses
them unchanged; `reasoning_content` is DeepSeek's extension for R1-style thinking.
"""

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 256
MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_TOP_K = 1 << 20  # the replica also checks top_k <= its vocabulary size
MAX_TOKEN_ID = (1 << 31) - 1  # the replica also checks ids < its vocabulary size
MAX_PROMPTS = 128  # prompts in one /v1/completions request
MAX_CHOICES = 128  # prompts × n: engine sequences one request may start
MAX_MESSAGES = 4096
MAX_CONTENT_PARTS = 1024
MAX_NEW_TOKENS = 1 << 24
MAX_NAME_CHARS = 256
MAX_LOGIT_BIAS = 300  # logit_bias entries (OpenAI's limit); the replica also checks ids < its vocabulary
SEED_RANGE = {"ge": -(1 << 63), "le": (1 << 64) - 1}

TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
ShortStr = Annotated[str, Field(max_length=MAX_NAME_CHARS)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Request):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ToolCallFunction(_Request):
    name: str
    arguments: str


class ToolCall(_Request):
    """A function call the assistant made (an assistant message's `tool_calls`)."""

    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class FunctionDefinition(_Request):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedFunction


class ChatMessage(_Request):
    """One conversation turn; content may be a string or a list of text parts."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)] | None = None
    name: ShortStr | None = None
    reasoning_content: str | None = None
    tool_call_id: ShortStr | None = None
    tool_calls: list[ToolCall] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class JsonSchemaFormat(_Request):
    """OpenAI's `response_format.json_schema`: the schema the output must match."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> "ResponseFormat":
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("response_format.json_schema is required with type json_schema, and only then")
        return self


StopStr = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
Stop = StopStr | Annotated[list[StopStr], Field(max_length=MAX_STOP_SEQUENCES)] | None

# Known OpenAI fields this server accepts only at their default: (field, default). Anything
# else is a 400 that names the field, so a client never believes a setting took effect.
_NOT_IMPLEMENTED = (("store", None), ("metadata", None), ("service_tier", None), ("priority", 0))


class _SamplingFields(_Request):
    """Fields common to chat and text completions (OpenAI names, plus vLLM's common extras)."""

    model: ShortStr
    n: int = Field(1, ge=1, le=MAX_N)
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, le=MAX_TOP_K)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    seed: int | None = Field(None, **SEED_RANGE)
    user: str | None = Field(None, max_length=256)
    ignore_eos: bool = False
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]],
                          Field(max_length=MAX_LOGIT_BIAS)] | None = None  # {"token id": bias}
    skip_special_tokens: bool = True
    return_tokens_as_token_ids: bool = False  # vLLM's extension: logprob tokens as "token_id:<id>"
    priority: int = Field(0, description="Refused unless 0: the tenant policy sets priority, not clients.")

    @model_validator(mode="after")
    def _refuse_not_implemented(self) -> "_SamplingFields":
        for name, default in _NOT_IMPLEMENTED:
            if name in type(self).model_fields and getattr(self, name) != default:
                raise ValueError(f"`{name}` is not supported by this server")
        if self.stream_options is not None and self.stream_options.continuous_usage_stats:
            raise ValueError("`stream_options.continuous_usage_stats` is not supported by this server")
        return self

    @field_validator("stop")
    @classmethod
    def _stop_strings_not_empty(cls, v: Stop) -> Stop:
        stops = [v] if isinstance(v, str) else (v or [])
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key in v or ():
            if not (key.isascii() and key.isdigit() and len(key) <= 10 and int(key) <= MAX_TOKEN_ID):
                raise ValueError(f"logit_bias keys must be token ids (decimal strings), got {key[:20]!r}")
        return v

    def logit_bias_ids(self) -> dict[int, float] | None:
        return {int(k): float(v) for k, v in self.logit_bias.items()} if self.logit_bias else None

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None  # vLLM's: extra template variables, e.g. {"thinking": false}
    store: bool | None = None
    metadata: Annotated[dict[ShortStr, ShortStr], Field(max_length=16)] | None = None
    service_tier: ShortStr | None = None
    reasoning_effort: Literal["low", "medium", "high"] | None = None

    @model_validator(mode="after")
    def _check(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs=true")
        check_continuation(self)
        names = [t.function.name for t in self.tools or []]
        if self.tool_choice not in (None, "none", "auto") and not names:
            raise ValueError("tool_choice requires tools")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not among the tools")
        return self

    def num_choices(self) -> int:
        return self.n

    def tool_mode(self) -> str | None:
        """None (no tools, or tool_choice none), "auto", "required" or the forced function's name."""
        if not self.tools or self.tool_choice == "none":
            return None
        if isinstance(self.tool_choice, NamedToolChoice):
            return "function:" + self.tool_choice.function.name
        return self.tool_choice or "auto"

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def num_top_logprobs(self) -> int | None:
        """None: no logprobs; k >= 0: the sampled token's logprob plus k alternatives."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def num_prompt_logprobs(self) -> None:
        return None


Prompt = (str | Annotated[list[str], Field(max_length=MAX_PROMPTS)] | list[TokenId]
          | Annotated[list[list[TokenId]], Field(max_length=MAX_PROMPTS)])


class CompletionRequest(_SamplingFields):
    prompt: Prompt
    max_tokens: int | None = Field(16, ge=1, le=MAX_NEW_TOKENS)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, v: Prompt) -> Prompt:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be an empty list")
        if isinstance(v, list) and isinstance(v[0], list) and any(not p for p in v):
            raise ValueError("a token-id prompt must not be empty")
        return v

    @model_validator(mode="after")
    def _check(self) -> "CompletionRequest":
        if self.suffix:
            raise ValueError("suffix is not supported")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of different from n is not supported")
        if self.num_choices() > MAX_CHOICES:
            raise ValueError(f"{len(self.prompts())} prompts × n={self.n} is {self.num_choices()} choices; "
                             f"at most {MAX_CHOICES} per request")
        return self

    def num_choices(self) -> int:
        """Engine sequences this request starts: prompts × n."""
        return len(self.prompts()) * self.n

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of prompts, each text or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # one token-id prompt
        return list(p)

    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    def num_top_logprobs(self) -> int | None:
        return self.logprobs

    def num_prompt_logprobs(self) -> int | None:
        """echo with logprobs: the prompt's tokens come back with their logprobs too (OpenAI)."""
        return self.logprobs if self.echo else None


# ------------------------------------------------------------------ tokenize / detokenize
# vLLM's /tokenize and /detokenize: the completion form {prompt} or the chat form {messages},
# rendered exactly as /v1/chat/completions renders them. `model` is optional (vLLM's); when
# given it must be the served model.

MAX_DETOKENIZE_TOKENS = 1 << 20  # the body limit bounds it first at the defaults


class TokenizeCompletionRequest(_Request):
    model: ShortStr | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(_Request):
    model: ShortStr | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    add_special_tokens: bool = False
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _check(self) -> "TokenizeChatRequest":
        check_continuation(self)
        return self


class DetokenizeRequest(_Request):
    model: ShortStr | None = None
    tokens: Annotated[list[TokenId], Field(max_length=MAX_DETOKENIZE_TOKENS)]


def check_continuation(req) -> None:
    """continue_final_message leaves the last (assistant) message open, so no generation prompt."""
    if req.continue_final_message and req.add_generation_prompt:
        raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
    if req.continue_final_message and req.messages[-1].role != "assistant":
        raise ValueError("continue_final_message requires the last message to be from the assistant")


# ----------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "fathom"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---------------------------------------------------------------------- stream chunks
# Built as plain dicts (one json.dumps per chunk, no model validation on the hot path);
# tests check them against OpenAI's shapes through the official client.


def chat_chunk(
    cid: str, created: int, model: str, choices: list[dict], usage: dict | None = None
) -> dict:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def completion_chunk(
    cid: str, created: int, model: str, choices: list[dict], usage: dict | None = None
) -> dict:
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
    }
