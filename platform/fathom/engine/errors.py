"""Errors the engine raises to its callers (the Serve app maps them to HTTP statuses)."""


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class InvalidRequestError(EngineError, ValueError):
    """A request the engine will not run: bad sampling parameters, duplicate id, bad token ids."""


class PromptTooLongError(InvalidRequestError):
    """The prompt cannot fit: `len(prompt) >= max_model_len`, or more tokens than the KV cache."""


class EngineDeadError(EngineError, RuntimeError):
    """The engine (a rank worker, the step loop) failed; in-flight and later requests fail with it."""


class RequestFailedError(EngineError):
    """One request failed mid-flight for a reason of its own (sampling its row, detokenising,
    checking its stops): that request's stream ends with this error, and only that one; the
    instance and every other request keep running."""
