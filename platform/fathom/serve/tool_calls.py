"""Tool calls: the grammar that forces them, and streaming parsers from model text to OpenAI's
`tool_calls` (whole, or as `delta.tool_calls` with incremental `arguments`).

- `tool_choice` = a named function: the output is that function's arguments, constrained to its
  JSON-Schema `parameters` (vLLM's convention).
- `tool_choice` = "required": the output is a JSON array of `{"name", "parameters"}` objects, one
  of the tools each (at most one when `parallel_tool_calls` is false), constrained likewise.
- "auto": the model writes DeepSeek's own tool-call tokens, parsed here:
  V3 / R1: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\nARGS\\n```<｜tool▁call▁end｜>…<｜tool▁calls▁end｜>`
  V3.1:    `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>…<｜tool▁calls▁end｜>`
  With `parallel_tool_calls` false only the first call is returned. When a function is marked
  `strict`, `auto_structural_tag` constrains this format: free text, or one block of calls of the
  tools by name, the arguments of each strict one matching its schema.

Every parser re-reads its whole text on each delta and emits only what is new and can no
longer change (a suffix that may still become a marker is held back), so the concatenated
deltas are the same over any split of the text.
"""

import json
import uuid
from dataclasses import dataclass, field

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
V3_ARGS_OPEN, V3_ARGS_CLOSE = "\n```json\n", "\n```"


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def required_schema(tools: list[dict], parallel: bool) -> dict:
    """JSON Schema of tool_choice "required": an array of one or more calls of the tools."""
    items = [{"type": "object", "properties": {"name": {"const": t["name"]},
                                               "parameters": t.get("parameters") or {"type": "object"}},
              "required": ["name", "parameters"], "additionalProperties": False} for t in tools]
    schema: dict = {"type": "array", "minItems": 1, "items": items[0] if len(items) == 1 else {"anyOf": items}}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def auto_structural_tag(tools: list[dict], v31: bool, parallel: bool) -> dict:
    """xgrammar structural tag of tool_choice "auto" with strict functions: text until the model
    writes `<｜tool▁calls▁begin｜>`, then one or more calls (one when `parallel` is false) of the
    tools by name, then `<｜tool▁calls▁end｜>` and the end of the output (DeepSeek's templates end
    the turn there). A strict tool's arguments match its `parameters`; a non-strict one's are any
    JSON; either with at most one whitespace character in a row (compact, as the other grammars
    write it). The markers other than the trigger cannot appear in the text."""
    calls = [{"type": "tag", "begin": _call_begin(t["name"], v31),
              "content": {"type": "json_schema", "max_whitespace_cnt": 1,
                          "json_schema": (t.get("parameters") or {"type": "object"}) if t.get("strict") else True},
              "end": CALL_END if v31 else V3_ARGS_CLOSE + CALL_END} for t in tools]
    block = {"type": "tag", "begin": CALLS_BEGIN, "end": CALLS_END,
             "content": {"type": "tags_with_separator", "tags": calls, "separator": "" if v31 else "\n",
                         "at_least_one": True, "stop_after_first": not parallel}}
    return {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": [CALLS_BEGIN], "tags": [block],
                                                 "stop_after_first": True,
                                                 "excludes": [CALLS_END, CALL_BEGIN, CALL_END, SEP]}}


def _call_begin(name: str, v31: bool) -> str:
    return f"{CALL_BEGIN}{name}{SEP}" if v31 else f"{CALL_BEGIN}function{SEP}{name}{V3_ARGS_OPEN}"


