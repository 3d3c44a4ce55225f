"""OpenAI request -> engine calls: chat template, tokenisation, length limits, SamplingParams.

Runs in the model replica (it owns the tokenizer). Every refusal is an `APIError` naming the
field; the engine's own checks (`InvalidRequestError`) are mapped the same way.
"""

import json
from dataclasses import dataclass

import jinja2

from fathom.api.openai_error import APIError
from fathom.engine.errors import InvalidRequestError, PromptTooLongError
from fathom.engine.sampling_params import SamplingParams, StructuredSpec
from fathom.engine.tokenizer import Tokenizer
from fathom.serve.protocol import ChatCompletionRequest, CompletionRequest
from fathom.serve.reasoning import THINK_CLOSE, ReasoningParser
from fathom.serve.tool_calls import auto_structural_tag, required_schema
from fathom.worker.structured import SchemaError, check_spec


@dataclass(frozen=True, slots=True)
class EngineCall:
    """One engine request: a prompt and its n samples, which are choices
    `choice_offset .. choice_offset + n - 1` of the API response."""

    prompt_ids: list[int]
    prompt_text: str
    params: SamplingParams
    choice_offset: int


def check_length(prompt_len: int, max_new: int | None, max_model_len: int) -> None:
    """400 (OpenAI's `context_length_exceeded`) when the prompt, or prompt + max_tokens, does not fit."""
    head = f"This model's maximum context length is {max_model_len} tokens"
    if prompt_len >= max_model_len:
        raise APIError(400, f"{head}, but the prompt has {prompt_len} tokens.", param="prompt",
                       code="context_length_exceeded")
    if max_new is not None and prompt_len + max_new > max_model_len:
        raise APIError(
            400, f"{head}, but {prompt_len} prompt tokens + max_tokens {max_new} = {prompt_len + max_new}.",
            param="max_tokens", code="context_length_exceeded",
        )


def check_text_length(text: str, tokenizer: Tokenizer, max_model_len: int, param: str) -> None:
    """400 before tokenising a text too long to fit whatever its tokens: more characters than
    max_model_len × the most bytes one token stands for (Tokenizer.max_token_bytes; characters
    <= bytes). Tokenising a multi-MiB text costs seconds of the replica's CPU."""
    per_token = tokenizer.max_token_bytes
    if per_token is not None and len(text) > max_model_len * per_token:
        raise APIError(
            400, f"This model's maximum context length is {max_model_len} tokens, but the {param} has "
            f"{len(text)} characters, more than {max_model_len} tokens can hold.",
            param=param, code="context_length_exceeded",
        )


def sampling_params(req: ChatCompletionRequest | CompletionRequest, *, skip_special_tokens: bool,
                    structured: StructuredSpec | None = None) -> SamplingParams:
    try:
        return SamplingParams(
            n=req.n,
            max_tokens=req.max_new_tokens(),
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=-1 if req.top_k in (None, 0) else req.top_k,
            min_p=req.min_p or 0.0,
            seed=req.seed,
            stop=req.stop_list(),
            stop_token_ids=req.stop_token_ids or [],
            ignore_eos=req.ignore_eos,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            repetition_penalty=req.repetition_penalty or 1.0,
            logprobs=req.num_top_logprobs(),
            prompt_logprobs=req.num_prompt_logprobs(),
            logit_bias=req.logit_bias_ids(),
            skip_special_tokens=skip_special_tokens,
            structured=structured,
        )
    except InvalidRequestError as e:
        raise engine_error(e) from None


def engine_error(e: InvalidRequestError) -> APIError:
    code = "context_length_exceeded" if isinstance(e, PromptTooLongError) else "invalid_parameter"
    return APIError(400, str(e), code=code)


