"""Fathom: serve DeepSeek-style mixture-of-experts LLMs.

Public offline API (as vLLM users know it): ``fathom.LLM`` and ``fathom.SamplingParams``.
Imports are lazy so that ``import fathom.api`` (used by the Kubernetes operator) never pulls torch.
"""

__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name: str):
    if name == "LLM":
        from fathom.llm import LLM

        return LLM
    if name == "SamplingParams":
        from fathom.engine.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'fathom' has no attribute {name!r}")
