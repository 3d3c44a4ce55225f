"""fathom.engine: the synchronous, torch-free serving core (no torch, ray or fastapi).

`LLMEngine.step()` = schedule -> execute -> update over a paged latent KV cache;
`AsyncEngine` streams per-request deltas from a background step loop. See
docs/architecture.md ("fathom.engine") for the contract."""

from fathom.engine.async_engine import AsyncEngine
from fathom.engine.errors import EngineDeadError, EngineError, InvalidRequestError, PromptTooLongError
from fathom.engine.llm_engine import EngineConfig, LLMEngine
from fathom.engine.outputs import CompletionOutput, EngineStats, RequestOutput, TokenLogprob, Usage
from fathom.engine.sampling_params import SamplingParams

__all__ = [
    "AsyncEngine", "CompletionOutput", "EngineConfig", "EngineDeadError", "EngineError", "EngineStats",
    "InvalidRequestError", "LLMEngine", "PromptTooLongError", "RequestOutput", "SamplingParams",
    "TokenLogprob", "Usage",
]
