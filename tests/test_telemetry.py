"""Traces and metrics as an operator sees them: one trace per run from the API request down to
each LLM and tool call (in memory, and over OTLP/HTTP to a collector on loopback, across a worker
crash), and Prometheus counters that add up to what the ledger and the runs table say."""

from __future__ import annotations

import json
import signal
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, select
from temporalio.client import Client

from activities.tools.search import SearchHit
from cli.server import create_app
from crewline.db import session_scope
from crewline.metrics import Metrics, MetricsServer
from crewline.settings import Settings
from crewline.telemetry import Tracing, setup_tracing
from records.ledger import calls_of
from records.runs import get_run
from records.tables import Run
from services import Context, Services
from tests.conftest import AUTH, assert_eventually, free_port
from tests.fakes import Call, FakeGroq, FakeSearch, OtlpReceiver, Reply, Status
from tests.procs import WorkerProcesses
from tests.snapshots import wait_live
from versioning import shadow
from workers.main import build_worker, worker_interceptors

QUERY = "Build a snake game"
MODEL = "llama-3.3-70b-versatile"


# ---- helpers --------------------------------------------------------------------------------
def in_memory(settings: Settings) -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return setup_tracing(
        settings, "crewline-test", processor=SimpleSpanProcessor(exporter)
    ), exporter


def traced_client(client: Client, tracing: Tracing) -> Client:
    """The session's client, with tracing's interceptors (its workers inherit them)."""
    return Client(**{**client.config(), "interceptors": worker_interceptors(tracing)})


@asynccontextmanager
async def api_on(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://localhost", headers=AUTH
        ) as http:
            yield http


def tree(spans: Iterable[Any], root: str) -> list[str]:
    """The spans under `root` as indented lines (name [attempt]), children in start order."""
    children: dict[str, list[Any]] = defaultdict(list)
    for span in spans:
        children[span.parent_id].append(span)
    lines: list[str] = []

    def walk(span_id: str, depth: int) -> None:
        for child in children.get(span_id, []):
            attempt = child.attributes.get("crewline.attempt")
            extra = f" [attempt {attempt}]" if attempt and "Activity" in child.name else ""
            failed = " ERROR" if child.error else ""
            lost = child.attributes.get("crewline.lost_attempts")
            if lost:
                extra += f" (takeover: {lost} attempt lost with its worker, charged)"
            lines.append(f"{'  ' * depth}{child.name}{extra}{failed}")
            walk(child.span_id, depth + 1)

    walk(root, 0)
    return lines


class Flat:
    """A finished SDK span in the receiver's shape, so one `tree` renders both."""

    def __init__(self, span: ReadableSpan) -> None:
        assert span.context is not None
        self.name, self.attributes = span.name, dict(span.attributes or {})
        self.trace_id = format(span.context.trace_id, "032x")
        self.span_id = format(span.context.span_id, "016x")
        self.parent_id = format(span.parent.span_id, "016x") if span.parent else ""
        self.error = span.status.status_code.name == "ERROR"
        self.links = span.links


def scrape(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text → {sample name: [(labels, value)]}, through prometheus_client's parser."""
    found: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name].append((dict(sample.labels), float(sample.value)))
    return found


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str) -> float:
    return sum(v for labels, v in samples.get(name, []) if match.items() <= labels.items())


