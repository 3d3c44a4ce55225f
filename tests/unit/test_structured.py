"""Grammar masks on the demo vocabulary: what a json_schema allows, R1's </think> gate, EOS
once the JSON is complete, no special or control-character token inside JSON, and the structural
tag of strict tools under tool_choice "auto" (free text, or valid calls in DeepSeek's format)."""

import json

import pytest
import torch
import xgrammar as xgr

from fathom.engine.sampling_params import StructuredSpec
from fathom.engine.tokenizer import Tokenizer
from fathom.serve.tool_calls import CALL_BEGIN, CALL_END, CALLS_BEGIN, CALLS_END, SEP, auto_structural_tag
from fathom.worker.demo import DEMO_CONFIG, demo_checkpoint_dir
from fathom.worker.structured import GrammarBackend, Grammars, SchemaError, check_spec

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


TIME = {"type": "object", "properties": {"tz": {"type": "integer", "minimum": -12, "maximum": 14}},
        "required": ["tz"], "additionalProperties": False}
AUTO_TOOLS = [{"name": "get_time", "parameters": TIME, "strict": True},
              {"name": "loose", "parameters": TIME}]  # not strict: any JSON arguments


def auto_matcher(v31: bool, parallel: bool = True) -> xgr.GrammarMatcher:
    tag = json.dumps(auto_structural_tag(AUTO_TOOLS, v31=v31, parallel=parallel))
    check_spec("structural_tag", tag)
    return xgr.GrammarMatcher(GrammarBackend(demo_checkpoint_dir(), V).compile(StructuredSpec("structural_tag", tag)))


def call(name: str, args: str, v31: bool) -> str:
    return f"{CALL_BEGIN}{name}{SEP}{args}{CALL_END}" if v31 else \
        f"{CALL_BEGIN}function{SEP}{name}\n```json\n{args}\n```{CALL_END}"


@pytest.mark.parametrize("v31", [False, True])
def test_auto_structural_tag_accepts_text_and_valid_calls_and_rejects_invalid_ones(v31):
    def accepts(text: str, complete: bool = True) -> bool:
        m = auto_matcher(v31)
        return m.accept_string(text) and (not complete or m.accept_token(EOS))

    def block(*args: str) -> str:
        return CALLS_BEGIN + call("get_time", args[0], v31) + "".join(
            ("" if v31 else "\n") + call("loose", a, v31) for a in args[1:])

    assert accepts("Just text, no call.")
    assert accepts("Let me check." + block('{"tz": -3}') + CALLS_END)
    assert accepts(block('{"tz": 14}', '{"any": [1, "x"]}', "7") + CALLS_END)
    assert not accepts(block('{"tz": 15}'), complete=False)  # above the maximum
    assert not accepts(block('{"tz": 1, "x": 2}'), complete=False)  # strict: no extra properties
    assert not accepts(block('{"tz": 1}', "{bad"), complete=False)  # not JSON
    assert not accepts(CALLS_BEGIN + call("get_weather", "{}", v31), complete=False)  # not a tool
    assert not accepts(block('{"tz": 1}') + CALLS_END + "more text", complete=False)  # the turn ends there
    assert not accepts(f"text {CALL_END} more", complete=False)  # markers only inside a calls block


def test_auto_structural_tag_without_parallel_calls_allows_one_call():
    m = auto_matcher(v31=True, parallel=False)
    assert m.accept_string(CALLS_BEGIN + call("get_time", '{"tz": 0}', True))
    assert not m.accept_string(CALL_BEGIN)
    assert m.accept_string(CALLS_END) and m.accept_token(EOS)


def test_auto_structural_tag_lets_the_model_write_the_trigger_token(tok):
    g = Grammars(demo_checkpoint_dir(), torch.device("cpu"))
    spec = StructuredSpec("structural_tag", json.dumps(auto_structural_tag(AUTO_TOOLS, v31=False, parallel=True)),
                          after_token_id=tok.token_to_id("</think>"))
    g.add(1, spec, V)
    assert g.allowed([1], V) is None  # thinking: free
    g.accept([1], [tok.token_to_id("</think>")])
    first = g.allowed([1], V)[0]
    assert first[tok.token_to_id(CALLS_BEGIN)] and first[EOS] and not first[tok.token_to_id(CALL_END)]
    g.accept([1], [tok.token_to_id(CALLS_BEGIN)])
    after = g.allowed([1], V)[0].nonzero().flatten().tolist()
    assert tok.token_to_id(CALL_BEGIN) in after
    assert EOS not in after  # a calls block must be completed
    drive(g, tok, f"{CALL_BEGIN}function{SEP}loose\n```json\n" + '{"s": "ab')  # V3's fence spells newlines
    inside = g.allowed([1], V)[0].nonzero().flatten().tolist()
    assert inside and all(all(ord(c) >= 0x20 for c in tok.decode([t])) for t in inside)  # none in strings
    drive(g, tok, '"}\n```' + CALL_END + CALLS_END)
    assert g.allowed([1], V)[0].nonzero().flatten().tolist() == [EOS]
