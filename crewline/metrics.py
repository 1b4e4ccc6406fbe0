"""Prometheus metrics: what crewline counts, on one registry per process, and the worker's endpoint.

Rules upheld here: names follow Prometheus conventions (`crewline_…_total` counters, base units:
seconds, USD), and every label has a bounded set of values — agent, provider, model, version,
status, outcome — never a run id. A process builds one `Metrics` at its entry point and passes it
down (tests build their own registry). The worker's endpoint also serves the Temporal SDK's own
worker metrics (its Rust core exports them on an internal loopback port), so one scrape target
per worker has both.
"""

from __future__ import annotations

import socket
import threading
import urllib.request
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

log = structlog.get_logger("crewline.metrics")

# LLM calls and steps take from tens of milliseconds (a fast model, a cache) to minutes.
_SLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, float("inf"))
_FAST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"))
BREAKER_STATES = {"CLOSED": 0, "HALF_OPEN": 1, "OPEN": 2}


def _flag(value: bool) -> str:
    return "true" if value else "false"


class Metrics:
    """crewline's metrics on `registry` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        # runs (worker side: the version that ran them is known there)
        self.runs_started = Counter(
            "crewline_runs_started", "Runs that started, by version", ["version"], registry=r
        )
        self.runs_ended = Counter(
            "crewline_runs_ended", "Runs that ended, by status and version",
            ["status", "version"], registry=r,
        )  # fmt: skip
        self.budget_events = Counter(
            "crewline_budget_events",
            "Runs stopped (stop) or paused (pause) because their budget ran out",
            ["event"], registry=r,
        )  # fmt: skip
        self.approvals = Counter(
            "crewline_approvals",
            "Tool calls that waited for a person: asked, then approved, denied, timed_out or "
            "cancelled", ["event"], registry=r,
        )  # fmt: skip
        # Open event streams (GET /runs/{id}/events) in this API process.
        self.event_streams = Gauge(
            "crewline_event_streams", "Event streams (SSE) open in this API process", registry=r
        )
        # steps
        self.step_seconds = Histogram(
            "crewline_step_duration_seconds",
            "One attempt of an agent step, by outcome (ok, error, cancelled)",
            ["agent", "outcome"], buckets=_SLOW_BUCKETS, registry=r,
        )  # fmt: skip
        self.step_queue_seconds = Histogram(
            "crewline_step_queue_lag_seconds",
            "From an agent step attempt being scheduled to a worker starting it",
            ["agent"], buckets=_FAST_BUCKETS, registry=r,
        )  # fmt: skip
        # LLM calls
        self.llm_calls = Counter(
            "crewline_llm_calls",
            "LLM calls by outcome: ok, retryable, rate_limited, permanent, breaker_open, "
            "cancelled",
            ["provider", "model", "outcome"], registry=r,
        )  # fmt: skip
        self.llm_seconds = Histogram(
            "crewline_llm_call_duration_seconds", "Provider call latency (answered calls)",
            ["provider", "model"], buckets=_SLOW_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "crewline_llm_tokens", "Tokens charged in the ledger (kind: input, output)",
            ["agent", "model", "version", "shadow", "kind"], registry=r,
        )  # fmt: skip
        self.cost = Counter(
            "crewline_llm_cost_usd", "USD charged in the ledger (estimated rows included)",
            ["agent", "model", "version", "shadow"], registry=r,
        )  # fmt: skip
        # the shared rate limit
        self.rate_waits = Counter(
            "crewline_rate_limit_waits", "Agent steps that waited for a rate-limit slot",
            ["provider", "model"], registry=r,
        )  # fmt: skip
        self.rate_wait_seconds = Histogram(
            "crewline_rate_limit_wait_seconds", "How long a step waited for its slot",
            ["provider", "model"], buckets=_SLOW_BUCKETS, registry=r,
        )  # fmt: skip
        # circuit breakers (per worker process)
        self.breaker_state = Gauge(
            "crewline_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ["provider", "model"], registry=r,
        )  # fmt: skip
        self.breaker_failures = Gauge(
            "crewline_breaker_consecutive_failures",
            "Consecutive provider failures (the breaker opens at BREAKER_FAILURE_THRESHOLD)",
            ["provider", "model"], registry=r,
        )  # fmt: skip
        self.breaker_transitions = Counter(
            "crewline_breaker_transitions", "Circuit breaker transitions, by the state entered",
            ["provider", "model", "to_state"], registry=r,
        )  # fmt: skip
        # shadow runs
        self.shadow_runs = Counter(
            "crewline_shadow_runs_started", "Shadow runs started on a candidate version",
            ["version"], registry=r,
        )  # fmt: skip
        self.shadow_comparisons = Counter(
            "crewline_shadow_comparisons", "Agent outputs compared, primary vs shadow",
            ["agent"], registry=r,
        )  # fmt: skip
        self.shadow_divergences = Counter(
            "crewline_shadow_divergences", "Shadow comparisons that alerted (diverged)",
            ["agent"], registry=r,
        )  # fmt: skip
        # the HTTP API
        self.http_requests = Counter(
            "crewline_http_requests", "API requests by route template and status",
            ["method", "route", "status"], registry=r,
        )  # fmt: skip
        self.http_seconds = Histogram(
            "crewline_http_request_duration_seconds", "API request latency by route template",
            ["method", "route"], buckets=_FAST_BUCKETS, registry=r,
        )  # fmt: skip

    # ---- recording helpers (one place decides the labels) -----------------------------------
    def charged(
        self, *, agent: str, model: str, version: str | None, shadow: bool,
        input_tokens: int, output_tokens: int, cost_usd: Decimal,
    ) -> None:  # fmt: skip
        """A ledger row settled: count its tokens and money."""
        labels = (agent, model, version or "unversioned", _flag(shadow))
        self.tokens.labels(*labels, "input").inc(input_tokens)
        self.tokens.labels(*labels, "output").inc(output_tokens)
        self.cost.labels(*labels).inc(float(cost_usd))

    def breaker_moved(self, provider: str, model: str, state: str, failures: int) -> None:
        self.breaker_state.labels(provider, model).set(BREAKER_STATES.get(state, -1))
        self.breaker_failures.labels(provider, model).set(failures)
        self.breaker_transitions.labels(provider, model, state).inc()

    def run_status(self, status: str, version: str | None) -> None:
        """A run's status write: started, ended, or paused for budget."""
        label = version or "unversioned"
        if status == "RUNNING":
            self.runs_started.labels(label).inc()
        elif status == "WAITING_FOR_BUDGET":
            self.budget_events.labels("pause").inc()
        elif status in ("COMPLETED", "FAILED", "CANCELLED", "BUDGET_EXCEEDED"):
            self.runs_ended.labels(status, label).inc()
            if status == "BUDGET_EXCEEDED":
                self.budget_events.labels("stop").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MetricsServer:
    """A worker's `/metrics`: crewline's registry, then the Temporal SDK's metrics (fetched from
    its core's loopback endpoint at scrape time). Runs in its own threads: a scrape never waits
    for the worker's event loop, and costs nothing between scrapes."""

    def __init__(self, metrics: Metrics, host: str, port: int, core_url: str | None) -> None:
        handler = _handler(metrics, core_url)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(metrics: Metrics, core_url: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404, "only /metrics here")
                return
            body = metrics.exposition() + _core_metrics(core_url)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
            return

    return Handler