def _held(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


@dataclass
class _Call:
    name: str | None = None
    args: str = ""


@dataclass
class ToolCallStream:
    """Base: feed text deltas, get (content delta, tool-call deltas); `calls()` when done."""

    text: str = ""
    sent_content: int = 0
    sent: list[tuple[str, int]] = field(default_factory=list)  # per call: (id, argument chars sent)

    def feed(self, delta: str, final: bool = False) -> tuple[str, list[dict]]:
        self.text += delta
        content, calls = self.parse(self.text, final)
        out_content, self.sent_content = content[self.sent_content:], len(content)
        deltas = []
        for i, c in enumerate(calls):
            if c.name is None:
                break
            if i == len(self.sent):
                self.sent.append((call_id(), 0))
                deltas.append({"index": i, "id": self.sent[i][0], "type": "function",
                               "function": {"name": c.name, "arguments": ""}})
            cid, n = self.sent[i]
            if len(c.args) > n:
                deltas.append({"index": i, "function": {"arguments": c.args[n:]}})
                self.sent[i] = (cid, len(c.args))
        return out_content, deltas

    def calls(self) -> list[dict]:
        _, calls = self.parse(self.text, True)
        return [{"id": self.sent[i][0] if i < len(self.sent) else call_id(), "type": "function",
                 "function": {"name": c.name, "arguments": c.args}} for i, c in enumerate(calls) if c.name]

    def parse(self, text: str, final: bool) -> tuple[str, list[_Call]]:
        raise NotImplementedError


class NamedCall(ToolCallStream):
    """tool_choice names the function: the whole output is its arguments."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def parse(self, text: str, final: bool) -> tuple[str, list[_Call]]:
        return "", [_Call(self.name, text)]


class RequiredCalls(ToolCallStream):
    """tool_choice "required": `[{"name": "f", "parameters": {...}}, ...]` (grammar-shaped)."""

    def parse(self, text: str, final: bool) -> tuple[str, list[_Call]]:
        calls: list[_Call] = []
        i = text.find("[")
        if i < 0:
            return "", calls
        i += 1
        while True:
            head = text.find('"name"', i)
            if head < 0:
                return "", calls
            colon = text.find(":", head)
            try:
                name, end = json.JSONDecoder().raw_decode(text, colon + 1 + _spaces(text, colon + 1))
            except ValueError:  # JSONDecodeError: the name is not complete yet
                return "", calls
            if colon < 0:
                return "", calls
            p = text.find('"parameters"', end)
            if p < 0:
                calls.append(_Call(name))
                return "", calls
            start = text.find(":", p)
            if start < 0:
                calls.append(_Call(name))
                return "", calls
            start += 1 + _spaces(text, start + 1)
            stop = _json_value_end(text, start)
            calls.append(_Call(name, text[start:stop if stop is not None else len(text)]))
            if stop is None:
                return "", calls
            i = stop


def _spaces(text: str, i: int) -> int:
    n = 0
    while i + n < len(text) and text[i + n] in " \n\t\r":
        n += 1
    return n


def _json_value_end(text: str, i: int) -> int | None:
    """End index of the JSON object/array starting at text[i], or None if it is not complete yet."""
    depth, in_str, esc = 0, False, False
    for j in range(i, len(text)):
        ch = text[j]
        if in_str:
            esc, in_str = (False, True) if esc else (ch == "\\", ch != '"')
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return j + 1
    return None


class DeepSeekToolParser(ToolCallStream):
    """auto: DeepSeek's tool-call tokens in the output (V3/R1 format, or V3.1 with `v31`)."""

    def __init__(self, v31: bool = False, max_calls: int | None = None):
        super().__init__()
        self.v31 = v31
        self.max_calls = max_calls  # parallel_tool_calls false: 1 (calls the model writes after it are dropped)

    def parse(self, text: str, final: bool) -> tuple[str, list[_Call]]:
        content, calls = self._parse(text, final)
        return content, calls[:self.max_calls]

    def _parse(self, text: str, final: bool) -> tuple[str, list[_Call]]:
        b = text.find(CALLS_BEGIN)
        if b < 0:
            keep = 0 if final else _held(text, CALLS_BEGIN)
            return text[: len(text) - keep], []
        calls = []
        for part in text[b + len(CALLS_BEGIN):].split(CALL_BEGIN)[1:]:
            done = CALL_END in part
            part = part.split(CALL_END)[0]
            if SEP not in part:
                break
            kind, rest = part.split(SEP, 1)
            close = CALL_END
            if self.v31:
                name, args = kind, rest
            else:  # "NAME\n```json\nARGS\n```"
                if "\n" not in rest:
                    break
                name, args = rest.split("\n", 1)
                fence = V3_ARGS_OPEN[1:]
                if len(args) < len(fence) and fence.startswith(args) and not done:
                    calls.append(_Call(name.strip()))
                    break
                args = args.removeprefix(fence)
                close = V3_ARGS_CLOSE + CALL_END
                if done:
                    args = args.removesuffix(V3_ARGS_CLOSE)
            if not done and not final:
                args = args[: len(args) - _held(args, close)]
            calls.append(_Call(name.strip(), args))
            if not done:
                break
        return text[:b], calls


def make_tool_stream(mode: str | None, parser: str, parallel: bool = True) -> ToolCallStream | None:
    """The stream of one choice: mode from ChatCompletionRequest.tool_mode(); parser "deepseek_v3",
    "deepseek_v31" or "none" (auto mode then returns text only); `parallel` false: one call at most."""
    if mode is None:
        return None
    if mode.startswith("function:"):
        return NamedCall(mode.removeprefix("function:"))
    if mode == "required":
        return RequiredCalls()
    if parser == "none":
        return None
    return DeepSeekToolParser(v31=parser == "deepseek_v31", max_calls=None if parallel else 1)


def detect_parser(chat_template: str | None) -> str:
    """The tool-call format a checkpoint's chat template writes."""
    t = chat_template or ""
    if CALLS_BEGIN not in t:
        return "none"
    return "deepseek_v3" if "```json" in t else "deepseek_v31"  # V3/R1 fence the arguments
