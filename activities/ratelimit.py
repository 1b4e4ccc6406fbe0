"""The provider's rate limits, kept before it says 429 — one limit for the whole deployment.

Hosted providers cap requests and tokens per minute per model. Each worker waiting for its own
429 turns a burst of runs into a storm of them, burns attempts on waiting, and brings every worker
back at once. So every LLM call first takes a grant from a sliding window kept in the app
database, which all workers of the deployment share (the time is the database's, so workers on
different machines agree): at most `requests_per_minute` grants and `tokens_per_minute` tokens
(counted by the call's reservation — estimated prompt + max_tokens — then corrected by the
reported usage) in any window. A window is a little longer than the provider's (`_MARGIN`): a
grant is taken just before the request leaves, and the margin absorbs the time between the two.
When the provider says how much is left (`x-ratelimit-remaining-*` / `-reset-*` headers) or
answers 429 anyway (`retry-after`), the model's bucket is blocked until then, for every worker.

Waiting for a grant is not a failure: no attempt is used, the breaker sees nothing, the step row
says WAITING_FOR_RATE_LIMIT, and cancellation ends the wait at once.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, case, delete, func, insert, literal_column, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col
from temporalio.exceptions import ApplicationError

from activities import heartbeat
from crewline.db import session_scope
from crewline.metrics import Metrics
from crewline.settings import RateLimit
from records.tables import RateBucket, RateGrant

# A grant counts for the provider's window plus this share of it plus this many seconds.
_MARGIN_SHARE, _MARGIN_S = 0.02, 0.1
# A waiting step asks again at least this often (another worker's 429 may block the bucket).
_RECHECK_S = 5.0


@dataclass(frozen=True)
class Grant:
    """A slot taken (`id`), or not (`wait_s`: when to ask again) and why."""

    id: int | None
    wait_s: float = 0.0
    why: str = ""


def parse_reset(value: str | None) -> float | None:
    """A provider's reset duration ("2m59.56s", "7.66s", "120ms", "1h2m", "30") in seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = re.findall(r"([0-9]*\.?[0-9]+)(ms|h|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def blocked_for(headers: Any) -> float | None:
    """Seconds the provider's rate-limit headers say nothing more will be accepted (None: room
    is left, or the provider does not say)."""
    if headers is None:
        return None
    waits = []
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        reset = parse_reset(headers.get(f"x-ratelimit-reset-{kind}"))
        if remaining is not None and reset is not None and remaining.strip() == "0":
            waits.append(reset)
    return max(waits) if waits else None


def _db_now(engine: Engine) -> Any:
    """The database's clock, in epoch seconds: one clock for every worker of the deployment."""
    if engine.dialect.name == "sqlite":
        return literal_column("((julianday('now') - 2440587.5) * 86400.0)")
    return func.extract("epoch", func.clock_timestamp())


class RateLimiter:
    """The deployment's limits per `provider/model`, enforced through the app database."""

    def __init__(self, engine: Engine, limits: dict[str, RateLimit], window_s: float) -> None:
        self._engine, self._limits, self._window = engine, limits, window_s
        self._span = window_s * (1 + _MARGIN_SHARE) + _MARGIN_S

    def limit_for(self, model: str) -> RateLimit | None:
        return self._limits.get(model)

    def acquire(self, bucket: str, model: str, tokens: int, attempt: str) -> Grant:
        """Take a grant for one call of `tokens` (its worst case), or say how long to wait."""
        limit = self._limits[model]
        with session_scope(self._engine) as session:
            # The bucket row's lock serialises grants of one model across workers (a row lock on
            # PostgreSQL, the write lock on SQLite); the database's clock is read under it.
            lock = (
                update(RateBucket)
                .where(col(RateBucket.key) == bucket)
                .values(touched=_db_now(self._engine))
                .returning(col(RateBucket.touched), col(RateBucket.blocked_until))
            )
            now = session.execute(lock).first()
            if now is None:  # the model's first call: make its row (another worker may race)
                try:
                    with session.begin_nested():
                        session.add(RateBucket(key=bucket, touched=0.0))
                except IntegrityError:
                    pass
                now = session.execute(lock).one()
            clock, blocked_until = float(now[0]), now[1]
            start = clock - self._span
            session.execute(
                delete(RateGrant).where(col(RateGrant.bucket) == bucket, col(RateGrant.at) <= start)
            )
            rows = session.execute(
                select(col(RateGrant.at), col(RateGrant.tokens))
                .where(col(RateGrant.bucket) == bucket, col(RateGrant.at) > start)
                .order_by(col(RateGrant.at))
            ).all()
            wait, why = self._wait(limit, [(float(a), int(t)) for a, t in rows], tokens, clock)
            if blocked_until is not None and blocked_until - clock > wait:
                wait, why = blocked_until - clock, "the provider said to wait"
            if wait > 0:
                return Grant(None, wait, why)
            granted = session.execute(
                insert(RateGrant)
                .values(bucket=bucket, at=clock, tokens=tokens, attempt=attempt)
                .returning(col(RateGrant.id))
            ).scalar_one()
            return Grant(int(granted))

    def _wait(
        self, limit: RateLimit, rows: list[tuple[float, int]], tokens: int, clock: float
    ) -> tuple[float, str]:
        wait, why = 0.0, ""
        per = f"per {self._window:g} s" if self._window != 60 else "a minute"
        if limit.requests_per_minute is not None and len(rows) >= limit.requests_per_minute:
            # The grant whose expiry leaves room for one more.
            oldest = rows[len(rows) - limit.requests_per_minute][0]
            wait, why = oldest + self._span - clock, f"{limit.requests_per_minute} requests {per}"
        if limit.tokens_per_minute is not None:
            used = sum(t for _, t in rows)
            # A call bigger than the whole budget waits for an empty window, then goes alone.
            need = min(tokens, limit.tokens_per_minute)
            for at, spent in rows:
                if used + need <= limit.tokens_per_minute:
                    break
                used -= spent
                if at + self._span - clock > wait:
                    wait, why = at + self._span - clock, f"{limit.tokens_per_minute} tokens {per}"
        return wait, why

    def settle(self, grant_id: int, tokens: int) -> None:
        """Correct a grant with the tokens the provider reported (or 0 for an error answer)."""
        with session_scope(self._engine) as session:
            session.execute(
                update(RateGrant).where(col(RateGrant.id) == grant_id).values(tokens=tokens)
            )

    def release(self, grant_id: int) -> None:
        """The request never reached the provider: the slot is free again."""
        with session_scope(self._engine) as session:
            session.execute(delete(RateGrant).where(col(RateGrant.id) == grant_id))

    def block(self, bucket: str, seconds: float) -> None:
        """The provider said: nothing more for `seconds` (every worker waits; a later block
        already in place stays)."""
        until = _db_now(self._engine) + seconds
        current = col(RateBucket.blocked_until)
        with session_scope(self._engine) as session:
            session.execute(
                update(RateBucket)
                .where(col(RateBucket.key) == bucket)
                .values(blocked_until=case((current > until, current), else_=until))
            )


