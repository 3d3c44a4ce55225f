"""Span trees of the OpenAI API, in process: the real ingress app (FastAPI, Frontend) over a
real ModelServer and AsyncEngine on the demo model, served by uvicorn on loopback and called
with the official `openai` client; spans land in the SDK's in-memory exporter.
(Across Ray processes, over OTLP: test_serve_tracing.py.)"""

import hashlib
import threading
import time

import openai
import pytest
import uvicorn
import yaml
from opentelemetry.trace import SpanKind, StatusCode

from fathom.api.serve import ServeSettings
from fathom.engine.async_engine import AsyncEngine
from fathom.engine.engine_core import ThreadCore
from fathom.serve.frontend import Frontend
from fathom.serve.model_server import ModelServer
from fathom.serve.routes import build_api
from fathom.worker.factory import create_engine

MODEL = "fathom-demo"
FAULT_TOKEN = 7  # a prompt holding this token id makes the model's forward fail


def faulty_engine(settings):
    """The real engine whose model runner fails on FAULT_TOKEN (a stand-in for a NaN, an OOM,
    a dead GPU): the step raises inside the executor, as a real fault would."""
    engine = create_engine(settings)
    runner = engine.executor.runner
    real = runner.execute

    def execute(step):
        if FAULT_TOKEN in step.token_ids:
            raise RuntimeError("injected fault: CUDA error: an illegal memory access was encountered")
        return real(step)

    runner.execute = execute
    return AsyncEngine(ThreadCore(engine), engine.tokenizer)


class Server:
    def __init__(self, tenants: str | None = None):
        # engine_core_process off: the fault is injected into, and the forward spans come from, this process
        engine = {"max_model_len": 256, "max_num_seqs": 4, "max_num_batched_tokens": 64, "engine_core_process": False}
        settings = ServeSettings(engine=engine, tenants=tenants)
        self.model = ModelServer(settings, faulty_engine)
        app = build_api(Frontend(self.model, settings))
        self.uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
        self.thread = threading.Thread(target=self.uv.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uv.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = self.uv.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.client = openai.OpenAI(base_url=self.base_url, api_key="none", max_retries=0, timeout=60)

    def stop(self):
        self.uv.should_exit = True
        self.thread.join(10)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


TENANT_KEY = "sk-acme-0123456789"


@pytest.fixture
def tenant_server(tmp_path):
    digest = hashlib.sha256(TENANT_KEY.encode()).hexdigest()
    doc = {
        "apiVersion": "fathom.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": "acme"},
        "spec": {"apiKeys": [{"sha256": digest}], "limits": {"requestsPerMinute": 1}},
    }
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump(doc))
    s = Server(tenants=str(path))
    yield s
    s.stop()


def children(finished, parent):
    return sorted(s.name for s in finished if s.parent and s.parent.span_id == parent.context.span_id)