def render_chat(req: ChatCompletionRequest, tokenizer: Tokenizer) -> str:
    """The prompt text of a chat request (checkpoint's chat template).

    `continue_final_message`: the last (assistant) message is left open so the model continues
    it (DeepSeek's "prefix completion"), by cutting the render right after its content.
    """
    messages = [_message(m) for m in req.messages]
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None  # also with tool_choice none
    try:
        extra = {k: v for k, v in (req.chat_template_kwargs or {}).items()
                 if k not in ("messages", "tools", "add_generation_prompt", "bos_token", "eos_token")}
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=req.add_generation_prompt, tools=tools,
                                             **extra)
    except (jinja2.TemplateError, ValueError, TypeError) as e:  # raise_exception(), no template, bad data
        raise APIError(400, f"cannot apply the chat template: {e}", param="messages", code="chat_template") from None
    if req.continue_final_message:
        last = messages[-1]["content"]
        cut = text.rfind(last)
        if cut < 0:
            raise APIError(400, "cannot locate the final message in the rendered prompt", param="messages")
        text = text[: cut + len(last)]
    return text


def _message(m) -> dict:
    """A message as chat templates read it (DeepSeek's render tool_calls and tool results); `name`
    and `reasoning_content` are passed on for the template to render or not, as vLLM does."""
    d = {"role": m.role, "content": m.text()}
    for key in ("name", "reasoning_content"):
        if getattr(m, key) is not None:
            d[key] = getattr(m, key)
    if m.tool_calls:
        d["tool_calls"] = [c.model_dump() for c in m.tool_calls]
    if m.tool_call_id is not None:
        d["tool_call_id"] = m.tool_call_id
    return d


def tool_spec(req: ChatCompletionRequest, tool_parser: str = "none") -> StructuredSpec | None:
    """The grammar that enforces tool_choice required / a named function, or strict functions
    under "auto" in the checkpoint's tool-call format `tool_parser` (None otherwise)."""
    mode = req.tool_mode()
    if mode is None or (mode == "auto" and not any(t.function.strict for t in req.tools)):
        return None
    if req.response_format is not None and req.response_format.type != "text":
        raise APIError(400, "response_format cannot be combined with tool_choice required, a named function, or "
                       "strict functions", param="response_format")
    tools = [t.function.model_dump(exclude_none=True) for t in req.tools]
    parallel = req.parallel_tool_calls is not False
    if mode == "auto":
        return _auto_spec(tools, tool_parser, parallel)
    if mode == "required":
        schema = required_schema(tools, parallel=parallel)
        strict = all(t.get("strict") for t in tools)
    else:
        tool = next(t for t in tools if t["name"] == mode.removeprefix("function:"))
        schema, strict = tool.get("parameters") or {"type": "object"}, bool(tool.get("strict"))
    text = json.dumps(schema)
    _check_tool_schema("json_schema", text, strict)
    return StructuredSpec("json_schema", text, strict=strict)


def _auto_spec(tools: list[dict], tool_parser: str, parallel: bool) -> StructuredSpec:
    """Free text or calls in the checkpoint's own format, strict arguments matching their schemas."""
    if tool_parser == "none":
        raise APIError(400, "tools: `strict` functions with tool_choice \"auto\" need the model's tool-call format, "
                       "and this model's chat template writes none (force the call with tool_choice \"required\" "
                       "or a named function)", param="tools", code="unsupported_parameter")
    for t in tools:
        if t.get("strict"):
            _check_tool_schema("json_schema", json.dumps(t.get("parameters") or {"type": "object"}), True)
    text = json.dumps(auto_structural_tag(tools, v31=tool_parser == "deepseek_v31", parallel=parallel))
    _check_tool_schema("structural_tag", text, True)
    return StructuredSpec("structural_tag", text)


def _check_tool_schema(kind: str, text: str, strict: bool) -> None:
    try:
        check_spec(kind, text, strict)
    except SchemaError as e:
        raise APIError(400, f"tools: tool calling cannot enforce this parameters schema: {e}", param="tools",
                       code="unsupported_schema") from None


