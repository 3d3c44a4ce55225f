"""The model replica: one `AsyncEngine` (one model instance, its W rank workers) behind the
OpenAI protocol. Plain class; `fathom.serve.app` makes it a Ray Serve deployment, and tests
or benchmarks may use it in-process. Implements the backend contract of
`fathom.serve.frontend` (`complete`, `stream`, `tokenize`, `ready`).

Streaming is coalesced: each stream emits at most one chunk per `min_interval` seconds, where
min_interval = active streams / `stream_chunks_per_s`. With few streams every token is its own
chunk; when many streams would exceed what Ray Serve's streaming path carries (~1-2k chunks/s
per process), each chunk carries the several tokens that arrived meanwhile. The engine never
waits for a client: tokens accumulate in the stream's `Choice`s until taken.
"""

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fathom.api.openai_error import APIError
from fathom.api.serve import ServeSettings
from fathom.engine.errors import EngineDeadError, InvalidRequestError, RequestFailedError
from fathom.engine.fair_share import FairSharePolicy
from fathom.serve.frontend import Completion, StreamEnd
from fathom.serve.preprocess import EngineCall, engine_error, prepare
from fathom.serve.protocol import chat_chunk, completion_chunk, new_id, now
from fathom.serve.reasoning import make_parser
from fathom.serve.replica_tenancy import cap_calls, meter_abandoned, replica_tenancy_client
from fathom.serve.responses import Choice, TokenStrings
from fathom.serve.tokenization import detokenize, tokenize
from fathom.serve.tool_calls import detect_parser, make_tool_stream
from fathom.telemetry.generation import OPERATIONS, traced_outputs
from fathom.telemetry.metrics import process_metrics
from fathom.telemetry.runtime import replica_name, start_telemetry
from fathom.telemetry.spans import RequestTrace, start_request_trace
from fathom.tenancy.admission import RequestTenancy

logger = logging.getLogger("fathom.serve")


class _Request:
    """The engine calls of one API request and their choices, filled by pump tasks."""

    def __init__(self, server: "ModelServer", kind: str, req: Any, calls: list[EngineCall]):
        self.kind, self.req, self.calls = kind, req, calls
        self.sequences = 0  # engine sequences this request runs (set by ModelServer._start)
        self.id = new_id("chatcmpl" if kind == "chat" else "cmpl")
        self.created = now()
        self.engine_ids = [f"{self.id}-{i}" for i in range(len(calls))]
        self.choices: list[Choice] = []
        for call in calls:
            for j in range(call.params.n):
                parser = make_parser(server.reasoning_parser, call.prompt_text) if kind == "chat" else None
                echo = call.prompt_text if getattr(req, "echo", False) else ""
                tools = make_tool_stream(req.tool_mode(), server.tool_parser, req.parallel_tool_calls is not False) \
                    if kind == "chat" else None
                self.choices.append(Choice(call.choice_offset + j, kind == "chat", server.strings, parser,
                                           echo, call.params.logprobs is not None, req.return_tokens_as_token_ids,
                                           tools))
        self.usage = [(len(c.prompt_ids), 0, 0) for c in calls]  # (prompt, cached, completion) per call
        self.first_token_at: float | None = None
        self.trace_context: dict | None = None  # the ingress's W3C carrier (fathom.telemetry)
        self.error: APIError | None = None
        self.pending = len(calls)
        self.wake = asyncio.Event()
        self._pause: asyncio.Future | None = None

    async def pause(self, seconds: float) -> None:
        """Let tokens gather for up to `seconds`; returns at once when the request ends (its
        last tokens, usage and [DONE] must not wait out the coalescing interval)."""
        loop = asyncio.get_running_loop()
        self._pause = loop.create_future()
        timer = loop.call_later(seconds, _resolve, self._pause)
        try:
            await self._pause
        finally:
            timer.cancel()
            self._pause = None

    def call_ended(self) -> None:
        self.pending -= 1
        self.wake.set()
        if (not self.pending or self.error is not None) and self._pause is not None:
            _resolve(self._pause)

    def usage_dict(self) -> dict:
        prompt = sum(u[0] for u in self.usage)
        cached = sum(u[1] for u in self.usage)
        completion = sum(u[2] for u in self.usage)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                 "prompt_tokens_details": {"cached_tokens": cached}}
        if any(c.parser is not None for c in self.choices):  # a reasoning model: how much was thinking
            usage["completion_tokens_details"] = {"reasoning_tokens": sum(c.reasoning_tokens for c in self.choices)}
        return usage