def test_streamed_chat_completion_span_tree(server, spans, by_name, wait_spans):
    trace_id, parent_id = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
    raw = server.client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a story about the sea"}],
        max_tokens=8,
        temperature=0.5,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"traceparent": f"00-{trace_id:032x}-{parent_id:016x}-01"},
    )
    chunks = list(raw.parse())
    usage = chunks[-1].usage
    finished = wait_spans("POST /v1/chat/completions")
    server_span = by_name(finished, "POST /v1/chat/completions")
    assert server_span.kind == SpanKind.SERVER
    assert server_span.context.trace_id == trace_id and server_span.parent.span_id == parent_id  # continued
    assert raw.headers["traceparent"] == f"00-{trace_id:032x}-{server_span.context.span_id:016x}-01"
    a = server_span.attributes
    assert (a["http.request.method"], a["url.path"], a["http.route"], a["http.response.status_code"]) == (
        "POST",
        "/v1/chat/completions",
        "/v1/chat/completions",
        200,
    )
    assert children(finished, server_span) == [f"chat {MODEL}", "fathom.auth", "fathom.limits"]
    assert by_name(finished, "fathom.auth").attributes["fathom.tenant"] == "default"  # open mode
    assert a["fathom.tenant"] == "default"
    chat = by_name(finished, f"chat {MODEL}")
    assert children(finished, chat) == [
        "fathom.decode",
        "fathom.detokenize",
        "fathom.prefill",
        "fathom.queue",
    ]
    c = chat.attributes
    assert (c["gen_ai.operation.name"], c["gen_ai.request.model"], c["gen_ai.request.max_tokens"]) == (
        "chat",
        MODEL,
        8,
    )
    assert c["gen_ai.request.temperature"] == 0.5
    assert c["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert c["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert c["gen_ai.response.finish_reasons"] in (("length",), ("stop",))
    assert c["fathom.cached_tokens"] == usage.prompt_tokens_details.cached_tokens and c["fathom.ttft"] > 0
    assert "gen_ai.prompt" not in c and "gen_ai.completion" not in c
    prefill = by_name(finished, "fathom.prefill")
    assert sum(e.attributes["num_tokens"] for e in prefill.events) == usage.prompt_tokens
    assert len(prefill.events) == -(-usage.prompt_tokens // 64)  # chunked by max_num_batched_tokens
    assert by_name(finished, "fathom.decode").attributes["fathom.decode.tokens"] == usage.completion_tokens
    steps = [s for s in finished if s.name == "fathom.forward"]
    assert len(steps) >= usage.completion_tokens and all(s.parent is None for s in steps)
    assert all([lk.context.span_id for lk in s.links] == [chat.context.span_id] for s in steps)


def test_failed_engine_step_span_tree(server, spans, by_name, wait_spans):
    with pytest.raises(openai.APIStatusError) as err:
        server.client.completions.create(model=MODEL, prompt=[[1, 2, FAULT_TOKEN]], max_tokens=4)
    assert err.value.status_code == 503
    finished = wait_spans("POST /v1/completions")
    server_span = by_name(finished, "POST /v1/completions")
    assert server_span.attributes["http.response.status_code"] == 503
    assert server_span.status.status_code == StatusCode.ERROR  # 5xx: the server's fault
    request = by_name(finished, f"text_completion {MODEL}")
    assert request.parent.span_id == server_span.context.span_id
    assert request.status.status_code == StatusCode.ERROR
    assert request.attributes["error.type"] == "EngineDeadError"
    assert any(
        e.name == "exception" and "illegal memory access" in e.attributes["exception.message"]
        for e in request.events
    )
    step = by_name(finished, "fathom.forward")
    assert step.status.status_code == StatusCode.ERROR and "illegal memory access" in step.status.description
    assert [lk.context.span_id for lk in step.links] == [request.context.span_id]
    assert children(finished, request) == []  # the engine died before reporting its stages


def test_unauthenticated_request_span_tree(tenant_server, spans, by_name, wait_spans):
    with pytest.raises(openai.AuthenticationError):
        tenant_server.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    finished = spans.get_finished_spans()
    server_span = by_name(finished, "POST /v1/chat/completions")
    assert server_span.attributes["http.response.status_code"] == 401
    assert server_span.status.status_code == StatusCode.UNSET  # a client error, not the server's
    assert children(finished, server_span) == ["fathom.auth"]  # refused before any other work
    auth = by_name(finished, "fathom.auth")
    assert auth.status.status_code == StatusCode.ERROR and auth.attributes["error.type"] == "401"
    assert auth.attributes["fathom.error_code"] == "invalid_api_key"
    assert TENANT_KEY not in str([dict(s.attributes) for s in finished])  # no key material in spans


def test_rate_limited_request_span_tree(tenant_server, spans, by_name, wait_spans):
    client = openai.OpenAI(base_url=tenant_server.base_url, api_key=TENANT_KEY, max_retries=0, timeout=60)
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    wait_spans("POST /v1/chat/completions")
    spans.clear()
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    finished = wait_spans("POST /v1/chat/completions")
    server_span = by_name(finished, "POST /v1/chat/completions")
    assert server_span.attributes["http.response.status_code"] == 429
    assert server_span.attributes["fathom.tenant"] == "acme"
    assert children(finished, server_span) == ["fathom.auth", "fathom.limits"]
    limits = by_name(finished, "fathom.limits")
    assert limits.status.status_code == StatusCode.ERROR and limits.attributes["error.type"] == "429"
    assert limits.attributes["fathom.tenant"] == "acme"
    assert "rejected" in [e.name for e in limits.events]
