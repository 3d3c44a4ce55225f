"""Weight-loading progress, from the processes that load a model to the `fathom serve` console.

`fathom serve` starts its local Ray instance with `FATHOM_LOAD_PROGRESS` set to a file path;
every process under it (Serve replicas, their engine core processes, rank workers) inherits
it, and the loader appends one JSON line per checkpoint shard it has read (`shard_loaded`).
The console tails the file (`ProgressFile.read`) and draws a bar per loading process. Unset
(a joined cluster, `fathom.LLM`, tests): nothing is written. A failed write is ignored: progress
must never fail a load.
"""

import json
import os

ENV = "FATHOM_LOAD_PROGRESS"


def shard_loaded(done: int, total: int, rank: int = 0) -> None:
    """This process has read `done` of the `total` safetensors shards of its checkpoint."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"pid": os.getpid(), "rank": rank, "done": done, "total": total}) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())  # one write of a short line under O_APPEND: lines never interleave
        finally:
            os.close(fd)
    except OSError:
        pass


class ProgressFile:
    """The reading side: the records appended since the last `read()`."""

    def __init__(self, path: str):
        self.path = path
        self._offset = 0

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        out = []
        for line in complete.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out
