"""The dashboard in a real browser (Debian's headless Chromium, driven by Playwright) against the
real embedded stack — `crewline up` with the scripted provider — as a user clicks through it:
sign in, start a run and watch its steps complete live, open an artifact, cancel a run, read the
costs chart, shadow and activate a second version and roll it back, and a `read` key that sees
no button it cannot use. Every page: no console error, no failed request, and no request that
leaves 127.0.0.1. Screenshots of each page go to tests/screenshots/ (not in git)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from crewline.process import stop_processes
from dashboard.render import money
from tests.conftest import CREWLINE, assert_eventually, free_port
from tests.snapshots import checkout

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).parent / "screenshots"
ADMIN = "browser-admin-key-0123456789abcdef"
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("no Chromium: `apt-get install chromium` (`make system-deps` does)")
    pytest.skip("no Chromium here: `sudo make system-deps` installs it", allow_module_level=True)

pytestmark = pytest.mark.timeout(240)


class Stack:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.api_port, self.temporal_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("GROQ_", "LLM_", "CREWLINE_"))
        }
        self.env.update(
            CREWLINE_DATA_DIR=str(root / "data"), TEMPORAL_PORT=str(self.temporal_port),
            TEMPORAL_UI_PORT=str(free_port()), API_PORT=str(self.api_port),
            CREWLINE_API_URL=self.url, LLM_PROVIDER="scripted", SCRIPTED_DELAY_S="0.6",
            SEARCH_BACKEND="none", CREWLINE_ADMIN_KEY=ADMIN, WORKER_METRICS_PORT="0",
            SHADOW_DAILY_CAP_USD="10",
            # A demo price for the scripted model, so the costs pages have spend to show.
            MODEL_PRICES='{"scripted-v1": {"input_per_mtok": "0.59", "output_per_mtok": "0.79"}}',
        )  # fmt: skip
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        log = (self.root / "up.log").open("wb")
        self.processes.append(
            subprocess.Popen([CREWLINE, "up"], env=self.env, cwd=self.root, stdout=log, stderr=log)
        )

    def worker(self, tree: Path) -> None:
        """A worker serving a snapshot of another checkout (a second version)."""
        env = {
            **self.env,
            "PYTHONPATH": str(tree),
            "TEMPORAL_ADDRESS": f"127.0.0.1:{self.temporal_port}",
        }
        log = (self.root / "worker2.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "cli", "worker"], env=env, cwd=tree, stdout=log, stderr=log
            )
        )

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = httpx.request(
            method, self.url + path, headers={"X-API-Key": ADMIN}, timeout=30, **kwargs
        )
        assert answer.status_code < 400, answer.text
        return answer.json()

    def stop(self) -> None:
        stop_processes(reversed(self.processes), timeout_s=60, sig=signal.SIGINT)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("browser")
    running = Stack(root)
    running.start()
    try:
        for _ in range(240):
            if "crewline is up" in (root / "up.log").read_text(errors="replace"):
                break
            asyncio.run(asyncio.sleep(0.25))
        else:
            raise AssertionError((root / "up.log").read_text(errors="replace")[-2000:])
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        await launched.close()


class Watched:
    """A page whose console errors, failed requests and off-machine requests are recorded."""

    def __init__(self, page: Any) -> None:
        self.page, self.problems = page, []
        page.on(
            "console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}")
        )
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", self._failed)
        page.on("request", self._request)
        page.on(
            "response", lambda r: r.status >= 400 and self.problems.append(f"{r.status}: {r.url}")
        )

    def _console(self, text: str) -> None:
        if "Failed to load resource" not in text:  # the response itself is recorded below
            self.problems.append(f"console: {text}")

    def _failed(self, request: Any) -> None:
        # htmx polls in flight when the page navigates away are aborted by the browser: fine.
        if "ERR_ABORTED" not in (request.failure or ""):
            self.problems.append(f"failed: {request.url} {request.failure}")

    def _request(self, request: Any) -> None:
        host = urlparse(request.url).hostname
        if request.url.startswith("http") and host not in ("127.0.0.1", "localhost"):
            self.problems.append(f"left the machine: {request.url}")

    async def shot(self, name: str) -> None:
        SHOTS.mkdir(exist_ok=True)
        await self.page.screenshot(path=SHOTS / f"{name}.png", full_page=True)


@pytest.fixture
async def signed_in(browser: Any, stack: Stack) -> AsyncIterator[Watched]:
    context = await browser.new_context(base_url=stack.url, viewport={"width": 1280, "height": 900})
    watched = Watched(await context.new_page())
    await sign_in(watched.page, ADMIN)
    yield watched
    await context.close()
    assert watched.problems == []


async def sign_in(page: Any, key: str) -> None:
    await page.goto("/")
    assert "/ui/login" in page.url
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/ui/runs")


async def start_run(page: Any, query: str) -> str:
    await page.goto("/ui/runs")
    await page.get_by_label("What should the agents do?").fill(query)
    await page.get_by_role("button", name="Start").click()
    await page.wait_for_url("**/ui/runs/run-*")
    return str(page.url.rsplit("/", 1)[1])


async def test_a_run_completes_live_and_its_artifact_opens(signed_in: Watched) -> None:
    page = signed_in.page
    run_id = await start_run(page, "Build a snake game")
    steps = page.locator(".timeline .step")
    assert await steps.count() == 5
    # Live: the page updates itself while the run goes on (no reload here).
    await page.locator(".timeline .step.status-running").first.wait_for(timeout=20_000)
    await signed_in.shot("run-live")
    await page.goto("/ui/runs")
    await signed_in.shot("runs")
    await page.goto(f"/ui/runs/{run_id}")
    await page.locator(".timeline .step.status-completed").nth(4).wait_for(timeout=60_000)
    await page.locator(".status-line .status-completed").wait_for()
    assert await page.locator(".live-dot").count() == 0  # a finished run stops updating
    assert "scripted offline provider" in await page.locator(".answer").inner_text()
    await signed_in.shot("run")
    await page.locator(".tree a").first.click()
    await page.wait_for_url(f"**/ui/runs/{run_id}/files/**")
    assert await page.locator(".viewer .code").count() == 1
    await signed_in.shot("artifact")


async def test_a_call_waits_on_the_page_and_a_click_approves_it(
    signed_in: Watched, stack: Stack
) -> None:
    """A run started with approvals for `write_file`: its page shows each waiting call with the
    agent's reason, live (the event stream, not polling: while the run waits, the page asks
    nothing), and Approve / Deny buttons; a denial's reason reaches the agent."""
    page = signed_in.page
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    run_id = stack.api("POST", "/runs", json={"query": "Build a snake game",
                                              "approve": ["write_file"]})["run_id"]  # fmt: skip
    await page.goto(f"/ui/runs/{run_id}")
    approvals = page.locator(".approvals .approval")
    await approvals.first.wait_for(timeout=60_000)
    await page.locator(".status-line .status-waiting_for_approval").wait_for()
    assert await approvals.count() == 1  # the Coder's first call; its second asks after it
    assert "wants to run write_file 'main.py'" in await approvals.first.inner_text()
    assert any(u.endswith(f"/ui/runs/{run_id}/events") for u in asked)
    await signed_in.shot("run-waiting-for-approval")
    before = len([u for u in asked if u.endswith("/live")])
    await asyncio.sleep(3)  # nothing happens while the run waits: the page asks nothing
    assert len([u for u in asked if u.endswith("/live")]) == before
    await approvals.first.get_by_role("button", name="Approve").click()
    await page.wait_for_url(f"**/ui/runs/{run_id}")
    await page.get_by_text("wants to run write_file 'README.md'").wait_for(timeout=30_000)
    await page.locator(".approval").get_by_label("Reason").fill("no README today")
    await page.locator(".approval").get_by_role("button", name="Deny").click()
    await page.wait_for_url(f"**/ui/runs/{run_id}")
    await page.locator(".status-line .status-completed").wait_for(timeout=60_000)
    tags = await page.locator(".calls .tag").all_inner_texts()
    assert any(t.startswith("approved by") for t in tags), tags
    assert any(t.startswith("denied by") and t.endswith(": no README today") for t in tags)
    run = stack.api("GET", f"/runs/{run_id}")
    assert [a["path"] for a in run["artifacts"]] == ["main.py"]


