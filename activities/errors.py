"""Classify provider failures as retryable or permanent — Temporal is the one retry authority.

Permanent (bad request, bad key, missing model, validation) → `ApplicationError(non_retryable=True)`
with a message a user can act on. Transient (timeouts, connection errors, 408/409/429/5xx) →
a retryable `ApplicationError` whose `next_retry_delay` is full-jitter exponential backoff, never
sooner than the server's `Retry-After`. Messages never contain the API key.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import groq
import httpx
import openai
from temporalio.exceptions import ApplicationError

from crewline.secrets import redact

PERMANENT_STATUSES = {400, 401, 403, 404, 422}
RETRYABLE_STATUSES = {408, 409, 429}
TIMEOUT_ERRORS = (groq.APITimeoutError, openai.APITimeoutError, TimeoutError)
CONNECTION_ERRORS = (groq.APIConnectionError, openai.APIConnectionError)
STATUS_ERRORS = (groq.APIStatusError, openai.APIStatusError)


class MalformedResponseError(Exception):
    """The provider answered 2xx but not with a usable chat completion."""


def cut_off_reason(exc: BaseException) -> str | None:
    """Why a failed call may still have been billed (the provider may have done the work), or
    None when it provably was not: refused before the request was sent, or answered with an
    error status."""
    if isinstance(exc, TIMEOUT_ERRORS):  # before CONNECTION_ERRORS: a timeout is one of them
        return "timeout"
    if isinstance(exc, MalformedResponseError):
        return "malformed"
    if isinstance(exc, CONNECTION_ERRORS):
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, httpx.ConnectError | ConnectionRefusedError):
                return None  # never connected: nothing was sent
            cause = cause.__cause__ or cause.__context__
        return "connection_lost"
    return None


def answered(exc: BaseException) -> bool:
    """The provider answered with an error status (it saw the request)."""
    return isinstance(exc, STATUS_ERRORS)


def reached_provider(exc: BaseException) -> bool:
    """Whether the failed request may have reached the provider (it counts against its rate
    limit); False only when it provably never left (refused, or failed before sending)."""
    return answered(exc) or cut_off_reason(exc) is not None


def backoff_delay(
    attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**(attempt-1)))."""
    ceiling = min(cap_s, base_s * (2 ** max(attempt - 1, 0)))
    return (rng or random).uniform(0, ceiling)


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms` or `retry-after`), if any."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            return max((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds(), 0.0)
        except (TypeError, ValueError):
            return None


def _redact(text: str, secrets: list[str]) -> str:
    """What may go into an error (workflow history, the run row, logs): no key, and short."""
    return redact(text, secrets)[:500]


def classify(
    exc: BaseException,
    *,
    agent: str,
    provider: str,
    key_var: str,
    attempt: int,
    url: str = "",
    base_s: float,
    cap_s: float,
    secrets: list[str],
    rng: random.Random | None = None,
) -> ApplicationError:
    """Turn a provider exception into the `ApplicationError` Temporal should see."""
    where = f"{agent}: {provider}"
    if isinstance(exc, STATUS_ERRORS):
        status = exc.status_code
        detail = _redact(str(getattr(exc, "message", exc)), secrets)
        if status in (401, 403):
            return ApplicationError(
                f"{where}: {key_var} rejected ({status}); check the key. {detail}",
                type="LLMAuthError",
                non_retryable=True,
            )
        if status in PERMANENT_STATUSES:
            return ApplicationError(
                f"{where}: request rejected ({status}), not retried: {detail}",
                type="LLMBadRequest",
                non_retryable=True,
            )
        if status in RETRYABLE_STATUSES or status >= 500:
            delay = backoff_delay(attempt, base_s, cap_s, rng)
            asked = retry_after_seconds(exc.response.headers)
            if asked is not None:
                delay = max(delay, asked)
            # A 429 is the provider's quota, not an outage: the breaker leaves it alone and the
            # shared rate limiter holds every worker back (activities/ratelimit.py).
            return ApplicationError(
                f"{where}: provider error ({status}), will retry in {delay:.1f}s: {detail}",
                type="LLMRateLimited" if status == 429 else "LLMTransient",
                next_retry_delay=timedelta(seconds=delay),
            )
        return ApplicationError(
            f"{where}: unexpected status {status}: {detail}",
            type="LLMBadRequest",
            non_retryable=True,
        )
    jitter = timedelta(seconds=backoff_delay(attempt, base_s, cap_s, rng))
    if isinstance(exc, TIMEOUT_ERRORS):
        return ApplicationError(
            f"{where}: call timed out", type="LLMTimeout", next_retry_delay=jitter
        )
    if isinstance(exc, CONNECTION_ERRORS):
        return ApplicationError(
            f"{where}: provider unreachable at {url or 'its URL'} (connection error)",
            type="LLMUnreachable",
            next_retry_delay=jitter,
        )
    if isinstance(exc, MalformedResponseError):
        return ApplicationError(
            f"{where}: malformed response: {_redact(str(exc), secrets)}",
            type="LLMMalformedResponse",
            next_retry_delay=jitter,
        )
    return ApplicationError(
        f"{where}: {type(exc).__name__}: {_redact(str(exc), secrets)}",
        type="LLMError",
        next_retry_delay=jitter,
    )
