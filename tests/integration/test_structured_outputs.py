"""Structured outputs through the official `openai` client against a real `fathom serve` on the
random-weights demo checkpoint (not the trained built-in model), which answers in random bytes:
every output parsing and validating is what proves the grammar is enforced (not the model being
good)."""

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from support.json_schemas import SCHEMAS
from support.serve_process import ServeProcess, random_demo_flags

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def client():
    s = ServeProcess(*random_demo_flags()).wait_ready()
    yield openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0)
    s.stop()
    assert "Traceback" not in s.output, s.output


def ask(client, response_format, seed, max_tokens=200, **kw):
    return client.chat.completions.create(model="fathom-demo", messages=[{"role": "user", "content": "Answer in JSON"}],
                                          response_format=response_format, max_tokens=max_tokens, seed=seed, **kw)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_strict_outputs_all_validate(client, name):
    fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}
    for seed in range(3):
        r = ask(client, fmt, seed, temperature=1.0)
        choice = r.choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), SCHEMAS[name])


def test_json_schema_streams(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "nested", "schema": SCHEMAS["nested"], "strict": True}}
    chunks = list(ask(client, fmt, 7, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), SCHEMAS["nested"])


def test_json_object_outputs_are_json_objects(client):
    reasons = []
    for seed in range(5):
        r = ask(client, {"type": "json_object"}, seed, max_tokens=400)
        reasons.append(r.choices[0].finish_reason)
        if reasons[-1] == "length":  # OpenAI's behaviour: cut mid-JSON at max_tokens
            assert r.choices[0].message.content.startswith("{")
            continue
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    assert "stop" in reasons, reasons


class Item(BaseModel):
    name: str = Field(max_length=8)
    qty: int = Field(ge=0, le=99)


class Order(BaseModel):
    items: list[Item] = Field(max_length=3)
    rush: bool


def test_official_parse_helper_returns_the_pydantic_object(client):
    r = client.chat.completions.parse(model="fathom-demo", messages=[{"role": "user", "content": "order"}],
                                      response_format=Order, max_tokens=300, seed=3)
    assert isinstance(r.choices[0].message.parsed, Order)


def test_uncompilable_schema_is_a_400_naming_the_feature(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "bad", "schema": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, fmt, 0)
    assert "json_schema" in e.value.message and "structured outputs" in e.value.message


def test_reasoning_effort_is_refused(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="fathom-demo", messages=[{"role": "user", "content": "x"}],
                                       reasoning_effort="low", max_tokens=4)
    assert "reasoning_effort" in e.value.message
