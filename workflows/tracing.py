"""Trace context through the workflow, by relay: deterministic workflow code only.

Temporal's `TracingInterceptor` makes the client's StartWorkflow span and each activity's
RunActivity span; its workflow half would also make a zero-length span for every workflow task
and activity start (through an extern call out of the sandbox, with a JSON header each), which
measured at several milliseconds of worker CPU per run. crewline's traces need none of that:
this relay copies the header the run was started with — the StartWorkflow span's context — onto
each activity it starts (local ones too: closing a stopped step), so every turn's and tool
call's span is a child of the request that started the run. The run-status writes are dropped by
the sampler (`crewline.telemetry.SkipBookkeeping`).
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.worker import (
    StartActivityInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowOutboundInterceptor,
)

# TracingInterceptor's header (temporalio.contrib.opentelemetry): the span context as a payload.
TRACE_HEADER = "_tracer-data"


class _Outbound(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle:  # type: ignore[type-arg]
        header = workflow.info().headers.get(TRACE_HEADER)
        if header is not None:
            input.headers = {**input.headers, TRACE_HEADER: header}
        return super().start_activity(input)

    def start_local_activity(self, input: StartLocalActivityInput) -> workflow.ActivityHandle:  # type: ignore[type-arg]
        header = workflow.info().headers.get(TRACE_HEADER)
        if header is not None:
            input.headers = {**input.headers, TRACE_HEADER: header}
        return super().start_local_activity(input)


class TraceRelay(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_Outbound(outbound))
