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
