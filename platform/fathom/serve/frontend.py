"""The ingress request path: body limit, JSON, schema, model name, routing key, backend call,
SSE relay, metrics. Transport-agnostic: `backend` is the model deployment behind a Ray Serve
handle in production (`HandleBackend`) and can be any object with the same two methods.

Backend contract (the model deployment's methods, see `fathom.serve.model_server`):
- `complete(kind, request, routing_key) -> Completion | dict | APIError` (the whole response
  body, with the first token's time for TTFT when it is a `Completion`);
- `stream(kind, request, routing_key) -> AsyncIterator[str | APIError | StreamEnd]`: the first
  item is an APIError (nothing was started) or SSE text; then SSE text, each item possibly
  several coalesced events; the last item is a `StreamEnd` with the usage (not sent on).
- `tokenize(kind, request) -> dict | APIError`: /tokenize or /detokenize's response body.
Errors travel as values, not exceptions, so they keep their status across Ray.
"""

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from fathom.api.openai_error import APIError
from fathom.api.serve import ServeSettings
from fathom.serve.cold_start import ColdStart
from fathom.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
)
from fathom.serve.request_metrics import ServeMetrics
from fathom.serve.router import chat_prefix_text, prefix_key
from fathom.serve.validation import body_too_large, from_validation_error, parse_json_body
from fathom.telemetry.spans import auth_span, limits_span, set_tenant
from fathom.tenancy.gate import Grant, TenancyGate

logger = logging.getLogger("fathom.serve")

REQUEST_TYPES = {"chat": ChatCompletionRequest, "completion": CompletionRequest,
                 "tokenize_chat": TokenizeChatRequest, "tokenize_completion": TokenizeCompletionRequest,
                 "detokenize": DetokenizeRequest}
OVERLOAD_RETRY_AFTER_S = 1.0
NOT_READY_RETRY_AFTER_S = 5.0
# A body must arrive in full within this: a client that promises 1000 bytes and trickles (or
# never sends) them would otherwise hold an ingress slot for as long as it likes; 140 of them
# starved every other client. 8 MiB at 1 Mbit/s takes ~67 s; a real client sends far faster.
BODY_READ_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """Last item of a backend stream: the request's usage, for metrics."""

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    first_token_at: float | None = None  # time.time() of the first token, for TTFT


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole (non-streamed) response: its body, and when its first token was generated, so
    TTFT and TPOT are recorded for non-streaming requests too."""

    body: dict
    first_token_at: float | None = None  # time.time()


class Backend(Protocol):
    async def complete(self, kind: str, request: Any, routing_key: int | None) -> Completion | dict | APIError: ...
    def stream(self, kind: str, request: Any, routing_key: int | None) -> AsyncIterator[Any]: ...


async def read_body(request: Request, max_bytes: int, timeout_s: float = BODY_READ_TIMEOUT_S) -> bytes:
    """The request body, refusing (413) anything over `max_bytes` before buffering it all, and
    (408) a body that has not arrived in full within `timeout_s`."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise body_too_large(max_bytes)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise body_too_large(max_bytes)
                chunks.append(chunk)
    except TimeoutError:
        raise APIError(408, f"the request body did not arrive within {timeout_s:g}s", code="request_timeout") from None
    except ClientDisconnect:
        raise APIError(400, "the client closed the connection before sending the whole body",
                       code="incomplete_body") from None
    return b"".join(chunks)


def routing_key(kind: str, req: Any) -> int | None:
    if kind == "chat":
        return prefix_key(chat_prefix_text([(m.role, m.text()) for m in req.messages]))
    return prefix_key(req.prompts()[0])


def parse_request(kind: str, raw: bytes, max_bytes: int) -> Any:
    body = parse_json_body(raw, max_bytes)
    if kind == "tokenize":  # vLLM's two forms: a conversation, or a prompt
        kind = "tokenize_chat" if "messages" in body else "tokenize_completion"
    try:
        return REQUEST_TYPES[kind].model_validate(body)
    except ValidationError as e:
        raise from_validation_error(e) from None


def sse_error(err: APIError) -> str:
    return f"data: {json.dumps(err.body())}\n\ndata: [DONE]\n\n"


