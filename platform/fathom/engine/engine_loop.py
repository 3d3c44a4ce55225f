"""The engine's step loop: drain the inbox, step, hand the step's events to a sink.

The same loop runs on a background thread of the caller's process (`ThreadCore`: W>1, whose
forward already runs in rank workers; tests) or as the main loop of the engine core process
(`fathom.worker.core_process`). Only the loop touches the `LLMEngine`.

Inbox: `EngineRequest`s (`fathom.engine.messages`). Sink: a callable taking `EngineEvent`s:
`StepOutputs` once per step with every request that made progress (never empty unless stats
changed); `Rejected` when an add fails admission, or when one request fails alone mid-flight
(`RequestFailedError`: its sampling, detokenising or stop checks raised); `Failed` once, when the loop ends (the engine
died or was stopped): every request still in flight, and any added later, is then dead.
"""

import queue
import time
from collections.abc import Callable
from typing import Protocol

from fathom.engine.errors import EngineDeadError, EngineError, RequestFailedError
from fathom.engine.llm_engine import LLMEngine
from fathom.engine.messages import (
    AbortRequest,
    AddRequest,
    EngineEvent,
    EngineRequest,
    Failed,
    Rejected,
    SetWeight,
    StepOutputs,
    Stop,
)
from fathom.engine.outputs import EngineStats

EngineSink = Callable[[EngineEvent], None]


class Inbox(Protocol):
    def get(self, timeout: float | None) -> EngineRequest | None:
        """The next message; waits up to `timeout` seconds (0: do not wait); None if there is none."""


class QueueInbox:
    """An in-process inbox (thread mode): any thread may `put`."""

    def __init__(self):
        self._q: queue.SimpleQueue = queue.SimpleQueue()

    def put(self, msg: EngineRequest) -> None:
        self._q.put(msg)

    def get(self, timeout: float | None) -> EngineRequest | None:
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
        """Step until stopped or dead; then fail what is in flight (a `Failed` event)."""
        try:
            while not self.stopping and self.dead is None:
                try:
                    self._drain(block=not self.engine.has_unfinished_requests())
                    outputs = self._step()
                    stats = self.engine.stats()  # before delivery: consumers may read it at once
                    if outputs or stats != self._stats:
                        self._stats = stats
                        self.sink(StepOutputs(outputs, stats))
                    self._report_failures()
                except EngineDeadError as e:  # the executor is gone (a rank, a device): fatal
                    self.dead = e
                except Exception as e:  # noqa: BLE001 - the sink or the loop itself: fatal, loudly
                    self.dead = EngineDeadError(f"engine loop failed: {e!r}")
        finally:
            self.engine.fail_all()
            err = self.dead or EngineDeadError("the engine is shut down")
            self.sink(Failed(err if isinstance(err, EngineDeadError) else EngineDeadError(str(err))))

    def _step(self) -> list:
        """One engine step. Only the executor's death is fatal: a step that fails for any other
        reason (one request's data, that no finer check caught) fails the requests in flight,
        each with its own error event, and the instance keeps serving."""
        if not self.engine.has_unfinished_requests():
            return []
        try:
            return self.engine.step()
        except EngineDeadError:
            raise
        except Exception as e:  # noqa: BLE001 - see the docstring
            self.engine.fail_in_flight(RequestFailedError(f"engine step failed: {e!r}"[:500]))
            return []

    def _report_failures(self) -> None:
        for request_id, error in self.engine.take_failures():
            self.sink(Rejected(request_id, error))

    def _drain(self, block: bool) -> None:
        msg = self.inbox.get(self.idle_wait_s if block else 0)
        if msg is None and block:
            self._probe_when_idle()
        while msg is not None:
            self._handle(msg)
            msg = None if self.stopping else self.inbox.get(0)

    def _probe_when_idle(self) -> None:
        """With nothing in flight, actively ping the ranks now and then, so a dead rank worker
        turns the instance unhealthy before the next request arrives."""
        now = time.monotonic()
        if now - self._last_probe >= self.health_interval_s:
            self._last_probe = now
            self.engine.executor.ping()

    def _handle(self, msg: EngineRequest) -> None:
        match msg:
            case AddRequest():
                try:
                    self.engine.add_request(msg.request_id, msg.prompt_token_ids, msg.params,
                                            priority=msg.priority, fairness_key=msg.fairness_key,
                                            cache_salt=msg.cache_salt, trace_context=msg.trace_context)
                except Exception as e:  # noqa: BLE001 - admission errors go to the caller's stream
                    self.sink(Rejected(msg.request_id, e))
            case AbortRequest():
                self.engine.abort_request(msg.request_id)
            case SetWeight():
                self.engine.scheduler.policy.set_weight(msg.fairness_key, msg.weight)
            case Stop():
                self.stopping = True
