"""The agent loop's durable steps, as Temporal activities: one model turn (`agent_turn`), one tool
call (`agent_tool`), a round of acceptance checks (`agent_checks`, which closes the step when it
ends the loop) and closing a step otherwise (`agent_finish`); the approval records; the
run-status writer. What each takes and returns is `activities/contract.py`.

The loop itself is the pipeline workflow's (`workflows/pipeline.py`): it asks for a turn, runs the
tool calls the turn asked for, asks for the next turn, until the agent answers, runs out of turns
or money. Each of those is an activity, so a killed worker resumes at the last finished turn or
tool call — and each activity first reads its own checkpoint, so a turn whose answer is already
recorded is never sent — or billed — again, and a tool call whose result is recorded is never run
again, even when Temporal never heard that it finished (the server was down, a result was lost).

A turn sends the agent's conversation — its instructions (`activities/prompts/`), the request and
the earlier agents' outputs, then its own earlier turns, tool results and the pipeline's notes —
with its tools (`activities/agents.yaml`), through the metered call path (`activities/calls.py`:
budget, breaker, rate limit, ledger). The model's message and the tool calls it asks for are
committed with the call's ledger row, in one transaction.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import structlog
from opentelemetry import trace
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import answers, checks
from activities.breaker import BreakerRegistry
from activities.calls import CallOutcome, MeteredCaller, ModelCall, RunRow
from activities.contract import (
    ApprovalAsk,
    ApprovalDone,
    CallRef,
    ChecksInput,
    ChecksResult,
    FinishInput,
    FinishResult,
    RunUpdate,
    ToolInput,
    ToolResult,
    TurnInput,
    TurnResult,
)
from activities.heartbeat import heartbeating
from activities.llm import LLMProvider, LLMResponse
from activities.models import model_for
from activities.persist import persist
from activities.prompts import render
from activities.ratelimit import RateLimiter
from activities.specs import AgentSpec, Output, spec
from activities.tools import ToolContext, ToolOutput, ToolRegistry
from activities.tools.builtin import workspace_files
from costs.pricing import Pricer
from crewline.db import DbRunner, utcnow
from crewline.metrics import Metrics
from crewline.sandbox import Sandbox
from crewline.settings import Settings
from crewline.telemetry import Tracing
from records import approvals, events, ledger
from records import runs as store
from records.runs import CallResult, PlannedCall, TurnRecord
from records.statuses import AGENTS, TERMINAL, Approval, StepStatus
from records.tables import ToolCall, Turn

log = structlog.get_logger("crewline.agents")
T = TypeVar("T")

# What travels through the workflow's history is small: the whole output is in the step row
# (where the next agents read it); the history gets a preview (the finalizer's answer whole).
MAX_RESULT_CHARS = 16_000
PREVIEW_CHARS = 160
LAST_TURN_NOTE = (
    "This is your last turn: no more tool calls are possible. Give your final answer now, with "
    "what you have."
)
CONTINUE_NOTE = "Your answer was cut off at the token limit. Continue exactly where it stopped."


Activity = Callable[..., Awaitable[Any]]


def agent_step(fn: Activity) -> Activity:
    """Decorate an agent activity (under `@activity.defn`): it heartbeats for its whole life
    (`activities/heartbeat.py`), its log lines carry the run, agent and turn, its Temporal span
    carries crewline's attributes, and its duration and queue lag are measured."""

    @functools.wraps(fn)
    async def observed(self: AgentActivities, inp: Any) -> Any:
        info = activity.info()
        lag = (info.started_time - info.current_attempt_scheduled_time).total_seconds()
        self._metrics.step_queue_seconds.labels(inp.agent).observe(max(lag, 0.0))
        span = trace.get_current_span()
        if span.is_recording():
            # Named for people: "RunActivity:researcher turn 2", "RunActivity:coder tool
            # write_file" (Temporal's interceptor names it after the activity type only).
            what = (
                f"turn {inp.turn}" if isinstance(inp, TurnInput)
                else f"checks round {inp.round}" if isinstance(inp, ChecksInput)
                else f"tool {inp.name}"
            )  # fmt: skip
            span.update_name(f"RunActivity:{inp.agent} {what}")
            span.set_attributes(
                {
                    "crewline.run_id": inp.run_id, "crewline.agent": inp.agent,
                    "crewline.turn": inp.turn if hasattr(inp, "turn") else 0,
                    "crewline.attempt": info.attempt, "crewline.version": self._version or "",
                    "crewline.dry_run": getattr(inp, "dry_run", False),
                    "crewline.shadow": getattr(inp, "shadow_of", None) is not None,
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


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"…[{len(text)} chars in the step row]"


def _fingerprint(name: str, arguments: str) -> str:
    try:
        canonical = json.dumps(json.loads(arguments), sort_keys=True)
    except ValueError:
        canonical = arguments
    return hashlib.sha256(f"{name}:{canonical}".encode()).hexdigest()[:16]


def _args(arguments: str) -> dict[str, Any]:
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError:
        return {"__invalid_json__": arguments[:2000]}
    return parsed if isinstance(parsed, dict) else {"__invalid_json__": arguments[:2000]}


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
        sandbox: Sandbox | None = None,
    ) -> None:
        """`version`: the snapshot id this worker serves (None: unversioned working tree); every
        run, step and ledger row it writes names it. `limiter`: the deployment's shared provider
        rate limits (None: none configured). `sandbox`: where acceptance checks run."""
        self._settings = settings
        self._llm = llm
        self._engine = engine
        self._tools = tools
        self._version = version
        self._metrics = metrics or Metrics()
        self._run = db or DbRunner(engine)
        self._sandbox = sandbox or Sandbox(settings.sandbox_limits())
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

    async def _write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A database write that waits out a short outage (`activities/persist.py`)."""
        return await persist(
            self._run, fn, *args, patience_s=self._settings.db_patience_s, **kwargs
        )

    # ---- one model turn ------------------------------------------------------------------------
    @activity.defn(name="agent_turn")
    @agent_step
    async def turn(self, inp: TurnInput) -> TurnResult:
        agent = spec(inp.agent)
        state = await self._write(
            store.turn_state, inp.run_id, inp.agent, inp.turn,
            artifacts=agent.output == Output.ANSWER,
        )  # fmt: skip
        recorded = state.recorded
        if recorded is not None and recorded[0].status == StepStatus.COMPLETED:
            # Its answer is recorded (the result never reached Temporal, or a retry after the
            # settle): it is the checkpoint — return it, never call the model again.
            return await self._from_record(inp, *recorded)
        messages = self._conversation(inp, agent, state)
        ask = ModelCall(
            model=agent.model or model_for(self._settings, inp.agent),
            messages=messages,
            tools=[] if inp.last_turn else self._tools.schemas(agent.tools),
            max_tokens=agent.max_tokens or self._settings.llm_max_tokens,
            temperature=(
                agent.temperature if agent.temperature is not None
                else self._settings.llm_temperature
            ),
        )  # fmt: skip
        step = dict(
            position=AGENTS.index(inp.agent), status=StepStatus.RUNNING.value,
            attempt=activity.info().attempt, model=ask.model, provider=self._llm.name,
            error=None, version=self._version, finished_at=None, turn_count=inp.turn,
        )  # fmt: skip
        if inp.turn == 1:
            step["started_at"] = utcnow()
        decided: list[answers.Decision] = []
        suffix = ""
        if agent.output == Output.ANSWER:  # say what was verified, from the record
            suffix = checks.footer(state.checks, inp.dry_run)

        attempt = activity.info().attempt  # the settle runs in a database thread

        def settle(response: LLMResponse, cost: Decimal) -> Callable[[Connection], None]:
            decision = answers.decide(agent, inp, response, state.history, self._llm.name, suffix)
            decided.append(decision)
            return functools.partial(self._settled, inp, response, cost, attempt, decision)

        outcome = await self._caller.call(
            inp.run_id, inp.agent, ask, inp.budget_left_usd, step, settle=settle,
            shadow=inp.shadow_of is not None, run_row=self._run_row(inp),
        )  # fmt: skip
        decision = decided[0]
        if decision.empty:
            raise ApplicationError(
                f"{inp.agent}: the model answered with nothing usable (no text, no tool call; "
                f"{outcome.response.completion_tokens} tokens billed); asking again",
                type="LLMEmptyAnswer",
            )
        if inp.run_status is not None:
            self._metrics.run_status(inp.run_status, self._version)
        return self._result(inp, outcome, decision)

    def _settled(
        self,
        inp: TurnInput,
        response: LLMResponse,
        cost: Decimal,
        attempt: int,
        decision: answers.Decision,
        conn: Connection,
    ) -> None:
        """The turn's writes, in the transaction of its ledger row: the turn and its tool calls;
        the step row; and, for the run's final answer, the run row."""
        if decision.empty:
            store.upsert_step_in(
                conn, inp.run_id, inp.agent, status=StepStatus.ERROR.value,
                error="the model answered with nothing usable", reserved_usd=0,
            )  # fmt: skip
            return
        store.turn_settled_in(
            conn,
            TurnRecord(
                run_id=inp.run_id, agent=inp.agent, turn=inp.turn, message=response.message(),
                finish_reason=response.finish_reason, model=response.model,
                prompt_tokens=response.prompt_tokens,
                completion_tokens=response.completion_tokens, cost_usd=cost,
                attempt=attempt, calls=tuple(decision.calls), feedback=decision.feedback,
                text_in_event=self._settings.trace_content,
            ),
        )  # fmt: skip
        fields: dict[str, Any] = {"reserved_usd": 0, "model": response.model}
        if decision.finished:
            fields.update(
                status=StepStatus.COMPLETED.value, output=decision.output, notes=decision.notes,
                finished_at=utcnow(), error=None,
            )  # fmt: skip
            if decision.checks is not None:
                fields["checks_json"] = json.dumps(decision.checks)
        elif decision.notes:
            fields["notes"] = decision.notes
        store.step_usage_in(conn, inp.run_id, inp.agent, **fields)
        if decision.finished:
            store.step_finished_in(conn, inp.run_id, inp.agent, decision.output)
            if inp.run_status == "COMPLETED":
                store.run_completed_in(conn, run_id=inp.run_id, final_answer=decision.output)

    def _run_row(self, inp: TurnInput) -> RunRow | None:
        """What rides on the turn's reservation: the run's start (its first turn), and the
        step's (the agent's first turn), with their events."""
        hooks: list[Callable[[Connection], None]] = []
        if inp.run_status == "RUNNING":
            hooks.append(functools.partial(
                store.run_started_in, run_id=inp.run_id, query=inp.query,
                provider=self._llm.name, version=self._version,
            ))  # fmt: skip
        if inp.turn == 1:
            hooks.append(functools.partial(
                events.emit_in, run_id=inp.run_id, key=f"step:{inp.agent}:started",
                kind=events.STEP, data={"agent": inp.agent, "status": "RUNNING"},
            ))  # fmt: skip
        if not hooks:
            return None

        def at_reserve(conn: Connection) -> None:
            for hook in hooks:
                hook(conn)

        return RunRow(at_reserve=at_reserve)

    def _conversation(
        self,
        inp: TurnInput,
        agent: AgentSpec,
        state: store.TurnState,
    ) -> list[dict[str, Any]]:
        """The agent's instructions and task, then its turns so far with their tool results."""
        context = state.context
        if agent.output == Output.ANSWER:
            context = {**context, "checks": checks.describe(state.checks)}
        prompt = render(
            agent.prompt, query=inp.query, research=context.get("researcher", ""),
            plan=context.get("planner", ""), architecture=context.get("executor", ""),
            artifacts=context.get("artifacts", "(none)"), checks=context.get("checks", "(none)"),
            dry_run="yes: nothing was written or run for real" if inp.dry_run else "no",
            sandbox=self._sandbox.check().describe(),
        )  # fmt: skip
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": prompt.user},
        ]
        for turn, calls in state.history:
            messages.append(json.loads(turn.message_json or "{}") | {"role": "assistant"})
            asked = {c["id"] for c in messages[-1].get("tool_calls") or []}
            for call in calls:
                if call.call_id in asked:  # calls the runtime made itself are not the model's
                    messages.append(
                        {"role": "tool", "tool_call_id": call.call_id,
                         "content": call.result if call.result is not None else "(no result)"}
                    )  # fmt: skip
            if turn.feedback:
                messages.append({"role": "user", "content": turn.feedback})
        if inp.last_turn and state.history:
            messages.append({"role": "user", "content": LAST_TURN_NOTE})
        return messages

    def _result(
        self, inp: TurnInput, outcome: CallOutcome, decision: answers.Decision
    ) -> TurnResult:
        response = outcome.response
        whole = inp.agent == AGENTS[-1] and decision.finished
        return TurnResult(
            agent=inp.agent, turn=inp.turn, finished=decision.finished,
            then_finish=decision.then_finish,
            output=_bounded(decision.output, MAX_RESULT_CHARS if whole else PREVIEW_CHARS),
            calls=[self._ref(c) for c in decision.calls], model=response.model,
            provider=response.provider, prompt_tokens=response.prompt_tokens,
            completion_tokens=response.completion_tokens, cost_usd=outcome.step_cost_usd,
            attempt=activity.info().attempt, scripted=response.scripted,
            finish_reason=response.finish_reason, max_tokens_shrunk=outcome.max_tokens_shrunk,
        )  # fmt: skip

    def _ref(self, call: PlannedCall) -> CallRef:
        arguments = json.dumps(call.args, sort_keys=True)
        return CallRef(
            call_id=call.call_id,
            name=call.name,
            summary=events.describe_call(call.name, call.args),
            fingerprint=_fingerprint(call.name, arguments),
            requires_approval=self._requires_approval(call.name),
        )

    def _requires_approval(self, name: str) -> bool:
        if name in self._settings.approval_required_tools:
            return True
        try:
            return self._tools.get(name).requires_approval
        except KeyError:  # an unknown tool: the model is told so, nothing to approve
            return False

    async def _from_record(self, inp: TurnInput, turn: Turn, calls: list[ToolCall]) -> TurnResult:
        """The result a recorded turn gave (a retried attempt after its answer was committed)."""
        message = json.loads(turn.message_json or "{}")
        asked = [
            PlannedCall(call_id=c.call_id, name=c.name, args=json.loads(c.args_json)) for c in calls
        ]
        steps = {s.agent: s for s in await self._write(store.steps_of, inp.run_id)}
        step = steps.get(inp.agent)
        finished = step is not None and step.status == StepStatus.COMPLETED and not asked
        output = (
            (step.output or "") if finished and step is not None else message.get("content") or ""
        )
        whole = inp.agent == AGENTS[-1] and finished
        return TurnResult(
            agent=inp.agent, turn=inp.turn, finished=finished,
            then_finish=bool(asked) and not message.get("tool_calls"),
            output=_bounded(output, MAX_RESULT_CHARS if whole else PREVIEW_CHARS),
            calls=[self._ref(c) for c in asked], model=turn.model or "",
            provider=self._llm.name, prompt_tokens=turn.prompt_tokens,
            completion_tokens=turn.completion_tokens, cost_usd=turn.cost_usd or Decimal(0),
            attempt=turn.attempt, finish_reason=turn.finish_reason,
        )  # fmt: skip

    # ---- one tool call --------------------------------------------------------------------------
    @activity.defn(name="agent_tool")
    @agent_step
    async def tool(self, inp: ToolInput) -> ToolResult:
        row = await self._write(store.tool_call_claim, inp.run_id, inp.agent, inp.call_id)
        if row is None:
            raise ApplicationError(
                f"{inp.agent}: tool call {inp.call_id} of turn {inp.turn} is not recorded",
                type="ToolCallMissing", non_retryable=True,
            )  # fmt: skip
        if row.status == "COMPLETED":  # done before (its result never reached Temporal)
            return self._tool_result(row)
        ctx = ToolContext(
            run_id=inp.run_id, dry_run=inp.dry_run, agent=inp.agent, shadow_of=inp.shadow_of,
            call_id=inp.call_id, intent_seq=row.id or 0,
        )  # fmt: skip
        started = time.monotonic()
        args = json.loads(row.args_json)
        if inp.approval is not None and inp.approval != Approval.APPROVED:
            output = await self._not_approved(inp, ctx, args)
        elif "__invalid_json__" in args:
            output = ToolOutput(
                "error: the arguments were not valid JSON; call the tool again with a JSON "
                "object of its parameters", ok=False, summary="arguments were not JSON",
            )  # fmt: skip
        else:
            try:
                output = await self._tools.dispatch(ctx, row.name, **args)
            except (OperationalError, InterfaceError):
                raise  # the database, not the tool: Temporal retries the call
            except Exception as exc:  # a tool's own failure is the model's to read
                output = ToolOutput(f"error: {type(exc).__name__}: {str(exc)[:300]}", ok=False,
                                    summary=f"failed: {type(exc).__name__}")  # fmt: skip
        done = CallResult(
            ok=output.ok, summary=output.summary or ("ok" if output.ok else "error"),
            result=output.for_model(), data=output.data, intent=bool(ctx.intents),
            duration_ms=int((time.monotonic() - started) * 1000),
            call=events.describe_call(row.name, args), turn=inp.turn,
            text_in_event=self._settings.trace_content,
        )  # fmt: skip
        await self._write(store.tool_call_done, inp.run_id, inp.agent, inp.call_id, done)
        return ToolResult(
            call_id=inp.call_id, name=row.name, ok=done.ok, summary=done.summary,
            chars=len(done.result), duration_ms=done.duration_ms, intent=done.intent,
        )  # fmt: skip

    async def _not_approved(
        self, inp: ToolInput, ctx: ToolContext, args: dict[str, Any]
    ) -> ToolOutput:
        """A call that was denied, timed out, or (a shadow run) would have asked: not run; the
        model reads why, so it can go on another way."""
        if inp.approval == Approval.WOULD_ASK:
            summary = f"would ask for approval: {events.describe_call(inp.name, args)}"
            await self._write(
                store.record_intent, inp.run_id, inp.agent, ctx.intent_seq, inp.name, summary,
                args,
            )  # fmt: skip
            await self._write(approvals.would_ask, inp.run_id, inp.agent, inp.call_id)
            ctx.intents.append({"tool": inp.name, "summary": summary})
            return ToolOutput(
                f"(shadow run: this call needs a person's approval; nobody was asked and "
                f"nothing was done) {summary}", summary=summary, data={"intent": True},
            )  # fmt: skip
        why = inp.approval_note or "no reason given"
        if inp.approval == Approval.TIMED_OUT:
            text = f"error: not run: nobody approved this call in time ({why})"
        else:
            text = f"error: not run: {inp.approval_by or 'a person'} denied this call: {why}"
        return ToolOutput(
            text + ". Do not call it again with the same arguments; go on another way.",
            ok=False, summary=f"{(inp.approval or '').lower().replace('_', ' ')}: {why}"[:120],
        )  # fmt: skip

    # ---- approvals: the run waits for a person ------------------------------------------------
    @activity.defn(name="approval_asked")
    async def approval_asked(self, ask: ApprovalAsk) -> None:
        """A call waits for a decision: recorded on the call, its step and run say so."""
        turn_text = await self._write(approvals.stated_reason, ask.run_id, ask.agent, ask.call_id)
        await self._write(
            approvals.asked, ask.run_id, ask.agent, ask.call_id, tool=ask.tool,
            summary=ask.summary, reason=turn_text,
            deadline=datetime.fromisoformat(ask.deadline) if ask.deadline else utcnow(),
        )  # fmt: skip
        self._metrics.approvals.labels("asked").inc()
        log.info("approval.asked", run_id=ask.run_id, agent=ask.agent, call_id=ask.call_id,
                 tool=ask.tool)  # fmt: skip

    @activity.defn(name="approval_decided")
    async def approval_decided(self, done: ApprovalDone) -> None:
        """A call's decision: who, when and why, on the call and in the trace."""
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(
                {"crewline.run_id": done.run_id, "crewline.agent": done.agent,
                 "gen_ai.tool.name": done.tool, "gen_ai.tool.call.id": done.call_id,
                 "crewline.approval": done.state, "crewline.approval.by": done.by,
                 "crewline.approval.note": (done.note or "")[:300]}
            )  # fmt: skip
        await self._write(
            approvals.decided, done.run_id, done.agent, done.call_id,
            state=Approval(done.state), by=done.by, note=done.note,
        )  # fmt: skip
        self._metrics.approvals.labels(done.state.lower()).inc()
        log.info("approval.decided", run_id=done.run_id, agent=done.agent,
                 call_id=done.call_id, state=done.state, by=done.by)  # fmt: skip

    @staticmethod
    def _tool_result(row: ToolCall) -> ToolResult:
        return ToolResult(
            call_id=row.call_id, name=row.name, ok=bool(row.ok), summary=row.summary or "",
            chars=len(row.result or ""), duration_ms=row.duration_ms or 0, intent=row.intent,
        )  # fmt: skip

    # ---- acceptance checks --------------------------------------------------------------------
    @activity.defn(name="agent_checks")
    @agent_step
    async def acceptance(self, inp: ChecksInput) -> ChecksResult:
        """One round of the Executor's acceptance checks on the agent's files, in the sandbox.
        A round already recorded is not run again; a failed round with rounds left tells the
        agent what failed (feedback after its turn)."""
        found = await self._write(store.checks_of_steps, inp.run_id, (inp.agent, "executor"))
        record = found.get(inp.agent) or {"rounds": []}
        done = next((r for r in record.get("rounds", []) if r["round"] == inp.round), None)
        if done is None:
            record = await self._check_round(inp, record, found.get("executor"))
            done = next((r for r in record["rounds"] if r["round"] == inp.round), None)
        if done is None:  # not run, and why
            result = ChecksResult(status=checks.NOT_RUN)
        else:
            passed = sum(1 for r in done["results"] if r["passed"])
            total = len(done["results"])
            retry = passed < total and inp.round < inp.rounds
            if retry:
                text = checks.feedback(done["results"], inp.round, inp.rounds)
                await self._write(store.add_feedback, inp.run_id, inp.agent, inp.turn, text)
            result = ChecksResult(
                status=checks.status_of(record), passed=passed, total=total, retry=retry
            )
        if inp.close and (not result.retry or inp.last_turn):
            result.output = await self._close(inp.run_id, inp.agent, None, inp.run_status)
            result.closed = True
        return result

    async def _check_round(
        self, inp: ChecksInput, record: dict[str, Any], commands: Any
    ) -> dict[str, Any]:
        available = self._sandbox.check()
        why = None
        if not commands:
            why = "the Executor gave no acceptance checks"
        elif not available.ok:
            why = available.describe()
        if why is not None:
            record = {"status": checks.NOT_RUN, "why": why, "rounds": []}
        else:
            files = await workspace_files(self._settings, self._run, inp.run_id, inp.dry_run)
            results = await checks.run_round(self._sandbox, list(commands), files)
            record["rounds"] = [*record.get("rounds", []), {"round": inp.round, "results": results}]
            record["status"] = checks.PASSED if all(r["passed"] for r in results) else checks.FAILED
            record["dry_run"] = inp.dry_run
        last = record["rounds"][-1]["results"] if why is None else []
        passed = sum(1 for r in last if r["passed"])
        event = {
            "round": inp.round, "rounds": inp.rounds, "status": record["status"],
            "passed": passed, "total": len(last), "why": why,
        }  # fmt: skip
        await self._write(store.save_checks, inp.run_id, inp.agent, record, event)
        return record

    # ---- closing a step --------------------------------------------------------------------------
    @activity.defn(name="agent_finish")
    async def finish(self, inp: FinishInput) -> FinishResult:
        """Close a step the loop ended itself: after writing the files of a text answer, or
        stopped (max turns, a repeated tool call). Its output is the agent's last answer and
        what it did; why it stopped is said in the step."""
        return FinishResult(
            output=await self._close(inp.run_id, inp.agent, inp.stop_reason, inp.run_status)
        )

    async def _close(
        self, run_id: str, agent: str, stop_reason: str | None, run_status: str | None
    ) -> str:
        """The step COMPLETED (the run too, with `run_status`); its output, as previewed."""
        output = await self._write(
            store.finish_step, run_id, agent, stop_reason=stop_reason,
            run_completed=run_status == "COMPLETED",
        )  # fmt: skip
        if run_status is not None:
            self._metrics.run_status(run_status, self._version)
        return _bounded(output, MAX_RESULT_CHARS if agent == AGENTS[-1] else PREVIEW_CHARS)

    # ---- run bookkeeping ----------------------------------------------------------------------
    @activity.defn(name="record_run")
    async def record_run(self, update: RunUpdate) -> None:
        fields: dict[str, object] = {
            "status": update.status, "provider": self._llm.name, "version": self._version,
        }  # fmt: skip
        for name in ("query", "final_answer", "error", "failed_agent", "budget_usd"):
            value = getattr(update, name)
            if value is not None:
                fields[name] = value
        key = (
            "run:ended" if update.status in TERMINAL
            else f"run:{update.status}:{update.change}" if update.change is not None else None
        )  # fmt: skip
        await self._write(store.update_run, update.run_id, event_key=key, **fields)
        self._metrics.run_status(update.status, self._version)
        if update.status in TERMINAL:
            # An attempt whose worker died mid-call and was never retried (the run failed or
            # was cancelled meanwhile) is charged now, at its worst case.
            lost = await self._write(ledger.settle_lost, run_id=update.run_id)
            for row in lost:
                self._caller.charged(row)
        if update.failed_agent:
            await self._write(
                store.upsert_step, update.run_id, update.failed_agent,
                position=AGENTS.index(update.failed_agent), status="FAILED",
                error=update.error, finished_at=utcnow(),
            )  # fmt: skip
        if update.status == "CANCELLED":
            await self._write(store.note_cancelled, update.run_id, update.cancelled_agent)
        if update.cancelled_agent:
            await self._write(
                store.upsert_step, update.run_id, update.cancelled_agent,
                position=AGENTS.index(update.cancelled_agent), status="CANCELLED",
                finished_at=utcnow(),
            )  # fmt: skip

    def all(self) -> list[object]:
        """Every activity the worker registers (the tests' worker registers the same list)."""
        return [
            self.turn, self.tool, self.acceptance, self.finish, self.record_run,
            self.approval_asked, self.approval_decided,
        ]  # fmt: skip
