"""Tracing set-up (OpenTelemetry), once per process: one trace per run, API → Temporal → worker.

Rule upheld here: tracing costs nothing unless it is asked for. With no OTLP endpoint configured
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) no tracer provider is
made, no Temporal interceptor is installed and every span below is the API's no-op span. When on,
spans never carry prompts, outputs or secrets unless `TRACE_CONTENT=true`, and then truncated and
redacted.

Who makes which span: Temporal's `TracingInterceptor` (client and worker) makes the
StartWorkflow / RunWorkflow / StartActivity / RunActivity spans and carries the context through
Temporal headers; FastAPI's instrumentation makes the API's server spans; crewline adds one span
per LLM call (OpenTelemetry's GenAI conventions) and per tool call.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from temporalio.contrib.opentelemetry import TracingInterceptor

from crewline.secrets import redact
from crewline.settings import Settings

# Prompts and outputs in spans (TRACE_CONTENT=true) are cut to this many characters.
CONTENT_CHARS = 2000


def otlp_traces_endpoint(settings: Settings) -> str | None:
    """Where spans go, by the standard OTel variables (traces-specific one first)."""
    if settings.otel_traces_endpoint:
        return settings.otel_traces_endpoint
    if settings.otel_endpoint:
        return settings.otel_endpoint.rstrip("/") + "/v1/traces"
    return None


class Tracing:
    """This process's tracer and the Temporal interceptors that carry its context."""

    def __init__(
        self, provider: TracerProvider | None, *, content: bool = False, secrets: Iterable[str] = ()
    ) -> None:
        self.provider = provider
        self.content = content
        self._secrets = list(secrets)
        self.tracer: trace.Tracer = (
            provider.get_tracer("crewline") if provider is not None else trace.NoOpTracer()
        )

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def interceptors(self) -> list[Any]:
        """Temporal client interceptors; none when off. A worker's client adds the workflow
        relay (`workers.main.worker_interceptors`)."""
        if self.provider is None:
            return []
        return [TracingInterceptor(self.tracer)]

    def text(self, value: str) -> str | None:
        """Content for a span attribute: only with TRACE_CONTENT=true, redacted and truncated."""
        if not self.content:
            return None
        return redact(value, self._secrets)[:CONTENT_CHARS]

    @contextmanager
    def span(
        self, name: str, attrs: dict[str, Any], *, kind: SpanKind = SpanKind.INTERNAL
    ) -> Iterator[Span]:
        """A child of the current span; an exception marks it failed with its type only (the
        message may echo a request: callers set a redacted one with `fail`)."""
        with self.tracer.start_as_current_span(
            name, kind=kind, attributes=_clean(attrs), record_exception=False,
            set_status_on_exception=False,
        ) as span:  # fmt: skip
            try:
                yield span
            except BaseException as exc:
                status = getattr(span, "status", None)  # SDK spans have one, no-op spans not
                failed = status is not None and status.status_code == StatusCode.ERROR
                if span.is_recording() and not failed:
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    span.set_attribute("error.type", type(exc).__name__)
                raise

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def fail(span: Span, error_type: str, message: str) -> None:
    """Mark a span failed with a message that is safe to export (already redacted)."""
    if span.is_recording():
        span.set_status(Status(StatusCode.ERROR, message[:500]))
        span.set_attribute("error.type", error_type)


class SkipBookkeeping(Sampler):
    """Drops the spans of the run-status writes (`record_run`, two local activities a run): they
    say nothing the workflow's own spans do not, and are a sixth of a run's spans. Everything
    else is decided by the configured sampler (OTEL_TRACES_SAMPLER; default: parent-based,
    always on)."""

    def __init__(self, delegate: Sampler) -> None:
        self._delegate = delegate

    def should_sample(
        self, parent_context: Any, trace_id: int, name: str, *args: Any, **kwargs: Any
    ) -> SamplingResult:  # type: ignore[override]
        if name.endswith(":record_run"):
            return SamplingResult(Decision.DROP)
        return self._delegate.should_sample(parent_context, trace_id, name, *args, **kwargs)

    def get_description(self) -> str:
        return f"SkipBookkeeping{{{self._delegate.get_description()}}}"


def _clean(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if v is not None}


def setup_tracing(
    settings: Settings,
    service: str,
    *,
    exporter: SpanExporter | None = None,
    processor: SpanProcessor | None = None,
) -> Tracing:
    """The process's tracing: OTLP/HTTP when an endpoint is configured (or the given exporter /
    processor: tests), else off. `service` is the default `OTEL_SERVICE_NAME`."""
    endpoint = otlp_traces_endpoint(settings)
    if exporter is None and processor is None and endpoint is None:
        return Tracing(None)
    name = settings.otel_service_name or os.environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: name}),
        # A bare provider's sampler is the one OTEL_TRACES_SAMPLER configures.
        sampler=SkipBookkeeping(TracerProvider().sampler),
    )
    if processor is None:
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=endpoint)
        processor = BatchSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return Tracing(provider, content=settings.trace_content, secrets=settings.secrets())


def current_trace_id() -> str | None:
    """The active span's trace id (32 hex), or None outside a recorded trace."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def add_trace_ids(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: a line logged inside a span carries its trace and span ids."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event.setdefault("span_id", format(ctx.span_id, "016x"))
    return event