# ---- one trace per run ------------------------------------------------------------------------
async def test_one_run_is_one_trace_from_the_request_to_each_llm_and_tool_call(
    client: Client, settings: Settings, engine: Any, fake_groq: FakeGroq
) -> None:
    tracing, exporter = in_memory(settings)
    traced = traced_client(client, tracing)
    fake_groq.script("researcher", Reply(calls=[Call("web_search", {"query": "snake rules"})]))
    fake_groq.script("planner", Status(503))  # one retried attempt
    search = FakeSearch(hits=[SearchHit(title="Snake", url="https://x.example", snippet="grid")])
    app = create_app(settings, client=traced, engine=engine, tracing=tracing)
    worker = build_worker(traced, settings, engine=engine, search_backend=search, tracing=tracing)
    async with api_on(app) as api, worker:
        started = await api.post("/runs", json={"query": QUERY})
        assert started.status_code == 202, started.text
        run_id, trace_id = started.json()["run_id"], started.json()["trace_id"]
        result = await traced.get_workflow_handle(run_id).result()
        shown = (await api.get(f"/runs/{run_id}")).json()
    assert result["status"] == "COMPLETED"
    spans = [Flat(s) for s in exporter.get_finished_spans()]
    assert trace_id and shown["trace_id"] == trace_id
    run_spans = [s for s in spans if s.trace_id == trace_id]
    temporal_or_ours = [
        s for s in spans if s.name.startswith(("StartWorkflow", "RunActivity", "chat", "execute"))
    ]
    assert {s.trace_id for s in temporal_or_ours} == {trace_id}  # one trace for the whole run
    [root] = [s for s in run_spans if not s.parent_id]
    lines = tree(run_spans, root.span_id)
    print("\n" + root.name + "\n" + "\n".join("  " + line for line in lines))
    assert root.name == "POST /runs"
    assert lines[0] == "StartWorkflow:AgentPipelineWorkflow"
    runs = [line.strip() for line in lines if line.strip().startswith("RunActivity:")]
    assert runs == [
        "RunActivity:researcher turn 1 [attempt 1]",
        "RunActivity:researcher tool web_search [attempt 1]",
        "RunActivity:researcher turn 2 [attempt 1]",
        "RunActivity:planner turn 1 [attempt 1] ERROR",
        "RunActivity:planner turn 1 [attempt 2]",
        "RunActivity:executor turn 1 [attempt 1]",
        "RunActivity:coder turn 1 [attempt 1]",
        "RunActivity:coder tool write_file [attempt 1]",  # its answer's file block, written
        # the checks (none given: not run); this last round also closes the step, so no
        # separate agent_finish activity follows it (patch checks-close-step)
        "RunActivity:coder checks round 1 [attempt 1]",
        "RunActivity:finalizer turn 1 [attempt 1]",
    ]
    assert all(line.startswith("  RunActivity:") for line in lines if "RunActivity:" in line)
    assert not any("record_run" in line for line in lines)  # status writes are left out
    by_id = {s.span_id: s for s in run_spans}
    chats = [s for s in run_spans if s.name == f"chat {MODEL}"]
    assert len(chats) == 7 and all(
        by_id[c.parent_id].name.startswith("RunActivity:") for c in chats
    )
    assert sum(c.error for c in chats) == 1
    ok = next(c for c in chats if c.attributes["crewline.agent"] == "executor")
    assert ok.attributes["gen_ai.system"] == "groq"
    assert ok.attributes["gen_ai.request.model"] == MODEL
    assert (
        ok.attributes["gen_ai.usage.input_tokens"],
        ok.attributes["gen_ai.usage.output_tokens"],
    ) == (100, 50)
    assert ok.attributes["crewline.run_id"] == run_id and ok.attributes["crewline.cost_usd"] > 0
    assert ok.attributes["crewline.breaker_state"] == "CLOSED"
    tools = {
        s.name: by_id[s.parent_id].name for s in run_spans if s.name.startswith("execute_tool")
    }
    assert tools == {
        "execute_tool web_search": "RunActivity:researcher tool web_search",
        "execute_tool write_file": "RunActivity:coder tool write_file",
    }
    # By default no prompt, output or secret is in any span.
    values = json.dumps([s.attributes for s in spans], default=str)
    assert QUERY not in values and "snake.py" not in values
    assert settings.groq_api_key is not None
    assert settings.groq_api_key.get_secret_value() not in values


async def test_trace_content_is_opt_in_truncated(
    client: Client, settings: Settings, engine: Any, fake_groq: FakeGroq
) -> None:
    settings = settings.model_copy(update={"trace_content": True})
    tracing, exporter = in_memory(settings)
    traced = traced_client(client, tracing)
    fake_groq.script(
        "coder", Reply(text="=== FILE: a.py ===\n" + "x" * 5000 + "\n=== END FILE ===")
    )
    async with build_worker(traced, settings, engine=engine, search_backend=None, tracing=tracing):
        handle = await traced.start_workflow(
            "AgentPipelineWorkflow",
            {"run_id": "run-content", "query": QUERY},
            id=f"run-content-{uuid.uuid4().hex[:6]}",
            task_queue=settings.task_queue,
        )
        await handle.result()
    coder = next(
        s for s in exporter.get_finished_spans()
        if s.name.startswith("chat") and (s.attributes or {}).get("crewline.agent") == "coder"
    )  # fmt: skip
    attrs = dict(coder.attributes or {})
    assert QUERY in str(attrs["gen_ai.prompt"])
    assert str(attrs["gen_ai.completion"]).startswith("=== FILE: a.py")
    assert len(str(attrs["gen_ai.completion"])) == 2000