async def test_cancel_asks_first_then_stops_the_run(signed_in: Watched, stack: Stack) -> None:
    page = signed_in.page
    run_id = await start_run(page, "Write a long report on rivers")
    await page.get_by_role("button", name="Cancel run…").click()
    await page.get_by_role("button", name="Cancel the run").click()
    await page.wait_for_url(f"**/ui/runs/{run_id}")
    await page.locator(".status-line .status-cancelled").wait_for(timeout=30_000)
    assert stack.api("GET", f"/runs/{run_id}")["status"] == "CANCELLED"


async def test_costs_chart_shows_the_ledgers_total(signed_in: Watched, stack: Stack) -> None:
    page = signed_in.page
    await page.goto("/ui/costs?by=agent&days=7")
    total = Decimal(stack.api("GET", "/costs", params={"group_by": "agent"})["total_usd"])
    assert await page.locator("svg.chart rect").count() >= 5  # a bar per agent with spend
    heading = await page.get_by_role("heading", name="Spend per day by agent").inner_text()
    assert f"${money(total)}" in heading
    await signed_in.shot("costs")


async def test_a_second_version_shadows_activates_and_rolls_back(
    signed_in: Watched, stack: Stack, tmp_path: Path
) -> None:
    page = signed_in.page
    first = stack.api("GET", "/versions")["active"]
    stack.worker(checkout(tmp_path / "v2", "Answer in one short paragraph."))

    def second() -> str | None:
        items = stack.api("GET", "/versions")["items"]
        live = [i["id"] for i in items if i["id"] != first and i["live_workers"]]
        return live[0] if live else None

    await assert_eventually(lambda: second() is not None, timeout=90, interval=1)
    candidate = second()
    await page.goto("/ui/versions")
    row = page.locator("tr", has_text=candidate)
    await row.get_by_label("Shadow").fill("100")
    await row.get_by_role("button", name="Set").click()
    await page.wait_for_url("**/ui/versions")
    run_id = await start_run(page, "Which framework for a mobile app?")
    await assert_eventually(
        lambda: bool((stack.api("GET", f"/runs/{run_id}").get("shadow") or {}).get("divergences")),
        timeout=90, interval=1,
    )  # fmt: skip
    await page.goto("/ui/versions")
    await page.get_by_role("heading", name="Shadow report").wait_for()
    await signed_in.shot("versions")
    await page.locator("tr", has_text=candidate).get_by_role("button", name="Activate…").click()
    await page.get_by_role("button", name="Activate").click()
    await page.wait_for_url("**/ui/versions")
    assert stack.api("GET", "/versions")["active"] == candidate
    await page.get_by_role("button", name="Roll back…").click()
    await page.get_by_role("button", name="Roll back").click()
    await page.wait_for_url("**/ui/versions")
    assert stack.api("GET", "/versions")["active"] == first
    history = await page.locator("section", has_text="Activation history").inner_text()
    assert "rollback" in history and "activate" in history


async def test_a_read_key_sees_no_button_it_cannot_use(browser: Any, stack: Stack) -> None:
    read_key = stack.api("POST", "/keys", json={"name": "observer", "scope": "read"})["key"]
    context = await browser.new_context(base_url=stack.url, viewport={"width": 390, "height": 844})
    watched = Watched(await context.new_page())  # a phone-sized window, too
    page = watched.page
    await sign_in(page, read_key)
    assert await page.get_by_role("button", name="Start").count() == 0
    await page.locator("td.query a").first.click()
    await page.locator(".timeline").wait_for()
    assert await page.get_by_role("button", name="Cancel run…").count() == 0
    await page.goto("/ui/versions")
    assert await page.get_by_role("button", name="Activate…").count() == 0
    assert await page.get_by_role("button", name="Roll back…").count() == 0
    await watched.shot("runs-phone")
    await context.close()
    assert watched.problems == []
