"""Agents that act, on the real dev server with the real SDKs against a fake model on loopback:
the model decides, the product follows it — tool calls run, their results go back, errors reach
the model, loops stop, and a worker killed between turns loses nothing and repeats nothing."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from activities.tools.search import SearchHit
from crewline.settings import ModelPrice, Settings
from records.events import events_after
from records.ledger import calls_of
from records.runs import artifacts_of, steps_of, turns_of
from tests.conftest import assert_eventually, start_pipeline
from tests.fakes import Call, FakeGroq, FakeSearch, Reply, tool_results
from tests.procs import WorkerProcesses


def researcher_that_searches_when_needed(agent: str, body: dict[str, Any]) -> Reply | None:
    """A model that searches for a request naming an outside service, and not otherwise; then
    cites what it found."""
    if agent != "researcher":
        return None
    request = body["messages"][1]["content"]
    results = tool_results(body)
    if not results and "Stripe" in request:
        return Reply(calls=[Call("web_search", {"query": "stripe payment intents"})])
    if results:
        return Reply(text="Notes: see https://stripe.com/docs/payments/payment-intents")
    return Reply(text="Notes: a classic game; no research needed.")


@pytest.fixture
def stripe_search() -> FakeSearch:
    return FakeSearch(
        [SearchHit(title="Payment Intents", url="https://stripe.com/docs/payments/payment-intents",
                   snippet="A PaymentIntent guides you through collecting a payment.")]
    )  # fmt: skip


@pytest.mark.parametrize("provider", ["groq", "openai"])
async def test_the_researcher_searches_when_the_model_decides_to(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
    stripe_search: FakeSearch,
    provider: str,
) -> None:
    if provider == "openai":  # any OpenAI-compatible server, through the openai SDK
        settings = settings.model_copy(
            update={"llm_provider": "openai", "llm_base_url": f"{fake_groq.base_url}/v1",
                    "llm_model": "local-model",
                    "model_prices": {"local-model": ModelPrice(input_per_mtok=0, output_per_mtok=0)}}
        )  # fmt: skip
    fake_groq.responder = researcher_that_searches_when_needed
    async with new_worker(settings=settings, search_backend=stripe_search):
        needs, handle = await start_pipeline(client, settings, query="Integrate with Stripe")
        assert (await handle.result()).status == "COMPLETED"
        plain, handle = await start_pipeline(client, settings, query="Build a snake game")
        assert (await handle.result()).status == "COMPLETED"
    assert stripe_search.queries == ["stripe payment intents"]  # only the run that needed it
    turns, calls = turns_of(engine, needs)
    researcher = [t for t in turns if t.agent == "researcher"]
    assert [t.turn for t in researcher] == [1, 2]
    [search] = [c for c in calls if c.agent == "researcher"]
    assert (search.name, search.status, search.ok) == ("web_search", "COMPLETED", True)
    assert search.summary == "1 results" and "payment-intents" in (search.result or "")
    # The model's second turn was given the search's result, under the call's id.
    second = fake_groq.calls("researcher", run_id=needs)[1].body["messages"]
    assert second[-1]["role"] == "tool" and second[-1]["tool_call_id"] == search.call_id
    note = steps_of(engine, needs)[0]
    assert note.status == "COMPLETED" and note.notes is None  # it cited only what it found
    assert [t.turn for t in turns_of(engine, plain)[0] if t.agent == "researcher"] == [1]


@pytest.fixture
def loopback_page() -> Iterator[str]:
    class Page(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = (
                b"<html><head><title>Intents</title><script>track()</script></head><body>"
                b"<nav>Home | Docs</nav><article><h1>Payment Intents</h1><p>Create exactly one "
                b"PaymentIntent for each order or customer session.</p></article></body></html>"
            )
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/docs/payment-intents"
    server.shutdown()


async def test_fetch_url_reads_a_pages_text_and_refuses_loopback_unless_allowed(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
    loopback_page: str,
) -> None:
    fake_groq.script(
        "researcher",
        Reply(calls=[Call("fetch_url", {"url": loopback_page})]),
        Reply(text=f"Notes: one intent per order ({loopback_page})."),
        Reply(calls=[Call("fetch_url", {"url": loopback_page})]),
        Reply(text="Notes: could not read it."),
    )
    allowed = settings.model_copy(update={"fetch_allow_private": True})
    async with new_worker(settings=allowed):
        run_id, handle = await start_pipeline(client, settings, query="Stripe intents")
        await handle.result()
    [fetched] = [c for c in turns_of(engine, run_id)[1] if c.name == "fetch_url"]
    assert fetched.ok and "Create exactly one PaymentIntent" in (fetched.result or "")
    assert "track()" not in (fetched.result or "") and "Home | Docs" not in (fetched.result or "")
    assert steps_of(engine, run_id)[0].notes is None  # it cited the page it read
    async with new_worker():  # the default: the public web only
        run_id, handle = await start_pipeline(client, settings, query="Stripe intents")
        await handle.result()
    [refused] = [c for c in turns_of(engine, run_id)[1] if c.name == "fetch_url"]
    assert refused.ok is False and "non-public address" in (refused.result or "")
    assert (await handle.result()).status == "COMPLETED"


async def test_the_coder_writes_files_through_write_file_and_fixes_an_unsafe_path(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
) -> None:
    fake_groq.script(
        "coder",
        Reply(calls=[Call("write_file", {"path": "../../etc/evil.py", "content": "x"})]),
        Reply(calls=[
            Call("write_file", {"path": "game/main.py", "content": "print('snake')\n"}),
            Call("write_file", {"path": "game/board.py", "content": "W, H = 20, 20\n"}),
            Call("write_file", {"path": "README.md", "content": "# Snake\n"}),
        ]),
        Reply(text="Wrote the game in game/; run python game/main.py."),
    )  # fmt: skip
    async with new_worker():
        run_id, handle = await start_pipeline(client, settings)
        result = await handle.result()
    assert result.status == "COMPLETED"
    # The model was told what was wrong with the path, and wrote the files on its next turn.
    told = fake_groq.calls("coder")[1].body["messages"][-1]
    assert told["role"] == "tool" and "refusing path '../../etc/evil.py'" in told["content"]
    assert sorted(a.path for a in artifacts_of(engine, run_id)) == [
        "README.md", "game/board.py", "game/main.py",
    ]  # fmt: skip
    assert not (settings.data_dir.parent / "etc").exists()
    coder = next(s for s in steps_of(engine, run_id) if s.agent == "coder")
    assert coder.status == "COMPLETED" and coder.turn_count == 3 and coder.attempt == 1
    assert coder.output is not None and coder.output.startswith("Files (3):\n- README.md")
    # Three turns, three billed calls, each one attempt: nothing was retried after a bad path.
    billed = [(c.agent, c.attempt) for c in calls_of(engine, run_id) if c.agent == "coder"]
    assert billed == [("coder", 1)] * 3 and fake_groq.count("coder") == 3


async def test_a_model_repeating_one_tool_call_is_stopped_within_budget(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
) -> None:
    same = Reply(calls=[Call("list_files", {})])
    fake_groq.script("coder", *[same] * 20)
    async with new_worker():
        run_id, handle = await start_pipeline(client, settings, budget_usd=Decimal("0.05"))
        result = await handle.result()
    assert result.status == "COMPLETED"
    coder = next(s for s in steps_of(engine, run_id) if s.agent == "coder")
    assert coder.stop_reason == "stopped: it made the same call (list_files) 3 times"
    assert coder.notes is not None and "same call" in coder.notes
    assert fake_groq.count("coder") == 3 and sum(
        c.cost_usd for c in calls_of(engine, run_id)
    ) <= Decimal("0.05")


async def test_unreachable_search_goes_back_to_the_model_as_a_result(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
) -> None:
    search = FakeSearch(fail=ConnectionError("network is unreachable"))
    fake_groq.script("researcher", Reply(calls=[Call("web_search", {"query": "pygame"})]))
    async with new_worker(search_backend=search):
        run_id, handle = await start_pipeline(client, settings)
        result = await handle.result()
    assert result.status == "COMPLETED" and search.queries == ["pygame"]
    [call] = [c for c in turns_of(engine, run_id)[1] if c.name == "web_search"]
    assert (
        call.ok and call.summary == "no results (fake-search search unavailable (ConnectionError))"
    )
    told = fake_groq.calls("researcher")[1].body["messages"][-1]["content"]
    assert told.startswith("no results for 'pygame'") and "network is unreachable" not in told


async def test_a_worker_killed_between_turns_and_after_a_tool_call_repeats_nothing(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any, tmp_path: Path
) -> None:
    """SIGKILL in the middle of a turn, twice: once right after the first tool call finished,
    once right after the second. Every finished turn is billed once, every file written once."""
    fake_groq.script(
        "coder",
        Reply(calls=[Call("write_file", {"path": "a.py", "content": "A = 1\n"})]),
        Reply(calls=[Call("write_file", {"path": "b.py", "content": "B = 2\n"})], delay_s=4),
        Reply(calls=[Call("write_file", {"path": "b.py", "content": "B = 2\n"})]),
        Reply(text="Wrote a.py and b.py.", delay_s=4),
        Reply(text="Wrote a.py and b.py."),
    )
    with WorkerProcesses(settings, tmp_path) as workers:
        first = workers.spawn()
        run_id, handle = await start_pipeline(client, settings)
        # The coder's second turn is in flight (4 s); its first turn and a.py are done.
        await assert_eventually(lambda: fake_groq.count("coder") == 2, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = workers.spawn()
        # Its retried second turn wrote b.py; its third turn is in flight.
        await assert_eventually(lambda: fake_groq.count("coder") == 4, timeout=60)
        second.send_signal(signal.SIGKILL)
        second.wait()
        workers.spawn()
        result = await handle.result()
    assert result.status == "COMPLETED"
    turns, calls = turns_of(engine, run_id)
    assert [t.turn for t in turns if t.agent == "coder"] == [1, 2, 3]
    writes = [c for c in calls if c.name == "write_file"]
    assert sorted(json.loads(c.args_json)["path"] for c in writes) == ["a.py", "b.py"]
    assert all(c.status == "COMPLETED" and c.ok for c in writes)
    assert sorted(a.path for a in artifacts_of(engine, run_id)) == ["a.py", "b.py"]
    # Billed: turns 2 and 3 twice each (the killed attempt at its worst case, then its retry),
    # turn 1 once; the other agents once each.
    coder = [c for c in calls_of(engine, run_id) if c.agent == "coder"]
    assert len(coder) == 5 == fake_groq.count("coder")
    assert sorted(c.cut_off_by or "" for c in coder) == ["", "", "", "worker_lost", "worker_lost"]
    others = [c for c in calls_of(engine, run_id) if c.agent != "coder"]
    assert len(others) == 4 and all(c.attempt == 1 for c in others)
    # A watcher of the run saw each turn, write and step change once, numbered without gaps,
    # though two attempts died and Temporal ran them again.
    stored = events_after(engine, run_id, 0)
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
    coder_events = [
        (e.kind, data.get("turn"), data.get("call") or data.get("status"))
        for e in stored if (data := json.loads(e.data_json)).get("agent") == "coder"
    ]  # fmt: skip
    assert coder_events == [
        ("step", None, "RUNNING"),
        ("turn", 1, None),
        ("tool", 1, "write_file 'a.py'"),
        ("turn", 2, None),
        ("tool", 2, "write_file 'b.py'"),
        ("turn", 3, None),
        ("checks", None, "not run"),
        ("step", None, "COMPLETED"),
    ], coder_events
