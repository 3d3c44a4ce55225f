"""Tool-call parsers on DeepSeek's exact token formats (V3/R1 and V3.1) and on the grammar-shaped
outputs of tool_choice required / named, fed whole and split at every character boundary."""

import json

import pytest

from fathom.serve.tool_calls import (
    CALL_BEGIN,
    CALL_END,
    CALLS_BEGIN,
    CALLS_END,
    SEP,
    DeepSeekToolParser,
    NamedCall,
    RequiredCalls,
    detect_parser,
    required_schema,
)

ARGS1, ARGS2 = '{"location": "Paris, \\"FR\\"", "days": [1, 2]}', '{"q": "```x```"}'
V3 = (f"Let me check.{CALLS_BEGIN}{CALL_BEGIN}function{SEP}get_weather\n```json\n{ARGS1}\n```{CALL_END}\n"
      f"{CALL_BEGIN}function{SEP}search\n```json\n{ARGS2}\n```{CALL_END}{CALLS_END}")
V31 = f"Let me check.{CALLS_BEGIN}{CALL_BEGIN}get_weather{SEP}{ARGS1}{CALL_END}{CALL_BEGIN}search{SEP}{ARGS2}{CALL_END}{CALLS_END}"
EXPECTED = [("get_weather", ARGS1), ("search", ARGS2)]


def run(parser, pieces: list[str]) -> tuple[str, list[dict]]:
    content, deltas = "", []
    for i, piece in enumerate(pieces):
        c, d = parser.feed(piece, final=i == len(pieces) - 1)
        content += c
        deltas += d
    return content, deltas


def assemble(deltas: list[dict]) -> list[tuple[str, str]]:
    """What the official client's stream helpers do with delta.tool_calls."""
    calls: dict[int, list] = {}
    for d in deltas:
        if "id" in d:
            assert d["index"] not in calls and d["type"] == "function"
            calls[d["index"]] = [d["function"]["name"], d["function"]["arguments"]]
        else:
            calls[d["index"]][1] += d["function"]["arguments"]
    return [tuple(calls[i]) for i in sorted(calls)]


def splits(text: str):
    yield [text]
    for i in range(1, len(text)):
        yield [text[:i], text[i:]]
    yield list(text)


@pytest.mark.parametrize("text, v31", [(V3, False), (V31, True)])
def test_deepseek_formats_parse_the_same_over_every_split(text, v31):
    for pieces in splits(text):
        content, deltas = run(DeepSeekToolParser(v31=v31), pieces)
        assert content == "Let me check." and assemble(deltas) == EXPECTED, pieces
        assert all(json.loads(a) for _, a in assemble(deltas))


def test_deepseek_parser_whole_result_and_plain_text():
    p = DeepSeekToolParser()
    p.feed(V3, final=True)
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in p.calls()] == EXPECTED
    plain = DeepSeekToolParser()
    assert run(plain, ["no tools <｜tool", " here"]) == ("no tools <｜tool here", [])
    assert plain.calls() == []


def test_required_and_named_outputs_over_every_split():
    text = f'[{{"name": "get_weather", "parameters": {ARGS1}}}, {{"name": "search", "parameters": {ARGS2}}}]'
    for pieces in splits(text):
        content, deltas = run(RequiredCalls(), pieces)
        assert content == "" and assemble(deltas) == EXPECTED, pieces
    for pieces in splits(ARGS1):
        assert assemble(run(NamedCall("get_weather"), pieces)[1]) == [("get_weather", ARGS1)]


def test_required_schema_and_parser_detection():
    tools = [{"name": "a", "parameters": {"type": "object"}}, {"name": "b"}]
    s = required_schema(tools, parallel=False)
    assert s["maxItems"] == 1 and len(s["items"]["anyOf"]) == 2
    assert "maxItems" not in required_schema(tools, parallel=True)
    assert detect_parser("{{'<｜tool▁calls▁begin｜>' + name + '\\n' + '```json' + '\\n'}}") == "deepseek_v3"
    assert detect_parser("{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + name + '<｜tool▁sep｜>'}}") == "deepseek_v31"
    assert detect_parser("{{ messages }}") == "none"


def test_reasoning_and_tool_calls_coexist_in_one_r1_choice():
    """R1: thinking, then a tool call, streamed token by token through one Choice."""
    from fathom.engine.outputs import CompletionOutput
    from fathom.serve.reasoning import ReasoningParser
    from fathom.serve.responses import Choice, TokenStrings

    text = "I should look it up.</think>\n\n" + V3
    streamed = Choice(0, True, TokenStrings(None), ReasoningParser(True), tools=DeepSeekToolParser())
    whole = Choice(0, True, TokenStrings(None), ReasoningParser(True), tools=DeepSeekToolParser())
    chunks = []
    for i in range(0, len(text), 3):
        last = i + 3 >= len(text)
        streamed.add(CompletionOutput(0, [], text[i:i + 3], finish_reason="stop" if last else None))
        chunks.append(streamed.take())
    whole.add(CompletionOutput(0, [], text, finish_reason="stop"))
    reasoning = "".join(c["delta"].get("reasoning_content", "") for c in chunks)
    content = "".join(c["delta"].get("content", "") for c in chunks)
    deltas = [d for c in chunks for d in c["delta"].get("tool_calls", [])]
    assert reasoning == "I should look it up." and content == "Let me check." and assemble(deltas) == EXPECTED
    assert chunks[-1]["finish_reason"] == "tool_calls"
    result = whole.result()
    assert result["finish_reason"] == "tool_calls" and result["message"]["reasoning_content"] == "I should look it up."
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in result["message"]["tool_calls"]] == EXPECTED


@pytest.mark.parametrize("text, v31", [(V3, False), (V31, True)])
def test_parallel_tool_calls_false_returns_the_first_call_only_over_every_split(text, v31):
    for pieces in splits(text):
        parser = DeepSeekToolParser(v31=v31, max_calls=1)
        content, deltas = run(parser, pieces)
        assert content == "Let me check." and assemble(deltas) == EXPECTED[:1], pieces
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in parser.calls()] == EXPECTED[:1]
