import json

import pytest
from pydantic import ValidationError

from fathom.api.openai_error import APIError
from fathom.serve.protocol import ChatCompletionRequest, CompletionRequest
from fathom.serve.validation import from_validation_error, parse_json_body


def err(cls, body) -> APIError:
    with pytest.raises(ValidationError) as info:
        cls.model_validate(body)
    return from_validation_error(info.value)


def chat(**kw):
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}


def test_chat_request_accepts_openai_fields():
    r = ChatCompletionRequest.model_validate(chat(
        n=2, stop=["\n"], max_completion_tokens=5, temperature=0.5, top_p=0.9, seed=1,
        logprobs=True, top_logprobs=3, response_format={"type": "json_object"}, user="u",
        stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "a"}]}],
    ))
    assert r.max_new_tokens() == 5 and r.num_top_logprobs() == 3 and r.include_usage()
    assert r.messages[1].text() == "a" and r.stop_list() == ["\n"]


@pytest.mark.parametrize(
    "body, param, fragment",
    [
        (chat(temperatur=1), "temperatur", "unknown field 'temperatur'"),
        (chat(n=0), "n", "greater than or equal to 1"),
        (chat(temperature=3), "temperature", "less than or equal to 2"),
        (chat(messages=[]), "messages", "at least 1 item"),
        (chat(messages=[{"role": "robot", "content": "x"}]), "messages[0].role", "Input should be"),
        (chat(top_logprobs=2), None, "top_logprobs requires logprobs=true"),
        (chat(tools=[{"type": "function"}]), "tools[0].function", "Field required"),
        (chat(tool_choice="required"), None, "tool_choice requires tools"),
        (chat(stop=["a", ""]), "stop", "non-empty"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model", "Field required"),
    ],
)
def test_chat_validation_errors_name_the_field(body, param, fragment):
    e = err(ChatCompletionRequest, body)
    assert e.status == 422 and e.param == param and fragment in e.message
    assert set(e.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    "prompt, expected",
    [("a", ["a"]), (["a", "b"], ["a", "b"]), ([1, 2], [[1, 2]]), ([[1], [2, 3]], [[1], [2, 3]])],
)
def test_completion_prompt_forms(prompt, expected):
    assert CompletionRequest(model="m", prompt=prompt).prompts() == expected


def test_completion_errors():
    assert "empty" in err(CompletionRequest, {"model": "m", "prompt": []}).message
    assert err(CompletionRequest, {"model": "m", "prompt": "x", "logprobs": 6}).param == "logprobs"
    assert "suffix" in err(CompletionRequest, {"model": "m", "prompt": "x", "suffix": "y"}).message
    assert CompletionRequest(model="m", prompt="x").max_new_tokens() == 16  # OpenAI's default


def test_json_body_errors():
    assert parse_json_body(b'{"a": 1}', 100) == {"a": 1}
    with pytest.raises(APIError) as e:
        parse_json_body(b"{not json", 100)
    assert e.value.status == 400 and "not valid JSON" in e.value.message
    with pytest.raises(APIError) as e:
        parse_json_body(b"[1]", 100)
    assert e.value.status == 400
    with pytest.raises(APIError) as e:
        parse_json_body(b"x" * 101, 100)
    assert e.value.status == 413


def test_overload_error_has_retry_after_and_survives_pickling():
    import pickle

    e = pickle.loads(pickle.dumps(APIError(429, "busy", code="overloaded", retry_after=1.6)))
    assert e.status == 429 and e.headers() == {"Retry-After": "2"}
    assert json.loads(e.to_json())["error"]["type"] == "rate_limit_error"
