"""The terminal of `fathom serve`: Fathom's own lines, progress bars and count-downs, and nothing
of Ray's.

`Console.quiet(log)` points this process's file descriptors 1 and 2 at a log file before Ray
starts, so the processes of a local Ray instance (which inherit them) and Ray's client in this
process (its warnings, `(raylet) ...` lines, C++ signal dumps) write there; the console keeps
duplicates of the original descriptors and is the only writer to the terminal. Without
`quiet()` (tests and benchmarks that deploy in-process) it writes to sys.stdout/sys.stderr.

Bars (`loading`) and count-downs (`status`) redraw one line in place on a terminal; elsewhere
(a pipe, a log) each is printed once, so logs do not fill with redraws.
"""

import os
import sys
import time
from typing import TextIO


class Console:
    def __init__(self) -> None:
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr
        self.log_path: str | None = None
        self.tty = self.out.isatty()
        self._bars: dict[int, tuple[int, int, float]] = {}  # pid -> (done, total, started)
        self._bar_order: list[int] = []
        self._line_open = False  # a status/bar line is drawn and not yet ended

    # ----------------------------------------------------------------- where output goes

    def quiet(self, log_path: str) -> None:
        """From now on fds 1 and 2 (and whatever inherits them) write to `log_path`."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self.out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
        self.err = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        self.log_path = log_path

    def restore(self) -> None:
        """Give fds 1 and 2 back to the terminal (at exit, after Ray has stopped)."""
        if self.log_path is None:
            return
        self._end_line()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(self.out.fileno(), 1)
        os.dup2(self.err.fileno(), 2)

    # ----------------------------------------------------------------- lines

    def say(self, msg: str) -> None:
        self._end_line()
        print(f"fathom: {msg}", file=self.out, flush=True)

    def print(self, text: str) -> None:
        self._end_line()
        print(text, file=self.out, flush=True)

    def error(self, msg: str) -> None:
        self._end_line()
        print(f"fathom serve: error: {msg}", file=self.err, flush=True)

    def status(self, text: str, final: bool = False) -> None:
        """A line redrawn in place on a terminal (count-downs); printed once elsewhere unless final."""
        if self.tty:
            self.out.write(f"\r\033[Kfathom: {text}")
            self.out.flush()
            self._line_open = True
            if final:
                self._end_line()
        elif final:
            self.say(text)

    def _end_line(self) -> None:
        if self._line_open:
            self.out.write("\n")
            self.out.flush()
            self._line_open = False

    # ----------------------------------------------------------------- weight-loading bars

    def loading(self, records: list[dict]) -> None:
        """Show the load progress records of `fathom.telemetry.progress` (rank 0 of each instance)."""
        for r in records:
            if r.get("rank", 0) != 0:
                continue
            pid, done, total = r["pid"], int(r["done"]), max(1, int(r["total"]))
            if pid not in self._bars:
                self._bar_order.append(pid)
                started = time.monotonic()
            else:
                started = self._bars[pid][2]
            self._bars[pid] = (done, total, started)
            self._draw(pid)

    def _draw(self, pid: int) -> None:
        done, total, started = self._bars[pid]
        n = len(self._bar_order)
        who = f" (replica {self._bar_order.index(pid) + 1})" if n > 1 else ""
        elapsed = time.monotonic() - started
        if self.tty:
            width = 30
            fill = int(width * done / total)
            bar = "█" * fill + " " * (width - fill)
            self.status(f"loading safetensors shards{who}: {100 * done // total:3d}%|{bar}| {done}/{total} "
                        f"[{elapsed:.1f}s]", final=done >= total)
        elif done == 0 or done >= total:
            self.say(f"loading safetensors shards{who}: {done}/{total}" + (f" in {elapsed:.1f}s" if done else ""))
