"""One metered LLM call inside an agent activity: budget → breaker → reservation → call → ledger.

The order matters. The budget plan comes first (no point probing a provider for a call that
cannot be paid for); the breaker next (an open circuit fails fast without touching the network);
then the reservation — the attempt's `pending` ledger row at its worst case, durable before the
request leaves the process, so a worker killed mid-call cannot lose what the provider bills —
then the call itself (the activity heartbeats throughout: `activities/heartbeat.py`). The row is
settled with the reported usage, or, for a call cut off after it may have reached the provider
(timeout, malformed answer, lost connection, cancellation), kept at its worst case and marked
`estimated` with `cut_off_by`. Only an attempt that provably cost nothing (refused, or an error
status) is released. One row per (workflow, activity, attempt): nothing is charged twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any, NoReturn, TypeVar

import structlog
from opentelemetry.trace import Span, SpanKind
from sqlalchemy import Connection, Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.breaker import BreakerOpenError, BreakerRegistry, CircuitBreaker
from activities.errors import (
    answered,
    classify,
    cut_off_reason,
    reached_provider,
    retry_after_seconds,
)
from activities.llm import LLMProvider, LLMRequest, LLMResponse
from activities.persist import persist
from activities.ratelimit import RateLimiter, Throttle, blocked_for
from costs.budget import BudgetExhaustedError, CallPlan, estimate_tokens, plan_call
from costs.pricing import Priced, Pricer, UnknownPriceError
from crewline.db import DbRunner
from crewline.metrics import Metrics
from crewline.settings import Settings
from crewline.telemetry import Tracing, fail
from records import ledger
from records import runs as store
from records.ledger import Charge, Row, Then, cost_of_activity
from records.tables import to_pico

log = structlog.get_logger("crewline.calls")
T = TypeVar("T")
# (response, the step's settled cost) -> writes to commit with the ledger row (the turn, its
# tool calls, the step row), or None
Settle = Callable[[LLMResponse, Decimal], Then]


@dataclass(frozen=True)
class ModelCall:
    """What to send: the conversation, the tools it may call, and the model settings."""

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    max_tokens: int
    temperature: float


@dataclass(frozen=True)
class RunRow:
    """Changes to the run row that ride on a call's writes (no write of their own)."""

    at_reserve: Callable[[Connection], None] | None = None
    at_settle: Callable[..., None] | None = None  # (conn, response=LLMResponse)


def _both(first: Callable[[Connection], None], second: Callable[[Connection], None]) -> Any:
    def run(conn: Connection) -> None:
        first(conn)
        second(conn)

    return run


@dataclass(frozen=True)
class _Attempt:
    """One attempt's call, as the failure paths need it."""

    run_id: str
    agent: str
    request: LLMRequest
    breaker: CircuitBreaker
    worst: Charge
    grant: int | None  # its rate-limit grant (None: the model has no limit)


@dataclass(frozen=True)
class CallOutcome:
    response: LLMResponse
    step_cost_usd: Decimal  # every attempt of this step so far, this one included
    max_tokens_shrunk: bool


# A call's tokens beyond this are not usage but a provider's bug (no context window is this big).
MAX_PLAUSIBLE_TOKENS = 50_000_000


def _plausible(response: LLMResponse) -> bool:
    counts = (response.prompt_tokens or 0, response.completion_tokens or 0)
    return all(0 <= n <= MAX_PLAUSIBLE_TOKENS for n in counts)


