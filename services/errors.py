"""What a service refuses, and why: one exception per answer a caller can act on.

They are HTTP exceptions with the status that fits (the API answers them as `{"detail": ...}`,
the dashboard as a page saying why, the CLI prints the message), so every door tells a user the
same thing. `invalid` is the one for input a schema cannot check (a 422 in the validation shape).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import HTTPException, status
from fastapi.exceptions import RequestValidationError

# What a message may echo of one token a caller sent (an id, a path): no more than this.
MAX_ECHO = 80
_LONG = re.compile(r"\S{" + str(MAX_ECHO + 1) + ",}")


def _bounded(message: str) -> str:
    """`message` with any token over MAX_ECHO characters cut (a 6,000-character id sent to a
    404 comes back as its first 80 characters and its length), and encodable as UTF-8."""
    return encodable(
        _LONG.sub(lambda m: f"{m.group(0)[:MAX_ECHO]}… ({len(m.group(0))} chars)", message)
    )


def encodable(text: str) -> str:
    """`text` as UTF-8 can carry it: a lone surrogate ("\\ud800", valid in JSON's escapes,
    not in UTF-8) is shown escaped instead of failing the answer that echoes it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class ServiceError(HTTPException):
    code = status.HTTP_400_BAD_REQUEST

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(self.code, _bounded(message), headers=headers)


class Forbidden(ServiceError):
    code = status.HTTP_403_FORBIDDEN


class NotFound(ServiceError):
    code = status.HTTP_404_NOT_FOUND


class Conflict(ServiceError):
    code = status.HTTP_409_CONFLICT


class TooMany(ServiceError):
    code = status.HTTP_429_TOO_MANY_REQUESTS

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))})


class Unavailable(ServiceError):
    """A dependency (Temporal, the database, the provider configuration) is down: nothing was
    changed, and trying again later may work."""

    code = status.HTTP_503_SERVICE_UNAVAILABLE

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        headers = {"Retry-After": str(retry_after_s)} if retry_after_s else None
        super().__init__(message, headers=headers)


class NoAnswer(ServiceError):
    code = status.HTTP_504_GATEWAY_TIMEOUT


def invalid(loc: tuple[str, ...], msg: str, value: Any = None) -> RequestValidationError:
    """A check the schema cannot express, answered in the validation-error shape (422, a list)."""
    error: dict[str, Any] = {"loc": loc, "msg": msg, "type": "value_error"}
    if value is not None:
        error["input"] = value
    return RequestValidationError([error])


def versioning_on(settings: Any) -> None:
    """409 unless versioning is on (VERSIONING_ENABLED)."""
    if not settings.versioning_enabled:
        raise Conflict(
            "versioning is off (VERSIONING_ENABLED=false): this deployment runs one unversioned "
            "worker and keeps no snapshots, shadows or activations; turn it on to use versions"
        )


def cost_tracking_on(settings: Any, what: str) -> None:
    """Refuse `what` unless cost tracking is on (COST_TRACKING_ENABLED): without prices a budget
    could not be enforced, and an unenforced budget is worse than none."""
    if not settings.cost_tracking_enabled:
        raise invalid(
            ("body", "budget_usd"),
            f"{what} needs cost tracking, which is off (COST_TRACKING_ENABLED=false): nothing "
            "is priced, so no budget could be enforced; leave budget_usd out",
        )
