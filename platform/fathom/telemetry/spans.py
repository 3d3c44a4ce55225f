"""Span helpers at Fathom's seams: the thin layer the ingress, replica and rank workers call.

The span tree of one request (names are stable; tests and dashboards rely on them)::

    POST /v1/chat/completions            SERVER  ingress   (fathom.telemetry.http)
    ├── fathom.auth                      INTERNAL ingress  fathom.tenant
    ├── fathom.limits                    INTERNAL ingress  fathom.limit on rejection
    ├── fathom.route                     INTERNAL ingress  gen_ai.request.model
    └── chat {model}                     INTERNAL replica  gen_ai.*, fathom.* (RequestTrace)
        ├── fathom.queue                          replica  arrival -> first scheduled
        ├── fathom.prefill                        replica  events: prefill_chunk (num_tokens)
        ├── fathom.decode                         replica  fathom.decode.tokens
        └── fathom.detokenize                     replica  aggregated: duration = summed detokenising time
    fathom.forward (one per engine step)  INTERNAL rank     LINKED to every `chat` span in the batch

Children of ``chat {model}`` are created when the request ends, from the timestamps it
collected: no span is left open by an aborted stream and the hot path only stores floats.
Timestamps are ``time.time()`` seconds (wall clock; spans need epoch nanoseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from fathom.telemetry import attributes as A
from fathom.telemetry.http import note_request
from fathom.telemetry.propagation import Carrier, extract, inject, span_context_of
from fathom.telemetry.tracing import get_tracer


def _ns(t: float) -> int:
    return int(t * 1e9)


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, **kw) -> Iterator[trace.Span]:
    """A child span of the current one; an escaping exception is recorded and sets ERROR."""
    with get_tracer().start_as_current_span(name, attributes=dict(attributes or {}), **kw) as s:
        yield s


@contextlib.contextmanager
def _gate_span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[trace.Span]:
    """A span around a check that may refuse the request by raising an error with an HTTP
    ``status`` (4xx): the refusal is recorded with ``reject``; other errors as exceptions."""
    with span(name, attributes) as s:
        try:
            yield s
        except Exception as e:
            status = getattr(e, "status", None)
            if isinstance(status, int) and 400 <= status < 500:
                reject(s, status, getattr(e, "message", None) or str(e), code=getattr(e, "code", None))
            raise


def auth_span() -> contextlib.AbstractContextManager[trace.Span]:
    """Wraps API-key authentication; call ``set_tenant(span, name)`` on success. A 401/403
    raised inside is recorded as the refusal."""
    return _gate_span("fathom.auth")


def limits_span(tenant: str | None = None) -> contextlib.AbstractContextManager[trace.Span]:
    """Wraps rate/concurrency/budget checks; a 429 raised inside (or ``reject(span, 429, ...)``)
    is recorded as the refusal."""
    return _gate_span("fathom.limits", {A.FATHOM_TENANT: tenant} if tenant else None)


def route_span(model: str, operation: str = "chat") -> contextlib.AbstractContextManager[trace.Span]:
    """Wraps picking a replica and the handle call (its stream included, for streaming).
    Also labels the HTTP request's metrics with ``model``."""
    note_request(model=model)
    return span("fathom.route", {A.GEN_AI_REQUEST_MODEL: model, A.GEN_AI_OPERATION_NAME: operation})


@dataclass
class RouteSpan:
    """``fathom.route`` for a call that outlives the current context (a streamed handle call):
    not made current, so it can end in another task; ``carrier`` goes with the call."""

    span: trace.Span
    carrier: Carrier

    def reject(self, status_code: int, message: str) -> None:
        reject(self.span, status_code, message)

    def end(self, error: BaseException | None = None) -> None:
        """End the span; ``error`` (not a cancellation: the client left) is recorded on it."""
        if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
            self.span.add_event("cancelled")
        elif error is not None:
            self.span.record_exception(error)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            self.span.set_attribute(A.ERROR_TYPE, type(error).__qualname__)
        self.span.end()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end(exc)


def open_route_span(model: str, operation: str = "chat") -> RouteSpan:
    """Start ``fathom.route`` under the current span (end it with ``.end()``); labels the HTTP
    request's metrics and SERVER span with ``model``."""
    note_request(model=model)
    s = get_tracer().start_span(
        "fathom.route", attributes={A.GEN_AI_REQUEST_MODEL: model, A.GEN_AI_OPERATION_NAME: operation}
    )
    return RouteSpan(s, inject(trace.set_span_in_context(s)))


def set_tenant(s: trace.Span, tenant: str) -> None:
    """Record the authenticated tenant on ``s`` and on the HTTP request (span and metrics)."""
    s.set_attribute(A.FATHOM_TENANT, tenant)
    note_request(tenant=tenant)


def reject(
    s: trace.Span, status_code: int, message: str, limit: str | None = None, code: str | None = None
) -> None:
    """Mark ``s`` as the place a request was refused (401, 403, 429, ...); ``limit`` names the
    limit hit, ``code`` the API error code (``invalid_api_key``, ``rate_limit_exceeded``...)."""
    s.set_status(Status(StatusCode.ERROR, message))
    s.set_attribute(A.ERROR_TYPE, str(status_code))
    if limit:
        s.set_attribute(A.FATHOM_LIMIT, limit)
    if code:
        s.set_attribute(A.FATHOM_ERROR_CODE, code)
    s.add_event("rejected", {A.HTTP_RESPONSE_STATUS_CODE: status_code, "message": message})


