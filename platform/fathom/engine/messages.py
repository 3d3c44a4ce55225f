"""The typed messages between an engine's callers and its step loop (as vLLM's
`EngineCoreRequestType`): what goes in (`EngineRequest`) and what comes out (`EngineEvent`).

The same dataclasses travel on a thread's queue and, pickled, over the engine core
process's socket pair (both ends are our own code)."""

from dataclasses import dataclass

from fathom.engine.outputs import EngineStats, RequestOutput
from fathom.engine.sampling_params import SamplingParams


# ----- into the loop
@dataclass(frozen=True)
class AddRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int = 0
    fairness_key: str | None = None
    cache_salt: str | None = None
    trace_context: dict[str, str] | None = None


@dataclass(frozen=True)
class AbortRequest:
    request_id: str


@dataclass(frozen=True)
class SetWeight:
    """A fairness key's weight for the scheduling policy."""

    fairness_key: str
    weight: float


@dataclass(frozen=True)
class Wake:
    """Nothing to do but look again (e.g. after the executor was found dead)."""


@dataclass(frozen=True)
class Stop:
    pass


EngineRequest = AddRequest | AbortRequest | SetWeight | Wake | Stop


# ----- out of the loop
@dataclass(frozen=True)
class Ready:
    """Sent once when the engine has loaded."""

    max_model_len: int
    stats: EngineStats


@dataclass(frozen=True)
class StepOutputs:
    """Every request that made progress in one step (never empty unless stats changed)."""

    outputs: list[RequestOutput]
    stats: EngineStats


@dataclass(frozen=True)
class Rejected:
    """An `AddRequest` failed admission; its stream ends with `error`."""

    request_id: str
    error: BaseException


@dataclass(frozen=True)
class Failed:
    """The loop ended (the engine died or was stopped): every request in flight is dead."""

    error: BaseException


EngineEvent = Ready | StepOutputs | Rejected | Failed
