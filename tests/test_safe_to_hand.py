"""Regression tests for what an attacker, a slow page and a first-time operator found (issue
"Safe to hand to a team"): each reproduces the finding and checks it no longer holds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

from cli.server import create_app
from crewline.settings import Settings
from dashboard import render
from records.ledger import calls_of
from services.run_views import url_path
from tests.conftest import ADMIN_KEY, assert_eventually, serving, start_pipeline
from tests.fakes import FakeGroq, Reply

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
PATHOLOGICAL_CPP = "```cpp\na" + " " * 6000 + "!\n```\n"


# ---- 2. one agent output must not freeze the API -------------------------------------------------
def test_code_that_would_stall_a_lexer_is_shown_plain() -> None:
    """The 6 KB C++ block that took Pygments 6.5 s: a line over the limit is not highlighted."""
    shown = render.markdown(PATHOLOGICAL_CPP)
    assert "not highlighted: a line over" in shown and "<pre>a" in shown
    huge = render.markdown("word " * 70_000)  # over MARKDOWN_MAX_CHARS
    assert "shown as plain text: 350,000 characters" in huge


def test_a_lexer_out_of_time_gives_up_for_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "HIGHLIGHT_SECONDS", -1.0)  # already past its deadline
    source = "\n".join(f"int v{i} = {i};" for i in range(200))
    shown = render.code(source, "cpp")
    assert "not highlighted: took over" in shown and "int v199 = 199;" in shown
    monkeypatch.undo()
    assert 'class="code"' in render.code(source, "cpp") and "took over" not in render.code(
        source, "cpp"
    )


# ---- 6. a secret the provider echoes is never stored or shown ------------------------------------
async def test_a_key_echoed_in_a_successful_answer_is_stored_redacted(
    api: httpx.AsyncClient,
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
) -> None:
    key = settings.groq_api_key.get_secret_value()  # type: ignore[union-attr]
    echoed = f"Authorization: Bearer {key}\nDone: the snake game is ready."
    fake_groq.responder = lambda agent, body: echoed if agent in ("planner", "finalizer") else None
    async with new_worker():
        started = await api.post("/runs", json={"query": "Build a snake game"})
        run_id = started.json()["run_id"]

        async def ended() -> bool:
            return (await api.get(f"/runs/{run_id}")).json()["status"] == "COMPLETED"

        await assert_eventually(ended, timeout=60)
    shown = (await api.get(f"/runs/{run_id}")).text
    assert "Bearer [redacted]" in shown, shown[:400]
    history = await client.get_workflow_handle(run_id).fetch_history()
    with engine.connect() as conn:
        stored = [
            json.dumps([list(map(str, row)) for row in conn.execute(text(f"SELECT * FROM {t}"))])
            for t in ("run", "step", "turn", "tool_call", "artifact", "intent")
        ]
    for where, content in {"GET /runs/{id}": shown, "history": history.to_json(),
                           "database": "".join(stored)}.items():  # fmt: skip
        assert key not in content, where


# ---- 3. /metrics does not grow with what clients send --------------------------------------------
async def test_metrics_count_unknown_methods_as_one_label_and_only_after_the_host_check(
    api: httpx.AsyncClient,
) -> None:
    before = (await api.get("/metrics")).text
    for i in range(200):
        await api.request(f"X{i:03d}" + "M" * 500, "/runs")
    for _ in range(20):
        await api.get("/runs", headers={"Host": "evil.example"})
    after = (await api.get("/metrics")).text
    assert len(after) - len(before) < 4_000, len(after) - len(before)
    assert "X000" not in after  # refused by the transport checks, or counted as "other"
    assert 'status="400"' not in after  # the foreign Host was refused before it was counted


# ---- 4. the per-key in-flight limit holds under a burst ------------------------------------------
@pytest.mark.both_databases
async def test_sixty_concurrent_posts_from_a_fresh_key_start_at_most_its_limit(
    client: Client, settings: Settings, engine: Any
) -> None:
    limited = settings.model_copy(update={"key_max_inflight": 20, "key_runs_per_minute": 1000})
    async with serving(limited, client, engine) as http:
        made = await http.post("/keys", json={"name": "burst", "scope": "run"}, headers=AUTH)
        key = {"Authorization": f"Bearer {made.json()['key']}"}
        answers = await asyncio.gather(*(
            http.post("/runs", json={"query": f"Build a snake game {i}"}, headers=key)
            for i in range(60)
        ))  # fmt: skip
    codes = sorted(a.status_code for a in answers)
    assert codes.count(202) == 20 and codes.count(429) == 40, codes


# ---- 5. an uploaded bundle is code: up does not run it unless the operator allows it ------------
def test_up_does_not_start_workers_for_uploaded_versions_unless_allowed(
    settings: Settings, engine: Any, tmp_path: Path
) -> None:
    from cli.stack import _plan
    from tests.snapshots import checkout
    from versioning import bundle, deployment, registry, shadow

    def version(name: str, source: str) -> str:
        made = bundle.collect(checkout(tmp_path / name, f"Version {name}."), settings)
        bundle.write(made, settings.snapshots_dir)
        registry.register(engine, made, source=source)
        return made.id

    mine, theirs = version("mine", "/srv/checkout"), version("theirs", registry.UPLOADED)
    shadow.set_config(engine, theirs, 0.05, "test")
    state = deployment.DeploymentState(mine, None, b"", True)
    assert _plan(state, settings, engine).serve == [mine]  # the uploaded candidate is left out
    allowed = settings.model_copy(update={"allow_uploaded_bundles": True})
    assert _plan(state, allowed, engine).serve == [mine, theirs]
    uploaded_active = deployment.DeploymentState(theirs, None, b"", True)
    with pytest.raises(RuntimeError, match="ALLOW_UPLOADED_BUNDLES=true"):
        _plan(uploaded_active, settings, engine)


# ---- 7. nonsensical usage or an unknown model name is classified, not retried at worst case ----
async def test_nonsensical_usage_and_a_dated_model_name_are_charged_once_with_a_reason(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any,
    new_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    fake_groq.script("planner", Reply(text="1. Plan it.", prompt_tokens=-5_000_000))
    fake_groq.script("executor", Reply(text="No gaps.", model="llama-3.3-70b-versatile-2026-12"))
    async with new_worker():
        run_id, handle = await start_pipeline(client, settings, budget_usd=Decimal("0.01"))
        result = await handle.result()
    assert result.status == "COMPLETED", result
    rows = {r.agent: r for r in calls_of(engine, run_id)}
    assert len(calls_of(engine, run_id)) == len(fake_groq.calls(run_id=run_id))  # none retried
    assert rows["planner"].usage_source == "estimated" and rows["planner"].prompt_tokens > 0
    assert rows["executor"].usage_source == "reported"
    assert "priced as llama-3.3-70b-versatile" in rows["executor"].price_source
    assert not any(r.cut_off_by == "worker_lost" for r in rows.values())


# ---- 8. login CSRF --------------------------------------------------------------------------------
async def test_sign_in_posted_from_another_site_is_refused(api: httpx.AsyncClient) -> None:
    form = {"key": ADMIN_KEY, "next": "/ui/runs"}
    for forged in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"},
                   {"Origin": "null"}, {"Sec-Fetch-Site": "same-site"}):  # fmt: skip
        answer = await api.post("/ui/login", data=form, headers=forged)
        assert answer.status_code == 403, forged
        assert "set-cookie" not in answer.headers
    for own in ({"Sec-Fetch-Site": "same-origin"}, {"Origin": "http://localhost"}, {}):
        answer = await api.post("/ui/login", data=form, headers=own)
        assert answer.status_code == 303 and "set-cookie" in answer.headers, own


# ---- 9. unreadable zips are refused, never a 500 -------------------------------------------------
def _damaged(zipped: bytes, how: str) -> bytes:
    data = bytearray(zipped)
    for sig, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = data.find(sig)
        while at != -1:
            if how == "encrypted":
                data[at + flag_at] |= 1
            elif how == "method-99":
                data[at + method_at : at + method_at + 2] = (99).to_bytes(2, "little")
            elif how == "bad-deflate" and sig == b"PK\x03\x04":
                name_len = int.from_bytes(data[at + 26 : at + 28], "little")
                extra_len = int.from_bytes(data[at + 28 : at + 30], "little")
                start = at + 30 + name_len + extra_len
                data[start : start + 8] = b"\xff" * 8
            at = data.find(sig, at + 4)
    return bytes(data)


@pytest.mark.parametrize("how", ["encrypted", "method-99", "bad-deflate"])
async def test_an_unreadable_bundle_zip_is_refused_with_a_reason(
    api: httpx.AsyncClient, settings: Settings, tmp_path: Path, how: str
) -> None:
    from tests.snapshots import checkout
    from versioning import bundle

    made = bundle.collect(checkout(tmp_path / "v", "Version v."), settings)
    damaged = _damaged(bundle.zip_bytes(made), how)
    with pytest.raises(bundle.TamperedSnapshotError):
        bundle.read(damaged)
    answer = await api.post(
        "/versions", content=damaged, headers={"Content-Type": "application/zip"}
    )
    assert 400 <= answer.status_code < 500, answer.text
    assert "cannot be read" in answer.text or "not a readable zip" in answer.text, answer.text


async def test_a_lone_surrogate_and_a_huge_id_get_short_client_errors(
    api: httpx.AsyncClient,
) -> None:
    body = b'{"query": "\\ud800 build it", "budget_usd": "x\\udfff"}'
    answer = await api.post("/runs", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text
    huge = "run-" + "a" * 6000
    for path in (f"/runs/{huge}", f"/runs/{huge}/costs", f"/versions/{huge}"):
        answer = await api.get(path)
        assert 400 <= answer.status_code < 500 and len(answer.text) < 600, (path, answer.text)


async def test_an_admin_key_cannot_revoke_itself_and_a_dead_key_file_is_replaced(
    api: httpx.AsyncClient, settings: Settings, engine: Any
) -> None:
    from services import keys

    listed = (await api.get("/keys")).json()
    mine = next(k for k in listed if k["name"].startswith("admin-env"))
    assert (await api.post("/keys", json={"name": "spare", "scope": "admin"})).status_code == 201
    refused = await api.delete(f"/keys/{mine['key_id']}")  # not the last admin key: yet refused
    assert refused.status_code == 409 and "making this request" in refused.text
    # A data directory whose admin.key holds a revoked key gets a working one again.
    local = settings.model_copy(update={"admin_key": None})
    laptop = (await api.post("/keys", json={"name": "laptop", "scope": "admin"})).json()
    keys.key_file(local).write_text(laptop["key"] + "\n")
    assert keys.ensure_admin(local, engine) is None  # it works: nothing to do
    assert (await api.delete(f"/keys/{laptop['key_id']}")).status_code == 200
    assert "created admin key" in (keys.ensure_admin(local, engine) or "")
    fresh = keys.key_file(local).read_text().strip()
    assert fresh != laptop["key"]
    assert (await api.get("/keys", headers={"Authorization": f"Bearer {fresh}"})).status_code == 200
    assert oct(settings.data_dir.stat().st_mode & 0o777) == "0o700"
    database = settings.data_dir / "crewline.db"
    assert oct(database.stat().st_mode & 0o777) == "0o600"


def test_file_links_encode_each_segment_and_bidi_names_are_refused() -> None:
    from activities.tools.files import UnsafePathError, safe_relative_path

    assert url_path("a?b#c.txt") == "a%3Fb%23c.txt"
    assert url_path("src/%2e%2e/x y.py") == "src/%252e%252e/x%20y.py"
    for name in ("evil\u202egpj.py", "a\u2066b.txt", "x\u200f.md"):
        with pytest.raises(UnsafePathError, match="invisible formatting"):
            safe_relative_path(name)


async def test_a_body_that_trickles_in_is_answered_408(
    client: Client, settings: Settings, engine: Any
) -> None:
    slow = settings.model_copy(update={"request_body_timeout_s": 0.3})
    app = create_app(slow, client=client, engine=engine)
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": b'{"query": ', "more_body": True}]

    async def receive() -> dict[str, Any]:
        if chunks:
            return chunks.pop()
        await asyncio.sleep(3600)  # the rest never comes
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/runs", "raw_path": b"/runs",
        "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
        "headers": [(b"host", b"localhost"), (b"content-type", b"application/json"),
                    (b"authorization", f"Bearer {ADMIN_KEY}".encode())],
        "client": ("127.0.0.1", 5000), "server": ("localhost", 80),
    }  # fmt: skip
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app(scope, receive, send), timeout=10)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 408, sent[:1]


async def test_versions_have_a_quota(
    client: Client, settings: Settings, engine: Any, tmp_path: Path
) -> None:
    from tests.snapshots import checkout, snapshot
    from versioning import bundle

    capped = settings.model_copy(update={"max_versions": 2})
    for name in ("a", "b"):
        snapshot(capped, engine, checkout(tmp_path / name, f"Version {name}."))
    third = bundle.zip_bytes(bundle.collect(checkout(tmp_path / "c", "Version c."), capped))
    async with serving(capped, client, engine) as http:
        answer = await http.post(
            "/versions", content=third,
            headers={**AUTH, "Content-Type": "application/zip"},
        )  # fmt: skip
    assert answer.status_code == 409 and "MAX_VERSIONS" in answer.text, answer.text


# ---- 10. the schema states the budget cap --------------------------------------------------------
def test_the_schema_states_the_deployments_budget_cap(settings: Settings) -> None:
    import re

    schema = create_app(settings.model_copy(update={"max_budget_usd": Decimal("250")})).openapi()
    for model in ("RunCreate", "BudgetRaiseIn"):
        text = json.dumps(schema["components"]["schemas"][model]["properties"]["budget_usd"])
        assert '"maximum": 250.0' in text and "MAX_BUDGET_USD" in text
        found = re.search(r'"pattern": ("(?:[^"\\]|\\.)*")', text)
        assert found is not None
        pattern = re.compile(json.loads(found.group(1)))
        assert all(pattern.match(v) for v in ("0.5", "249.999999", "250", "250.000000", "7"))
        assert not any(pattern.match(v) for v in ("250.01", "251", "1000", "0", "1e3"))


# ---- 12. a configuration error is one line, not a traceback --------------------------------------
@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [("GROQ_RATE_LIMIT", "abc", "valid integer"), ("LLM_PROVIDER", "grok", "'groq', 'openai'"),
     ("CREWLINE_ADMIN_KEY", "short", "")],
)  # fmt: skip
def test_a_bad_setting_is_one_line_naming_the_variable(
    tmp_path: Path, variable: str, value: str, says: str
) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, variable: value, "CREWLINE_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "crewline"), "health"], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and all(line.startswith("configuration error: ") for line in lines), done.stderr
    assert variable in done.stderr and says in done.stderr and "Traceback" not in done.stderr
    if "KEY" in variable:
        assert value not in done.stderr  # a secret's value is never echoed


# ---- 13. a second worker does not collide --------------------------------------------------------
def test_the_temporal_address_follows_the_port_and_a_taken_metrics_port_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crewline.metrics import Metrics, start_worker_metrics
    from tests.conftest import free_port

    monkeypatch.setenv("TEMPORAL_PORT", "7391")
    assert Settings(_env_file=None).temporal_address == "127.0.0.1:7391"  # type: ignore[call-arg]
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal:7233")
    assert Settings(_env_file=None).temporal_address == "temporal:7233"  # type: ignore[call-arg]
    port = free_port()
    first = start_worker_metrics(Metrics(), "127.0.0.1", port, None)
    second = start_worker_metrics(Metrics(), "127.0.0.1", port, None)
    try:
        assert first is not None and second is not None
        assert first.port == port and second.port not in (0, port)
        answer = httpx.get(f"http://127.0.0.1:{second.port}/metrics", timeout=5)
        assert answer.status_code == 200
    finally:
        for server in (first, second):
            if server is not None:
                server.stop()


# ---- 14. a failed run says why it ended, not what an attempt would do next -----------------------
async def test_a_run_that_gave_up_on_an_open_circuit_says_so(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any,
    new_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    from activities.breaker import BreakerRegistry
    from records.runs import get_run
    from tests.fakes import Status

    fake_groq.outage = Status(503, message="provider down")
    quick = settings.model_copy(update={"breaker_threshold": 2, "breaker_open_s": 1})
    async with new_worker(settings=quick, breakers=BreakerRegistry(threshold=2, open_s=1)):
        run_id, handle = await start_pipeline(client, quick, attempts=4)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    run = get_run(engine, run_id)
    assert run is not None and run.status == "FAILED" and run.error, run
    assert "retry in" not in run.error and "retrying in" not in run.error, run.error
    assert "retries are spent" in run.error, run.error


# ---- 15. "Top runs" lists the runs people started, not their shadows ----------------------------
def test_top_runs_leave_shadow_runs_out(settings: Settings, engine: Any) -> None:
    from records import ledger
    from records.ledger import Charge

    def charge(run_id: str, cost: int, shadow: bool) -> Charge:
        return Charge(
            run_id=run_id, workflow_id=run_id, activity_id="1", attempt=1, agent="planner",
            provider="groq", model="m", version=None, prompt_tokens=1, completion_tokens=1,
            cached_tokens=0, cost_pusd=cost, input_per_mtok=None, output_per_mtok=None,
            price_source="test", usage_source="reported", shadow=shadow,
        )  # fmt: skip

    ledger.record_call(engine, charge("run-a", 10**9, False))
    ledger.record_call(engine, charge("run-a-shadow", 5 * 10**9, True))
    top, _, _ = ledger.grouped(engine, "run", shadow=False)
    assert [t["key"] for t in top] == ["run-a"]
    both, _, _ = ledger.grouped(engine, "run")
    assert [t["key"] for t in both] == ["run-a-shadow", "run-a"]


# ---- 18. the original description's feature flags -------------------------------------------------
async def test_cost_tracking_off_counts_tokens_prices_nothing_and_refuses_budgets(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any,
    new_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    off = settings.model_copy(update={"cost_tracking_enabled": False})
    async with serving(off, client, engine, AUTH) as http:
        refused = await http.post("/runs", json={"query": "Build it", "budget_usd": "0.50"})
        assert refused.status_code == 422 and "COST_TRACKING_ENABLED" in refused.text
        started = await http.post("/runs", json={"query": "Build a snake game"})
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        async with new_worker(settings=off):

            async def ended() -> bool:
                return (await http.get(f"/runs/{run_id}")).json()["status"] == "COMPLETED"

            await assert_eventually(ended, timeout=60)
        run = (await http.get(f"/runs/{run_id}")).json()
    assert run["budget_usd"] is None
    rows = calls_of(engine, run_id)
    assert rows and all(r.cost_pusd == 0 and r.prompt_tokens > 0 for r in rows)
    assert all("COST_TRACKING_ENABLED=false" in r.price_source for r in rows)


async def test_versioning_off_refuses_version_changes_and_samples_no_shadow(
    client: Client, settings: Settings, engine: Any, tmp_path: Path
) -> None:
    from tests.snapshots import checkout, snapshot
    from versioning import shadow

    candidate = snapshot(settings, engine, checkout(tmp_path / "c", "Version c."))
    shadow.set_config(engine, candidate, 1.0, "test")  # would shadow every run if it were on
    off = settings.model_copy(update={"versioning_enabled": False})
    async with serving(off, client, engine, AUTH) as http:
        for method, path, body in (
            ("POST", "/versions", {}), ("POST", f"/versions/{candidate}/activate", {}),
            ("POST", f"/versions/{candidate}/shadow", {"rate": 0.5}),
            ("POST", "/shadow/calibrate", {"runs": 1}),
        ):  # fmt: skip
            answer = await http.request(method, path, json=body)
            assert answer.status_code == 409, (path, answer.text)
            assert "VERSIONING_ENABLED=false" in answer.text, (path, answer.text)
        started = await http.post("/runs", json={"query": "Build a snake game"})
        assert started.status_code == 202
    with engine.connect() as conn:
        shadows = conn.execute(
            text("SELECT run_id FROM run WHERE shadow_of = :p"), {"p": started.json()["run_id"]}
        ).all()
    assert shadows == []
