"""Chat fields Fathom cannot honour are refused with a 400 naming them, never accepted and ignored."""

import pytest

from fathom.api.openai_error import APIError
from fathom.serve.preprocess import refuse_unhonoured
from fathom.serve.protocol import ChatCompletionRequest


def chat(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], **kw)


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_reasoning_effort_is_refused(effort):
    with pytest.raises(APIError) as e:
        refuse_unhonoured(chat(reasoning_effort=effort))
    assert e.value.status == 400 and e.value.param == "reasoning_effort"


def test_plain_requests_pass():
    refuse_unhonoured(chat())
    refuse_unhonoured(chat(response_format={"type": "text"}))


def test_chat_template_kwargs_reach_the_template():
    from fathom.engine.tokenizer import Tokenizer
    from fathom.serve.preprocess import render_chat
    from fathom.worker.demo import demo_checkpoint_dir

    tok = Tokenizer.from_pretrained(demo_checkpoint_dir())
    tok.chat_template = "{% if thinking %}<think>{% endif %}{{ messages[0]['content'] }}"
    assert render_chat(chat(chat_template_kwargs={"thinking": True}), tok) == "<think>hi"
    assert render_chat(chat(chat_template_kwargs={"thinking": False}), tok) == "hi"
    assert render_chat(chat(chat_template_kwargs={"messages": []}), tok) == "hi"  # cannot replace the request's


STRICT_TOOL = [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}}}]


def test_strict_functions_in_auto_mode_follow_the_models_format_and_are_enforced_when_forced():
    from fathom.serve.preprocess import tool_spec

    for choice in (None, "auto"):
        for parser in ("deepseek_v3", "deepseek_v31"):
            spec = tool_spec(chat(tools=STRICT_TOOL, tool_choice=choice), parser)
            assert spec.kind == "structural_tag" and "triggered_tags" in spec.schema
        with pytest.raises(APIError) as e:  # no tool-call format to constrain: refused, not ignored
            tool_spec(chat(tools=STRICT_TOOL, tool_choice=choice), "none")
        assert e.value.status == 400 and e.value.param == "tools" and "strict" in e.value.message
        with pytest.raises(APIError) as e:
            tool_spec(chat(tools=STRICT_TOOL, tool_choice=choice, response_format={"type": "json_object"}),
                      "deepseek_v3")
        assert e.value.status == 400 and e.value.param == "response_format"
    loose = [{"type": "function", "function": {**STRICT_TOOL[0]["function"], "strict": False}}]
    assert tool_spec(chat(tools=loose), "deepseek_v3") is None  # non-strict auto: free, as before
    assert tool_spec(chat(tools=STRICT_TOOL, tool_choice="none"), "deepseek_v3") is None
    named = tool_spec(chat(tools=STRICT_TOOL, tool_choice={"type": "function", "function": {"name": "f"}}))
    assert named.strict and tool_spec(chat(tools=STRICT_TOOL, tool_choice="required")).strict


def test_message_name_and_reasoning_content_reach_the_template():
    from fathom.engine.tokenizer import Tokenizer
    from fathom.serve.preprocess import render_chat
    from fathom.worker.demo import demo_checkpoint_dir

    tok = Tokenizer.from_pretrained(demo_checkpoint_dir())
    tok.chat_template = "{% for m in messages %}[{{ m.name }}|{{ m.reasoning_content }}]{% endfor %}"
    req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi", "name": "ann"},
                                                     {"role": "assistant", "content": "x", "reasoning_content": "r"}])
    assert render_chat(req, tok) == "[ann|][|r]"
