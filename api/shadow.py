"""Starting a sampled run's shadow: after the primary's `202` is sent (a background task), so a
shadow never delays, fails or changes its primary. The shadow is its own workflow, pinned to the
candidate version, in dry-run, with what is left of today's shadow cap as its budget.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import structlog
from fastapi.concurrency import run_in_threadpool
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext
from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.common import PinnedVersioningOverride
from temporalio.service import RPCError

from crewline.db import Run, session_scope
from crewline.metrics import Metrics
from crewline.settings import Settings
from crewline.telemetry import Tracing, current_trace_id
from versioning import deployment, shadow
from workflows.pipeline import AgentPipelineWorkflow, PipelineInput, StepRetry

log = structlog.get_logger("crewline.shadow")
# A shadow whose candidate never picks it up (worker gone) is not kept open for ever.
SHADOW_RUN_TIMEOUT = timedelta(hours=6)


def shadow_id(run_id: str) -> str:
    return f"{run_id}-shadow"


def _insert(engine: Engine, row: Run) -> None:
    with session_scope(engine) as session:
        session.add(row)


def _delete(engine: Engine, run_id: str) -> None:
    with session_scope(engine) as session:
        row = session.get(Run, run_id)
        if row is not None:
            session.delete(row)


async def start_shadow_run(
    client: Client,
    settings: Settings,
    engine: Engine,
    primary: Run,
    version: str,
    budget_usd: Decimal | None,
    run_id: str,
    metrics: Metrics,
) -> str | None:
    """A dry-run re-run of `primary` pinned to `version`, compared with it when both end."""
    row = Run(
        run_id=run_id, query=primary.query, budget_usd=budget_usd,
        provider=primary.provider, dry_run=True, shadow_of=primary.run_id,
        key_id=primary.key_id, trace_id=current_trace_id(),
    )  # fmt: skip
    await run_in_threadpool(_insert, engine, row)
    try:
        await client.start_workflow(
            AgentPipelineWorkflow.run,
            PipelineInput(
                run_id=run_id,
                query=primary.query,
                budget_usd=budget_usd,
                dry_run=True,
                shadow_of=primary.run_id,
                on_budget_exhausted="stop",
                retry=StepRetry(
                    max_attempts=settings.llm_max_attempts, timeout_s=settings.llm_step_timeout_s
                ),
            ),
            id=run_id,
            task_queue=settings.task_queue,
            execution_timeout=SHADOW_RUN_TIMEOUT,
            versioning_override=PinnedVersioningOverride(
                deployment.deployment_version(settings, version)
            ),
            static_summary=f"shadow of {primary.run_id} on {version}",
        )
    except (RPCError, RuntimeError) as exc:
        await run_in_threadpool(_delete, engine, run_id)
        log.warning("shadow.start_failed", run_id=primary.run_id, error=str(exc)[:300])
        return None
    metrics.shadow_runs.labels(version).inc()
    log.info("shadow.started", run_id=primary.run_id, shadow_run_id=run_id, version=version)
    return run_id


async def start_shadow_quietly(
    client: Client,
    settings: Settings,
    engine: Engine,
    primary: Run,
    *,
    tracing: Tracing,
    metrics: Metrics,
    primary_span: SpanContext | None = None,
) -> None:
    """The background task: start the primary's shadow if it is sampled and today's cap allows.
    Whatever happens here stays here. A shadow is its own trace (a new root, not a child of the
    primary's request), linked to the primary's."""
    try:
        decision = await run_in_threadpool(shadow.decide, engine, settings, primary.run_id)
        if not decision.shadow or decision.candidate is None:
            if decision.why_not and decision.why_not.startswith("sampling paused"):
                log.warning("shadow.paused", run_id=primary.run_id, reason=decision.why_not)
            return
        run_id = shadow_id(primary.run_id)
        links = [Link(primary_span)] if primary_span is not None and primary_span.is_valid else []
        with tracing.tracer.start_as_current_span(
            "shadow run", context=Context(), links=links,
            attributes={"crewline.run_id": run_id, "crewline.shadow": True,
                        "crewline.shadow_of": primary.run_id,
                        "crewline.version": decision.candidate},
        ):  # fmt: skip
            await start_shadow_run(
                client, settings, engine, primary, decision.candidate, decision.budget_usd,
                run_id, metrics,
            )  # fmt: skip
    except Exception as exc:  # a shadow must never surface as the primary's problem
        log.error("shadow.start_failed", run_id=primary.run_id, error=repr(exc)[:300])