def _core_metrics(core_url: str | None) -> bytes:
    if core_url is None:
        return b""
    try:
        with urllib.request.urlopen(core_url, timeout=2) as answer:
            return b"\n" + bytes(answer.read())
    except OSError as exc:
        return f"\n# Temporal SDK metrics unavailable: {type(exc).__name__}\n".encode()


def start_worker_metrics(
    metrics: Metrics, host: str, port: int, core_url: str | None
) -> MetricsServer | None:
    """The worker's endpoint, or None (port 0, or the port is taken: the worker runs on and
    says so — metrics are not worth refusing work for)."""
    if port == 0:
        return None
    try:
        server = MetricsServer(metrics, host, port, core_url).start()
    except OSError as exc:
        # Taken (a second worker on this machine): serve on a free port and say which.
        try:
            server = MetricsServer(metrics, host, 0, core_url).start()
        except OSError:
            log.warning("metrics.unavailable", port=port, error=str(exc))
            return None
        log.warning(
            "metrics.port_taken", wanted=port, serving=f"http://{host}:{server.port}/metrics",
            fix="set WORKER_METRICS_PORT per worker to fix the port (0 turns the endpoint off)",
        )  # fmt: skip
        return server
    log.info("metrics.serving", url=f"http://{host}:{server.port}/metrics")
    return server
