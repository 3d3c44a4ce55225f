"""Request bodies in, API errors out: size limit, JSON decoding, and pydantic's validation
errors as OpenAI-style 422s naming the offending field."""

import json

from pydantic import ValidationError

from fathom.api.openai_error import APIError


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
