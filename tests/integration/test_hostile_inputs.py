"""Issue 12: a hostile-input corpus against a real `fathom serve` (demo model), in open mode and
with tenants. Every case must get a clean 4xx in OpenAI's error shape, or a correct 200; never a
5xx, never a hang; and after each case `/health` is 200 and a 1-token canary still succeeds.

One server per mode, all cases over one HTTP client. The table of results is printed (`-s`)."""

import json
import socket
import time

import httpx
import pytest

from support.serve_process import ServeProcess
from support.tenancy_server import MODEL, write_tenants

pytestmark = pytest.mark.slow

KEY = "sk-hostile"
CHAT, COMP = "/v1/chat/completions", "/v1/completions"
OK, BAD = "200", "4xx"
SLOW_BODY_TIMEOUT_S = 3


def chat(**kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, **kw}


def comp(**kw):
    return {"model": MODEL, "prompt": "hi", "max_tokens": 1, **kw}


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


def _json_cases() -> list[tuple[str, str, bytes, str]]:
    """(name, path, body, expected)."""
    c: list[tuple[str, str, bytes, str]] = []
    add = c.append
    # sampling bounds: the replica-killers first
    for v in (9223372036854775808, 10**20, 2**31, 10**6, -2):
        add((f"top_k={v}", CHAT, raw(chat(top_k=v)), BAD))
    add(("top_k=1e20 float", CHAT, b'{"model":"fathom-demo","messages":[{"role":"user","content":"hi"}],"top_k":1e20}',
         BAD))
    add(("top_k=5 ok", CHAT, raw(chat(top_k=5)), OK))
    add(("top_k=-1 ok", CHAT, raw(chat(top_k=-1)), OK))
    for field, v in [("temperature", -1), ("temperature", 2.5), ("top_p", 0), ("top_p", 1.5), ("min_p", 2),
                     ("frequency_penalty", 3), ("presence_penalty", -3), ("repetition_penalty", 0),
                     ("repetition_penalty", 1e9), ("n", 0), ("n", 17), ("n", 10**30), ("max_tokens", 0),
                     ("max_tokens", 10**12), ("max_tokens", -1), ("seed", 2**70), ("seed", -(2**70)),
                     ("top_logprobs", 21), ("max_completion_tokens", 0)]:
        add((f"{field}={v}", CHAT, raw(chat(**{field: v})), BAD))
    add(("seed=2**63 ok", CHAT, raw(chat(seed=2**63)), OK))
    # a text too long to fit is refused before it is tokenised (seconds of the replica's CPU)
    add(("prompt of 5 MiB", COMP, raw(comp(prompt="All work and no play. " * (5 * 2**20 // 22))), BAD))
    add(("chat message of 5 MiB", CHAT, raw(chat(messages=[{"role": "user", "content": "z" * 5 * 2**20}])), BAD))
    add(("logprobs top 20 ok", CHAT, raw(chat(logprobs=True, top_logprobs=20)), OK))
    # strict types (OpenAI does not coerce)
    for field, v in [("n", "2"), ("stream", "false"), ("temperature", "0.5"), ("max_tokens", "1"), ("n", 1.5),
                     ("n", True), ("stream", 1), ("top_k", "5"), ("seed", "1"), ("logprobs", "true"),
                     ("stop", 5), ("stop", [1, 2]), ("user", 5), ("model", 5), ("messages", "hi"),
                     ("messages", {"role": "user"}), ("stream_options", "x")]:
        add((f"type {field}={v!r}", CHAT, raw(chat(**{field: v})), BAD))
    # stop lists and token ids
    add(("stop 17 strings", CHAT, raw(chat(stop=["x"] * 17)), BAD))
    add(("stop 1000 chars", CHAT, raw(chat(stop="x" * 1000)), BAD))
    add(("stop empty string", CHAT, raw(chat(stop="")), BAD))
    add(("stop 16 ok", CHAT, raw(chat(stop=[f"s{i}" for i in range(16)])), OK))
    add(("stop_token_ids huge", CHAT, raw(chat(stop_token_ids=[2**40])), BAD))
    add(("stop_token_ids > vocab", CHAT, raw(chat(stop_token_ids=[10**9])), BAD))
    add(("stop_token_ids negative", CHAT, raw(chat(stop_token_ids=[-1])), BAD))
    add(("stop_token_ids 1000", CHAT, raw(chat(stop_token_ids=list(range(1000)))), BAD))
    # messages
    add(("no messages", CHAT, raw(chat(messages=[])), BAD))
    add(("5000 messages", CHAT, raw(chat(messages=[{"role": "user", "content": "a"}] * 5000)), BAD))
    add(("bad role", CHAT, raw(chat(messages=[{"role": "root", "content": "a"}])), BAD))
    add(("content part bad type", CHAT, raw(chat(messages=[{"role": "user", "content": [{"type": "image"}]}])),
         BAD))
    add(("content parts ok", CHAT, raw(chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}]}])),
         OK))
    add(("message name 10k", CHAT, raw(chat(messages=[{"role": "user", "content": "a", "name": "n" * 10000}])), BAD))
    add(("message extra field", CHAT, raw(chat(messages=[{"role": "user", "content": "a", "x": 1}])), BAD))
    # unknown and unsupported fields
    for field, v in [("temperatur", 1), ("functions", []), ("priority", 5), ("priority", -(10**9)),
                     ("store", True), ("service_tier", "flex"), ("parallel_tool_calls", "yes"),
                     ("metadata", {"a": "b"}), ("stream_options", {"continuous_usage_stats": True}),
                     ("tools", [{"type": "function"}])]:
        add((f"unsupported {field}", CHAT, raw(chat(**{field: v})), BAD))
    # logit_bias: token-id keys, |bias| <= 100, at most 300 entries, ids inside the vocabulary
    add(("logit_bias ok", CHAT, raw(chat(logit_bias={"5": -100, "6": 100.0})), OK))
    for name, bias in [("101", {"5": 101}), ("key not an id", {"a": 1}), ("key -5", {"-5": 1}),
                       ("key 2**40", {str(2**40): 1}), ("301 entries", {str(i): 1 for i in range(301)}),
                       ("id > vocab", {"100000": 1}), ("value string", {"5": "1"})]:
        add((f"logit_bias {name}", CHAT, raw(chat(logit_bias=bias)), BAD))
    # completions: fan-out, prompts and token ids
    add(("fan-out [[7]]*2000 n=16", COMP, raw(comp(prompt=[[7]] * 2000, n=16)), BAD))
    add(("fan-out 129 prompts", COMP, raw(comp(prompt=["a"] * 129)), BAD))
    add(("fan-out 16 prompts n=16", COMP, raw(comp(prompt=[[7]] * 16, n=16)), BAD))
    add(("8 prompts n=2 ok", COMP, raw(comp(prompt=[[7, 8]] * 8, n=2)), OK))
    add(("prompt empty list", COMP, raw(comp(prompt=[])), BAD))
    add(("prompt [[]]", COMP, raw(comp(prompt=[[]])), BAD))
    add(("prompt token 2**63", COMP, raw(comp(prompt=[2**63])), BAD))
    add(("prompt token -1", COMP, raw(comp(prompt=[-1])), BAD))
    add(("prompt token > vocab", COMP, raw(comp(prompt=[10**8])), BAD))
    add(("prompt mixed types", COMP, raw(comp(prompt=["a", 1])), BAD))
    add(("prompt nested 3 deep", COMP, raw(comp(prompt=[[[1]]])), BAD))
    add(("prompt too long", COMP, raw(comp(prompt=[5] * 5000)), BAD))
    add(("logprobs 6", COMP, raw(comp(logprobs=6)), BAD))
    add(("suffix", COMP, raw(comp(suffix="x")), BAD))
    add(("best_of != n", COMP, raw(comp(best_of=2)), BAD))
    add(("completion ok", COMP, raw(comp(prompt=[[1, 2, 3]])), OK))
    add(("completion stream ok", COMP, raw(comp(stream=True)), OK))
    # /tokenize and /detokenize: the same bounds as the generation routes
    TOK, DETOK = "/tokenize", "/detokenize"
    add(("tokenize ok", TOK, raw({"model": MODEL, "prompt": "hi"}), OK))
    add(("tokenize chat ok", TOK, raw({"messages": [{"role": "user", "content": "hi"}]}), OK))
    add(("tokenize 5000 messages", TOK, raw({"messages": [{"role": "user"}] * 5000}), BAD))
    add(("tokenize prompt list", TOK, raw({"prompt": ["a"]}), BAD))
    add(("tokenize unknown field", TOK, raw({"prompt": "a", "chat_template": "{{ x }}"}), BAD))
    add(("tokenize bad template kwargs", TOK, raw({"messages": [{"role": "user", "content": "a"}],
                                                   "chat_template_kwargs": {"messages": 5}}), OK))
    add(("detokenize ok", DETOK, raw({"tokens": [104, 105]}), OK))
    add(("detokenize id > vocab", DETOK, raw({"tokens": [10**8]}), BAD))
    add(("detokenize id 2**63", DETOK, raw({"tokens": [2**63]}), BAD))
    add(("detokenize negative", DETOK, raw({"tokens": [-1]}), BAD))
    add(("detokenize wrong model", DETOK, raw({"model": "x", "tokens": [1]}), BAD))
    # JSON framing and numbers
    body = b'{"model":"fathom-demo","messages":[{"role":"user","content":"hi"}],"seed":'
    add(("int 5000 digits", CHAT, body + b"9" * 5000 + b"}", BAD))
    add(("int 4301 digits", CHAT, body + b"1" * 4301 + b"}", BAD))
    add(("float 1e999", CHAT, b'{"model":"fathom-demo","messages":[{"role":"user","content":"hi"}],"temperature":1e999}',
         BAD))
    add(("NaN", CHAT, b'{"model":"fathom-demo","messages":[{"role":"user","content":"hi"}],"temperature":NaN}', BAD))
    add(("nesting 900", CHAT, b'{"model":"fathom-demo","x":' + b"[" * 900 + b"]" * 900 + b"}", BAD))
    add(("nesting 100000", CHAT, b'{"a":' + b"[" * 100000, BAD))
    add(("nesting dicts 2000", CHAT, b'{"a":' * 2000 + b"1" + b"}" * 2000, BAD))
    add(("not json", CHAT, b"hello", BAD))
    add(("empty body", CHAT, b"", BAD))
    add(("json array", CHAT, b"[]", BAD))
    add(("json string", CHAT, b'"x"', BAD))
    add(("json null", CHAT, b"null", BAD))
    add(("truncated json", CHAT, raw(chat())[:-5], BAD))
    add(("trailing garbage", CHAT, raw(chat()) + b"xx", BAD))
    add(("duplicate keys ok", CHAT, (b'{"model":"x","model":"fathom-demo","messages":[{"role":"user","content":"hi"}],'
         b'"max_tokens":1}'), OK))
    add(("invalid utf-8", CHAT, b'{"model":"fathom-demo","messages":[{"role":"user","content":"\xff\xfe"}]}', BAD))
    add(("utf-16 body", CHAT, raw(chat()).decode().encode("utf-16"), BAD))
    add(("combining marks too long", CHAT, raw(chat(messages=[{"role": "user", "content": "e" + "\u0301" * 2000}])),
         BAD))
    # unicode edge cases
    sur = b'{"model":"fathom-demo","max_tokens":1,"messages":[{"role":"user","content":"a\\ud800b"}]}'
    add(("lone surrogate in message", CHAT, sur, BAD))
    add(("lone low surrogate in prompt", COMP, b'{"model":"fathom-demo","max_tokens":1,"prompt":"\\udfff"}', BAD))
    add(("lone surrogate in model", CHAT,
         b'{"model":"\\ud800","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}', BAD))
    add(("lone surrogate in key", CHAT, b'{"\\ud800":1}', BAD))
    add(("lone surrogate in stop", CHAT, (b'{"model":"fathom-demo","max_tokens":1,"stop":"\\ud83d",'
         b'"messages":[{"role":"user","content":"hi"}]}'), BAD))
    add(("surrogate pair ok", CHAT, raw(chat(messages=[{"role": "user", "content": "\U0001F600 smile"}])), OK))
    add(("NUL in content ok", CHAT, raw(chat(messages=[{"role": "user", "content": "a\x00b"}])), OK))
    add(("RTL/zero-width ok", CHAT, raw(chat(messages=[{"role": "user", "content": "\u202e\u200b\ufeffx"}])), OK))
    add(("combining marks ok", CHAT, raw(chat(messages=[{"role": "user", "content": "e" + "\u0301" * 50}])), OK))
    add(("noncharacter ok", CHAT, raw(chat(messages=[{"role": "user", "content": "\uffff\U0010FFFF"}])), OK))
    add(("unknown model", CHAT, raw(chat(model="nope")), BAD))
    add(("model 10k chars", CHAT, raw(chat(model="m" * 10000)), BAD))
    add(("unicode model", CHAT, raw(chat(model="\u00e9\U0001F600")), BAD))
    # sizes: over the body limit, and under it but over gRPC's 4 MiB default between deployments
    add(("body 9 MiB", CHAT, raw(chat(messages=[{"role": "user", "content": "a" * (9 << 20)}])), BAD))
    add(("body 5 MiB token ids", COMP, raw(comp(prompt=[5] * (5 << 20 // 2))), BAD))
    add(("body 5 MiB text", COMP, raw(comp(prompt="word " * (1 << 20))), BAD))
    add(("stop stream ok", CHAT, raw(chat(stream=True, stream_options={"include_usage": True})), OK))
    return c


def _raw_http(port: int, payload: bytes, timeout_s: float = 15) -> bytes:
    """Send bytes as they are; return what comes back (b'' if the server just closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            raise AssertionError(f"no answer within {timeout_s}s") from None
        return out


def _framing_cases(key_header: bytes) -> list[tuple[str, bytes]]:
    body = raw(chat())
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + key_header
    return [
        ("garbage request line", b"NOT HTTP AT ALL\r\n\r\n"),
        ("content-length too short", head + b"Content-Length: 10\r\n\r\n" + body),
        ("content-length negative", head + b"Content-Length: -5\r\n\r\n" + body),
        ("content-length huge, body short", head + b"Content-Length: 999999999\r\n\r\n" + body),
        ("bad chunked encoding", head + b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nxx\r\n0\r\n\r\n"),
        ("both CL and TE", head + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("header without colon", head + b"Broken header\r\nContent-Length: 2\r\n\r\n{}"),
        ("100 KB header", head + b"X-Big: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\n{}"),
    ]


@pytest.fixture(scope="module", params=["open", "tenants"])
def server(request, tmp_path_factory):
    flags = ["--max-model-len", "256", "--body-read-timeout-s", str(SLOW_BODY_TIMEOUT_S)]
    if request.param == "tenants":
        f = tmp_path_factory.mktemp("tenants") / "tenants.yaml"
        write_tenants(f, {"hostile": {"keys": [KEY]}})
        flags += ["--tenants", str(f)]
    s = ServeProcess(*flags).wait_ready()
    s.mode = request.param
    yield s
    s.stop()


def _canary(client: httpx.Client, headers: dict) -> None:
    assert client.get("/health").status_code == 200
    r = client.post(CHAT, json=chat(), headers=headers)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 1, r.text


def test_hostile_corpus(server):
    headers = {"Authorization": f"Bearer {KEY}"} if server.mode == "tenants" else {}
    rows, failures = [], []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        _canary(client, headers)
        cases = [(n, p, b, e) for n, p, b, e in _json_cases()]
        if server.mode == "tenants":
            cases += [("no key", CHAT, raw(chat()), "401"), ("wrong key", CHAT, raw(chat()), "401")]
        for name, path, body, expected in cases:
            h = {"Content-Type": "application/json", **headers}
            if name == "no key":
                h.pop("Authorization")
            elif name == "wrong key":
                h["Authorization"] = "Bearer sk-wrong"
            t0 = time.monotonic()
            try:
                r = client.post(path, content=body, headers=h)
                status, text = r.status_code, r.text
            except httpx.TimeoutException:
                status, text = 0, "timeout"
            took = time.monotonic() - t0
            ok = _judge(status, text, expected)
            rows.append((name, expected, status, round(took, 2)))
            if not ok:
                failures.append((name, status, text[:300]))
            _canary(client, headers)
        if server.mode == "tenants":  # /metrics lists every tenant's usage: admin keys only
            for name, h, expected in [("GET /metrics no key", {}, 401), ("GET /metrics user key", headers, 403)]:
                r = client.get("/metrics", headers=h)
                rows.append((name, str(expected), r.status_code, 0.0))
                if r.status_code != expected or "fathom_requests_total" in r.text:
                    failures.append((name, r.status_code, r.text[:300]))
        key_header = f"Authorization: Bearer {KEY}\r\n".encode() if server.mode == "tenants" else b""
        for name, payload in _framing_cases(key_header):
            t0 = time.monotonic()
            reply = _raw_http(server.port, payload)
            status_line = reply.split(b"\r\n", 1)[0].decode(errors="replace")
            took = time.monotonic() - t0
            code = int(status_line.split()[1]) if status_line.startswith("HTTP/") else 0
            rows.append((name, "4xx/close", code, round(took, 2)))
            if code >= 500:
                failures.append((name, code, reply[:300]))
            _canary(client, headers)
        rows.append(_slow_bodies(server, key_header, failures))
        _canary(client, headers)
    print(f"\n{server.mode}: {len(rows)} cases")
    for row in rows:
        print(" | ".join(map(str, row)))
    assert len(rows) >= 100
    assert not failures, failures
    assert "Traceback" not in server.output or "RequestFailedError" not in server.output


def _slow_bodies(server, key_header: bytes, failures: list) -> tuple:
    """Clients that promise 1000 bytes and send 10, keeping the connection open: each gets a 408
    after the body-read timeout, and meanwhile a normal request is served."""
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + key_header
            + b"Content-Length: 1000\r\n\r\n{\"model\":")
    socks = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=SLOW_BODY_TIMEOUT_S + 30)
        s.sendall(head)
        socks.append(s)
    t0 = time.monotonic()
    codes = []
    for s in socks:
        try:
            reply = s.recv(4096)
            codes.append(int(reply.split()[1]) if reply.startswith(b"HTTP/") else 0)
        except TimeoutError:
            codes.append(-1)
        finally:
            s.close()
    took = time.monotonic() - t0
    if any(c != 408 for c in codes) or took > SLOW_BODY_TIMEOUT_S + 20:
        failures.append(("slow bodies x20", codes, took))
    return ("slow bodies x20 (CL 1000, 10 sent)", "408", sorted(set(codes)), round(took, 2))


def _judge(status: int, text: str, expected: str) -> bool:
    if expected == OK:
        return status == 200
    if not 400 <= status < 500 or (expected == "401" and status != 401):
        return False
    try:
        err = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(err.get("message"), str) and "type" in err
