"""The OpenAI wire format both servers share: error bodies, refusals, request bodies read within a bound."""

from __future__ import annotations

import json

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

HIDDEN_TOKEN = "<hidden>"
HIDDEN_LOGPROB = -9999.0


def wire_logprob(value: float) -> float:
    """A defended value on the wire: a redacted (nan) one, or a zero probability's -inf, as OpenAI's
    "negligible" -9999.0 (strict JSON has neither)."""
    return HIDDEN_LOGPROB if value != value or value == float("-inf") else float(value)


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style JSON error with ``status``."""

    def __init__(self, message: str, status: int = 400, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code


def error_response(status: int, message: str, type: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None) -> JSONResponse:
    """An OpenAI-style error: ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": type, "param": param,
                                                               "code": code}})


TOO_DEEP = "The request body nests JSON too deeply; send a flat chat-completions request."


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes):
    """A request body -> Python objects, or a 400 :class:`RequestError` (not JSON, ``NaN`` /
    ``Infinity``, nested deeper than the parser's recursion limit)."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise RequestError(TOO_DEEP, code="nesting_too_deep") from None
    except (ValueError, UnicodeDecodeError) as err:
        detail = f" ({err})" if "JSON number" in str(err) or "digits" in str(err) else ""
        raise RequestError(f"The request body is not valid JSON{detail}.") from None


def validation_message(err: ValidationError) -> tuple[str, str | None]:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e.get("loc", ()) if not str(p).startswith(("function-", "tagged-union")))
    msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
    return (f"Invalid request: {loc}: {msg}." if loc else f"Invalid request: {msg}."), (loc or None)


async def read_body(request: Request, max_bytes: int, type: str = "invalid_request_error") -> bytes | JSONResponse:
    """The request's body, or a 413 response once it is over ``max_bytes`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        return error_response(413, f"The request body is {int(declared)} bytes; send at most {max_bytes} bytes.",
                              type=type, code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            return error_response(413, f"The request body is over {max_bytes} bytes; send less.", type=type,
                                  code="request_too_large")
    return bytes(body)
