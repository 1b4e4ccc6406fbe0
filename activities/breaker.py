"""Circuit breaker per provider + model, per worker process.

CLOSED → OPEN after `threshold` consecutive provider failures. While OPEN, calls fail fast without
touching the network; the activity raises a retryable error whose `next_retry_delay` is the time
left, so Temporal retries it once the open period has passed. After that, HALF_OPEN lets exactly
one probe through: success closes the breaker, failure re-opens it. Permanent errors (400, 401…)
are answers, not outages: they neither count as failures nor reset the count — but a probe that
gets one has shown the provider is up, so it closes the breaker.

All methods are synchronous and run on the worker's event loop thread, so no locking is needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

import structlog

log = structlog.get_logger("crewline.breaker")

# While a half-open probe is in flight, other callers come back after at most this long.
PROBE_WAIT_S = 5.0


class BreakerState(StrEnum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


class BreakerOpenError(Exception):
    def __init__(self, key: str, retry_in_s: float, reason: str) -> None:
        super().__init__(f"{key}: circuit open ({reason}); retrying in {retry_in_s:.1f}s")
        self.retry_in_s = retry_in_s


@dataclass
class BreakerSnapshot:
    provider: str
    model: str
    state: BreakerState
    consecutive_failures: int
    times_opened: int
    opened_at: datetime | None
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class CircuitBreaker:
    def __init__(
        self,
        provider: str,
        model: str,
        *,
        threshold: int,
        open_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider, self.model = provider, model
        self.threshold, self.open_s, self._clock = threshold, open_s, clock
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.times_opened = 0
        self._opened_mono: float | None = None
        self._opened_at: datetime | None = None
        self._probe_in_flight = False

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.model}"

    def snapshot(self) -> BreakerSnapshot:
        return BreakerSnapshot(
            self.provider,
            self.model,
            self.state,
            self.consecutive_failures,
            self.times_opened,
            self._opened_at,
        )

    def _move(self, state: BreakerState) -> None:
        log.info(
            "breaker.transition",
            breaker=self.key,
            from_state=self.state.value,
            to_state=state.value,
            consecutive_failures=self.consecutive_failures,
        )
        self.state = state
        if state == BreakerState.OPEN:
            self.times_opened += 1
            self._opened_mono = self._clock()
            self._opened_at = datetime.now(UTC)
        self._probe_in_flight = False

    def before_call(self) -> bool:
        """Admit a call or raise `BreakerOpenError`. Returns True if the state changed."""
        if self.state == BreakerState.CLOSED:
            return False
        if self.state == BreakerState.OPEN:
            assert self._opened_mono is not None
            left = self._opened_mono + self.open_s - self._clock()
            if left > 0:
                raise BreakerOpenError(
                    self.key, left, f"{self.consecutive_failures} consecutive failures"
                )
            self._move(BreakerState.HALF_OPEN)
            self._probe_in_flight = True
            return True
        if self._probe_in_flight:
            raise BreakerOpenError(
                self.key, min(self.open_s, PROBE_WAIT_S), "half-open, a probe is in flight"
            )
        self._probe_in_flight = True
        return False

    def on_success(self) -> bool:
        self.consecutive_failures = 0
        if self.state != BreakerState.CLOSED:
            self._move(BreakerState.CLOSED)
            return True
        return False

    def on_failure(self) -> bool:
        self.consecutive_failures += 1
        if self.state == BreakerState.HALF_OPEN or (
            self.state == BreakerState.CLOSED and self.consecutive_failures >= self.threshold
        ):
            self._move(BreakerState.OPEN)
            return True
        return False

    def on_answer(self) -> bool:
        """A permanent error: the provider answered, so it is up."""
        if self.state == BreakerState.HALF_OPEN:
            return self.on_success()
        return False

    def on_abandoned(self) -> None:
        """The call was cancelled before a verdict: let another probe through."""
        self._probe_in_flight = False


class BreakerRegistry:
    def __init__(self, threshold: int, open_s: float) -> None:
        self.threshold, self.open_s = threshold, open_s
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}

    def get(self, provider: str, model: str) -> CircuitBreaker:
        key = (provider, model)
        if key not in self._breakers:
            self._breakers[key] = CircuitBreaker(
                provider, model, threshold=self.threshold, open_s=self.open_s
            )
        return self._breakers[key]

    def snapshots(self) -> list[BreakerSnapshot]:
        return [b.snapshot() for b in self._breakers.values()]
