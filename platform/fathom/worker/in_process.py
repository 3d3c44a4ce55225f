"""The in-process executor (W=1): the model and its KV cache live in the engine's process."""

from fathom.engine.errors import EngineDeadError
from fathom.engine.step_input import StepInput, StepOutput
from fathom.telemetry.spans import forward_step_span
from fathom.worker.model_runner import ModelRunner


class InProcessExecutor:
    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self.num_kv_blocks = runner.num_blocks
        self.vocab_size = runner.model.config.vocab_size
        self._dead: BaseException | None = None

    def execute(self, step: StepInput) -> StepOutput:
        self.check_health()
        try:
            with forward_step_span(step.trace_contexts, rank=0, world_size=1, num_tokens=len(step.token_ids)):
                return self.runner.execute(step)
        except Exception as e:  # a failed forward leaves the KV cache in an unknown state
            self._dead = e
            raise EngineDeadError(f"model forward failed: {e!r}") from e

    def check_health(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the model executor failed earlier: {self._dead!r}")

    def ping(self) -> None:
        self.check_health()  # nothing remote to probe

    def rank_nodes(self) -> None:
        return None

    def shutdown(self) -> None:
        self.runner = None
