"""Where an engine's step loop runs: the `EngineCore` protocol, and `ThreadCore`, the loop
on a thread of this process. (`fathom.worker.core_process.ProcessCore` runs it in a child.)"""

import threading
from typing import Protocol

from fathom.engine.engine_loop import EngineLoop, EngineSink, QueueInbox
from fathom.engine.errors import EngineDeadError
from fathom.engine.llm_engine import LLMEngine
from fathom.engine.messages import EngineRequest, Stop, Wake
from fathom.engine.outputs import EngineStats


class EngineCore(Protocol):
    max_model_len: int
    initial_stats: EngineStats  # the loaded engine's stats before any step

    def start(self, sink: EngineSink) -> None:
        """Start delivering the loop's events to `sink` (once)."""

    def send(self, msg: EngineRequest) -> bool:
        """Queue a message for the loop; False once the loop is gone."""

    def alive(self) -> bool: ...

    def check_health(self) -> None:
        """Raise EngineDeadError if the loop's host or its executor has failed."""

    def rank_nodes(self) -> list[str] | None:
        """Ray node id of each rank, or None when the model runs on this node."""

    def stop(self, timeout_s: float) -> None:
        """Stop the loop (in-flight requests fail) and wait up to `timeout_s` for it."""

    def shutdown_executor(self) -> None: ...


class ThreadCore:
    """The step loop on a thread of this process, over an `LLMEngine` built here."""

    def __init__(self, engine: LLMEngine, idle_wait_s: float = 0.5, health_interval_s: float = 5.0):
        self.engine = engine
        self.max_model_len = engine.config.max_model_len
        self.initial_stats = engine.stats()
        self.inbox = QueueInbox()
        self._intervals = idle_wait_s, health_interval_s
        self.loop: EngineLoop | None = None
        self.thread: threading.Thread | None = None

    def start(self, sink: EngineSink) -> None:
        self.loop = EngineLoop(self.engine, self.inbox, sink, *self._intervals)
        self.thread = threading.Thread(target=self.loop.run, name="fathom-engine-loop", daemon=True)
        self.thread.start()

    def send(self, msg: EngineRequest) -> bool:
        self.inbox.put(msg)
        return self.alive()

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def check_health(self) -> None:
        try:
            self.engine.executor.check_health()
        except EngineDeadError as e:
            self.loop.dead = e
            self.inbox.put(Wake())  # let the loop end and fail in-flight streams
            raise

    def rank_nodes(self) -> list[str] | None:
        return self.engine.executor.rank_nodes()

    def stop(self, timeout_s: float) -> None:
        self.inbox.put(Stop())
        if self.thread is not None:
            self.thread.join(timeout_s)

    def shutdown_executor(self) -> None:
        self.engine.executor.shutdown()
