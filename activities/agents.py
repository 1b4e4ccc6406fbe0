"""The five agent steps as Temporal activities, plus the run-status writer.

Each agent runs in an activity because it does I/O (LLM, search, files, database); Temporal
records its result, so a crashed worker resumes at the step it was in and finished steps are never
run — or billed — again. Each activity renders its prompt, makes one metered LLM call
(`activities/calls.py`: budget, breaker, heartbeat, error classification, ledger), writes its
step row idempotently, and returns a bounded, typed result.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import structlog
from opentelemetry import trace
from pydantic import BaseModel
from sqlalchemy import Connection, Engine
from temporalio import activity

from activities.breaker import BreakerRegistry
from activities.calls import CallOutcome, MeteredCaller, RunRow
from activities.heartbeat import heartbeating
from activities.llm import LLMProvider, LLMResponse
from activities.models import model_for
from activities.prompts import render
from activities.ratelimit import RateLimiter
from activities.research import needs_research, shared_research
from activities.tools import ToolContext, ToolRegistry
from activities.tools.files import parse_files
from activities.tools.search import SearchOutcome
from costs.pricing import Pricer
from crewline.db import DbRunner, utcnow
from crewline.metrics import Metrics
from crewline.settings import Settings
from crewline.telemetry import Tracing
from records import ledger
from records import runs as store
from records.pipeline import Compact
from records.statuses import AGENTS
from records.statuses import TERMINAL as TERMINAL_STATUSES

# Outputs handed back to the workflow are stored in its history: keep them small. The full text
# is in the step row (where the next steps read it); the history gets the finalizer's answer
# (bounded) and, for the other steps, a preview that keeps the Web UI readable.
MAX_RESULT_CHARS = 16_000
PREVIEW_CHARS = 160


class AgentInput(Compact):
    run_id: str
    query: str
    agent: str
    # The earlier steps' outputs; empty: read from the step rows (runs started by today's
    # workflow pass none, so outputs do not pile up in the history).
    context: dict[str, str] = {}
    dry_run: bool = False
    # What the run may still spend (budget - settled spend); None = no budget.
    budget_left_usd: Decimal | None = None
    # A shadow run: the primary whose research it reuses; its calls are ledgered as shadow.
    shadow_of: str | None = None
    # The run's status this step writes with its own rows: "RUNNING" (the first step),
    # "COMPLETED" (the last). None: the workflow records it (runs from before that change).
    run_status: str | None = None


class AgentResult(Compact):
    agent: str
    output: str
    model: str
    provider: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_estimated: bool = False
    scripted: bool = False
    attempt: int = 1
    notes: str | None = None
    artifacts: list[str] = []
    intents: list[dict[str, object]] = []  # dry run: {tool, summary}; arguments in the DB
    # Settled cost of every attempt of this step, from the ledger.
    cost_usd: Decimal = Decimal(0)
    max_tokens_shrunk: bool = False


class RunUpdate(BaseModel):
    run_id: str
    status: str
    query: str | None = None
    final_answer: str | None = None
    error: str | None = None
    failed_agent: str | None = None
    cancelled_agent: str | None = None
    budget_usd: Decimal | None = None


Step = Callable[["AgentActivities", AgentInput], Awaitable[AgentResult]]


def agent_step(fn: Step) -> Step:
    """Decorate an agent activity (under `@activity.defn`): it heartbeats for its whole life
    (`activities/heartbeat.py`), its log lines carry the run and agent, its Temporal span (the
    RunActivity span of the tracing interceptor) carries crewline's attributes, and its duration
    and queue lag are measured."""

    @functools.wraps(fn)
    async def observed(self: AgentActivities, inp: AgentInput) -> AgentResult:
        info = activity.info()
        lag = (info.started_time - info.current_attempt_scheduled_time).total_seconds()
        self._metrics.step_queue_seconds.labels(inp.agent).observe(max(lag, 0.0))
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(
                {
                    "crewline.run_id": inp.run_id, "crewline.agent": inp.agent,
                    "crewline.attempt": info.attempt, "crewline.version": self._version or "",
                    "crewline.dry_run": inp.dry_run, "crewline.shadow": inp.shadow_of is not None,
                    "crewline.worker": self._caller.worker_id,
                }
            )  # fmt: skip
        structlog.contextvars.bind_contextvars(
            run_id=inp.run_id, agent=inp.agent, attempt=info.attempt
        )
        started, outcome = time.monotonic(), "error"
        try:
            result = await fn(self, inp)
            outcome = "ok"
            return result
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            elapsed = time.monotonic() - started
            self._metrics.step_seconds.labels(inp.agent, outcome).observe(elapsed)

    return heartbeating(observed)


def _bounded(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"…[{len(text)} chars in the step row]"


def _files_of(answer: str) -> tuple[dict[str, str], str | None]:
    """The coder's files (path → content) from its answer, and a note if it used no FILE
    blocks (then the whole answer is one file)."""
    files = parse_files(answer)
    if files:
        return files, None
    return {"coder_answer.md": answer}, (
        "the model did not use the FILE format; its whole answer was saved as one file"
    )


def _coded(answer: str) -> tuple[str, str | None]:
    """The coder step's output: the files it wrote, then its answer; and its note."""
    files, notes = _files_of(answer)
    summary = "\n".join(f"- {p}" for p in files)
    return f"Wrote {len(files)} file(s):\n{summary}\n\n{answer}", notes


