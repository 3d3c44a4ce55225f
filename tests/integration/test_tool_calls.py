"""Tool calling through the official `openai` client against a real `fathom serve` (the random-weights
demo checkpoint): forced calls (tool_choice required / named) and strict functions under
tool_choice auto are enforced by the grammar, so their arguments always parse and validate (the
random model writes junk wherever nothing constrains it); a two-turn round trip sends the result
back through the checkpoint's chat template."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import openai
import pytest

from support.serve_process import ServeProcess, random_demo_flags

pytestmark = pytest.mark.slow

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                            "unit": {"enum": ["c", "f"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"tz": {"type": "integer", "minimum": -12, "maximum": 14}},
        "required": ["tz"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server():
    s = ServeProcess(*random_demo_flags()).wait_ready()
    yield s
    s.stop()
    assert "Traceback" not in s.output, s.output


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)


def test_readme_agent_snippet_works_as_pasted(server):
    blocks = re.findall(r"```python\n(.*?)```", (Path(__file__).resolve().parents[2] / "README.md").read_text(),
                        re.DOTALL)
    quickstart = next(b for b in blocks if "OpenAI(" in b)
    client = quickstart[: quickstart.index("\n", quickstart.index("client = OpenAI("))]  # its `client`
    agents = [b for b in blocks if "client." in b and "OpenAI(" not in b]  # the Agents section, in order
    code = "\n".join([client, *agents]).replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "tool_calls get_weather {" in out.stdout and "name=" in out.stdout, out.stdout.splitlines()[-6:]
    assert "The sky isAAAA [None, " in out.stdout, out.stdout.splitlines()[-4:]  # echo, logprobs, logit_bias
    assert re.search(r"^\d+ \{'prompt': '.*Weather in Paris\?", out.stdout, re.MULTILINE), out.stdout  # /tokenize


def check_calls(calls, names=None):
    assert calls
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_")
        assert names is None or c.function.name in names
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


def create(client, **kw):
    kw.setdefault("max_tokens", 200)
    return client.chat.completions.create(model="fathom-demo", messages=kw.pop("messages", MESSAGES), tools=TOOLS,
                                          **kw)


@pytest.mark.parametrize("seed", range(3))
def test_named_tool_choice(client, seed):
    r = create(client, tool_choice={"type": "function", "function": {"name": "get_weather"}}, seed=seed)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    check_calls(choice.message.tool_calls, {"get_weather"})


@pytest.mark.parametrize("parallel", [False, True])
def test_required_tool_choice(client, parallel):
    for seed in range(3):
        r = create(client, tool_choice="required", parallel_tool_calls=parallel, seed=seed)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls"
        check_calls(choice.message.tool_calls, set(SCHEMAS))
        if not parallel:
            assert len(choice.message.tool_calls) == 1


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_streamed_tool_calls_assemble_with_the_official_helper(client, tool_choice):
    with client.chat.completions.stream(model="fathom-demo", messages=MESSAGES, tools=TOOLS, tool_choice=tool_choice,
                                        max_tokens=200, seed=5) as stream:
        chunks = [e for e in stream if e.type == "chunk"]
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    check_calls(final.choices[0].message.tool_calls)
    arg_pieces = [tc.function.arguments for e in chunks for ch in e.chunk.choices for tc in ch.delta.tool_calls or []
                  if tc.function and tc.function.arguments]
    assert len(arg_pieces) > 1  # arguments arrive incrementally, as OpenAI streams them


def test_two_turn_round_trip(client):
    first = create(client, tool_choice={"type": "function", "function": {"name": "get_weather"}}, seed=1)
    call = first.choices[0].message.tool_calls[0]
    messages = [*MESSAGES, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
    second = create(client, messages=messages, tool_choice="none", max_tokens=16, seed=2)
    choice = second.choices[0]
    assert choice.message.role == "assistant" and not choice.message.tool_calls
    assert choice.finish_reason in ("stop", "length") and choice.message.content
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result were rendered


def test_tool_choice_errors(client):
    with pytest.raises(openai.UnprocessableEntityError):
        create(client, tool_choice={"type": "function", "function": {"name": "nope"}})
    strict = [{"type": "function", "function": {**TOOLS[0]["function"], "strict": True}}]
    with pytest.raises(openai.BadRequestError, match="response_format"):  # two grammars: refused, not ignored
        client.chat.completions.create(model="fathom-demo", messages=MESSAGES, tools=strict, max_tokens=8,
                                       response_format={"type": "json_object"})
    forced = client.chat.completions.create(model="fathom-demo", messages=MESSAGES, tools=strict, max_tokens=200,
                                            tool_choice="required", seed=3)
    check_calls(forced.choices[0].message.tool_calls, {"get_weather"})


# Strict functions under tool_choice "auto": free text, or calls whose names are tools and whose
# arguments match the schemas. The schemas bound every string (maxLength) and array (maxItems):
# a random model stops a string only by chance, so an unbounded one would run to max_tokens.
FLAGS = {"type": "object", "properties": {"on": {"type": "boolean"}, "tags": {
    "type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}}, "required": ["on", "tags"],
    "additionalProperties": False}
POINT = {"type": "object", "properties": {"at": {"type": "object", "properties": {
    "x": {"type": "integer", "minimum": 0, "maximum": 9}, "label": {"type": "string", "maxLength": 4}},
    "required": ["x", "label"], "additionalProperties": False}}, "required": ["at"], "additionalProperties": False}
STRICT_SCHEMAS = {**SCHEMAS, "set_flags": FLAGS, "move": POINT}
STRICT_TOOLS = [{"type": "function", "function": {"name": n, "parameters": s, "strict": True}}
                for n, s in STRICT_SCHEMAS.items()]


@pytest.fixture(scope="module")
def calls_begin_bias():
    """logit_bias that makes the model open a tool-calls block at once (the grammar still decides
    everything after it)."""
    from fathom.engine.tokenizer import Tokenizer
    from fathom.serve.tool_calls import CALLS_BEGIN
    from fathom.worker.demo import demo_checkpoint_dir

    return {str(Tokenizer.from_pretrained(demo_checkpoint_dir()).token_to_id(CALLS_BEGIN)): 100}


def check_strict(calls):
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_")
        jsonschema.validate(json.loads(c.function.arguments), STRICT_SCHEMAS[c.function.name])


def auto(client, tools=STRICT_TOOLS, **kw):
    kw.setdefault("max_tokens", 400)  # room for a few calls, whitespace included
    return client.chat.completions.create(model="fathom-demo", messages=MESSAGES, tools=tools, **kw)


def test_strict_tools_in_auto_mode_answer_text_or_valid_calls(client, calls_begin_bias):
    kinds = []
    for seed in range(6):
        choice = auto(client, seed=seed).choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            check_strict(choice.message.tool_calls)
        kinds.append("calls" if choice.message.tool_calls else "text")
    assert "text" in kinds, kinds  # free text stays possible
    for seed in range(4):  # the model opens the block itself: names and arguments are the grammar's
        choice = auto(client, seed=seed, logit_bias=calls_begin_bias).choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, choice
        check_strict(choice.message.tool_calls)
        kinds.append("calls")
    print("strict auto, seeds 0-5 unbiased then 0-3 biased:", kinds)


def test_strict_auto_without_parallel_calls_returns_one_call(client, calls_begin_bias):
    for seed in range(3):
        choice = auto(client, seed=seed, logit_bias=calls_begin_bias, parallel_tool_calls=False).choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        check_strict(choice.message.tool_calls)


def test_without_strict_nothing_constrains_auto_mode(client, calls_begin_bias):
    loose = [{"type": "function", "function": {**t["function"], "strict": False}} for t in STRICT_TOOLS]
    choice = auto(client, tools=loose, seed=0, logit_bias=calls_begin_bias, max_tokens=40).choices[0]
    assert not choice.message.tool_calls  # the same bias alone makes no call: the strict answers are the grammar's


def test_strict_auto_streams_valid_calls_through_the_official_helper(client, calls_begin_bias):
    for seed in range(2):
        with client.chat.completions.stream(model="fathom-demo", messages=MESSAGES, tools=STRICT_TOOLS, max_tokens=400,
                                            seed=seed, logit_bias=calls_begin_bias) as stream:
            final = stream.get_final_completion()
        choice = final.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        check_strict(choice.message.tool_calls)


def test_strict_auto_streams_text_or_valid_calls(client):
    """Unbiased, the random model may run to max_tokens in text, which the official helper raises
    on (LengthFinishReasonError), so the deltas are assembled here."""
    kinds = []
    for seed in range(4):
        content, calls, finish = "", {}, None
        for chunk in client.chat.completions.create(model="fathom-demo", messages=MESSAGES, tools=STRICT_TOOLS,
                                                    max_tokens=400, seed=seed, stream=True):
            for ch in chunk.choices:
                content += ch.delta.content or ""
                for tc in ch.delta.tool_calls or []:
                    c = calls.setdefault(tc.index, {"id": tc.id, "name": tc.function.name, "arguments": ""})
                    c["arguments"] += tc.function.arguments or ""
                finish = ch.finish_reason or finish
        for c in calls.values():
            assert c["id"].startswith("call_") and finish == "tool_calls"
            jsonschema.validate(json.loads(c["arguments"]), STRICT_SCHEMAS[c["name"]])
        if not calls:
            assert content and finish in ("stop", "length")
        kinds.append("calls" if calls else "text")
    print("strict auto streamed, seeds 0-3:", kinds)
    assert "text" in kinds


def test_pydantic_function_tool_in_auto_mode_parses(client, calls_begin_bias):
    """What agent frameworks send: `openai.pydantic_function_tool` (strict by default), tool_choice
    left at auto; the helper parses the arguments back into the model class."""
    from typing import Literal

    from pydantic import BaseModel, Field

    class Weather(BaseModel):
        city: str = Field(max_length=10)
        unit: Literal["c", "f"]

    tool = openai.pydantic_function_tool(Weather)
    assert tool["function"]["strict"] is True
    r = client.chat.completions.parse(model="fathom-demo", messages=MESSAGES, tools=[tool], max_tokens=400, seed=0,
                                      logit_bias=calls_begin_bias)
    calls = r.choices[0].message.tool_calls
    assert calls and all(isinstance(c.function.parsed_arguments, Weather) for c in calls)