class ModelServer:
    """One model instance serving OpenAI requests. `engine_factory(EngineSettings)` builds the
    engine (default: `fathom.worker.factory.start_async_engine`); it is injected so the shell stays thin."""

    def __init__(self, settings: ServeSettings | dict, engine_factory: Callable | None = None):
        self.settings = ServeSettings.model_validate(settings) if isinstance(settings, dict) else settings
        self.policy = FairSharePolicy() if self.settings.tenants else None  # fair share among tenants
        self._weights: dict[str, float] = {}  # tenant weights last sent to the engine's policy
        self.tenancy_client = replica_tenancy_client(self.settings)  # meters streams abandoned by clients
        if engine_factory is None:
            from fathom.worker.factory import start_async_engine

            engine_factory = functools.partial(start_async_engine, policy=self.policy)
        t0 = time.monotonic()
        self.engine = engine_factory(self.settings.engine)
        self.model_name = self.settings.model_name
        self.max_model_len = self.engine.max_model_len
        self.strings = TokenStrings(self.engine.tokenizer)
        self.reasoning_parser = self.settings.engine.reasoning_parser  # the --reasoning-parser flag
        if self.reasoning_parser == "auto":  # the built-in demo model thinks (R1-style); others: say so
            self.reasoning_parser = "deepseek_r1" if self.settings.engine.model is None else "none"
        tok = self.engine.tokenizer
        self.tool_parser = self.settings.engine.tool_call_parser  # the --tool-call-parser flag
        if self.tool_parser == "auto":
            self.tool_parser = detect_parser(tok.chat_template if tok is not None else None)  # V3/R1 or V3.1
        self.active_streams = 0
        self.active_sequences = 0  # engine sequences (prompts × n) of the requests in flight here
        self.generated_tokens = 0  # cumulative over every engine request, aborted ones included
        self.replica = replica_name()
        start_telemetry("replica", before_push=self._record_engine_stats)
        logger.info("model %s loaded in %.1fs", self.model_name, time.monotonic() - t0)

    # ------------------------------------------------------------------ backend contract

    async def ready(self, routing_key: int | None = None) -> dict:
        return {"root": self.settings.engine.model or "fathom-demo", "max_model_len": self.max_model_len}

    async def complete(self, kind: str, req: Any, routing_key: int | None = None,
                       tenancy: RequestTenancy | None = None, trace_context: dict | None = None) -> Completion | APIError:
        try:
            r = self._start(kind, req, tenancy)
        except APIError as e:
            return e
        r.trace_context = trace_context
        try:
            await self._run(r)
        finally:
            self.active_sequences -= r.sequences
            await self._abort(r)
        if r.error is not None:
            return r.error
        body = {"id": r.id, "object": "chat.completion" if kind == "chat" else "text_completion",
                "created": r.created, "model": self.model_name, "choices": [c.result() for c in r.choices],
                "usage": r.usage_dict(), "system_fingerprint": None}
        return Completion(body, r.first_token_at)

    async def stream(self, kind: str, req: Any, routing_key: int | None = None,
                     tenancy: RequestTenancy | None = None, trace_context: dict | None = None) -> AsyncIterator[Any]:
        try:
            r = self._start(kind, req, tenancy)
        except APIError as e:
            yield e
            return
        r.trace_context = trace_context
        self.active_streams += 1
        pumps = [asyncio.create_task(self._pump(r, i)) for i in range(len(r.calls))]
        ended = False
        try:
            async for item in self._chunks(r):
                ended = ended or isinstance(item, StreamEnd | APIError)
                yield item
        finally:
            self.active_streams -= 1
            self.active_sequences -= r.sequences
            for task in pumps:
                task.cancel()
            await self._abort(r)
            if not ended and r.tenancy is not None:  # the client went away: meter what was generated
                meter_abandoned(self.tenancy_client, self.settings.engine.pricing, self.model_name, r.tenancy,
                                *(sum(u[k] for u in r.usage) for k in range(3)))

    async def tokenize(self, kind: str, req: Any, routing_key: int | None = None) -> dict | APIError:
        """/tokenize (kind "tokenize") or /detokenize ("detokenize"): the response body."""
        try:
            if kind == "tokenize":
                return tokenize(req, self.engine.tokenizer, self.max_model_len)
            return detokenize(req, self.engine.tokenizer)
        except APIError as e:
            return e

    async def stats(self, routing_key: int | None = None) -> dict:
        """This replica's engine snapshot (`routing_key` lets a caller aim at the replica that
        prefix affinity picks for a prompt)."""
        s = self.engine.stats()
        return {"num_running": s.num_running, "num_waiting": s.num_waiting, "kv_cache_usage": s.kv_cache_usage,
                "active_streams": self.active_streams, "generated_tokens": self.generated_tokens,
                "healthy": s.healthy}

    async def placement(self, routing_key: int | None = None) -> list[str]:
        """Ray node id of each rank of this instance (rank 0 first; W=1 runs in this replica)."""
        import ray

        nodes = await asyncio.to_thread(self.engine.rank_nodes)
        return [ray.get_runtime_context().get_node_id()] if nodes is None else nodes  # [] once shut down

    def check_health(self) -> None:
        """Ray Serve's health check: a dead engine makes Serve replace this replica."""
        self.engine.check_health()

    async def shutdown(self) -> None:
        await self.engine.shutdown()

    # ------------------------------------------------------------------ internals

    def _start(self, kind: str, req: Any, tenancy: RequestTenancy | None = None) -> _Request:
        skip = req.skip_special_tokens and not (kind == "chat" and (self.reasoning_parser != "none"
                                                                     or req.tool_mode() == "auto"))
        calls = prepare(kind, req, self.engine.tokenizer, self.max_model_len, skip_special_tokens=skip,
                        reasoning_parser=self.reasoning_parser, tool_parser=self.tool_parser)
        if tenancy is not None:
            calls = cap_calls(tenancy, calls)
            if self.policy is not None and self._weights.get(tenancy.tenant) != tenancy.weight:
                self._weights[tenancy.tenant] = tenancy.weight
                self.engine.set_weight(tenancy.tenant, tenancy.weight)  # the policy lives with the loop
        sequences = sum(c.params.n for c in calls)
        cap = self.settings.max_ongoing_requests
        if self.active_sequences and self.active_sequences + sequences > cap:
            raise APIError(503, f"This model replica is running {self.active_sequences} sequences "
                           f"(limit {cap}, counting prompts × n); retry shortly.", code="overloaded",
                           retry_after=1)
        r = _Request(self, kind, req, calls)
        r.tenancy = tenancy
        r.sequences = sequences
        self.active_sequences += sequences
        return r

    async def _run(self, r: _Request) -> None:
        await asyncio.gather(*(self._pump(r, i) for i in range(len(r.calls))))

    async def _pump(self, r: _Request, i: int) -> None:
        """Feed engine call i's deltas into the request's choices."""
        call = r.calls[i]
        try:
            who = r.tenancy.engine_kwargs() if r.tenancy else {"priority": r.req.priority, "fairness_key": r.req.user}
            rt = self._trace(r, i)
            gen = traced_outputs(self.engine.generate(r.engine_ids[i], call.prompt_ids, call.params, **who,
                                                      trace_context=rt.carrier), rt)
            async for out in gen:
                if r.first_token_at is None and out.outputs:
                    r.first_token_at = time.time()
                if out.prompt_logprobs is not None:  # echo with logprobs: before the first token's
                    for j in range(call.params.n):
                        r.choices[call.choice_offset + j].add_prompt_logprobs(out.prompt_token_ids, out.prompt_logprobs)
                for o in out.outputs:
                    r.choices[call.choice_offset + o.index].add(o)
                u = out.usage
                r.usage[i] = (u.prompt_tokens, u.cached_tokens, u.completion_tokens)
                r.wake.set()
        except InvalidRequestError as e:
            r.error = r.error or engine_error(e)
        except EngineDeadError as e:
            r.error = r.error or APIError(503, f"model replica failed: {e}", code="engine_dead", retry_after=5)
        except RequestFailedError as e:  # this request alone failed; the replica serves on
            logger.warning("request %s failed: %s", r.id, e)
            r.error = r.error or APIError(500, f"generation failed for this request: {e}", code="request_failed")
        except asyncio.CancelledError:
            raise
        except Exception as e:
            logger.exception("engine call failed")
            r.error = r.error or APIError(500, f"generation failed ({type(e).__name__})", code="internal_error")
        finally:
            self.generated_tokens += r.usage[i][2]
            r.call_ended()

    def _trace(self, r: _Request, i: int) -> RequestTrace:
        """The span of engine call i, under the ingress's route span (fathom.telemetry)."""
        p = r.calls[i].params
        return start_request_trace(r.trace_context, model=self.model_name, operation=OPERATIONS[r.kind],
                                   request_id=r.engine_ids[i], replica=self.replica,
                                   tenant=r.tenancy.tenant if r.tenancy else None,
                                   max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p,
                                   prompt=r.calls[i].prompt_text)

    def _record_engine_stats(self) -> None:
        process_metrics().engine_stats(self.model_name, self.replica, self.engine.stats())

    async def _abort(self, r: _Request) -> None:
        for rid in r.engine_ids:
            res = self.engine.abort(rid)
            if asyncio.iscoroutine(res):
                await res

    def _min_interval(self) -> float:
        return self.active_streams / self.settings.stream_chunks_per_s

    async def _chunks(self, r: _Request) -> AsyncIterator[Any]:
        """SSE text as the pumps make progress, coalesced; first item may be an APIError."""
        make = chat_chunk if r.kind == "chat" else completion_chunk
        include_usage = r.req.include_usage()
        sent_any, last = False, 0.0
        while True:
            await r.wake.wait()
            wait = last + self._min_interval() - time.monotonic()
            if sent_any and wait > 0 and r.pending:
                await r.pause(wait)  # let more tokens gather into this chunk
            r.wake.clear()
            if r.error is not None:
                yield r.error  # before any text: the HTTP status; after: an SSE error event (and counted)
                return
            parts = [c.take() for c in r.choices if c.has_news]
            text = _sse(make(r.id, r.created, self.model_name, parts)) if parts else ""
            if not r.pending:
                if include_usage:
                    text += _sse(make(r.id, r.created, self.model_name, [], r.usage_dict()))
                yield text + "data: [DONE]\n\n"
                p, c, g = (sum(u[k] for u in r.usage) for k in range(3))
                yield StreamEnd(p, c, g, r.first_token_at)
                return
            if text:
                sent_any, last = True, time.monotonic()
                yield text


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"