@dataclass
class RequestTrace:
    """One generation request inside a model replica: the ``{operation} {model}`` span and, at
    the end, its queue / prefill / decode / detokenize children.

    Feed it what the replica observes: ``tokens(n)`` per delta and, at the end,
    ``observe_engine(output.metrics)`` (the engine's own stamps of scheduling, prefill chunks,
    first token and detokenising); or, for callers without them, ``scheduled()``,
    ``prefill_chunk()``, ``first_token()`` and ``with detokenize():``. Then ``finish()`` or
    ``fail()`` (idempotent).
    ``carrier`` is this span's W3C context: give it to the engine so forward steps link to it.
    """

    span: trace.Span
    arrival: float
    carrier: Carrier
    model: str = "unknown"
    scheduled_at: float | None = None
    first_token_at: float | None = None
    output_tokens: int = 0
    chunks: list[tuple[float, int]] = field(default_factory=list)
    detok_first: float | None = None
    detok_busy: float = 0.0
    spec_decode: tuple[int, int] = (0, 0)  # speculative decoding: (drafts verified, accepted)
    ended: bool = False

    def scheduled(self, t: float | None = None) -> None:
        if self.scheduled_at is None:
            self.scheduled_at = time.time() if t is None else t

    def prefill_chunk(self, num_tokens: int, t: float | None = None) -> None:
        t = time.time() if t is None else t
        self.scheduled(t)
        self.chunks.append((t, num_tokens))

    def first_token(self, t: float | None = None) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.time() if t is None else t
            self.scheduled(self.first_token_at)

    def tokens(self, n: int, t: float | None = None) -> None:
        """``n`` new output tokens arrived (the first call also marks the first token)."""
        if n > 0:
            self.first_token(t)
            self.output_tokens += n

    @contextlib.contextmanager
    def detokenize(self) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            end = time.time()
            self.detok_first = start if self.detok_first is None else self.detok_first
            self.detok_busy += end - start

    def observe_engine(self, metrics: Any) -> None:
        """Take the engine's own stamps (``fathom.engine.outputs.RequestMetrics``: monotonic
        seconds, prefill chunks, detokenising time), converted to wall-clock time."""
        shift = time.time() - time.monotonic()
        if metrics.first_scheduled_time is not None:
            self.scheduled_at = metrics.first_scheduled_time + shift
        if metrics.first_token_time is not None:
            self.first_token_at = metrics.first_token_time + shift
        self.chunks = [(t + shift, n) for t, n in getattr(metrics, "prefill_chunks", ())]
        self.spec_decode = (getattr(metrics, "spec_draft_tokens", 0), getattr(metrics, "spec_accepted_tokens", 0))
        busy = getattr(metrics, "detokenize_time", 0.0)
        if busy:
            self.detok_busy = busy
            self.detok_first = self.detok_first or self.first_token_at

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.arrival

    def finish(
        self,
        finish_reasons: Iterable[str] = (),
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cached_tokens: int | None = None,
        completion: str | None = None,
        t: float | None = None,
    ) -> None:
        """Close the request's spans; usage numbers default to what was observed."""
        if self.ended:
            return
        end = time.time() if t is None else t
        s = self.span
        s.set_attribute(A.GEN_AI_RESPONSE_FINISH_REASONS, [r for r in finish_reasons if r])
        if input_tokens is not None:
            s.set_attribute(A.GEN_AI_USAGE_INPUT_TOKENS, input_tokens)
        s.set_attribute(
            A.GEN_AI_USAGE_OUTPUT_TOKENS, self.output_tokens if output_tokens is None else output_tokens
        )
        if cached_tokens is not None:
            s.set_attribute(A.FATHOM_CACHED_TOKENS, cached_tokens)
        if completion is not None and A.record_content_enabled():
            s.set_attribute(A.GEN_AI_COMPLETION, completion)
        self._end(end)

    def fail(self, exc: BaseException | str, t: float | None = None) -> None:
        """Close the request's spans with ERROR status and the exception recorded."""
        if self.ended:
            return
        if isinstance(exc, BaseException):
            self.span.record_exception(exc)
            self.span.set_attribute(A.ERROR_TYPE, type(exc).__qualname__)
            message = f"{type(exc).__name__}: {exc}"
        else:
            self.span.set_attribute(A.ERROR_TYPE, "error")
            message = exc
        self.span.set_status(Status(StatusCode.ERROR, message))
        # Without the engine's stamps (it failed before reporting any) the stages are unknown:
        # record none rather than a queue span that would claim the whole time was waiting.
        self._end(time.time() if t is None else t, stages_known=self.scheduled_at is not None)

    def _end(self, end: float, stages_known: bool = True) -> None:
        self.ended = True
        if self.ttft is not None:
            self.span.set_attribute(A.FATHOM_TTFT, self.ttft)
        if self.scheduled_at is not None:
            self.span.set_attribute(A.FATHOM_QUEUE_TIME, self.scheduled_at - self.arrival)
        drafts, accepted = self.spec_decode
        if drafts:
            self.span.set_attribute(A.FATHOM_SPEC_DRAFT_TOKENS, drafts)
            self.span.set_attribute(A.FATHOM_SPEC_ACCEPTED_TOKENS, accepted)
            self.span.set_attribute(A.FATHOM_SPEC_ACCEPTANCE_RATE, accepted / drafts)
        if stages_known:
            self._children(end)
        self.span.end(end_time=_ns(end))

    def _children(self, end: float) -> None:
        tracer, parent = get_tracer(), trace.set_span_in_context(self.span)
        queue_end = self.scheduled_at if self.scheduled_at is not None else end
        tracer.start_span("fathom.queue", parent, start_time=_ns(self.arrival)).end(_ns(queue_end))
        if self.scheduled_at is None:
            return
        prefill_end = self.first_token_at if self.first_token_at is not None else end
        prefill = tracer.start_span(
            "fathom.prefill",
            parent,
            start_time=_ns(self.scheduled_at),
            attributes={A.FATHOM_PREFILL_CHUNKS: len(self.chunks)},
        )
        for t, n in self.chunks:
            prefill.add_event("prefill_chunk", {"num_tokens": n}, timestamp=_ns(t))
        prefill.end(_ns(prefill_end))
        if self.first_token_at is not None:
            decode = tracer.start_span(
                "fathom.decode",
                parent,
                start_time=_ns(self.first_token_at),
                attributes={A.FATHOM_DECODE_TOKENS: self.output_tokens},
            )
            decode.end(_ns(end))
        if self.detok_first is not None:  # one aggregated span, not one per token
            detok = tracer.start_span(
                "fathom.detokenize",
                parent,
                start_time=_ns(self.detok_first),
                attributes={"fathom.detokenize.busy_seconds": self.detok_busy},
            )
            detok.end(_ns(self.detok_first + self.detok_busy))


