"""Tool calling through the official `openai` client against a real `fathom serve` (the random-weights
demo checkpoint): forced calls (tool_choice required / named) are enforced by the grammar, so
their arguments always parse and validate; a two-turn round trip sends the result back through
the checkpoint's chat template."""

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
    agents = next(b for b in blocks if "tool_choice" in b)
    code = (client + "\n" + agents).replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "tool_calls get_weather {" in out.stdout and "name=" in out.stdout, out.stdout.splitlines()[-6:]


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
