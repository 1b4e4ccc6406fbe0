"""API keys, scopes, ownership, per-key limits and transport hygiene.

The scope table below must name every route of the app: a new route fails
`test_every_route_needs_a_key_and_the_right_scope` until someone decides who may call it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from sqlmodel import Session, select
from temporalio.client import Client
from temporalio.worker import Worker

from cli.server import create_app
from crewline.settings import Settings
from services.keys import ApiKey
from tests.conftest import ADMIN_KEY, AUTH, assert_eventually, serving

pytestmark = pytest.mark.both_databases

# Open on purpose: liveness, the API docs, and Prometheus' scrape target (counts, no content).
PUBLIC = {"/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
R, RUN, A = "read", "run", "admin"
# (method, path) -> the scopes that may call it. Everything else answers 403.
ALLOWED: dict[tuple[str, str], set[str]] = {
    ("POST", "/runs"): {RUN, A},
    ("GET", "/runs"): {R, RUN, A},
    ("GET", "/runs/{run_id}"): {R, RUN, A},
    ("POST", "/runs/{run_id}/cancel"): {RUN, A},
    ("GET", "/runs/{run_id}/intents/{intent_id}"): {R, RUN, A},
    ("GET", "/runs/{run_id}/artifacts"): {R, RUN, A},
    ("GET", "/runs/{run_id}/artifacts/{path:path}"): {R, RUN, A},
    ("GET", "/runs/{run_id}/costs"): {R, RUN, A},
    ("GET", "/costs"): {R, RUN, A},
    ("POST", "/runs/{run_id}/budget"): {RUN, A},
    ("GET", "/runs/{run_id}/approvals"): {R, RUN, A},
    ("POST", "/runs/{run_id}/approvals/{call_id}"): {RUN, A},
    ("GET", "/runs/{run_id}/events"): {R, RUN, A},
    ("GET", "/versions/shadow"): {R, A},
    ("POST", "/versions/{version_id}/shadow"): {A},
    ("DELETE", "/versions/shadow"): {A},
    ("POST", "/shadow/calibrate"): {A},
    ("GET", "/divergences"): {R, A},
    ("GET", "/versions/{version_id}/report"): {R, A},
    ("GET", "/versions"): {R, A},
    ("POST", "/versions"): {A},
    ("GET", "/versions/history"): {R, A},
    ("POST", "/versions/rollback"): {A},
    ("GET", "/versions/{version_id}"): {R, A},
    ("GET", "/versions/{version_id}/bundle"): {R, A},
    ("GET", "/versions/{a}/diff/{b}"): {R, A},
    ("POST", "/versions/{version_id}/activate"): {A},
    ("DELETE", "/versions/{version_id}"): {A},
    ("POST", "/keys"): {A},
    ("GET", "/keys"): {A},
    ("DELETE", "/keys/{key_id}"): {A},
    ("POST", "/admin/reconcile"): {A},
}
SAMPLE = {
    "run_id": "run-nope",
    "intent_id": "1",
    "call_id": "call_1",
    "path": "a.txt",
    "version_id": "snap-0123456789ab",
}
SAMPLE |= {"a": "snap-0123456789ab", "b": "snap-ba9876543210", "key_id": "nope0000"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def make_key(api: httpx.AsyncClient, name: str, scope: str) -> str:
    made = await api.post("/keys", json={"name": name, "scope": scope}, headers=AUTH)
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


def routes(settings: Settings) -> list[tuple[str, str]]:
    app = create_app(settings)
    return sorted(
        (method, ctx.path)
        for ctx in iter_route_contexts(app.routes)
        # The API's routes; the dashboard's pages (not in the schema) sign in with a session:
        # tests/test_dashboard.py checks every one of them.
        if isinstance(ctx.original_route, APIRoute)
        and ctx.original_route.include_in_schema
        and ctx.path not in PUBLIC
        for method in ctx.methods or ()
    )


def url_of(path: str) -> str:
    return re.sub(r"\{(\w+)(:path)?\}", lambda m: SAMPLE[m.group(1)], path)


async def test_every_route_needs_a_key_and_the_right_scope(
    settings: Settings, client: Client, engine: Any
) -> None:
    table = routes(settings)
    assert set(table) == set(ALLOWED), "a route was added or removed: decide its scopes here"
    async with serving(settings, client, engine) as api:  # sends no key of its own
        keys = {scope: await make_key(api, f"k-{scope}", scope) for scope in (R, RUN)}
        keys[A] = ADMIN_KEY
        for method, path in table:
            await check_route(api, keys, method, path)


async def check_route(api: httpx.AsyncClient, keys: dict[str, str], method: str, path: str) -> None:
    url = url_of(path)
    body = {} if method == "POST" else None
    for headers in ({}, bearer("crl_00000000_" + "x" * 43), {"X-API-Key": "not-a-key-at-all"}):
        answer = await api.request(method, url, json=body, headers=headers)
        assert answer.status_code == 401, (method, path, headers, answer.text)
        assert answer.headers["www-authenticate"] == "Bearer"
    for scope, key in keys.items():
        answer = await api.request(method, url, json=body, headers={"X-API-Key": key})
        assert answer.status_code < 500, (scope, method, path, answer.text)
        if scope in ALLOWED[(method, path)]:
            assert answer.status_code not in (401, 403), (scope, method, path, answer.text)
        else:
            assert answer.status_code == 403, (scope, method, path, answer.text)
            assert f"has scope '{scope}'" in answer.json()["detail"]


async def test_openapi_documents_the_keys(api: httpx.AsyncClient, settings: Settings) -> None:
    spec = (await api.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    for method, path in routes(settings):
        operation = spec["paths"][path.replace(":path", "")][method.lower()]
        assert len(operation["security"]) == 2, (method, path)
        assert {"401", "403"} <= set(operation["responses"]), (method, path)
    assert "security" not in spec["paths"]["/health"]["get"]


async def test_a_run_key_sees_and_changes_only_its_own_runs(
    api: httpx.AsyncClient, engine: Any
) -> None:
    alice, bob = await make_key(api, "alice", RUN), await make_key(api, "bob", RUN)
    reader = await make_key(api, "dashboard", R)
    started = await api.post("/runs", json={"query": "Build a snake game"}, headers=bearer(alice))
    assert started.status_code == 202
    run_id = started.json()["run_id"]
    for url in (f"/runs/{run_id}", f"/runs/{run_id}/costs", f"/runs/{run_id}/artifacts",
                f"/runs/{run_id}/approvals"):  # fmt: skip
        assert (await api.get(url, headers=bearer(bob))).status_code == 404
        assert (await api.get(url, headers=bearer(alice))).status_code == 200
        assert (await api.get(url, headers=bearer(reader))).status_code == 200
    refused = await api.post(
        f"/runs/{run_id}/budget", json={"budget_usd": "5"}, headers=bearer(bob)
    )
    assert refused.status_code == 404 and "not found" in refused.json()["detail"]
    assert (await api.post(f"/runs/{run_id}/cancel", headers=bearer(bob))).status_code == 404
    decide = await api.post(
        f"/runs/{run_id}/approvals/call_1", json={"decision": "approve"}, headers=bearer(bob)
    )
    assert decide.status_code == 404 and "not found" in decide.json()["detail"]
    events = await api.get(f"/runs/{run_id}/events", headers=bearer(bob))
    assert events.status_code == 404
    assert (await api.get("/runs", headers=bearer(bob))).json()["total"] == 0
    mine = (await api.get("/runs", headers=bearer(alice))).json()
    assert [r["run_id"] for r in mine["items"]] == [run_id]
    assert (await api.post("/runs", json={"query": "x"}, headers=bearer(reader))).status_code == 403
    # The admin sees it, filters by key, and the row says who started it.
    alice_id = next(k["key_id"] for k in (await api.get("/keys")).json() if k["name"] == "alice")
    by_alice = (await api.get("/runs", params={"key": alice_id})).json()
    assert [r["run_id"] for r in by_alice["items"]] == [run_id]
    assert (await api.post(f"/runs/{run_id}/cancel", headers=bearer(alice))).status_code == 202


async def test_keys_are_shown_once_stored_hashed_and_revocable(
    api: httpx.AsyncClient, engine: Any
) -> None:
    made = (await api.post("/keys", json={"name": "ci-bot", "scope": RUN})).json()
    key = made["key"]
    assert re.fullmatch(r"crl_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", key)
    with Session(engine) as session:
        stored = session.exec(select(ApiKey).where(ApiKey.key_id == made["key_id"])).one()
    assert key not in stored.model_dump_json() and stored.key_sha256 != key
    listed = (await api.get("/keys")).json()
    assert "key" not in listed[0] and key not in (await api.get("/keys")).text
    assert (await api.get("/runs", headers={"X-API-Key": key})).status_code == 200
    again = await api.post("/keys", json={"name": "ci-bot", "scope": R})
    assert again.status_code == 409 and "exists" in again.json()["detail"]
    assert (await api.delete(f"/keys/{made['key_id']}")).status_code == 200
    refused = await api.get("/runs", headers=bearer(key))
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    # The last admin key cannot be revoked: nobody could make another one.
    env_admin = next(k for k in listed if k["source"] == "env")
    last = await api.delete(f"/keys/{env_admin['key_id']}")
    assert last.status_code == 409 and "last active admin key" in last.json()["detail"]
    assert (await api.post("/keys", json={"name": "x", "scope": "root"})).status_code == 422


async def test_spend_is_attributed_to_the_key_that_started_the_run(
    api: httpx.AsyncClient, new_worker: Callable[..., Worker]
) -> None:
    bot = await make_key(api, "ci-bot", RUN)
    async with new_worker():
        started = await api.post("/runs", json={"query": "Build a snake game"}, headers=bearer(bot))
        run_id = started.json()["run_id"]

        async def done() -> bool:
            return (await api.get(f"/runs/{run_id}")).json()["status"] == "COMPLETED"

        await assert_eventually(done, timeout=60)
    bot_id = next(k["key_id"] for k in (await api.get("/keys")).json() if k["name"] == "ci-bot")
    report = (await api.get("/costs", params={"group_by": "key"})).json()
    assert [(i["key"], i["calls"]) for i in report["items"]] == [(bot_id, 5)]
    # The bot's own view of /costs is its own spend; a reader sees everyone's.
    own = (await api.get("/costs", headers=bearer(bot))).json()
    assert own["total_usd"] == report["total_usd"]


async def test_per_key_limits_answer_429_with_retry_after(
    settings: Settings, client: Client, engine: Any
) -> None:
    limited = settings.model_copy(update={"key_runs_per_minute": 2, "key_max_inflight": 3})
    async with serving(limited, client, engine) as api:
        key = await make_key(api, "burst", RUN)
        first = [
            await api.post(
                "/runs", json={"query": f"q{i}"}, headers=bearer(key) | {"Idempotency-Key": f"i{i}"}
            )
            for i in range(2)
        ]
        assert [a.status_code for a in first] == [202, 202]
        third = await api.post("/runs", json={"query": "q3"}, headers=bearer(key))
        assert third.status_code == 429 and "KEY_RUNS_PER_MINUTE=2" in third.json()["detail"]
        assert 1 <= int(third.headers["retry-after"]) <= 60
        # A retried request with an Idempotency-Key answers its run, limit or not.
        replay = await api.post(
            "/runs", json={"query": "q0"}, headers=bearer(key) | {"Idempotency-Key": "i0"}
        )
        assert replay.status_code == 202 and replay.json()["run_id"] == first[0].json()["run_id"]
        # Limits are per key: another key is not affected.
        other = await make_key(api, "calm", RUN)
        assert (
            await api.post("/runs", json={"query": "q"}, headers=bearer(other))
        ).status_code == 202
    inflight = settings.model_copy(update={"key_max_inflight": 1})
    async with serving(inflight, client, engine) as api:
        key = await make_key(api, "one-at-a-time", RUN)
        assert (
            await api.post("/runs", json={"query": "a"}, headers=bearer(key))
        ).status_code == 202
        busy = await api.post("/runs", json={"query": "b"}, headers=bearer(key))
        assert busy.status_code == 429 and busy.headers["retry-after"] == "5"
        assert "in flight" in busy.json()["detail"]


async def test_dns_rebinding_host_is_refused(api: httpx.AsyncClient) -> None:
    answer = await api.get("/runs", headers={"Host": "attacker.example"})
    assert answer.status_code == 400 and "ALLOWED_HOSTS" in answer.json()["detail"]
    assert (await api.get("/health", headers={"Host": "127.0.0.1:8000"})).status_code != 400


async def test_a_body_over_the_cap_is_413_without_reading_it(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    cap = settings.max_request_bytes
    declared = await api.post(
        "/runs", content=b"{" + b" " * cap + b"}", headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413 and str(cap) in declared.json()["detail"]
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(100):
            sent.append(1)
            yield b" " * 8192

    streamed = await api.post(
        "/runs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert len(sent) < 20, "the API kept reading past the cap"


async def test_options_and_405_list_every_method(api: httpx.AsyncClient) -> None:
    options = await api.options("/runs")
    assert options.status_code == 204
    assert options.headers["allow"] == "GET, OPTIONS, POST"
    wrong = await api.put("/runs")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, OPTIONS, POST"
    # /versions/history is its own route: /versions/{version_id}'s DELETE is not offered there.
    history = await api.delete("/versions/history")
    assert history.status_code == 405 and history.headers["allow"] == "GET, OPTIONS"


async def test_security_headers_and_no_cors_by_default(api: httpx.AsyncClient) -> None:
    answer = await api.get("/runs", headers={"Origin": "http://evil.example"})
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    assert "access-control-allow-origin" not in answer.headers
    docs = await api.get("/docs")
    assert "frame-ancestors 'none'" in docs.headers["content-security-policy"]


async def test_cors_only_for_allowed_origins(
    settings: Settings, client: Client, engine: Any
) -> None:
    allowed = settings.model_copy(update={"allowed_origins": ["https://dash.example"]})
    async with serving(allowed, client, engine) as api:
        preflight = {"Origin": "https://dash.example", "Access-Control-Request-Method": "POST"}
        ok = await api.options("/runs", headers=preflight)
        assert ok.headers["access-control-allow-origin"] == "https://dash.example"
        other = await api.options("/runs", headers=preflight | {"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("value", ["short", ""])
def test_an_admin_key_too_short_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        Settings(CREWLINE_ADMIN_KEY=value or "x", _env_file=None)
