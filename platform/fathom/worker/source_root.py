"""Child processes (the engine core process, Ray rank workers, a local Ray instance's workers)
import the same `fathom` as their parent, whether it is installed or run from a checkout."""

import os
from pathlib import Path

SOURCE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding `fathom`


def with_source_root(pythonpath: str | None) -> str:
    """`pythonpath` (a PYTHONPATH value) with the directory holding `fathom` in front, once."""
    paths = [p for p in (pythonpath or "").split(os.pathsep) if p]
    return os.pathsep.join([SOURCE_ROOT, *(p for p in paths if p != SOURCE_ROOT)])