class MeteredCaller:
    def __init__(
        self,
        settings: Settings,
        llm: LLMProvider,
        engine: Engine,
        pricer: Pricer,
        breakers: BreakerRegistry,
        worker_id: str,
        version: str | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        limiter: RateLimiter | None = None,
        db: DbRunner | None = None,
    ) -> None:
        self._settings, self._llm, self._engine = settings, llm, engine
        self._run = db or DbRunner(engine)
        self._pricer, self._breakers, self.worker_id = pricer, breakers, worker_id
        self._version = version
        self._metrics = metrics or Metrics()
        self._tracing = tracing or Tracing(None)
        self._throttle = Throttle(limiter, llm.name, self._metrics, settings.rate_limit_max_wait_s)
        # Backoff jitter; seedable (RETRY_JITTER_SEED) so a test can predict the delays.
        self._rng = random.Random(settings.retry_jitter_seed)
        self._secrets = sorted({*settings.secrets(), *llm.secrets()})

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # SQLAlchemy is synchronous: keep it off the worker's event loop (crewline/db.py).
        return await self._run(fn, *args, **kwargs)

    async def call(
        self,
        run_id: str,
        agent: str,
        ask: ModelCall,
        budget_left: Decimal | None,
        step: dict[str, Any],
        settle: Settle | None = None,
        shadow: bool = False,
        run_row: RunRow | None = None,
    ) -> CallOutcome:
        """`step`: fields for the step row, written together with the reservation.

        `settle(response, cost_usd)`: the writes (the turn, its tool calls, the step row) that
        commit in the same transaction as the call's ledger row, or None. `run_row`: the run
        row's changes that ride on this call's two writes (its first turn says RUNNING with the
        reservation, its last COMPLETED with the answer).
        """
        info = activity.info()
        model = ask.model
        prompt_estimate = estimate_tokens(
            *(str(m.get("content") or "") for m in ask.messages),
            *(json.dumps(m["tool_calls"]) for m in ask.messages if m.get("tool_calls")),
            json.dumps(ask.tools) if ask.tools else "",
        )
        spent, lost = await self._earlier_attempts(run_id, info.attempt)
        left = None if budget_left is None else budget_left - spent
        try:
            plan = plan_call(
                self._pricer,
                model,
                prompt_estimate,
                ask.max_tokens,
                left,
                self._settings.budget_min_tokens,
            )
        except BudgetExhaustedError as exc:
            message = f"budget exhausted before {agent}: {exc}"
            await self._db(
                store.upsert_step, run_id, agent,
                **{**step, "status": "BUDGET_EXCEEDED", "error": message},
            )  # fmt: skip
            raise ApplicationError(
                message,
                {
                    "agent": agent,
                    "needed_usd": str(exc.needed_usd),
                    "left_usd": str(exc.left_usd),
                    "step_spent_usd": str(spent),
                },
                type="BudgetExceeded",
                non_retryable=True,
            ) from None
        breaker = self._breakers.get(self._llm.name, model)
        await self._admit(breaker, run_id, agent, step, model)

        async def waiting(reason: str) -> None:  # the step waits for a rate-limit slot
            fields = {**step, "status": "WAITING_FOR_RATE_LIMIT", "error": reason}
            await self._db(store.upsert_step, run_id, agent, **fields)

        worst = self._worst_case(run_id, agent, model, prompt_estimate, plan, shadow)
        reserved = functools.partial(
            store.upsert_step_in, run_id=run_id, agent=agent, reserved_usd=plan.reserved_usd, **step
        )
        if run_row is not None and run_row.at_reserve is not None:
            reserved = _both(reserved, run_row.at_reserve)
        reserve = functools.partial(ledger.reserve, self._engine, worst, then=reserved)
        grant = None
        if self._throttle.limited(model):
            # A grant counts from when it is taken: the reservation is written in the same
            # thread right after it, so no queue (the database thread's) sits between the
            # grant and the request leaving.
            key = f"{info.workflow_id}/{info.activity_id}/{info.attempt}"
            tokens = prompt_estimate + plan.max_tokens
            grant = await self._throttle.slot(model, tokens, key, waiting, then=reserve)
        else:
            # Nothing is spent yet: waiting out a database outage here costs nothing.
            await persist(
                self._run,
                ledger.reserve,
                worst,
                then=reserved,
                patience_s=self._settings.db_patience_s,
            )
        request = LLMRequest(
            agent=agent, model=model, messages=ask.messages, tools=ask.tools,
            max_tokens=plan.max_tokens, temperature=ask.temperature, tag=run_id,
        )  # fmt: skip
        attempt = _Attempt(run_id, agent, request, breaker, worst, grant)
        with self._span(request, run_id, shadow, breaker, lost) as span:
            response = await self._complete(attempt, span)
            try:
                entry = self._entry(
                    run_id, agent, response, estimated_prompt=prompt_estimate, shadow=shadow,
                    model=model,
                )  # fmt: skip
            except UnknownPriceError as exc:
                # Answered but unpriceable: charged at its worst case now, by this live worker
                # (not left for a later attempt to call `worker_lost`), and not retried — a retry
                # would be billed again and fail the same way.
                worst.cut_off_by = "unpriced"
                await persist(
                    self._run, ledger.settle, worst, patience_s=self._settings.db_patience_s
                )
                self.charged(worst)
                raise ApplicationError(str(exc), type="UnknownPrice", non_retryable=True) from None
            self._annotate(span, response, entry)
        await self._moved(breaker, breaker.on_success())
        used = entry.prompt_tokens + entry.completion_tokens
        await self._throttle.answered(model, grant, used, response.rate_headers)
        then: Then = None
        if settle is not None:
            then = settle(response, spent + entry.cost_usd)  # every attempt of this turn
        if run_row is not None and run_row.at_settle is not None:
            at_settle = functools.partial(run_row.at_settle, response=response)
            then = at_settle if then is None else _both(then, at_settle)
        # The provider answered and billed: its usage must be recorded, whatever the database is
        # doing. The write is retried here (the activity heartbeats meanwhile) instead of failing
        # the attempt, which would call — and bill — the model again.
        await persist(
            self._run, ledger.settle, entry, then=then, patience_s=self._settings.db_patience_s
        )
        self.charged(entry)
        return CallOutcome(response, spent + entry.cost_usd, plan.shrunk)

    async def _earlier_attempts(self, run_id: str, attempt: int) -> tuple[Decimal, int]:
        """What this step's earlier attempts cost (none for a first attempt), and how many were
        lost with their worker: their pending rows are settled as `worker_lost` on the way."""
        if attempt == 1:
            return Decimal(0), 0
        info = activity.info()
        spent, lost = await self._db(cost_of_activity, info.workflow_id or run_id, info.activity_id)
        for row in lost:
            self.charged(row)
        if lost:
            log.warning(
                "ledger.worker_lost", run_id=run_id, attempts=[r.attempt for r in lost],
                charged_usd=str(sum((r.cost_usd for r in lost), Decimal(0))),
            )  # fmt: skip
        return spent, len(lost)

    async def _complete(self, call: _Attempt, span: Span) -> LLMResponse:
        started = time.monotonic()
        try:
            response = (await self._llm.complete(call.request)).cleaned(self._secrets)
        except asyncio.CancelledError:
            # The request may be at the provider: it stays charged at its worst case (and its
            # rate-limit grant stays counted).
            call.breaker.on_abandoned()
            call.worst.cut_off_by = "cancelled"
            cancelled = functools.partial(
                store.upsert_step_in, run_id=call.run_id, agent=call.agent, status="CANCELLED",
                reserved_usd=0,
            )  # fmt: skip
            await self._db(ledger.settle, call.worst, then=cancelled)
            self.charged(call.worst)
            self._call_outcome(call.request.model, "cancelled")
            fail(span, "cancelled", "cancelled while the call was in flight")
            raise
        except Exception as exc:
            await self._failed(exc, call, span)
        self._metrics.llm_seconds.labels(self._llm.name, call.request.model).observe(
            time.monotonic() - started
        )
        self._call_outcome(call.request.model, "ok")
        return response

    def _span(
        self, request: LLMRequest, run_id: str, shadow: bool, breaker: CircuitBreaker, lost: int
    ) -> Any:
        """The call's span, named and attributed by OpenTelemetry's GenAI conventions."""
        info = activity.info()
        return self._tracing.span(
            f"chat {request.model}",
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.system": self._llm.name,
                "gen_ai.provider.name": self._llm.name,
                "gen_ai.request.model": request.model,
                "gen_ai.request.max_tokens": request.max_tokens,
                "gen_ai.request.temperature": request.temperature,
                "gen_ai.prompt": self._tracing.text(
                    "\n\n".join(str(m.get("content") or "") for m in request.messages)
                ),
                "gen_ai.request.tools": len(request.tools) or None,
                "crewline.run_id": run_id,
                "crewline.agent": request.agent,
                "crewline.version": self._version or "unversioned",
                "crewline.attempt": info.attempt,
                "crewline.worker": self.worker_id,
                "crewline.breaker_state": breaker.state.value,
                "crewline.shadow": shadow,
                # A takeover: earlier attempts died with their worker (charged at worst case).
                "crewline.lost_attempts": lost or None,
            },
            kind=SpanKind.CLIENT,
        )

    def _annotate(self, span: Span, response: LLMResponse, entry: Charge) -> None:
        if not span.is_recording():
            return
        span.set_attributes(
            {
                "gen_ai.response.model": response.model,
                "gen_ai.usage.input_tokens": entry.prompt_tokens,
                "gen_ai.usage.output_tokens": entry.completion_tokens,
                "crewline.cost_usd": float(entry.cost_usd),
                "crewline.usage_source": entry.usage_source,
            }
        )
        completion = self._tracing.text(response.text)
        if completion is not None:
            span.set_attribute("gen_ai.completion", completion)
        span.set_attribute("gen_ai.response.finish_reasons", [response.finish_reason or "unknown"])
        if response.tool_calls:
            span.set_attribute("crewline.tool_calls", [c.name for c in response.tool_calls])

    def charged(self, entry: Row) -> None:
        self._metrics.charged(
            agent=entry.agent, model=entry.model, version=entry.version, shadow=entry.shadow,
            input_tokens=entry.prompt_tokens, output_tokens=entry.completion_tokens,
            cost_usd=entry.cost_usd,
        )  # fmt: skip

    def _call_outcome(self, model: str, outcome: str) -> None:
        self._metrics.llm_calls.labels(self._llm.name, model, outcome).inc()

    async def _admit(
        self, breaker: CircuitBreaker, run_id: str, agent: str, step: dict[str, Any], model: str
    ) -> None:
        try:
            await self._moved(breaker, breaker.before_call())
        except BreakerOpenError as exc:
            self._call_outcome(model, "breaker_open")
            # Fail fast without touching the network; Temporal retries after the open period.
            await self._db(
                store.upsert_step, run_id, agent, **{**step, "status": "WAITING", "error": str(exc)}
            )
            raise ApplicationError(
                f"{agent}: {exc}",
                type="CircuitOpen",
                next_retry_delay=timedelta(seconds=exc.retry_in_s),
            ) from None

    async def _failed(self, exc: Exception, call: _Attempt, span: Span) -> NoReturn:
        run_id, agent, breaker, worst = call.run_id, call.agent, call.breaker, call.worst
        error = classify(
            exc,
            agent=agent,
            provider=self._llm.name,
            key_var=self._llm.key_var,
            attempt=activity.info().attempt,
            url=self._llm.url,
            base_s=self._settings.retry_base_s,
            cap_s=self._settings.retry_cap_s,
            secrets=self._llm.secrets(),
            rng=self._rng,
        )
        # A permanent error or a 429 is an answer: the provider is up (a 429 is its quota).
        rate_limited = error.type == "LLMRateLimited"
        answer = error.non_retryable or rate_limited
        await self._moved(breaker, breaker.on_answer() if answer else breaker.on_failure())
        status = "FAILED" if error.non_retryable else "ERROR"
        failed = functools.partial(
            store.upsert_step_in, run_id=run_id, agent=agent, status=status,
            error=error.message, reserved_usd=0,
        )  # fmt: skip
        worst.cut_off_by = cut_off_reason(exc)
        if worst.cut_off_by is None:  # provably never billed: the reservation goes
            await self._db(ledger.release, worst, then=failed)
        else:  # no usage reported, but the provider may have done the work: its worst case
            await self._db(ledger.settle, worst, then=failed)
            self.charged(worst)
        # A 429's own hints (retry-after, x-ratelimit-reset-*) hold every worker back.
        headers = exc.response.headers if rate_limited and answered(exc) else None  # type: ignore[attr-defined]
        await self._throttle.failed(
            worst.model, call.grant, sent=reached_provider(exc), answered=answered(exc),
            wait_s=(retry_after_seconds(headers) or blocked_for(headers)) if headers else None,
        )  # fmt: skip
        outcome = "rate_limited" if rate_limited else "retryable"
        self._call_outcome(worst.model, "permanent" if error.non_retryable else outcome)
        fail(span, error.type or "LLMError", error.message)
        log.warning("agent.call_failed", agent=agent, run_id=run_id, error=error.message)
        # `from None`: the provider exception may echo request details; the classified
        # message is the redacted, actionable one.
        raise error from None

    def _worst_case(
        self, run_id: str, agent: str, model: str, prompt: int, plan: CallPlan, shadow: bool
    ) -> Charge:
        """The attempt's row as reserved: the estimated prompt and all of `max_tokens`."""
        worst = LLMResponse(
            text="", model=model, provider=self._llm.name,
            prompt_tokens=prompt, completion_tokens=plan.max_tokens, usage_estimated=True,
        )  # fmt: skip
        return self._entry(
            run_id, agent, worst, estimated_prompt=prompt, shadow=shadow, model=model
        )

    def _entry(
        self,
        run_id: str,
        agent: str,
        response: LLMResponse,
        *,
        estimated_prompt: int,
        shadow: bool = False,
        model: str = "",
    ) -> Charge:
        """This attempt's ledger row for `response`."""
        info = activity.info()
        reported = response.prompt_tokens is not None and response.completion_tokens is not None
        if reported and not _plausible(response):
            # Negative or absurd counts are not usage: the answer is charged by estimate, and
            # the row says so (retrying would call — and bill — the model again).
            log.warning(
                "llm.usage_nonsensical", prompt_tokens=response.prompt_tokens,
                completion_tokens=response.completion_tokens, model=response.model,
            )  # fmt: skip
            reported = False
        prompt = response.prompt_tokens if reported else estimated_prompt
        if reported:
            completion = response.completion_tokens
        else:
            completion = estimate_tokens(response.text) if response.text else 0
        priced = self._priced(
            response.model or model, model, prompt or 0, completion or 0,
            cached_tokens=response.cached_tokens,
            raw_usage=response.raw_usage if reported else None,
        )  # fmt: skip
        entry = Charge(
            run_id=run_id,
            workflow_id=info.workflow_id or run_id,
            activity_id=info.activity_id,
            attempt=info.attempt,
            agent=agent,
            provider=self._llm.name,
            model=response.model,
            version=self._version,
            prompt_tokens=prompt or 0,
            completion_tokens=completion or 0,
            cached_tokens=response.cached_tokens,
            cost_pusd=to_pico(priced.cost_usd),
            input_per_mtok=None if priced.input_per_mtok is None else str(priced.input_per_mtok),
            output_per_mtok=None if priced.output_per_mtok is None else str(priced.output_per_mtok),
            price_source=priced.source,
            usage_source="reported" if reported and not response.usage_estimated else "estimated",
            shadow=shadow,
        )
        return entry

    def _priced(
        self, answered: str, requested: str, prompt: int, completion: int, **usage: Any
    ) -> Priced:
        """The price of the model that answered; a name the price list does not know (a dated
        alias, a new deployment) is priced as the model requested — which start-up checked —
        and the row says so."""
        try:
            return self._pricer.price(answered, prompt, completion, **usage)
        except UnknownPriceError:
            if not requested or requested == answered:
                raise
        priced = self._pricer.price(requested, prompt, completion, **usage)
        source = f"{priced.source}; priced as {requested} (the answer named {answered})"
        return dataclasses.replace(priced, source=source[:64])

    async def _moved(self, breaker: CircuitBreaker, moved: bool) -> None:
        gauge = self._metrics.breaker_failures.labels(breaker.provider, breaker.model)
        gauge.set(breaker.consecutive_failures)
        # Persisted on transitions only, so /health (maybe another process) can show it.
        if moved:
            self._metrics.breaker_moved(
                breaker.provider, breaker.model, breaker.state.value, breaker.consecutive_failures
            )
            await self._db(store.save_breaker, self.worker_id, breaker.snapshot())