def prepare(
    kind: str, req: ChatCompletionRequest | CompletionRequest, tokenizer: Tokenizer | None, max_model_len: int,
    skip_special_tokens: bool = True, reasoning_parser: str = "none", tool_parser: str = "none",
) -> list[EngineCall]:
    """The engine calls that answer `req` (one per prompt), or an APIError. Without a tokenizer
    (a checkpoint with no tokenizer.json) only token-id prompts can be served. `tool_parser`: the
    checkpoint's tool-call format (tool_calls.detect_parser), which strict tools in auto mode follow."""
    if tokenizer is None:
        return _prepare_token_ids(kind, req, max_model_len)
    structured = None
    if kind == "chat":
        refuse_unhonoured(req)
        prompts: list[str | list[int]] = [render_chat(req, tokenizer)]
        tools = tool_spec(req, tool_parser)
        structured = tools or structured_spec(req, tokenizer, prompts[0], reasoning_parser)
        if tools is not None and reasoning_parser != "none" and ReasoningParser.prompt_opens_think(prompts[0]):
            structured = StructuredSpec(structured.kind, structured.schema, structured.strict,
                                        tokenizer.token_to_id(THINK_CLOSE))
    else:
        prompts = req.prompts()
    params = sampling_params(req, skip_special_tokens=skip_special_tokens, structured=structured)
    vocab = tokenizer.vocab_size
    bad = next((t for t in params.logit_bias or () if t >= vocab), None)
    if bad is not None:
        raise APIError(400, f"logit_bias: token id {bad} is outside the vocabulary [0, {vocab})", param="logit_bias")
    calls = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            check_text_length(prompt, tokenizer, max_model_len, "messages" if kind == "chat" else "prompt")
            ids = tokenizer.encode(prompt, add_special_tokens=kind != "chat")
            text = prompt
        else:
            bad = next((t for t in prompt if not 0 <= t < vocab), None)
            if bad is not None:
                raise APIError(400, f"token id {bad} is outside the vocabulary [0, {vocab})", param="prompt")
            ids, text = list(prompt), tokenizer.decode(prompt, skip_special_tokens=False)
        if not ids:
            raise APIError(400, "the prompt is empty after tokenisation", param="prompt")
        check_length(len(ids), req.max_new_tokens(), max_model_len)
        calls.append(EngineCall(ids, text, params, choice_offset=i * req.n))
    return calls


def refuse_unhonoured(req: ChatCompletionRequest) -> None:
    """400 for chat fields this model cannot honour (accepting and ignoring them would lie)."""
    if req.reasoning_effort is not None:
        raise APIError(400, "reasoning_effort is not supported: DeepSeek checkpoints have no effort levels "
                       "(use chat_template_kwargs to switch thinking where the template supports it)",
                       param="reasoning_effort", code="unsupported_parameter")


def structured_spec(req: ChatCompletionRequest, tokenizer: Tokenizer, prompt_text: str,
                    reasoning_parser: str) -> StructuredSpec | None:
    """The grammar of `response_format` (None for text), or a 400 naming what cannot be enforced.
    For a model that thinks (the prompt opens `<think>`), the grammar starts after `</think>`."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if req.ignore_eos:
        raise APIError(400, "ignore_eos cannot be combined with response_format", param="ignore_eos")
    schema, strict = None, True
    if fmt.type == "json_schema":
        schema, strict = json.dumps(fmt.json_schema.schema_), fmt.json_schema.strict is not False
        try:
            check_spec("json_schema", schema, strict)
        except SchemaError as e:
            raise APIError(400, f"response_format json_schema: structured outputs cannot enforce this schema: {e}",
                           param="response_format", code="unsupported_schema") from None
    after = None
    if reasoning_parser != "none" and ReasoningParser.prompt_opens_think(prompt_text):
        after = tokenizer.token_to_id(THINK_CLOSE)
        if after is None:
            raise APIError(400, "response_format needs </think> to be one token of this model's vocabulary",
                           param="response_format")
    return StructuredSpec(fmt.type, schema, strict, after)


def _prepare_token_ids(kind: str, req: CompletionRequest, max_model_len: int) -> list[EngineCall]:
    prompts = req.prompts() if kind == "completion" else []
    if kind == "chat" or any(isinstance(p, str) for p in prompts):
        raise APIError(400, "this model has no tokenizer (tokenizer.json): send token-id prompts to /v1/completions",
                       param="messages" if kind == "chat" else "prompt", code="no_tokenizer")
    params = sampling_params(req, skip_special_tokens=True)
    calls = []
    for i, ids in enumerate(prompts):
        check_length(len(ids), req.max_new_tokens(), max_model_len)
        calls.append(EngineCall(list(ids), "", params, choice_offset=i * req.n))
    return calls