class AgentActivities:
    def __init__(
        self,
        settings: Settings,
        llm: LLMProvider,
        engine: Engine,
        tools: ToolRegistry,
        pricer: Pricer,
        breakers: BreakerRegistry | None = None,
        version: str | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        limiter: RateLimiter | None = None,
        db: DbRunner | None = None,
    ) -> None:
        """`version`: the snapshot id this worker serves (None: unversioned working tree); every
        run, step and ledger row it writes names it. `limiter`: the deployment's shared provider
        rate limits (None: none configured)."""
        self._settings = settings
        self._llm = llm
        self._engine = engine
        self._tools = tools
        self._version = version
        self._metrics = metrics or Metrics()
        self._run = db or DbRunner(engine)
        self._caller = MeteredCaller(
            settings,
            llm,
            engine,
            pricer,
            breakers or BreakerRegistry(settings.breaker_threshold, settings.breaker_open_s),
            worker_id=f"{socket.gethostname()}:{os.getpid()}",
            version=version,
            metrics=self._metrics,
            tracing=tracing,
            limiter=limiter,
            db=self._run,
        )

    # ---- helpers --------------------------------------------------------------------------------
    async def _db(self, fn, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        # SQLAlchemy is synchronous: keep it off the worker's event loop (crewline/db.py).
        await self._run(fn, *args, **kwargs)

    async def _call(
        self, inp: AgentInput, system: str, user: str, *, notes: str | None = None,
        output_of: Callable[[str], tuple[str, str | None]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> CallOutcome:  # fmt: skip
        """The step's metered LLM call. The step row is marked COMPLETED in the same transaction
        as the call's ledger row, with the answer as its output — or with `output_of(answer)`'s
        (output, notes)."""
        step = dict(
            position=AGENTS.index(inp.agent), status="RUNNING", attempt=activity.info().attempt,
            model=model_for(self._settings, inp.agent), provider=self._llm.name, error=None,
            version=self._version, started_at=utcnow(), finished_at=None, **(extra or {}),
        )  # fmt: skip

        def completed(response: LLMResponse, cost: Decimal) -> dict[str, Any]:
            output, why = (response.text, notes) if output_of is None else output_of(response.text)
            return self._completed_fields(response, cost, output=output, notes=why)

        outcome = await self._caller.call(
            inp.run_id, inp.agent, system, user, inp.budget_left_usd, step,
            settle=completed, shadow=inp.shadow_of is not None,
            run_row=self._run_row(inp),
        )  # fmt: skip
        if inp.run_status is not None:
            self._metrics.run_status(inp.run_status, self._version)
        return outcome

    def _run_row(self, inp: AgentInput) -> RunRow | None:
        if inp.run_status == "RUNNING":
            return RunRow(
                at_reserve=functools.partial(
                    store.run_started_in, run_id=inp.run_id, query=inp.query,
                    provider=self._llm.name, version=self._version,
                )
            )  # fmt: skip
        if inp.run_status == "COMPLETED":

            def finished(conn: Connection, response: LLMResponse) -> None:
                store.run_completed_in(conn, run_id=inp.run_id, final_answer=response.text)

            return RunRow(at_settle=finished)
        return None

    def _completed_fields(
        self, response: LLMResponse, cost: Decimal, *, output: str, notes: str | None
    ) -> dict[str, Any]:
        return dict(
            status="COMPLETED", output=output, notes=notes, model=response.model,
            prompt_tokens=response.prompt_tokens, completion_tokens=response.completion_tokens,
            attempt=activity.info().attempt, error=None, finished_at=utcnow(),
            cost_usd=cost, reserved_usd=0,
        )  # fmt: skip

    def _result(
        self, inp: AgentInput, outcome: CallOutcome, output: str, **extra: Any
    ) -> AgentResult:
        response = outcome.response
        whole = inp.agent == AGENTS[-1]  # the answer; the others' outputs are in their rows
        return AgentResult(
            agent=inp.agent,
            output=_bounded(output, MAX_RESULT_CHARS if whole else PREVIEW_CHARS),
            model=response.model,
            provider=response.provider,
            prompt_tokens=response.prompt_tokens,
            completion_tokens=response.completion_tokens,
            usage_estimated=response.usage_estimated,
            scripted=response.scripted,
            attempt=activity.info().attempt,
            cost_usd=outcome.step_cost_usd,
            max_tokens_shrunk=outcome.max_tokens_shrunk,
            **extra,
        )

    async def _context(self, inp: AgentInput) -> dict[str, str]:
        """The earlier steps' outputs: passed by a workflow of before, else from their rows."""
        if inp.context:
            return inp.context
        return await self._run(store.context_of, inp.run_id, artifacts=inp.agent == AGENTS[-1])

    # ---- the agents -----------------------------------------------------------------------------
    @activity.defn(name="researcher")
    @agent_step
    async def research(self, inp: AgentInput) -> AgentResult:
        wanted, why = needs_research(inp.query, self._settings.research_mode)
        found: SearchOutcome
        if inp.shadow_of is not None:
            # A shadow sees the facts its primary saw: differences come from the version.
            found = await shared_research(self._engine, inp.shadow_of)
        elif wanted:
            found = await self._tools.dispatch(
                ToolContext(run_id=inp.run_id, dry_run=inp.dry_run, agent=inp.agent),
                "web_search",
                query=inp.query,
            )
        else:
            found = SearchOutcome(skipped_reason=f"no web search needed: {why}")
        if found.hits:
            results = "\n".join(f"- {h.title} ({h.url}): {h.snippet}" for h in found.hits)
            notes: str | None = f"searched the web: {len(found.hits)} results"
        else:
            results = f"(none — {found.skipped_reason})"
            notes = found.skipped_reason
        prompt = render("researcher", query=inp.query, search_results=results)
        outcome = await self._call(
            inp, prompt.system, prompt.user, notes=notes,
            extra={"research_json": found.model_dump_json()},
        )  # fmt: skip
        return self._result(inp, outcome, outcome.response.text, notes=notes)

    @activity.defn(name="planner")
    @agent_step
    async def plan(self, inp: AgentInput) -> AgentResult:
        context = await self._context(inp)
        prompt = render("planner", query=inp.query, research=context.get("researcher", ""))
        outcome = await self._call(inp, prompt.system, prompt.user)
        return self._result(inp, outcome, outcome.response.text)

    @activity.defn(name="executor")
    @agent_step
    async def execute(self, inp: AgentInput) -> AgentResult:
        context = await self._context(inp)
        prompt = render("executor", query=inp.query, plan=context.get("planner", ""))
        outcome = await self._call(inp, prompt.system, prompt.user)
        return self._result(inp, outcome, outcome.response.text)

    @activity.defn(name="coder")
    @agent_step
    async def code(self, inp: AgentInput) -> AgentResult:
        context = await self._context(inp)
        prompt = render(
            "coder",
            query=inp.query,
            plan=context.get("planner", ""),
            architecture=context.get("executor", ""),
        )
        # The step's output (which files, and the answer) rides on the call's settle; the files
        # are written after it — if writing fails, the step is retried as a whole.
        outcome = await self._call(inp, prompt.system, prompt.user, output_of=_coded)
        files, notes = _files_of(outcome.response.text)
        output, _ = _coded(outcome.response.text)
        ctx = ToolContext(run_id=inp.run_id, dry_run=inp.dry_run, agent=inp.agent)
        written = [
            await self._tools.dispatch(ctx, "write_file", path=path, content=body)
            for path, body in files.items()
        ]
        artifacts = [w for w in written if w is not None]
        return self._result(
            inp, outcome, output, notes=notes, artifacts=artifacts, intents=ctx.intents
        )

    @activity.defn(name="finalizer")
    @agent_step
    async def finalize(self, inp: AgentInput) -> AgentResult:
        context = await self._context(inp)
        prompt = render(
            "finalizer",
            query=inp.query,
            plan=context.get("planner", ""),
            artifacts=context.get("artifacts", "(none)"),
            research=context.get("researcher", ""),
        )
        outcome = await self._call(inp, prompt.system, prompt.user)
        return self._result(inp, outcome, outcome.response.text)

    # ---- run bookkeeping -------------------------------------------------------------------------
    @activity.defn(name="record_run")
    async def record_run(self, update: RunUpdate) -> None:
        fields: dict[str, object] = {
            "status": update.status, "provider": self._llm.name, "version": self._version,
        }  # fmt: skip
        for name in ("query", "final_answer", "error", "failed_agent", "budget_usd"):
            value = getattr(update, name)
            if value is not None:
                fields[name] = value
        await self._db(store.update_run, update.run_id, **fields)
        self._metrics.run_status(update.status, self._version)
        if update.status in TERMINAL_STATUSES:
            # An attempt whose worker died mid-call and was never retried (the run failed or
            # was cancelled meanwhile) is charged now, at its worst case.
            lost = await self._run(ledger.settle_lost, run_id=update.run_id)
            for row in lost:
                self._caller.charged(row)
        if update.failed_agent:
            await self._db(
                store.upsert_step, update.run_id, update.failed_agent,
                position=AGENTS.index(update.failed_agent), status="FAILED",
                error=update.error, finished_at=utcnow(),
            )  # fmt: skip
        if update.status == "CANCELLED":
            await self._db(store.note_cancelled, update.run_id, update.cancelled_agent)
        if update.cancelled_agent:
            await self._db(
                store.upsert_step, update.run_id, update.cancelled_agent,
                position=AGENTS.index(update.cancelled_agent), status="CANCELLED",
                finished_at=utcnow(),
            )  # fmt: skip

    def all(self) -> list[object]:
        """Every activity the worker registers (the tests' worker registers the same list)."""
        return [self.research, self.plan, self.execute, self.code, self.finalize, self.record_run]
