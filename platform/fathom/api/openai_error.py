"""The API error in OpenAI's format: `{"error": {"message", "type", "param", "code"}}`.

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