def start_request_trace(
    carrier: Mapping[str, str] | None,
    *,
    model: str,
    operation: str = "chat",
    request_id: str | None = None,
    tenant: str | None = None,
    replica: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    prompt: str | None = None,
    arrival: float | None = None,
) -> RequestTrace:
    """Open ``{operation} {model}`` under the caller's carried context (see ``RequestTrace``);
    ``carrier=None`` means under the current span (caller in the same process and task)."""
    arrival = time.time() if arrival is None else arrival
    attrs: dict[str, Any] = {
        A.GEN_AI_OPERATION_NAME: operation,
        A.GEN_AI_REQUEST_MODEL: model,
        A.GEN_AI_SYSTEM: "fathom",
    }
    optional = {
        A.FATHOM_REQUEST_ID: request_id,
        A.GEN_AI_RESPONSE_ID: request_id,
        A.FATHOM_TENANT: tenant,
        A.FATHOM_REPLICA: replica,
        A.GEN_AI_REQUEST_MAX_TOKENS: max_tokens,
        A.GEN_AI_REQUEST_TEMPERATURE: temperature,
        A.GEN_AI_REQUEST_TOP_P: top_p,
    }
    attrs.update({k: v for k, v in optional.items() if v is not None})
    if prompt is not None and A.record_content_enabled():
        attrs[A.GEN_AI_PROMPT] = prompt
    parent = None if carrier is None else extract(carrier)  # None: under the current span (in-process)
    s = get_tracer().start_span(f"{operation} {model}", parent, attributes=attrs, start_time=_ns(arrival))
    return RequestTrace(span=s, arrival=arrival, carrier=inject(trace.set_span_in_context(s)), model=model)


@contextlib.contextmanager
def forward_step_span(
    carriers: Iterable[Mapping[str, str] | None],
    *,
    rank: int,
    world_size: int,
    num_tokens: int | None = None,
    step: int | None = None,
    replica: str | None = None,
) -> Iterator[trace.Span]:
    """One engine step's forward pass on one rank, LINKED to the requests it serves.

    A step serves many requests, so it is a root span of its own with one link per request
    (not a child of any). It is recorded only when at least one of those requests is sampled.
    """
    contexts = [sc for sc in (span_context_of(c) for c in carriers) if sc is not None]
    if not any(sc.trace_flags.sampled for sc in contexts):
        yield trace.INVALID_SPAN
        return
    attrs: dict[str, Any] = {
        A.FATHOM_RANK: rank,
        A.FATHOM_WORLD_SIZE: world_size,
        A.FATHOM_BATCH_SEQS: len(contexts),
    }
    optional = {A.FATHOM_BATCH_TOKENS: num_tokens, A.FATHOM_STEP: step, A.FATHOM_REPLICA: replica}
    attrs.update({k: v for k, v in optional.items() if v is not None})
    links = [Link(sc) for sc in contexts]
    with get_tracer().start_as_current_span(
        "fathom.forward", context=Context(), links=links, attributes=attrs, kind=SpanKind.INTERNAL
    ) as s:
        yield s