async def test_a_shadow_is_its_own_trace_linked_to_its_primary(
    client: Client, settings: Settings, engine: Any
) -> None:
    tracing, exporter = in_memory(settings)
    traced = traced_client(client, tracing)
    candidate = "snap-0123456789ab"
    shadow.set_config(engine, candidate, 1.0, "test")
    primary = Run(run_id=f"run-{uuid.uuid4().hex[:8]}", query=QUERY, key_id=None)
    with session_scope(engine) as session:
        session.add(primary)
    request_span = SpanContext(
        trace_id=0x1234, span_id=0x99, is_remote=True, trace_flags=TraceFlags(1)
    )
    # A worker serving the candidate version, so Temporal accepts a run pinned to it.
    async with build_worker(
        traced, settings, engine=engine, search_backend=None, version=candidate
    ):
        await wait_live(client, settings, candidate)
        services = Services(Context(settings, engine, traced, Metrics(), tracing))
        row = Run(
            run_id=f"{primary.run_id}-shadow", query=primary.query, dry_run=True,
            shadow_of=primary.run_id, version=candidate, budget_usd=Decimal("1"),
        )  # fmt: skip
        with session_scope(engine) as session:
            session.add(row)
        await services.runs.start_shadow(row, request_span)
        shadow_row = get_run(engine, f"{primary.run_id}-shadow")
        assert shadow_row is not None
        await traced.get_workflow_handle(shadow_row.run_id).terminate("test: done")
    spans = [Flat(s) for s in exporter.get_finished_spans()]
    [root] = [s for s in spans if s.name == "shadow run"]
    assert not root.parent_id and root.trace_id != format(0x1234, "032x")
    assert [link.context.span_id for link in root.links] == [0x99]
    started = [s for s in spans if s.parent_id == root.span_id]
    assert [s.name for s in started] == ["StartWorkflow:AgentPipelineWorkflow"]
    assert shadow_row.trace_id == root.trace_id


# ---- metrics ------------------------------------------------------------------------------------
async def test_metrics_add_up_to_the_ledger_and_the_runs_table(
    client: Client, settings: Settings, engine: Any, fake_groq: FakeGroq
) -> None:
    settings = settings.model_copy(update={"breaker_threshold": 2, "breaker_open_s": 0.5})
    metrics = Metrics()
    # run 1: two 503s in a row open the breaker (threshold 2), then it recovers;
    # run 2: clean; run 3: a budget that stops it before the coder.
    fake_groq.script("planner", Status(503), Status(503))
    endpoint = MetricsServer(metrics, "127.0.0.1", 0, None).start()
    api_metrics = Metrics()
    app = create_app(settings, client=client, engine=engine, registry=api_metrics)
    worker = build_worker(client, settings, engine=engine, search_backend=None, metrics=metrics)
    try:
        async with api_on(app) as api, worker:
            budgets = [None, None, "0.0006"]
            run_ids = []
            for budget in budgets:
                body = {"query": QUERY} | ({"budget_usd": budget} if budget else {})
                started = await api.post("/runs", json=body)
                assert started.status_code == 202, started.text
                run_ids.append(started.json()["run_id"])
                await client.get_workflow_handle(run_ids[-1]).result()
            api_text = (await api.get("/metrics")).text
        worker_text = httpx.get(f"http://127.0.0.1:{endpoint.port}/metrics").text
    finally:
        endpoint.stop()
    got, api_got = scrape(worker_text), scrape(api_text)
    rows = [c for run_id in run_ids for c in calls_of(engine, run_id)]
    statuses = Counter(r.status for r in (get_run(engine, i) for i in run_ids) if r is not None)
    print(f"\nstatuses {dict(statuses)}; ledger {len(rows)} rows")
    for name in sorted(got):
        if name.startswith("crewline_") and not name.endswith(("_bucket", "_created")):
            print(name, got[name])
    assert statuses == {"COMPLETED": 2, "BUDGET_EXCEEDED": 1}
    cost = sum((c.cost_usd for c in rows), Decimal(0))
    assert total(got, "crewline_llm_cost_usd_total") == pytest.approx(float(cost), rel=1e-9)
    assert total(got, "crewline_llm_tokens_total", kind="input") == sum(
        c.prompt_tokens for c in rows
    )
    assert total(got, "crewline_llm_tokens_total", kind="output") == sum(
        c.completion_tokens for c in rows
    )
    for status, count in statuses.items():
        assert total(got, "crewline_runs_ended_total", status=status) == count
    assert total(got, "crewline_runs_started_total") == 3
    assert total(got, "crewline_llm_calls_total", outcome="ok") == len(rows)
    assert total(got, "crewline_llm_calls_total", outcome="retryable") == 2
    assert total(got, "crewline_breaker_transitions_total", to_state="OPEN") == 1
    assert total(got, "crewline_breaker_state", model=MODEL) == 0  # closed again
    assert total(got, "crewline_budget_events_total", event="stop") == 1
    assert total(got, "crewline_step_duration_seconds_count", agent="planner", outcome="ok") == 3
    # Two provider errors, then one attempt failed fast on the open breaker.
    assert total(got, "crewline_llm_calls_total", outcome="breaker_open") == 1
    assert total(got, "crewline_step_duration_seconds_count", agent="planner", outcome="error") == 3
    # No run id as a label, anywhere.
    assert not any(i in worker_text or i in api_text for i in run_ids)
    # The API: the runs table by status, and its requests by route template.
    assert total(api_got, "crewline_runs", status="COMPLETED", shadow="false") == 2
    assert total(api_got, "crewline_runs", status="BUDGET_EXCEEDED") == 1
    posted = total(
        api_got, "crewline_http_requests_total", method="POST", route="/runs", status="202"
    )
    assert posted == 3


