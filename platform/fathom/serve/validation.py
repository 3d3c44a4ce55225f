"""Request bodies in, API errors out: size limit, JSON decoding, and pydantic's validation
errors as OpenAI-style 422s naming the offending field."""

import json
import math

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


MAX_JSON_DEPTH = 32  # OpenAI's bodies nest about 6 deep (messages[i].content[j].text)
MAX_JSON_INT_DIGITS = 40  # every integer field fits in 64 bits; Python refuses > 4300 digits with a ValueError


def parse_json_body(raw: bytes, max_bytes: int) -> dict:
    """Decode a request body: 413 over `max_bytes`, 400 unless it is a JSON object of bounded
    depth whose strings are valid Unicode (no lone surrogates) and whose integers are short."""
    if len(raw) > max_bytes:
        raise body_too_large(max_bytes)
    try:
        body = json.loads(raw.decode("utf-8"), parse_int=_parse_int, parse_float=_parse_float, parse_constant=_no_constant)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, and our own refusals
        raise APIError(400, f"request body is not valid JSON: {e}"[:300], code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    _check_tree(body)
    return body


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise ValueError(f"integer with {len(text)} digits is out of range")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > 400:
        raise ValueError(f"number with {len(text)} characters is out of range")
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _too_deep() -> APIError:
    return APIError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")


def _check_tree(body: dict) -> None:
    """Depth and Unicode, iteratively (no recursion for an attacker to exhaust)."""
    stack: list[tuple[object, int]] = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _too_deep()
        if isinstance(node, dict):
            for k, v in node.items():
                _check_text(k)
                stack.append((v, depth + 1))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, str):
            _check_text(node)


def _check_text(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "request body contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is not "
                       "valid Unicode", code="invalid_unicode") from None


def body_too_large(max_bytes: int) -> APIError:
    return APIError(413, f"request body exceeds {max_bytes} bytes", code="request_too_large")
