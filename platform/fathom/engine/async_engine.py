"""AsyncEngine: per-request async streams of deltas over an engine core's step loop.

`generate()` queues a request and yields one `RequestOutput` per step in which it made
progress; the last has `finished=True`. The step loop (`fathom.engine.engine_loop`) runs in
an `EngineCore`: on a thread of this process (`ThreadCore`) or in the engine core process
(`fathom.worker.core_process.ProcessCore`, W=1: the loop gets a GIL of its own). Either way
callers only talk to it through typed messages (`fathom.engine.messages`), and each step's
outputs come back in one batch, handed to each consumer's event loop with one
`call_soon_threadsafe`. If the loop fails (a rank worker or the core process died), every
in-flight stream raises `EngineDeadError` and the engine reports itself unhealthy; nothing hangs.
"""

import asyncio
import atexit
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from fathom.engine.engine_core import EngineCore
from fathom.engine.errors import EngineDeadError
from fathom.engine.messages import (
    AbortRequest,
    AddRequest,
    EngineEvent,
    Failed,
    Rejected,
    SetWeight,
    StepOutputs,
)
from fathom.engine.outputs import EngineStats, RequestOutput
from fathom.engine.sampling_params import SamplingParams
from fathom.engine.tokenizer import Tokenizer


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


class AsyncEngine:
    def __init__(self, core: EngineCore, tokenizer: Tokenizer | None):
        """Serve `core`'s loaded engine; its events start flowing to this object now."""
        self.tokenizer = tokenizer
        self.max_model_len = core.max_model_len
        self._streams: dict[str, _Stream] = {}
        self._dead: BaseException | None = None
        self._stopping = False
        self._stats: EngineStats = core.initial_stats
        self._core = core
        _LIVE.add(self)
        core.start(self._on_event)

    # ----- caller side (any thread / event loop)
    async def generate(self, request_id: str, prompt_token_ids: list[int], sampling_params: SamplingParams,
                       *, priority: int = 0, fairness_key: str | None = None,
                       cache_salt: str | None = None,
                       trace_context: dict[str, str] | None = None) -> AsyncIterator[RequestOutput]:
        """Stream deltas of one request (see docs/architecture.md for the contract).
        `trace_context`: the caller's W3C carrier; the forward steps serving it link to it."""
        self._raise_if_dead()
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        add = AddRequest(request_id, list(prompt_token_ids), sampling_params, priority, fairness_key,
                         cache_salt, trace_context)
        if not self._core.send(add) or self._dead:
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
        self._core.send(AbortRequest(request_id))

    def set_weight(self, fairness_key: str, weight: float) -> None:
        """Tell the scheduling policy a fairness key's weight."""
        self._core.send(SetWeight(fairness_key, weight))

    def stats(self) -> EngineStats:
        return replace(self._stats, healthy=self.healthy)

    def rank_nodes(self) -> list[str] | None:
        """Ray node id of each rank (rank 0 first), or None when the model runs on this node."""
        return self._core.rank_nodes()

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

    # ----- the core's events (its loop thread, or the core process's reader thread)
    def _on_event(self, event: EngineEvent) -> None:
        match event:
            case StepOutputs():
                self._outputs(event.outputs, event.stats)
            case Rejected():
                stream = self._streams.pop(event.request_id, None)
                if stream is not None:
                    _post(stream.loop, [(stream.queue, event.error)])
            case Failed():
                self._failed(event.error)

    def _outputs(self, batch: list[RequestOutput], stats: EngineStats) -> None:
        self._stats = stats
        items: dict[asyncio.AbstractEventLoop, list] = {}
        for out in batch:
            stream = self._streams.pop(out.request_id, None) if out.finished else self._streams.get(out.request_id)
            if stream is not None:
                items.setdefault(stream.loop, []).append((stream.queue, out))
        for loop, pairs in items.items():
            _post(loop, pairs)

    def _failed(self, error: BaseException) -> None:
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
