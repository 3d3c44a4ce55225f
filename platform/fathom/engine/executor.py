"""The `Executor` protocol: how the engine runs the model, one step at a time.

The engine only ever sees this protocol; `fathom.worker` implements it in this process
(W=1, `InProcessExecutor`) and on Ray rank workers (W>1, `RayExecutor`)."""

from typing import Protocol

from fathom.engine.step_input import StepInput, StepOutput


class Executor(Protocol):
    num_kv_blocks: int  # KV-cache blocks available on every rank (the minimum over ranks)
    vocab_size: int

    def execute(self, step: StepInput) -> StepOutput:
        """Run one step on every rank; rank 0's sampled tokens. Raises EngineDeadError if a rank died."""

    def check_health(self) -> None:
        """Raise EngineDeadError when the executor can no longer run steps (cheap, local)."""

    def ping(self) -> None:
        """Actively probe every rank (called when idle); raise EngineDeadError if one is gone."""

    def rank_nodes(self) -> list[str] | None:
        """Ray node id of each rank (rank 0 first), or None when the model runs in this process."""

    def shutdown(self) -> None: ...