class Frontend:
    def __init__(self, backend: Backend, settings: ServeSettings, metrics: ServeMetrics | None = None,
                 tenancy: TenancyGate | None = None):
        self.backend = backend
        self.settings = settings
        self.model_name = settings.model_name
        self.metrics = metrics or ServeMetrics(self.model_name, vllm_aliases=settings.vllm_metric_aliases)
        self.tenancy = tenancy or TenancyGate.from_settings(settings)
        self.cold_start = ColdStart.for_backend(backend, settings.cold_start_timeout_s, self.metrics.held)
        self.metrics.held(0)  # the series exists from the start: an autoscaler reads 0, not "absent"
        self.draining = False
        self.inflight = 0  # requests accepted and not yet answered in full (graceful shutdown waits)
        self.model_replicas: int | None = None  # running model replicas (the ingress counts them); None: unknown

    def capacity(self) -> int | None:
        """Requests the model deployment holds at once: each running replica's
        max_ongoing_requests plus this ingress's Serve queue (max_queued_requests); None while
        the replicas are not counted (a model in this process: nothing to shed)."""
        if self.model_replicas is None:
            return None
        return self.model_replicas * self.settings.max_ongoing_requests + self.settings.max_queued_requests

    def shed(self) -> None:
        """429 + Retry-After at once when the requests in flight already fill the capacity:
        decided before the body is read or parsed and before Serve's router queues anything, so a
        refusal under overload costs the ingress microseconds and the client one round trip.
        Serve's own BackPressureError (fathom.serve.app) stays the backstop while the count
        lags a change of replicas."""
        capacity = self.capacity()
        if capacity is not None and self.inflight > capacity:  # `inflight` counts this request too
            raise APIError(429, "the server is at capacity: every model replica is busy and the queue is full; "
                           "retry later", code="overloaded", retry_after=OVERLOAD_RETRY_AFTER_S)

    async def openai(self, kind: str, http: Request) -> Response:
        """Serve one /v1/chat/completions or /v1/completions request."""
        self.inflight += 1
        streaming = False
        try:
            response = await self._openai(kind, http)
            streaming = isinstance(response, StreamingResponse)
            return response
        finally:
            if not streaming:
                self.inflight -= 1

    async def _openai(self, kind: str, http: Request) -> Response:
        started = time.time()
        if self.draining:
            raise APIError(503, "server is shutting down", code="shutting_down", retry_after=NOT_READY_RETRY_AFTER_S)
        with auth_span() as span:
            tenant = self.tenancy.authenticate(http.headers.get("authorization"))
            set_tenant(span, tenant.name)
        http.state.tenant = tenant.name
        self.shed()
        raw = await read_body(http, self.settings.max_request_body_bytes, self.settings.body_read_timeout_s)
        req = parse_request(kind, raw, self.settings.max_request_body_bytes)
        if req.model != self.model_name:
            raise APIError(
                404, f"The model `{req.model}` does not exist; this server serves `{self.model_name}`.",
                param="model", code="model_not_found",
            )
        with limits_span(tenant.name):
            grant = await self.tenancy.admit(tenant, kind, req)
        settled = False  # the grant is settled or released exactly once
        try:
            response = await self._generate(kind, req, started, grant)
            settled = True
            return response
        finally:
            if not settled:
                self.tenancy.release(grant)

    async def tokenization(self, kind: str, http: Request) -> Response:
        """Serve one /tokenize or /detokenize request. With tenants on it needs a key and a model
        the tenant may use, like every route; it runs no model, so it is neither rate-limited
        nor metered (the body limit and the replica's concurrency bound it)."""
        if self.draining:
            raise APIError(503, "server is shutting down", code="shutting_down", retry_after=NOT_READY_RETRY_AFTER_S)
        tenant = self.tenancy.authenticate(http.headers.get("authorization"))
        http.state.tenant = tenant.name
        raw = await read_body(http, self.settings.max_request_body_bytes, self.settings.body_read_timeout_s)
        req = parse_request(kind, raw, self.settings.max_request_body_bytes)
        if req.model is not None and req.model != self.model_name:
            raise APIError(404, f"The model `{req.model}` does not exist; this server serves `{self.model_name}`.",
                           param="model", code="model_not_found")
        if not tenant.allows_model(self.model_name):
            raise APIError(403, f"Tenant {tenant.name!r} may not use model `{self.model_name}`.", param="model",
                           code="model_not_allowed")
        await self.cold_start.wait()
        result = await self.backend.tokenize(kind, req)
        if isinstance(result, APIError):
            raise result
        return Response(json.dumps(result), media_type="application/json")

    async def _generate(self, kind: str, req: Any, started: float, grant: Grant) -> Response:
        await self.cold_start.wait()  # no model replica yet: hold the request (bounded)
        key = routing_key(kind, req)
        tenancy = {"tenancy": grant.context} if grant.context else {}
        if not req.stream:
            result = await self.backend.complete(kind, req, key, **tenancy)
            if isinstance(result, APIError):
                raise result
            body, first = (result.body, result.first_token_at) if isinstance(result, Completion) else (result, None)
            usage = body["usage"]
            self._finished(200, started, usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"],
                           usage["completion_tokens"], first, grant)
            return Response(json.dumps(body), media_type="application/json", headers=grant.headers)
        stream = self.backend.stream(kind, req, key, **tenancy)
        first = await anext(stream)
        if isinstance(first, APIError):
            await stream.aclose()
            raise first
        return StreamingResponse(
            self._relay(first, stream, started, grant), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **grant.headers},
        )

    async def _relay(self, first: str, stream: AsyncIterator[Any], started: float, grant: Grant) -> AsyncIterator[str]:
        """Forward SSE text; swallow the StreamEnd into metrics and metering. A client that goes
        away cancels this generator, which closes `stream` and so aborts the request upstream."""
        status = 200
        settled = False
        try:
            yield first
            async for item in stream:
                if isinstance(item, StreamEnd):
                    settled = True
                    self._finished(200, started, item.prompt_tokens, item.cached_tokens,
                                   item.completion_tokens, item.first_token_at, grant)
                elif isinstance(item, APIError):
                    status = item.status
                    yield sse_error(item)
                else:
                    yield item
            if not settled and status == 200:  # ended without its usage: never pass it off as complete
                status = 502
                yield sse_error(APIError(502, "the model replica ended the stream early", code="stream_truncated"))
        except asyncio.CancelledError:
            status = 499  # client closed the connection (nginx's convention)
            raise
        except Exception as e:  # replica died mid-stream: tell the client in-band
            logger.exception("stream failed")
            status = 500
            yield sse_error(APIError(500, f"generation failed: {type(e).__name__}", code="internal_error"))
        finally:
            self.inflight -= 1
            await stream.aclose()
            if not settled:
                self.tenancy.release(grant)
            if status != 200:
                self.metrics.request_done(status, grant.tenant.name)

    def _finished(self, status, started, prompt, cached, completion, first_token_at, grant: Grant) -> None:
        m = self.metrics
        tenant = grant.tenant.name
        m.request_done(status, tenant)
        cost = self.tenancy.settle(grant, prompt, cached, completion)
        m.usage(prompt, cached, completion, tenant, cost)
        ttft = first_token_at - started if first_token_at else None
        m.latency(time.time() - started, ttft, completion)
