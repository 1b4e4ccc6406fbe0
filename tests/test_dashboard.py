"""The dashboard as a browser talks to it (HTTP, cookies, forms), on the real API app and worker:
sign-in, sessions and CSRF, what each scope sees and may do, pages that show what the API knows,
untrusted agent output rendered safely, and the docs working offline. The same pages in a real
browser: tests/test_browser.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from temporalio.client import Client
from temporalio.worker import Worker

from cli.server import create_app
from crewline.settings import Settings
from dashboard.pages import PAGES
from dashboard.render import money
from dashboard.sessions import COOKIE, DashboardSession
from records.ledger import calls_of
from records.runs import get_run
from services import keys
from services.access import ALLOWED
from services.keys import Scope
from tests.conftest import ADMIN_KEY, assert_eventually
from tests.fakes import FakeGroq

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
async def ui(client: Client, settings: Settings, engine: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client of the app: cookies kept, redirects not followed, no API key."""
    app = create_app(settings, client=client, engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield http


async def sign_in(ui: httpx.AsyncClient, key: str) -> str:
    answer = await ui.post("/ui/login", data={"key": key, "next": "/ui/runs"})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/runs", answer.text
    page = await ui.get("/ui/runs")
    found = CSRF.search(page.text)
    assert found, page.text[:500]
    return found.group(1)


def ui_routes(settings: Settings) -> list[tuple[str, str]]:
    app = create_app(settings)
    return sorted(
        (method, ctx.path)
        for ctx in iter_route_contexts(app.routes)
        if isinstance(ctx.original_route, APIRoute) and ctx.path.startswith("/ui/")
        for method in ctx.methods or ()
    )


async def test_every_page_needs_a_session(ui: httpx.AsyncClient, settings: Settings) -> None:
    routes = ui_routes(settings)
    assert len(routes) >= 15
    open_ones = {
        ("GET", "/ui/login"), ("POST", "/ui/login"), ("POST", "/ui/logout"),
        ("GET", "/ui/code.css"),
    }  # fmt: skip
    sample = {
        "run_id": "run-x",
        "path": "a.py",
        "intent_id": "1",
        "version_id": "snap-0123456789ab",
        "call_id": "call_1_0",
    }
    for method, path in routes:
        if (method, path) in open_ones:
            continue
        url = re.sub(r"\{(\w+)(:path)?\}", lambda m: sample[m.group(1)], path)
        answer = await ui.request(method, url)
        assert answer.status_code == 303, (method, path, answer.status_code)
        assert answer.headers["location"].startswith("/ui/login"), (method, path)
    polled = await ui.get("/ui/runs/rows", headers={"HX-Request": "true"})
    assert polled.status_code == 401 and polled.headers["HX-Redirect"] == "/ui/login"
    assert (await ui.get("/")).headers["location"] == "/ui/runs"


async def test_sign_in_keeps_the_key_out_of_the_browser_and_the_database(
    ui: httpx.AsyncClient, engine: Any
) -> None:
    refused = await ui.post("/ui/login", data={"key": "crl_nope_" + "x" * 43})
    assert refused.status_code == 401 and "not valid" in refused.text
    answer = await ui.post("/ui/login", data={"key": ADMIN_KEY, "next": "https://evil.example/"})
    assert answer.headers["location"] == "/ui/runs"  # no open redirect
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    token = ui.cookies[COOKIE]
    assert ADMIN_KEY not in cookie and token != ADMIN_KEY
    from sqlmodel import Session, select

    with Session(engine) as session:
        rows = session.exec(select(DashboardSession)).all()
    assert [r.token_sha256 for r in rows] == [keys.digest(token)]
    page = await ui.get("/ui/runs")
    assert page.status_code == 200 and ADMIN_KEY not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # Signing out ends the session.
    out = await ui.post("/ui/logout")
    assert out.status_code == 303
    ui.cookies.set(COOKIE, token)
    assert (await ui.get("/ui/runs")).status_code == 303


async def test_forms_need_the_sessions_csrf_token(ui: httpx.AsyncClient) -> None:
    await sign_in(ui, ADMIN_KEY)
    for data in ({"query": "x"}, {"query": "x", "csrf": "forged"}):
        answer = await ui.post("/ui/runs", data=data)
        assert answer.status_code == 403 and "stale" in answer.text


async def test_every_page_enforces_the_scope_of_the_route_it_mirrors(
    ui: httpx.AsyncClient, engine: Any, settings: Settings
) -> None:
    """Generated from one table (dashboard.pages.PAGES -> services.access.ALLOWED): a key whose
    scope the operation excludes gets the API's 403 on the page; one it allows does not."""
    open_ones = {("GET", "/ui/login"), ("POST", "/ui/login"), ("POST", "/ui/logout"),
                 ("GET", "/ui/code.css")}  # fmt: skip
    routes = [r for r in ui_routes(settings) if r not in open_ones]
    assert set(routes) == set(PAGES), "a page was added or removed: name its operation in PAGES"
    sample = {
        "run_id": "run-x",
        "path": "a.py",
        "intent_id": "1",
        "version_id": "snap-0123456789ab",
        "call_id": "call_1_0",
    }
    keys_by_scope = {Scope.ADMIN: ADMIN_KEY}
    for scope in (Scope.READ, Scope.RUN):
        keys_by_scope[scope] = keys.create(engine, f"page-{scope.value}", scope)[1]
    for scope, key in keys_by_scope.items():
        csrf = await sign_in(ui, key)
        for method, path in routes:
            url = re.sub(r"\{(\w+)(:path)?\}", lambda m: sample[m.group(1)], path)
            data = {"csrf": csrf} if method == "POST" else None
            answer = await ui.request(method, url, data=data)
            operation = PAGES[(method, path)]
            if operation is not None and scope not in ALLOWED[operation]:
                assert answer.status_code == 403, (scope, method, path, answer.status_code)
                assert f"scope &#39;{scope.value}&#39;" in answer.text, (scope, path)
            else:
                assert answer.status_code not in (401, 403), (scope, method, path, answer.text)
                assert answer.status_code < 500, (scope, method, path, answer.text[:300])
        await ui.post("/ui/logout", data={"csrf": csrf})


async def test_a_read_key_sees_no_button_it_cannot_use(
    ui: httpx.AsyncClient, engine: Any, settings: Settings, new_worker: Callable[..., Worker]
) -> None:
    csrf = await sign_in(ui, ADMIN_KEY)
    async with new_worker():
        started = await ui.post("/ui/runs", data={"query": "Build a snake game", "csrf": csrf})
        run_url = started.headers["location"]
        run_id = run_url.rsplit("/", 1)[1]

        def completed() -> bool:
            run = get_run(engine, run_id)
            return run is not None and run.status == "COMPLETED"

        await assert_eventually(completed, timeout=30)
    _, read_key = keys.create(engine, "viewer", Scope.READ)
    await ui.post("/ui/logout")
    read_csrf = await sign_in(ui, read_key)
    runs = (await ui.get("/ui/runs")).text
    run = (await ui.get(run_url)).text
    versions = (await ui.get("/ui/versions")).text
    assert "Start a run" not in runs and run_id in runs
    assert "Cancel run" not in run and "Raise budget" not in run
    assert "Activate" not in versions and "Roll back" not in versions
    refused = await ui.post("/ui/runs", data={"query": "x", "csrf": read_csrf})
    assert refused.status_code == 403 and "scope &#39;read&#39;" in refused.text


async def test_a_run_page_shows_what_the_api_knows_and_renders_agent_output_safely(
    ui: httpx.AsyncClient, engine: Any, fake_groq: FakeGroq, new_worker: Callable[..., Worker]
) -> None:
    fake_groq.responder = lambda agent, body: (
        "**Done.** <script>alert('x')</script> [click](javascript:alert(1))\n\n```python\nprint(1)\n```"
        if agent == "finalizer" else None
    )  # fmt: skip
    csrf = await sign_in(ui, ADMIN_KEY)
    async with new_worker():
        started = await ui.post(
            "/ui/runs", data={"query": "Build a snake game", "budget_usd": "0.50", "csrf": csrf}
        )
        run_id = started.headers["location"].rsplit("/", 1)[1]

        async def finished() -> bool:
            return "hx-trigger" not in (await ui.get(f"/ui/runs/{run_id}/live")).text

        await assert_eventually(finished, timeout=30)
    page = (await ui.get(f"/ui/runs/{run_id}")).text
    assert "<strong>Done.</strong>" in page
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert 'href="javascript:' not in page
    assert 'class="code"' in page  # the fenced block, highlighted on the server
    for agent in ("researcher", "planner", "executor", "coder", "finalizer"):
        assert f'<span class="agent">{agent}</span>' in page
    total = sum((c.cost_usd for c in calls_of(engine, run_id)), Decimal(0))
    assert f"spent ${money(total)}" in page
    viewer = await ui.get(f"/ui/runs/{run_id}/files/snake.py")
    assert viewer.status_code == 200 and "print" in viewer.text
    download = await ui.get(f"/ui/runs/{run_id}/download/snake.py")
    assert download.headers["content-type"] == "application/octet-stream"
    assert "attachment" in download.headers["content-disposition"]
    assert (await ui.get(f"/ui/runs/{run_id}/files/../../etc/passwd")).status_code == 404


async def test_costs_page_and_csv_add_up_to_the_ledger(
    ui: httpx.AsyncClient, engine: Any, new_worker: Callable[..., Worker], client: Client,
    settings: Settings,
) -> None:  # fmt: skip
    csrf = await sign_in(ui, ADMIN_KEY)
    run_ids = []
    async with new_worker():
        for _ in range(2):
            started = await ui.post("/ui/runs", data={"query": "Build a snake game", "csrf": csrf})
            run_ids.append(started.headers["location"].rsplit("/", 1)[1])
        for run_id in run_ids:
            await client.get_workflow_handle(run_id).result()
    total = sum((c.cost_usd for r in run_ids for c in calls_of(engine, r)), Decimal(0))
    page = await ui.get("/ui/costs?by=agent&days=7")
    assert page.status_code == 200 and '<svg class="chart"' in page.text
    assert f"${money(total)} in 7 days" in page.text
    csv = (await ui.get("/ui/costs.csv?by=model&days=7")).text.splitlines()
    assert csv[0] == "day,model,usd"
    assert sum(Decimal(line.split(",")[2]) for line in csv[1:]) == total


async def test_health_and_versions_pages_and_offline_docs(ui: httpx.AsyncClient) -> None:
    await sign_in(ui, ADMIN_KEY)
    health = await ui.get("/ui/health")
    assert health.status_code == 200 and "Circuit breakers" in health.text
    assert (await ui.get("/ui/versions")).status_code == 200
    docs = (await ui.get("/docs")).text
    assert "cdn." not in docs and "/static-offline-docs/swagger-ui-bundle.js" in docs
    asset = await ui.get("/static-offline-docs/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.content) > 100_000
