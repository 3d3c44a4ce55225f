"""Grammar masks on the demo vocabulary: what a json_schema allows, R1's </think> gate, EOS
once the JSON is complete, and no special or control-character token inside JSON."""

import json

import pytest
import torch

from fathom.engine.sampling_params import StructuredSpec
from fathom.engine.tokenizer import Tokenizer
from fathom.worker.demo import DEMO_CONFIG, demo_checkpoint_dir
from fathom.worker.structured import Grammars, SchemaError, check_spec

V = DEMO_CONFIG["vocab_size"]
EOS = DEMO_CONFIG["eos_token_id"]
SCHEMA = json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                     "additionalProperties": False})


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_pretrained(demo_checkpoint_dir())


def drive(g: Grammars, tok: Tokenizer, text: str, seq_id: int = 1) -> None:
    for t in tok.encode(text, add_special_tokens=False):
        allowed = g.allowed([seq_id], V)
        assert allowed is None or allowed[0, t], (text, tok.decode([t]))
        g.accept([seq_id], [t])


def test_schema_mask_forces_the_schema_then_eos(tok):
    g = Grammars(demo_checkpoint_dir(), torch.device("cpu"))
    g.add(1, StructuredSpec("json_schema", SCHEMA), V)
    first = g.allowed([1, 2], V)
    assert first[1].all()  # an unconstrained row is untouched
    allowed_text = {tok.decode([t]) for t in first[0].nonzero().flatten().tolist()}
    assert allowed_text and all("{".startswith(s) or s.startswith("{") for s in allowed_text)
    assert not first[0, tok.token_to_id("<think>")] and not first[0, EOS]
    drive(g, tok, '{"ok": true}')  # xgrammar's compact separators: ', ' and ': '
    last = g.allowed([1], V)
    assert last is None or last[0].nonzero().flatten().tolist() == [EOS]


def test_reasoning_model_is_free_until_think_ends(tok):
    g = Grammars(demo_checkpoint_dir(), torch.device("cpu"))
    close = tok.token_to_id("</think>")
    g.add(1, StructuredSpec("json_object", after_token_id=close), V)
    assert g.allowed([1], V) is None
    g.accept([1], tok.encode("some thought", add_special_tokens=False)[:1])
    assert g.allowed([1], V) is None
    g.accept([1], [close])
    allowed = g.allowed([1], V)
    assert allowed is not None and not allowed[0].all()


def test_control_characters_are_never_allowed_inside_strings(tok):
    g = Grammars(demo_checkpoint_dir(), torch.device("cpu"))
    g.add(1, StructuredSpec("json_schema", json.dumps({"type": "string"})), V)
    drive(g, tok, '"ab')
    allowed = g.allowed([1], V)[0].nonzero().flatten().tolist()
    assert all(all(ord(c) >= 0x20 for c in tok.decode([t])) for t in allowed)


def test_uncompilable_schema_raises_schema_error():
    with pytest.raises(SchemaError):
        check_spec("json_schema", json.dumps({"properties": {"a": {"$ref": "#/missing"}}}))
    check_spec("json_schema", SCHEMA)


@pytest.mark.parametrize("schema", [
    {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
    {"oneOf": [{"type": "integer"}, {"type": "number"}]},
    {"allOf": [{"type": "integer"}, {"minimum": 5}]},
    {"type": "object", "properties": {"a": {"not": {"type": "integer"}}}},
    {"if": {"type": "integer"}, "then": {"minimum": 5}},
])
def test_keywords_the_grammar_would_not_enforce_are_refused(schema):
    with pytest.raises(SchemaError, match="unsupported JSON-Schema keyword"):
        check_spec("json_schema", json.dumps(schema))


def test_keyword_names_used_as_property_names_are_fine():
    check_spec("json_schema", json.dumps({"type": "object", "properties": {"not": {"type": "integer"}},
                                          "required": ["not"], "additionalProperties": False}))
