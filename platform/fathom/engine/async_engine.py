"""AsyncEngine: the step loop on a background thread, per-request async streams of deltas.

`generate()` queues a request and yields one `RequestOutput` per step in which it made
progress; the last has `finished=True`. The engine itself (`LLMEngine`) is touched only by
the loop thread: callers talk to it through a thread-safe inbox, outputs come back through
`loop.call_soon_threadsafe`. If a step fails (a rank worker died), every in-flight stream
raises `EngineDeadError` and the engine reports itself unhealthy; nothing hangs.
"""

import asyncio
import atexit
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from fathom.engine.errors import EngineDeadError, EngineError
from fathom.engine.llm_engine import LLMEngine
from fathom.engine.outputs import EngineStats, RequestOutput
from fathom.engine.sampling_params import SamplingParams


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the consumer's event loop is closed: nobody is listening
            pass


_LIVE: "weakref.WeakSet[AsyncEngine]" = weakref.WeakSet()


@atexit.register
def _stop_live_engines() -> None:
    """Join every step-loop thread before the interpreter finalises: a daemon thread that is
    still freeing tensors when finalisation stops it aborts the whole process (exit code 134)."""
    for engine in list(_LIVE):
        engine.stop_loop(timeout_s=5)


class AsyncEngine:
    def __init__(self, engine: LLMEngine, idle_wait_s: float = 0.5, health_interval_s: float = 5.0):
        self.engine = engine
        self.health_interval_s = health_interval_s
        self._last_probe = time.monotonic()
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.config.max_model_len
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._idle_wait_s = idle_wait_s
        self._dead: BaseException | None = None
        self._stopping = False
        self._stats = engine.stats()
        self._thread = threading.Thread(target=self._run, name="fathom-engine-loop", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    @classmethod
    def from_settings(cls, settings, policy=None) -> "AsyncEngine":
        """Load the model (W=1 here, W>1 on Ray rank workers) and start the step loop."""
        from fathom.engine.factory import create_engine

        return cls(create_engine(settings, policy=policy))

    # ----- caller side (any thread / event loop)
    async def generate(self, request_id: str, prompt_token_ids: list[int], sampling_params: SamplingParams,
                       *, priority: int = 0, fairness_key: str | None = None,
                       cache_salt: str | None = None,
                       trace_context: dict[str, str] | None = None) -> AsyncIterator[RequestOutput]:
        """Stream deltas of one request (see docs/architecture.md for the contract).
        `trace_context`: the caller's W3C carrier; the forward steps serving it link to it."""
        self._raise_if_dead()
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        kwargs = {"priority": priority, "fairness_key": fairness_key, "cache_salt": cache_salt,
                  "trace_context": trace_context}
        self._inbox.put(("add", request_id, (list(prompt_token_ids), sampling_params, kwargs), stream))
        finished = False
        try:
            while not finished:
                item = await self._next(stream)
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:  # the consumer went away (cancelled, closed): free its blocks now
                self.abort(request_id)

    async def _next(self, stream: _Stream):
        while True:
            try:
                return await asyncio.wait_for(stream.queue.get(), timeout=1.0)
            except TimeoutError:
                if not self._thread.is_alive():  # the loop is gone and can no longer answer
                    return EngineDeadError(f"the engine is dead: {self._dead or 'shut down'}")

    def abort(self, request_id: str) -> None:
        """Abort a request: its KV blocks are freed and its stream ends with finish_reason 'abort'."""
        self._inbox.put(("abort", request_id, None, None))

    def stats(self) -> EngineStats:
        return replace(self._stats, healthy=self.healthy)

    @property
    def healthy(self) -> bool:
        return self._dead is None and self._thread.is_alive()

    def check_health(self) -> None:
        """Raise EngineDeadError if the loop or the executor (rank workers) has failed."""
        self._raise_if_dead()
        try:
            self.engine.executor.check_health()
        except EngineDeadError as e:
            self._dead = e
            self._inbox.put(("noop", "", None, None))  # let the loop fail in-flight streams
            raise

    async def shutdown(self) -> None:
        await asyncio.to_thread(self.stop_loop, 30)
        self.engine.executor.shutdown()

    def stop_loop(self, timeout_s: float) -> None:
        """Stop the step loop (in-flight streams end with EngineDeadError) and join its thread."""
        self._stopping = True
        self._inbox.put(("noop", "", None, None))
        self._thread.join(timeout_s)

    def _raise_if_dead(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the engine is dead: {self._dead}")
        if self._stopping:
            raise EngineDeadError("the engine is shut down")

    # ----- loop thread
    def _run(self) -> None:
        while not self._stopping and self._dead is None:
            try:
                self._drain_inbox(block=not self.engine.has_unfinished_requests())
                outputs = self.engine.step() if self.engine.has_unfinished_requests() else []
                self._stats = self.engine.stats()  # before delivery: consumers may read it at once
                self._deliver(outputs)
            except Exception as e:  # noqa: BLE001 - any failure kills the instance, loudly
                self._dead = e if isinstance(e, EngineError) else EngineDeadError(f"engine step failed: {e!r}")
        self._fail_all(self._dead or EngineDeadError("the engine is shut down"))

    def _drain_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=self._idle_wait_s) if block else self._inbox.get_nowait()
        except queue.Empty:
            if block:
                self._probe_when_idle()
            return
        while True:
            self._handle(*item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _probe_when_idle(self) -> None:
        """With nothing in flight, actively ping the rank workers now and then (if the executor
        can), so a dead worker turns the instance unhealthy before the next request arrives."""
        ping = getattr(self.engine.executor, "ping", None)
        now = time.monotonic()
        if ping is not None and now - self._last_probe >= self.health_interval_s:
            self._last_probe = now
            ping()

    def _handle(self, kind: str, request_id: str, args, stream: _Stream | None) -> None:
        if kind == "add":
            prompt, params, kwargs = args
            try:
                self.engine.add_request(request_id, prompt, params, **kwargs)
            except Exception as e:  # noqa: BLE001 - admission errors go to the caller's stream
                stream.put(e)
                return
            self._streams[request_id] = stream
        elif kind == "abort":
            self.engine.abort_request(request_id)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put(out)
                if out.finished:
                    del self._streams[out.request_id]

    def _fail_all(self, error: BaseException) -> None:
        self.engine.fail_all()
        err = error if isinstance(error, EngineDeadError) else EngineDeadError(str(error))
        for stream in self._streams.values():
            stream.put(err)
        self._streams.clear()
        while True:  # requests that arrived after the failure
            try:
                kind, _, _, stream = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                stream.put(err)
