"""Per-key run limits: runs in flight and runs started per minute, counted in the app database
(so every API process sees the same counts). Past a limit: 429 with `Retry-After`.

Two requests racing past the same count can both pass; the limits bound a key's load, they are
not a billing guarantee (budgets are).
"""

from __future__ import annotations

import math
from datetime import timedelta

from fastapi import HTTPException, status
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from api.security.auth import Principal
from crewline.db import Run, utcnow
from crewline.settings import Settings
from crewline.statuses import TERMINAL_STATUSES

WINDOW = timedelta(minutes=1)
# A run in flight has no known end: ask the client to look again after this long.
INFLIGHT_RETRY_S = 5


def _too_many(message: str, retry_after_s: int) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        message,
        headers={"Retry-After": str(max(1, retry_after_s))},
    )


def check_run_limits(settings: Settings, engine: Engine, principal: Principal) -> None:
    """Raise 429 if this key may not start another run now."""
    mine = (Run.key_id == principal.key_id, col(Run.shadow_of).is_(None))
    now = utcnow()
    with Session(engine) as session:
        inflight = session.exec(
            select(func.count())
            .select_from(Run)
            .where(*mine, col(Run.status).not_in(list(TERMINAL_STATUSES)))
        ).one()
        if inflight >= settings.key_max_inflight:
            raise _too_many(
                f"key {principal.key_id} has {inflight} runs in flight, the most it may "
                f"(KEY_MAX_RUNS_IN_FLIGHT={settings.key_max_inflight}); retry when one ends",
                INFLIGHT_RETRY_S,
            )
        # Two aggregates, not the rows: this runs on every POST /runs.
        recent, oldest = session.exec(
            select(func.count(), func.min(Run.created_at)).where(
                *mine, col(Run.created_at) >= now - WINDOW
            )
        ).one()
    if recent >= settings.key_runs_per_minute and oldest is not None:
        wait = math.ceil((oldest.replace(tzinfo=now.tzinfo) + WINDOW - now).total_seconds())
        raise _too_many(
            f"key {principal.key_id} started {recent} runs in the last minute, the most it "
            f"may (KEY_RUNS_PER_MINUTE={settings.key_runs_per_minute})",
            wait,
        )