# ---- OTLP on the wire, across a worker crash ---------------------------------------------------
async def test_traces_reach_an_otlp_collector_and_show_a_crash_takeover(
    client: Client, settings: Settings, engine: Any, fake_groq: FakeGroq, tmp_path: Path
) -> None:
    receiver = OtlpReceiver().start()
    metrics_port = free_port()
    settings = settings.model_copy(update={"otel_endpoint": receiver.endpoint, "log_json": True})
    # The coder's first call is slow, so the first worker is killed in the middle of it.
    fake_groq.script("coder", Reply(delay_s=3))
    env = {"OTEL_BSP_SCHEDULE_DELAY": "100"}  # export every 0.1 s instead of 5 s
    app = create_app(settings, engine=engine)  # connects itself, tracing from the settings
    try:
        with WorkerProcesses(settings, tmp_path) as workers:
            victim = workers.spawn(extra_env=env)
            async with api_on(app) as api:
                started = (await api.post("/runs", json={"query": QUERY})).json()
                run_id, trace_id = started["run_id"], started["trace_id"]
                await assert_eventually(lambda: fake_groq.count("coder") == 1, timeout=60)
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                survivor = workers.spawn(
                    extra_env={**env, "WORKER_METRICS_PORT": str(metrics_port)}
                )
                await client.get_workflow_handle(run_id).result()
                worker_metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            survivor.send_signal(signal.SIGTERM)  # a clean stop flushes its last spans
            survivor.wait(timeout=30)
        await assert_eventually(
            lambda: any(s.name == "RunActivity:finalizer turn 1" for s in receiver.received()),
            timeout=10,
        )
    finally:
        receiver.stop()
    spans = [s for s in receiver.received() if s.trace_id == trace_id]
    assert {s.service for s in spans} == {"crewline-api", "crewline-worker"}
    [root] = [s for s in spans if s.name == "POST /runs"]
    lines = tree(spans, root.span_id)
    # Spans whose parent was still queued in the killed worker's exporter: the takeover's.
    known = {s.span_id for s in spans}
    for orphan in [s for s in spans if s.parent_id and s.parent_id not in known]:
        lines += [f"(parent lost with the killed worker) {orphan.name}"]
        lines += ["  " + line for line in tree(spans, orphan.span_id)]
    print(
        f"\n{root.name}  (service {root.service}, trace {trace_id})\n"
        + "\n".join("  " + line for line in lines)
    )
    coders = [s for s in spans if s.name == "RunActivity:coder turn 1"]
    # The killed worker's attempt never ended, so never reached the collector; the takeover did.
    assert [s.attributes["crewline.attempt"] for s in coders] == [2]
    [takeover] = coders
    chat = next(s for s in spans if s.parent_id == takeover.span_id and s.name.startswith("chat"))
    assert chat.attributes["crewline.lost_attempts"] == 1
    assert {
        s.attributes.get("crewline.worker")
        for s in spans
        if s.name == "RunActivity:researcher turn 1"
    } != {takeover.attributes["crewline.worker"]}
    # Logs join traces: the survivor's JSON lines inside the run's spans carry its trace id.
    logged = [
        json.loads(line)
        for line in (tmp_path / "worker2.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert any(
        entry.get("trace_id") == trace_id and entry.get("run_id") == run_id for entry in logged
    ), logged[-5:]
    # One scrape target per worker: crewline's metrics and the Temporal SDK's.
    names = {f.name for f in text_string_to_metric_families(worker_metrics)}
    assert "crewline_llm_calls" in names
    assert any(n.startswith("temporal_") for n in names), sorted(names)[:20]
    with Session(engine) as session:
        assert session.exec(select(Run.trace_id).where(Run.run_id == run_id)).one() == trace_id


def test_tracing_is_off_without_an_endpoint(settings: Settings) -> None:
    tracing = setup_tracing(settings, "crewline-worker")
    assert not tracing.enabled and tracing.interceptors() == []
    with tracing.span("chat x", {"gen_ai.system": "groq"}) as span:
        assert not span.is_recording()
