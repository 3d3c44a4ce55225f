"""The ingress request path without Ray: body limits before parsing, routing keys."""

import pytest
from starlette.requests import Request

from fathom.api.openai_error import APIError
from fathom.serve.frontend import parse_request, read_body, routing_key
from fathom.serve.router import prefix_key


def request(chunks: list[bytes], content_length: int | None = None) -> Request:
    headers = [(b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    received = []

    async def receive():
        received.append(1)
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    req = Request({"type": "http", "method": "POST", "path": "/v1/completions", "headers": headers}, receive)
    req.state.received = received
    return req


async def test_chunked_body_is_cut_off_at_the_limit_without_reading_the_rest():
    req = request([b"x" * 600, b"x" * 600, b"x" * 600, b"x" * 600])
    with pytest.raises(APIError) as e:
        await read_body(req, 1024)
    assert e.value.status == 413 and "1024 bytes" in e.value.message
    assert len(req.state.received) == 2  # stopped after the chunk that crossed the limit


async def test_declared_length_over_the_limit_is_refused_before_reading():
    req = request([b"{}"], content_length=10_000)
    with pytest.raises(APIError) as e:
        await read_body(req, 1024)
    assert e.value.status == 413 and req.state.received == []


async def test_body_within_limit_is_returned_whole():
    assert await read_body(request([b'{"a":', b" 1}"]), 1024) == b'{"a": 1}'


def test_routing_keys_follow_the_prompt_prefix():
    system = "You are a careful assistant. " * 12
    a = parse_request("chat", b'{"model": "m", "messages": [{"role": "system", "content": "%s"}, '
                      b'{"role": "user", "content": "one"}]}' % system.encode(), 1 << 20)
    b = parse_request("chat", b'{"model": "m", "messages": [{"role": "system", "content": "%s"}, '
                      b'{"role": "user", "content": "two"}]}' % system.encode(), 1 << 20)
    assert routing_key("chat", a) == routing_key("chat", b) is not None
    c = parse_request("completion", b'{"model": "m", "prompt": [[%s]]}' % ",".join(["7"] * 70).encode(), 1 << 20)
    assert routing_key("completion", c) == prefix_key([7] * 64)
    short = parse_request("completion", b'{"model": "m", "prompt": "hi"}', 1 << 20)
    assert routing_key("completion", short) is None
