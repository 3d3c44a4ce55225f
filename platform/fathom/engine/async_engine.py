"""AsyncEngine: per-request async streams of deltas over an engine step loop.

`generate()` queues a request and yields one `RequestOutput` per step in which it made
progress; the last has `finished=True`. The step loop (`fathom.engine.engine_loop`) runs
either in the engine core process (`from_settings` with `engine_core_process`, W=1: the
loop gets a GIL of its own, see `fathom.engine.core_process`) or on a background thread of
this process (W>1, whose forward already runs in rank workers; an injected `LLMEngine`).
Either way callers only talk to it through messages, and each step's outputs come back in
one batch, handed to each consumer's event loop with one `call_soon_threadsafe`. If the
loop fails (a rank worker or the core process died), every in-flight stream raises
`EngineDeadError` and the engine reports itself unhealthy; nothing hangs.
"""

import asyncio
import atexit
import threading
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from fathom.engine.engine_loop import EngineLoop, QueueInbox
from fathom.engine.errors import EngineDeadError
from fathom.engine.llm_engine import LLMEngine
from fathom.engine.outputs import EngineStats, RequestOutput
from fathom.engine.sampling_params import SamplingParams


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


_LIVE: "weakref.WeakSet[AsyncEngine]" = weakref.WeakSet()


@atexit.register
def _stop_live_engines() -> None:
    """Stop every step loop before the interpreter finalises: a daemon thread that is still
    freeing tensors when finalisation stops it aborts the whole process (exit code 134), and
    a core process must not outlive its parent's intent."""
    for engine in list(_LIVE):
        engine.stop_loop(timeout_s=5)


class _ThreadCore:
    """The step loop on a thread of this process, over an `LLMEngine` built here."""

    def __init__(self, engine: LLMEngine, sink, idle_wait_s: float, health_interval_s: float):
        self.engine = engine
        self.inbox = QueueInbox()
        self.loop = EngineLoop(engine, self.inbox, sink, idle_wait_s, health_interval_s)
        self.thread = threading.Thread(target=self.loop.run, name="fathom-engine-loop", daemon=True)
        self.thread.start()

    def send(self, msg: tuple) -> bool:
        self.inbox.put(msg)
        return self.thread.is_alive()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def check_health(self) -> None:
        try:
            self.engine.executor.check_health()
        except EngineDeadError as e:
            self.loop.dead = e
            self.inbox.put(("noop",))  # let the loop end and fail in-flight streams
            raise

    def stop(self, timeout_s: float) -> None:
        self.inbox.put(("stop",))
        self.thread.join(timeout_s)

    def shutdown_executor(self) -> None:
        self.engine.executor.shutdown()


class AsyncEngine:
    def __init__(self, engine: LLMEngine, idle_wait_s: float = 0.5, health_interval_s: float = 5.0):
        """Thread mode: `engine` steps on a background thread of this process."""
        self._setup(engine.tokenizer, engine.config.max_model_len, engine.stats())
        self.engine: LLMEngine | None = engine
        self._core = _ThreadCore(engine, self, idle_wait_s, health_interval_s)

    def _setup(self, tokenizer, max_model_len: int, stats: EngineStats) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self._streams: dict[str, _Stream] = {}
        self._dead: BaseException | None = None
        self._stopping = False
        self._stats = stats
        _LIVE.add(self)

    @classmethod
    def from_settings(cls, settings, policy=None) -> "AsyncEngine":
        """Load the model and start the step loop: W=1 in the engine core process (unless
        `settings.engine_core_process` is off: then here), W>1 on Ray rank workers."""
        from fathom.engine.factory import create_engine

        if settings.tensor_parallel_size == 1 and settings.engine_core_process:
            return cls._in_core_process(settings, policy)
        return cls(create_engine(settings, policy=policy))

    @classmethod
    def _in_core_process(cls, settings, policy) -> "AsyncEngine":
        import torch

        from fathom.engine.core_process import ProcessCore
        from fathom.engine.factory import load_tokenizer, resolve_model_dir

        self = cls.__new__(cls)
        self.engine = None  # it lives in the child
        self._core = ProcessCore(settings, policy, self, threads=torch.get_num_threads())
        max_len, stats = self._core.ready
        self._setup(load_tokenizer(resolve_model_dir(settings)), max_len, stats)
        self._core.start_reading()
        return self

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
        self._streams[request_id] = stream
        if not self._core.send(("add", request_id, list(prompt_token_ids), sampling_params, kwargs)) or self._dead:
            self._streams.pop(request_id, None)  # the loop ended meanwhile: nobody would answer
            self._raise_if_dead()
            raise EngineDeadError("the engine is shut down")
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:  # the consumer went away (cancelled, closed): free its blocks now
                self._streams.pop(request_id, None)
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Abort a request: its KV blocks are freed and its stream ends with finish_reason 'abort'."""
        self._core.send(("abort", request_id))

    def set_weight(self, fairness_key: str, weight: float) -> None:
        """Tell the scheduling policy (if it takes weights) a fairness key's weight."""
        self._core.send(("weight", fairness_key, weight))

    def stats(self) -> EngineStats:
        return replace(self._stats, healthy=self.healthy)

    @property
    def healthy(self) -> bool:
        return self._dead is None and self._core.alive()

    def check_health(self) -> None:
        """Raise EngineDeadError if the loop, the core process or the rank workers have failed."""
        self._raise_if_dead()
        try:
            self._core.check_health()
        except EngineDeadError as e:
            self._dead = self._dead or e
            raise

    async def shutdown(self) -> None:
        await asyncio.to_thread(self.stop_loop, 30)
        self._core.shutdown_executor()

    def stop_loop(self, timeout_s: float) -> None:
        """Stop the step loop (in-flight streams end with EngineDeadError) and wait for it."""
        self._stopping = True
        self._core.stop(timeout_s)

    def _raise_if_dead(self) -> None:
        if self._dead is not None:
            raise self._dead if isinstance(self._dead, EngineDeadError) else EngineDeadError(str(self._dead))
        if self._stopping:
            raise EngineDeadError("the engine is shut down")

    # ----- sink of the step loop (its thread, or the core process's reader thread)
    def outputs(self, batch: list[RequestOutput], stats: EngineStats) -> None:
        self._stats = stats
        items: dict[asyncio.AbstractEventLoop, list] = {}
        for out in batch:
            stream = self._streams.pop(out.request_id, None) if out.finished else self._streams.get(out.request_id)
            if stream is not None:
                items.setdefault(stream.loop, []).append((stream.queue, out))
        for loop, pairs in items.items():
            _post(loop, pairs)

    def rejected(self, request_id: str, error: BaseException) -> None:
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            _post(stream.loop, [(stream.queue, error)])

    def failed(self, error: EngineDeadError) -> None:
        self._dead = self._dead or error
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            _post(stream.loop, [(stream.queue, self._dead)])


def _post(loop: asyncio.AbstractEventLoop, pairs: list) -> None:
    """Put each (queue, item) on `loop`'s thread, with one wake-up for all of them."""
    try:
        loop.call_soon_threadsafe(_put_all, pairs)
    except RuntimeError:  # the consumer's event loop is closed: nobody is listening
        pass


def _put_all(pairs: list) -> None:
    for queue, item in pairs:
        queue.put_nowait(item)
