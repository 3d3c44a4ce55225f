"""API errors in OpenAI's format: `{"error": {"message", "type", "param", "code"}}`.

Status policy (documented in docs/architecture.md):
- 400 invalid JSON, or a request that is well-formed but cannot be served (prompt longer
  than max_model_len, unsupported option);
- 401/403 authentication (tenancy);
- 404 unknown model or route;
- 413 body larger than `max_request_body_bytes` (checked before parsing);
- 422 JSON that does not match the schema (wrong type, missing or unknown field, out of range);
- 429 the replica queues are full (with Retry-After); 503 not ready or shutting down
  (with Retry-After); 500 an internal error, without a stack trace.
"""

import json
import math

from pydantic import ValidationError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error the API returns as-is; raised anywhere on the request path."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": _TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}

    def to_json(self) -> bytes:
        return json.dumps(self.body()).encode()

    def __reduce__(self):  # picklable across Ray with its fields
        return (_rebuild, (self.status, self.message, self.param, self.code, self.retry_after))


def _rebuild(status, message, param, code, retry_after) -> APIError:
    return APIError(status, message, param=param, code=code, retry_after=retry_after)


def _loc(loc: tuple) -> str:
    """pydantic location -> OpenAI param path, e.g. ('messages', 0, 'role') -> messages[0].role."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or "[" in str(part) or "-" in str(part):
            continue  # pydantic's union/validator branch tags
        else:
            out += f".{part}" if out else str(part)
    return out


def from_validation_error(exc: ValidationError) -> APIError:
    """422 naming the first offending field (and how many more there are)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    param = _loc(first["loc"]) or None
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = f"unknown field {param!r}"
    elif param:
        msg = f"{param}: {msg}"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return APIError(422, msg, param=param, code=first["type"])


def parse_json_body(raw: bytes, max_bytes: int) -> dict:
    """Decode a request body: 413 over `max_bytes`, 400 unless it is a JSON object."""
    if len(raw) > max_bytes:
        raise body_too_large(max_bytes)
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    return body


def body_too_large(max_bytes: int) -> APIError:
    return APIError(413, f"request body exceeds {max_bytes} bytes", code="request_too_large")
