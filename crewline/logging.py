"""Structured logging set-up (structlog over the standard library), done once per entry point.

Rule upheld here: a secret never reaches a log line. Every line — ours and the libraries', in
both formats, exception text included — passes through a redaction step last (the configured
keys, and anything shaped like a provider key or a bearer token), and tracebacks are plain:
never the local variables a rich traceback would print (a provider client holds its key).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import structlog

from crewline.secrets import redact
from crewline.telemetry import add_trace_ids


class Redactor:
    """Wraps the final renderer: whatever string it produced, secrets come out as [redacted]."""

    def __init__(self, renderer: Any, secrets: Iterable[str]) -> None:
        self._renderer = renderer
        self._secrets = list(secrets)

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def __call__(self, logger: Any, name: str, event: Any) -> Any:
        rendered = self._renderer(logger, name, event)
        return self.redact(rendered) if isinstance(rendered, str) else rendered


def configure_logging(
    level: str = "INFO", json: bool = False, *, redact: Iterable[str] = ()
) -> None:
    """`redact`: values to cut out of every line (the configured keys)."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,  # inside a span: trace_id, span_id (logs and traces join)
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:
        shared.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared, processor=Redactor(renderer, redact)
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
