"""`fathom serve` as a user runs it: a subprocess on a free port whose output is collected line
by line; ready once the banner's last line ("Ctrl-C or SIGTERM ...") is printed."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fathom.serve.launch import free_port

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), os.environ.get("PYTHONPATH", "")])}


class ServeProcess:
    def __init__(self, *flags: str, port: int | None = None, cwd: Path = ROOT, env: dict | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fathom.cli", "serve", *flags, "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or ENV, cwd=cwd,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("Ctrl-C or SIGTERM"):
                self.ready.set()
        self.ready.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout_s: float = 240) -> "ServeProcess":
        """Return once serving; fail the test with the server's output if it exited or timed out."""
        if not self.ready.wait(timeout_s) or self.proc.poll() is not None:
            self.proc.kill()
            pytest.fail(f"fathom serve did not start:\n{self.output}")
        return self

    def stop(self, grace_s: float = 60) -> None:
        """SIGTERM (graceful drain), then SIGKILL if it has not exited within the grace period."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


def random_demo_flags() -> list[str]:
    """`fathom serve` flags for the seeded random-weights demo checkpoint (fathom.worker.demo) as
    `fathom-demo`: for tests that need a model answering in random bytes (grammar enforcement)
    rather than the trained built-in demo model."""
    from fathom.worker.demo import demo_checkpoint_dir

    return ["--model", str(demo_checkpoint_dir()), "--served-model-name", "fathom-demo"]
