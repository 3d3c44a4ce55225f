"""The built-in demo model (`fathom serve` with no `--model`): a small DeepSeek-V3-architecture
checkpoint trained on a CPU to answer two-digit arithmetic with a `<think>` trace and to greet.

Its files ship in ``checkpoint/``; ``train`` reproduces them bit for bit from ``corpus`` and
``net`` (docs/demo_model.md). The random-weights generator for tests is ``fathom.worker.demo``.
"""

from pathlib import Path

CHECKPOINT = Path(__file__).resolve().parent / "checkpoint"


def demo_model_dir() -> Path:
    """The shipped checkpoint directory (read-only: it is inside the installed package)."""
    if not (CHECKPOINT / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the demo model's weights are missing from {CHECKPOINT}; reinstall fathom "
            "or rebuild them with `python -m fathom.worker.demo_model.train`"
        )
    return CHECKPOINT
