"""Pure logic: error classification, backoff, research decision, artifacts, tools, settings."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import groq
import httpx
import pytest
from pydantic import Field
from temporalio.testing import ActivityEnvironment

from activities.errors import backoff_delay, classify, retry_after_seconds
from activities.heartbeat import FIRST_BEAT_AFTER_S, heartbeating, report
from activities.models import check_agent_models, model_for
from activities.tools import ToolContext, ToolError, ToolRegistry, ToolSpec
from activities.tools.files import UnsafePathError, parse_files, safe_relative_path, write_artifact
from crewline.settings import ConfigurationError, Settings

REPO = Path(__file__).resolve().parent.parent
KEY = "gsk_supersecret_0123456789"


def _status_error(code: int, headers: dict[str, str] | None = None) -> groq.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/openai/v1/chat/completions")
    response = httpx.Response(
        code, headers=headers or {}, request=request, json={"error": {"message": f"boom {KEY}"}}
    )
    return groq.APIStatusError(f"Error code: {code} {KEY}", response=response, body=None)


def _classify(exc: BaseException, attempt: int = 1) -> Any:
    return classify(
        exc, agent="coder", provider="groq", key_var="GROQ_API_KEY",
        attempt=attempt, base_s=1.0, cap_s=30.0, secrets=[KEY],
    )  # fmt: skip


@pytest.mark.parametrize("code", [400, 401, 403, 404, 422])
def test_permanent_statuses_are_non_retryable(code: int) -> None:
    err = _classify(_status_error(code))
    assert err.non_retryable and KEY not in err.message and "coder" in err.message
    if code in (401, 403):
        assert f"GROQ_API_KEY rejected ({code})" in err.message


@pytest.mark.parametrize("code", [408, 409, 429, 500, 502, 503])
def test_transient_statuses_retry_with_a_delay(code: int) -> None:
    err = _classify(_status_error(code))
    assert not err.non_retryable and err.next_retry_delay is not None


def test_retry_after_is_a_floor() -> None:
    for _ in range(20):
        err = _classify(_status_error(429, {"retry-after": "7"}))
        assert err.next_retry_delay.total_seconds() >= 7
    err = _classify(_status_error(503, {"retry-after-ms": "2500"}))
    assert err.next_retry_delay.total_seconds() >= 2.5


def test_retry_after_parsing() -> None:
    assert retry_after_seconds(httpx.Headers({"retry-after": "3"})) == 3
    assert retry_after_seconds(httpx.Headers({"retry-after-ms": "150"})) == 0.15
    assert (
        retry_after_seconds(httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0
    )
    assert retry_after_seconds(httpx.Headers({})) is None


def test_backoff_is_full_jitter_and_capped() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(attempt, 1.0, 8.0, rng) for attempt in range(1, 9)]
    assert all(0 <= d <= min(8.0, 2 ** (i)) for i, d in enumerate(delays))
    assert len(set(delays)) == len(delays)  # jittered, not identical


def test_timeouts_and_connection_errors_are_retryable() -> None:
    request = httpx.Request("POST", "http://127.0.0.1")
    assert not _classify(groq.APITimeoutError(request)).non_retryable
    err = _classify(groq.APIConnectionError(request=request))
    assert not err.non_retryable and "unreachable" in err.message


def test_parse_files_and_unsafe_paths(tmp_path: Path) -> None:
    text = "intro\n=== FILE: a/b.py ===\nx = 1\n=== END FILE ===\n=== FILE: c.md ===\n# c\n=== END FILE ==="
    assert parse_files(text).files == {"a/b.py": "x = 1\n", "c.md": "# c\n"}
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../x", "", "evil\u202egp.py", "a\x00b"):
        with pytest.raises(UnsafePathError):
            safe_relative_path(bad)
    _, size, digest = write_artifact(tmp_path, "a/b.py", "x = 1\n")
    assert (tmp_path / "a" / "b.py").read_text() == "x = 1\n" and size == 6 and len(digest) == 64
    assert not list(tmp_path.rglob("*.tmp"))


def test_the_old_file_format_is_read_tolerantly() -> None:
    # A fenced block inside the markers loses its fence; trailing spaces and an indented marker
    # do not drop a file; a block cut off at the token limit is kept and reported.
    text = (
        "=== FILE: main.py ===   \n```python\nprint(1)\n```\n=== END FILE ===\n"
        "  === FILE: game/b.py ===\nx = 2\n=== END FILE ===\n"
        "=== FILE: c.py ===\ndef f(:\n"
    )
    parsed = parse_files(text, cut_off=True)
    assert parsed.files == {"main.py": "print(1)\n", "game/b.py": "x = 2\n", "c.py": "def f(:\n"}
    assert parsed.truncated == ["c.py"]
    # The common "**main.py** then a fenced block" answer is files too, not one markdown blob.
    headed = (
        "Here it is.\n\n**main.py**\n```python\nprint(2)\n```\n\n### `README.md`\n```\n# R\n```\n"
    )
    assert parse_files(headed).files == {"main.py": "print(2)\n", "README.md": "# R\n"}


async def test_dry_run_records_intents_instead_of_side_effects() -> None:
    done: list[str] = []

    async def write(ctx: ToolContext, path: str) -> str:
        done.append(path)
        return path

    async def read(ctx: ToolContext, q: str) -> str:
        return q.upper()

    registry = ToolRegistry()
    registry.register(ToolSpec("write", side_effects=True, description="", fn=write))
    registry.register(ToolSpec("read", side_effects=False, description="", fn=read))
    ctx = ToolContext(run_id="r", dry_run=True)
    intended = await registry.dispatch(ctx, "write", path="x.py")
    assert intended.ok and intended.text.startswith("(dry run: nothing was done)")
    assert (await registry.dispatch(ctx, "read", q="hi")).text == "HI"
    assert done == [] and ctx.intents == [{"tool": "write", "summary": "would call write(path)"}]
    assert (await registry.dispatch(ToolContext(run_id="r"), "write", path="y.py")).text == "y.py"
    assert done == ["y.py"]


async def test_a_tools_schema_is_derived_and_bad_arguments_go_back_to_the_model() -> None:
    async def lookup(
        ctx: ToolContext,
        query: Annotated[str, Field(min_length=1, description="what to look up")],
        limit: int = 5,
    ) -> str:
        if query == "boom":
            raise ToolError("the index is down")
        return f"{query}:{limit}"

    registry = ToolRegistry()
    registry.register(ToolSpec("lookup", side_effects=False, description="Look up", fn=lookup))
    [schema] = registry.schemas(["lookup"])
    params = schema["function"]["parameters"]
    assert schema["function"]["name"] == "lookup" and params["required"] == ["query"]
    assert params["properties"]["query"]["description"] == "what to look up"
    assert params["properties"]["limit"] == {"default": 5, "type": "integer"}
    ctx = ToolContext(run_id="r")
    assert (await registry.dispatch(ctx, "lookup", query="a")).text == "a:5"
    wrong = await registry.dispatch(ctx, "lookup", query="", limit="many", extra=1)
    assert not wrong.ok and "bad arguments for lookup" in wrong.text and "limit" in wrong.text
    failed = await registry.dispatch(ctx, "lookup", query="boom")
    assert not failed.ok and failed.text == "error: the index is down"
    unknown = await registry.dispatch(ctx, "nope")
    assert not unknown.ok and "there is no tool 'nope'" in unknown.text


def test_settings_say_what_to_set() -> None:
    with pytest.raises(ConfigurationError, match="GROQ_API_KEY"):
        Settings(_env_file=None).provider()
    with pytest.raises(ConfigurationError, match="LLM_BASE_URL"):
        Settings(LLM_PROVIDER="openai", _env_file=None).provider()
    settings = Settings(
        GROQ_API_KEY=KEY, AGENT_MODELS='{"researcher": "llama-3.1-8b-instant"}', _env_file=None
    )
    assert settings.provider() == "groq"
    assert model_for(settings, "researcher") == "llama-3.1-8b-instant"
    assert model_for(settings, "coder") == settings.groq_model
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())
    with pytest.raises(ConfigurationError, match="unknown agents"):
        check_agent_models(Settings(AGENT_MODELS='{"reviewer": "x"}', _env_file=None))


def test_breaker_state_machine() -> None:
    from activities.breaker import BreakerOpenError, BreakerState, CircuitBreaker

    now = [0.0]
    breaker = CircuitBreaker("groq", "m", threshold=3, open_s=10, clock=lambda: now[0])
    for _ in range(2):
        breaker.before_call()
        breaker.on_failure()
    breaker.before_call()
    breaker.on_success()  # two failures then a success: still closed, count reset
    assert breaker.state == BreakerState.CLOSED and breaker.consecutive_failures == 0
    for _ in range(3):
        breaker.before_call()
        breaker.on_failure()
    assert breaker.state == BreakerState.OPEN
    now[0] = 4.0
    with pytest.raises(BreakerOpenError) as info:
        breaker.before_call()
    assert info.value.retry_in_s == pytest.approx(6.0)
    now[0] = 10.0
    assert breaker.before_call() is True and breaker.state == BreakerState.HALF_OPEN
    with pytest.raises(BreakerOpenError):  # exactly one probe
        breaker.before_call()
    breaker.on_failure()
    assert breaker.state == BreakerState.OPEN and breaker.times_opened == 2
    now[0] = 20.0
    breaker.before_call()
    breaker.on_answer()  # a 401 during the probe: the provider is up
    assert breaker.state == BreakerState.CLOSED
    breaker.before_call()
    breaker.on_answer()  # permanent errors never count as failures
    assert breaker.consecutive_failures == 0


def test_money_leaves_the_api_as_a_plain_decimal() -> None:
    from services.models import StepOut, plain

    assert plain(Decimal("0E-10")) == "0" and plain(Decimal("1.2E-4")) == "0.00012"
    step = StepOut(
        agent="coder", status="COMPLETED", output=None, notes=None, model=None, provider=None,
        prompt_tokens=None, completion_tokens=None, attempt=1, error=None,
        cost_usd=Decimal("0E-10"), started_at=None, finished_at=None,
    )  # fmt: skip
    assert step.model_dump(mode="json")["cost_usd"] == "0"


def test_an_unreachable_provider_is_named_by_its_url() -> None:
    request = httpx.Request("POST", "http://127.0.0.1:1/openai/v1/chat/completions")
    exc = groq.APIConnectionError(request=request)
    error = classify(
        exc, agent="coder", provider="groq", key_var="GROQ_API_KEY", attempt=1,
        base_s=0.1, cap_s=1, secrets=[], url="http://127.0.0.1:1",
    )  # fmt: skip
    assert "unreachable at http://127.0.0.1:1" in error.message


async def test_an_attempt_on_time_heartbeats_after_a_second_one_started_late_at_once() -> None:
    """A step that ends within FIRST_BEAT_AFTER_S sends no heartbeat (one RPC and one server
    write fewer a step); an attempt the worker began late beats at once, moving the heartbeat
    deadline past the wait."""
    beats: list[tuple[Any, ...]] = []

    @heartbeating
    async def step(pause_s: float) -> str:
        report("WAITING_FOR_RATE_LIMIT")
        await asyncio.sleep(pause_s)
        return "done"

    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    env.info = dataclasses.replace(env.info, started_time=datetime.now(UTC))
    assert await env.run(step, 0.05) == "done"
    assert beats == []

    env.info = dataclasses.replace(
        env.info, started_time=datetime.now(UTC) - timedelta(seconds=FIRST_BEAT_AFTER_S * 3)
    )
    assert await env.run(step, 0.05) == "done"
    assert beats == [("WAITING_FOR_RATE_LIMIT",)]  # at once, carrying what the step reported

    env.info = dataclasses.replace(env.info, started_time=datetime.now(UTC))
    beats.clear()
    assert await env.run(step, FIRST_BEAT_AFTER_S + 0.3) == "done"
    assert beats == [("WAITING_FOR_RATE_LIMIT",)]  # a longer step beats after the first second


def test_the_tree_declares_the_records_interface_it_is_written_for() -> None:
    import activities
    import records

    assert activities.RECORDS_INTERFACE == records.INTERFACE
    assert records.INTERFACE in records.SUPPORTED_INTERFACES


def _turn_input(agent: str = "researcher", turn: int = 1, last: bool = False) -> Any:
    from activities.contract import TurnInput

    return TurnInput(run_id="r", query="q", agent=agent, turn=turn, last_turn=last)


def _response(text: str = "", calls: list[Any] | None = None, finish: str = "stop") -> Any:
    from activities.llm import LLMResponse

    return LLMResponse(text=text, model="m", provider="p", prompt_tokens=1, completion_tokens=1,
                       tool_calls=calls or [], finish_reason=finish)  # fmt: skip


def test_what_a_turns_message_means_for_the_loop() -> None:
    from activities.answers import CONTINUE_NOTE, decide
    from activities.llm import ToolCallOut
    from activities.specs import specs
    from records.tables import ToolCall, Turn

    spec = specs()
    call = ToolCallOut(id="c1", name="web_search", arguments='{"query": "stripe"}')
    asked = decide(spec["researcher"], _turn_input(), _response(calls=[call]), [], "p")
    assert not asked.finished and [(c.name, c.args) for c in asked.calls] == [
        ("web_search", {"query": "stripe"})
    ]
    bad = ToolCallOut(id="c2", name="web_search", arguments="{not json")
    broken = decide(spec["researcher"], _turn_input(), _response(calls=[bad]), [], "p")
    assert broken.calls[0].args == {"__invalid_json__": "{not json"}  # the model is told
    assert decide(spec["planner"], _turn_input("planner"), _response(), [], "p").empty
    cut = decide(
        spec["planner"], _turn_input("planner"), _response("1. a", finish="length"), [], "p"
    )
    assert not cut.finished and cut.feedback == CONTINUE_NOTE
    # The continuation finishes the answer: both parts, in order.
    earlier = Turn(run_id="r", agent="planner", turn=1, finish_reason="length",
                   message_json='{"content": "1. a"}', status="COMPLETED")  # fmt: skip
    whole = decide(spec["planner"], _turn_input("planner", 2), _response("nd b\n2. c"),
                   [(earlier, [])], "p")  # fmt: skip
    assert whole.finished and whole.output == "1. and b\n2. c" and whole.notes is None
    # Research notes citing a URL it never saw are flagged; one from its search is fine.
    search = ToolCall(run_id="r", agent="researcher", turn=1, seq=0, call_id="c1",
                      name="web_search", args_json="{}", result="1. S\n   https://stripe.com/docs\n",
                      status="COMPLETED", ok=True)  # fmt: skip
    noted = decide(spec["researcher"], _turn_input(turn=2),
                   _response("See https://stripe.com/docs and https://made.up/page."),
                   [(Turn(run_id="r", agent="researcher", turn=1, status="COMPLETED",
                          message_json="{}"), [search])], "p")  # fmt: skip
    assert noted.finished and noted.notes is not None
    assert "https://made.up/page" in noted.notes and "stripe.com" not in noted.notes
    # The Executor's checks are data; the Coder's text-format files become write_file calls.
    checks = decide(spec["executor"], _turn_input("executor"),
                    _response('Gaps: none.\n```json\n["python -m py_compile main.py"]\n```'),
                    [], "p")  # fmt: skip
    assert checks.checks == ["python -m py_compile main.py"]
    files = decide(spec["coder"], _turn_input("coder"),
                   _response("=== FILE: a.py ===\nx=1\n=== END FILE ==="), [], "p")  # fmt: skip
    assert files.then_finish and [c.args["path"] for c in files.calls] == ["a.py"]
    none = decide(spec["coder"], _turn_input("coder"), _response("I could not."), [], "p")
    assert none.then_finish and not none.finished and none.notes == "the Coder wrote no files"


async def test_fetch_refuses_non_public_addresses() -> None:
    from activities.tools import ToolError
    from activities.tools.web import FetchPolicy, fetch

    policy = FetchPolicy(timeout_s=2)
    for url in ("http://127.0.0.1:9/x", "http://localhost/", "http://10.1.2.3/",
                "http://169.254.169.254/latest/meta-data", "http://[::1]/", "file:///etc/passwd",
                "ftp://example.org/"):  # fmt: skip
        with pytest.raises(ToolError):
            await fetch(url, policy)
