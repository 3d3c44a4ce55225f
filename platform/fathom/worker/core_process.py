"""The engine core in a child process: scheduler, model, sampler and detokeniser run there;
the caller (a Serve replica, a benchmark) keeps only the per-request streams.

Why: a W=1 model's forward is Python-heavy, and in one process it shares the GIL with
everything serving does around it (Ray Serve's event loops, SSE chunks, the handle's RPCs),
so every burst of serving work stalls the step loop. In its own process the loop has a
GIL to itself, as in vLLM's EngineCore. (W>1 already runs the forward in rank workers.)

Wire: one anonymous `socket.socketpair()` between the parent and the child it spawns
(`python -m fathom.worker.core_process FD`); nothing listens, so no other process can
connect, and both ends are our own code. Messages are the pickled dataclasses of
`fathom.engine.messages` through `multiprocessing.connection.Connection`:

    parent -> child   (settings dict, policy, torch threads) once, then `EngineRequest`s
    child -> parent   `Ready` or `Failed` once at start; then the loop's `EngineEvent`s
                      (`StepOutputs` per step, `Rejected`, and `Failed` when the loop ends)

The child ends its loop when the parent says stop or goes away (EOF on the pair), and
flushes its spans before exiting.
"""

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection

from fathom.engine.engine_loop import EngineLoop, EngineSink
from fathom.engine.errors import EngineDeadError
from fathom.engine.messages import EngineEvent, EngineRequest, Failed, Ready, Rejected, Stop
from fathom.worker.source_root import with_source_root

START_POLL_S = 0.5
EXIT_WAIT_S = 5.0  # after EOF on the pair, for the child's exit status


class ProcessCore:
    """Parent side (an `EngineCore`): spawn the child and wait until it has loaded the engine;
    after `start(sink)`, the child's events reach `sink` on a reader thread."""

    def __init__(self, settings, policy, threads: int, start_timeout_s: float = 900.0):
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": with_source_root(os.environ.get("PYTHONPATH"))}
        self.proc = subprocess.Popen([sys.executable, "-m", "fathom.worker.core_process", str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], env=env)
        theirs.close()
        self.conn = Connection(ours.detach())
        self._send_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        try:
            self.conn.send((settings.model_dump(mode="json"), policy, threads))
            ready = self._await_ready(start_timeout_s)
        except BaseException:
            self.kill()
            raise
        self.max_model_len, self.initial_stats = ready.max_model_len, ready.stats

    def start(self, sink: EngineSink) -> None:
        self._reader = threading.Thread(target=self._read, args=(sink,), name="fathom-engine-core-reader",
                                        daemon=True)
        self._reader.start()

    def _await_ready(self, timeout_s: float) -> Ready:
        waited = 0.0
        while not self.conn.poll(START_POLL_S):
            waited += START_POLL_S
            if self.proc.poll() is not None or waited >= timeout_s:
                raise EngineDeadError(f"the engine core process {_exit_text(self.proc)} before loading the model")
        try:
            event = self.conn.recv()
        except (EOFError, OSError):
            raise EngineDeadError(f"the engine core process {_exit_text(self.proc)} while loading the model") from None
        if isinstance(event, Failed):
            raise event.error  # the child's own error (bad checkpoint, max_model_len too large, ...)
        return event

    def send(self, msg: EngineRequest) -> bool:
        """Queue a message for the loop; False once the child is gone."""
        try:
            with self._send_lock:
                self.conn.send(msg)
            return True
        except (OSError, ValueError):  # broken pair, or closed by stop()
            return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_health(self) -> None:
        if not self.alive():
            raise EngineDeadError(f"the engine core process {_exit_text(self.proc)}")

    def rank_nodes(self) -> None:
        return None  # W=1, on this node

    def shutdown_executor(self) -> None:
        """Nothing to do here: the child shuts its executor down when its loop ends."""

    def _read(self, sink: EngineSink) -> None:
        try:
            while True:
                event = self.conn.recv()
                sink(event)
                if isinstance(event, Failed):
                    return
        except (EOFError, OSError):  # the child is gone (or going): say how it ended
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(EXIT_WAIT_S)
            sink(Failed(EngineDeadError(f"the engine core process {_exit_text(self.proc)}")))

    def stop(self, timeout_s: float) -> None:
        """Ask the loop to stop (in-flight streams fail), wait for the child, kill it if late."""
        self.send(Stop())
        if self._reader is not None:
            self._reader.join(timeout_s)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self.conn.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class _ConnInbox:
    def __init__(self, conn: Connection):
        self.conn = conn

    def get(self, timeout: float | None) -> EngineRequest | None:
        try:
            return self.conn.recv() if self.conn.poll(timeout or 0) else None
        except (EOFError, OSError):  # the parent is gone
            return Stop()


def _conn_sink(conn: Connection) -> EngineSink:
    def send(event: EngineEvent) -> None:
        if isinstance(event, Rejected):
            event = Rejected(event.request_id, _portable(event.error))
        elif isinstance(event, Failed):
            event = Failed(_portable(event.error))
        try:
            conn.send(event)
        except OSError:  # the parent is gone; the loop sees EOF on its next read
            pass

    return send


def _portable(error: BaseException) -> BaseException:
    """The error itself if it survives pickling, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any unpicklable exception
        return RuntimeError(f"{type(error).__name__}: {error}")


def _exit_text(proc: subprocess.Popen) -> str:
    code = proc.poll()
    if code is None:
        return "stopped answering"
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


def main(fd: int) -> int:
    """The child: load the engine, then run its loop until stopped or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    conn = Connection(fd)
    try:
        settings, policy, threads = conn.recv()
    except (EOFError, OSError):
        return 1
    import torch

    from fathom.api.engine import EngineSettings
    from fathom.telemetry.tracing import configure_tracing, flush_tracing
    from fathom.worker.factory import create_engine

    torch.set_num_threads(max(1, threads))
    configure_tracing("engine")
    sink = _conn_sink(conn)
    try:
        engine = create_engine(EngineSettings.model_validate(settings), policy=policy)
    except Exception as e:  # noqa: BLE001 - the parent re-raises it
        sink(Failed(e))
        return 1
    conn.send(Ready(engine.config.max_model_len, engine.stats()))
    try:
        EngineLoop(engine, _ConnInbox(conn), sink).run()
    finally:
        engine.executor.shutdown()
        flush_tracing()
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
