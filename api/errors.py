"""One error shape, safe to send: `{"detail": [...]}` for validation, `{"detail": "message"}`
otherwise. A validation error never echoes more than a short prefix of the input, and never a
value JSON cannot encode (NaN, Infinity): a 50 MB query does not come back as a 52 MB error."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.errors import encodable

MAX_ECHO = 80


class Message(BaseModel):
    """Every error but a validation error: one sentence saying what to do."""

    detail: str


_MEANING = {
    400: "the request cannot be served as sent",
    404: "no such resource (or one this key may not see)",
    409: "the request conflicts with the current state; the message says which",
    413: "the request body is over the limit",
    429: "over this key's limits; retry after `Retry-After` seconds",
    503: "a dependency (Temporal, the provider configuration) is unavailable; nothing changed",
    504: "no worker answered in time",
}


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error codes, each with the `{"detail": "..."}` body."""
    return {code: {"model": Message, "description": _MEANING[code]} for code in codes}


def safe(value: Any, depth: int = 0) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**53 else str(value)[:MAX_ECHO]
    if isinstance(value, float | Decimal):
        return str(value) if not math.isfinite(value) else float(value)
    if isinstance(value, str):
        value = encodable(value)
        return value if len(value) <= MAX_ECHO else value[:MAX_ECHO] + f"… ({len(value)} chars)"
    if depth < 2 and isinstance(value, dict):
        return {
            encodable(str(k))[:MAX_ECHO]: safe(v, depth + 1) for k, v in list(value.items())[:10]
        }
    if depth < 2 and isinstance(value, list | tuple):
        return [safe(v, depth + 1) for v in list(value)[:10]]
    return encodable(str(value))[:MAX_ECHO]


def invalid(loc: tuple[str, ...], msg: str, value: Any = None) -> RequestValidationError:
    """A check the schema cannot express, answered in the validation-error shape (422, a list)."""
    error: dict[str, Any] = {"loc": loc, "msg": msg, "type": "value_error"}
    if value is not None:
        error["input"] = value
    return RequestValidationError([error])


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = []
    for error in exc.errors():
        item = {
            "loc": [safe(part) for part in error.get("loc", ())],
            "msg": encodable(str(error.get("msg"))),
            "type": error.get("type"),
        }
        if "input" in error:
            item["input"] = safe(error["input"])
        detail.append(item)
    return JSONResponse(status_code=422, content={"detail": detail})