class Throttle:
    """The async side of the limiter for one worker's calls: a step waits here for its slot —
    heartbeating (its heartbeats say why), cancellable, its step row marked — and reports what
    the provider said afterwards. Without a limit for the model it costs nothing."""

    def __init__(
        self, limiter: RateLimiter | None, provider: str, metrics: Metrics, max_wait_s: float
    ) -> None:
        self._limiter, self._provider = limiter, provider
        self._metrics, self._max_wait = metrics, max_wait_s

    def limited(self, model: str) -> bool:
        return self._limiter is not None and self._limiter.limit_for(model) is not None

    async def slot(
        self,
        model: str,
        tokens: int,
        attempt: str,
        mark: Callable[[str], Awaitable[None]],
        then: Callable[[], object] | None = None,
    ) -> int | None:
        """Wait for a grant (its id; None when the model has no limit). `mark(reason)` is
        called once if the step has to wait; `then()` runs in the grant's thread right after it
        is taken (if it raises, the grant is given back)."""
        if self._limiter is None or not self.limited(model):
            return None
        bucket, started, waited = f"{self._provider}/{model}", time.monotonic(), False
        while True:
            grant = await asyncio.to_thread(self._take, bucket, model, tokens, attempt, then)
            elapsed = time.monotonic() - started
            if grant.id is not None:
                if waited:
                    self._metrics.rate_wait_seconds.labels(self._provider, model).observe(elapsed)
                    heartbeat.report()
                return grant.id
            if grant.wait_s <= 0:
                continue
            reason = f"waiting for rate limit ({bucket}: {grant.why})"
            if not waited:
                waited = True
                self._metrics.rate_waits.labels(self._provider, model).inc()
                await mark(reason)
            if elapsed + grant.wait_s > self._max_wait:
                # This attempt has waited long enough; Temporal starts the next one when the
                # slot is due (the attempt's time limit would end the wait anyway).
                raise ApplicationError(
                    f"{reason}: waited {elapsed:.0f}s, next slot in {grant.wait_s:.0f}s "
                    "(RATE_LIMIT_MAX_WAIT_S)",
                    type="RateLimitWait",
                    next_retry_delay=timedelta(seconds=grant.wait_s),
                )
            heartbeat.report({"waiting_for": "rate limit", "bucket": bucket, "why": grant.why})
            await asyncio.sleep(min(grant.wait_s, _RECHECK_S) + random.uniform(0, 0.05))

    def _take(
        self, bucket: str, model: str, tokens: int, attempt: str, then: Callable[[], object] | None
    ) -> Grant:
        assert self._limiter is not None
        grant = self._limiter.acquire(bucket, model, tokens, attempt)
        if grant.id is not None and then is not None:
            try:
                then()
            except BaseException:
                self._limiter.release(grant.id)
                raise
        return grant

    async def answered(self, model: str, grant: int | None, tokens: int, headers: Any) -> None:
        """The call got an answer: correct the grant's tokens, and hold everyone back if the
        provider's headers say nothing is left."""
        if self._limiter is None or not self.limited(model):
            return
        if grant is not None:
            await asyncio.to_thread(self._limiter.settle, grant, tokens)
        blocked = blocked_for(headers)
        if blocked:
            await asyncio.to_thread(self._limiter.block, f"{self._provider}/{model}", blocked)

    async def failed(
        self, model: str, grant: int | None, *, sent: bool, answered: bool, wait_s: float | None
    ) -> None:
        """The call failed. Never `sent`: the slot is free again; `answered` with an error
        status: it counted as a request but no tokens; `wait_s`: the provider said to wait
        (429), and every worker does."""
        if self._limiter is None or not self.limited(model):
            return
        if grant is not None and not sent:
            await asyncio.to_thread(self._limiter.release, grant)
        elif grant is not None and answered:
            await asyncio.to_thread(self._limiter.settle, grant, 0)
        if wait_s:
            await asyncio.to_thread(self._limiter.block, f"{self._provider}/{model}", wait_s)
