"""The engine's step loop: drain the inbox, step, hand the step's outputs to a sink.

The same loop runs on a background thread of the caller's process (`AsyncEngine` with
`engine_core_process=False`, tests) or as the main loop of the engine core process
(`fathom.engine.core_process`). Only the loop touches the `LLMEngine`.

Inbox messages (tuples): ("add", request_id, prompt_ids, SamplingParams, kwargs of
`LLMEngine.add_request`), ("abort", request_id), ("weight", fairness_key, weight) for a
policy with `set_weight`, ("noop",) to wake the loop, ("stop",).

Sink contract (`EngineSink`): `outputs(batch, stats)` once per step with every request that
made progress (never empty unless stats changed); `rejected(request_id, error)` when an add
fails admission; `failed(error)` once, when the loop ends (the engine died or was stopped):
every request still in flight, and any added later, is then dead.
"""

import queue
import time
from typing import Protocol

from fathom.engine.errors import EngineDeadError, EngineError
from fathom.engine.llm_engine import LLMEngine
from fathom.engine.outputs import EngineStats, RequestOutput


class EngineSink(Protocol):
    def outputs(self, batch: list[RequestOutput], stats: EngineStats) -> None: ...

    def rejected(self, request_id: str, error: BaseException) -> None: ...

    def failed(self, error: EngineDeadError) -> None: ...


class Inbox(Protocol):
    def get(self, timeout: float | None) -> tuple | None:
        """The next message; waits up to `timeout` seconds (0: do not wait); None if there is none."""


class QueueInbox:
    """An in-process inbox (thread mode): any thread may `put`."""

    def __init__(self):
        self._q: queue.SimpleQueue = queue.SimpleQueue()

    def put(self, msg: tuple) -> None:
        self._q.put(msg)

    def get(self, timeout: float | None) -> tuple | None:
        try:
            return self._q.get(timeout=timeout) if timeout else self._q.get_nowait()
        except queue.Empty:
            return None


class EngineLoop:
    def __init__(self, engine: LLMEngine, inbox: Inbox, sink: EngineSink, idle_wait_s: float = 0.5,
                 health_interval_s: float = 5.0):
        self.engine, self.inbox, self.sink = engine, inbox, sink
        self.idle_wait_s, self.health_interval_s = idle_wait_s, health_interval_s
        self.stopping = False
        self.dead: EngineError | None = None
        self._last_probe = time.monotonic()
        self._stats: EngineStats | None = None

    def run(self) -> None:
        """Step until stopped or dead; then fail what is in flight (the sink's `failed`)."""
        try:
            while not self.stopping and self.dead is None:
                try:
                    self._drain(block=not self.engine.has_unfinished_requests())
                    outputs = self.engine.step() if self.engine.has_unfinished_requests() else []
                    stats = self.engine.stats()  # before delivery: consumers may read it at once
                    if outputs or stats != self._stats:
                        self._stats = stats
                        self.sink.outputs(outputs, stats)
                except Exception as e:  # noqa: BLE001 - any failure kills the instance, loudly
                    self.dead = e if isinstance(e, EngineError) else EngineDeadError(f"engine step failed: {e!r}")
        finally:
            self.engine.fail_all()
            err = self.dead or EngineDeadError("the engine is shut down")
            self.sink.failed(err if isinstance(err, EngineDeadError) else EngineDeadError(str(err)))

    def _drain(self, block: bool) -> None:
        msg = self.inbox.get(self.idle_wait_s if block else 0)
        if msg is None and block:
            self._probe_when_idle()
        while msg is not None:
            self._handle(msg)
            msg = None if self.stopping else self.inbox.get(0)

    def _probe_when_idle(self) -> None:
        """With nothing in flight, actively ping the rank workers now and then (if the executor
        can), so a dead worker turns the instance unhealthy before the next request arrives."""
        ping = getattr(self.engine.executor, "ping", None)
        now = time.monotonic()
        if ping is not None and now - self._last_probe >= self.health_interval_s:
            self._last_probe = now
            ping()

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "add":
            _, request_id, prompt, params, kwargs = msg
            try:
                self.engine.add_request(request_id, prompt, params, **kwargs)
            except Exception as e:  # noqa: BLE001 - admission errors go to the caller's stream
                self.sink.rejected(request_id, e)
        elif kind == "abort":
            self.engine.abort_request(msg[1])
        elif kind == "weight":
            set_weight = getattr(self.engine.scheduler.policy, "set_weight", None)
            if set_weight is not None:
                set_weight(msg[1], msg[2])
        elif kind == "stop":
            self.stopping = True
