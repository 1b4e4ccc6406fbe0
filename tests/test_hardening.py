"""Bad input gets a clear 4xx, never a 5xx; a secret never reaches a log line or a child process."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import structlog

from crewline.logging import configure_logging
from crewline.temporal import server_env

pytestmark = pytest.mark.both_databases

KEY = "gsk_" + "Zz9Yy8Xx7Ww6" * 4


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "says"),
    [
        ("GET", "/costs?since=2026-11-01", None, 200, None),  # a date without a zone is UTC
        ("GET", "/costs?since=2026-11-01T09:00:00", None, 200, None),
        ("GET", "/costs?until=0.5", None, 422, "ISO 8601"),  # a number is not a timestamp
        ("GET", "/costs?since=2026-13-45", None, 422, "ISO 8601"),
        ("GET", "/runs?offset=99999999999999999999", None, 422, "less than or equal"),
        ("GET", "/costs?offset=99999999999999999999", None, 422, "less than or equal"),
        ("POST", "/runs", b'{"query": "x", "budget_usd": NaN}', 422, "finite"),
        ("POST", "/runs", b'{"query": "x", "budget_usd": Infinity}', 422, "finite"),
        ("POST", "/runs", b'{"query": "x", "budget_usd": 1e309}', 422, "finite"),
        ("POST", "/runs", b'{"query": "x", "budget_usd": "5_0"}', 422, "plain decimal"),
        ("POST", "/runs", '{"query": "x", "budget_usd": "\u0665"}'.encode(), 422, "plain decimal"),
    ],
)
async def test_no_5xx_on_bad_input(
    api: httpx.AsyncClient, method: str, url: str, body: bytes | None, status: int, says: str | None
) -> None:
    headers = {"content-type": "application/json"} if body is not None else {}
    answer = await api.request(method, url, content=body, headers=headers)
    assert answer.status_code == status, answer.text
    if says is not None:
        detail = answer.json()["detail"]
        assert isinstance(detail, list) and says in json.dumps(detail)


async def test_empty_idempotency_key_is_refused(api: httpx.AsyncClient) -> None:
    answer = await api.post("/runs", json={"query": "x"}, headers={"Idempotency-Key": ""})
    assert answer.status_code == 422 and "idempotency-key" in answer.text


async def test_a_huge_input_is_not_echoed_back(api: httpx.AsyncClient) -> None:
    answer = await api.post("/runs", json={"query": "y" * 60_000})  # under the body cap
    assert answer.status_code == 422
    assert len(answer.content) < 1_000 and "(60000 chars)" in answer.text


@pytest.mark.parametrize("as_json", [False, True])
def test_secrets_never_reach_a_log_line(as_json: bool, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG", as_json, redact=[KEY])
    try:
        log = structlog.get_logger(f"test.redaction.{as_json}")
        log.info("calling provider", header=f"Authorization: Bearer {KEY}", key=KEY)
        logging.getLogger("groq._base_client").warning("echoed %s", KEY)
        other = "sk-" + "A1b2C3d4E5f6" * 3  # a key of a format, not a configured one

        def call(api_key: str) -> None:
            raise RuntimeError(f"provider said: invalid key {api_key} ({other})")

        try:
            call(KEY)
        except RuntimeError:
            log.exception("call failed")
        out = capsys.readouterr().err
    finally:
        configure_logging()
    assert "calling provider" in out and "call failed" in out and "RuntimeError" in out
    assert KEY not in out and other not in out and "Bearer " + KEY[:8] not in out
    assert out.count("[redacted]") >= 4


def test_the_temporal_server_child_inherits_no_secret() -> None:
    env = server_env(
        {"PATH": "/usr/bin", "GROQ_API_KEY": KEY, "LLM_API_KEY": "x" * 20, "DB_PASSWORD": "pw",
         "HOME": "/root"}
    )  # fmt: skip
    assert env == {"PATH": "/usr/bin", "HOME": "/root"}
