"""Transport hygiene, as ASGI middleware around the whole app:

- a body cap: a request over `MAX_REQUEST_BYTES` (or a route's own larger cap) gets 413 — by its
  `Content-Length` before a byte is read, or as soon as a chunked body passes the cap;
- trusted hosts: a `Host` the API does not serve gets 400 (the DNS-rebinding path to a localhost
  API), CORS only for `ALLOWED_ORIGINS` (none by default);
- `OPTIONS` and 405 answers whose `Allow` lists every method the path has (Starlette's lists only
  the first route that matched the path);
- security headers on every answer.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crewline.settings import Settings

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
# HTML pages (the API docs today) may not be framed, and talk only to this origin.
HTML_CSP = (
    b"content-security-policy",
    b"frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
)


async def _answer(
    send: Send, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def host_allowed(host: str, allowed: list[str]) -> bool:
    name = (host if host.endswith("]") else host.rsplit(":", 1)[0]).lower()
    for pattern in allowed:
        if pattern == "*" or name == pattern:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


class TrustedHosts:
    """400 for a `Host` this API does not serve (a DNS-rebinding page reaching a localhost API
    sends its own name)."""

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app, self.allowed = app, [a.lower() for a in allowed]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not host_allowed(host, self.allowed):
                await _answer(
                    send, 400, "this API does not serve that Host; add it to ALLOWED_HOSTS"
                )
                return
        await self.app(scope, receive, send)


class Hygiene:
    """Security headers on every answer; complete `Allow` on OPTIONS and 405."""

    def __init__(self, app: ASGIApp, routes: FastAPI) -> None:
        self.app, self.routes = app, routes
        self._paths: list[tuple[re.Pattern[str], int, set[str]]] | None = None

    def allowed(self, scope: Scope) -> set[str]:
        """The methods of the most specific route templates matching the path (`/versions/history`
        is its own route, not `/versions/{version_id}`), as OpenAPI documents them."""
        if self._paths is None:  # the route table is complete once the app serves
            self._paths = [
                (compile_path(ctx.path)[0], ctx.path.count("{"), ctx.methods)
                for ctx in iter_route_contexts(self.routes.routes)
                if ctx.path and ctx.methods
            ]
        matches = [(params, m) for regex, params, m in self._paths if regex.match(scope["path"])]
        if not matches:
            return set()
        fewest = min(params for params, _ in matches)
        methods = set().union(*(m for params, m in matches if params == fewest))
        return methods | {"OPTIONS"}  # FastAPI routes do not answer HEAD: not listed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        allowed = self.allowed(scope)
        if allowed and scope["method"] not in allowed:
            # e.g. DELETE /versions/history: no such operation, though /versions/{version_id}
            # has a DELETE — 405, as documented, not a confusing 422 about the id.
            await _answer(
                send, 405, f"{scope['method']} is not allowed here",
                [(b"allow", ", ".join(sorted(allowed)).encode()), *SECURITY_HEADERS],
            )  # fmt: skip
            return
        if scope["method"] == "OPTIONS" and allowed:
            headers = [(b"allow", ", ".join(sorted(allowed)).encode()), *SECURITY_HEADERS]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return

        async def decorated(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                headers = list(msg.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                html = any(
                    k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers
                )
                if html and b"content-security-policy" not in names:  # pages may set a stricter
                    headers.append(HTML_CSP)
                msg = {**msg, "headers": headers}
            await send(msg)

        await self.app(scope, receive, decorated)


class BodyCap:
    """413 past the cap: by `Content-Length` before a byte is read, or as soon as a chunked body
    passes it. (FastAPI's own `max_body_size` answers a plain-text "Content Too Large" from
    outside the app's exception handlers: not the API's one error shape, and no limit named.)"""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        larger: dict[tuple[str, str], int],
        body_timeout_s: float = 30.0,
    ) -> None:
        self.app, self.limit, self.larger = app, limit, larger
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get((scope["method"], scope["path"].rstrip("/")), self.limit)
        message = f"the request body is over the {limit}-byte limit (MAX_REQUEST_BYTES)"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _answer(send, 413, message, [(b"connection", b"close")])
            return
        seen = 0
        started = refused = body_done = False

        async def counted() -> Message:
            # Past the cap, answer 413 here and tell the app the client left: whatever the app
            # makes of that (FastAPI: a parse error) is dropped, and the rest is never read.
            # A body that trickles in slower than the timeout is answered 408 the same way.
            nonlocal seen, refused, body_done
            if refused:
                return {"type": "http.disconnect"}
            if body_done:
                msg = await receive()
            else:
                try:
                    msg = await asyncio.wait_for(receive(), self.body_timeout_s)
                except TimeoutError:
                    refused = True
                    if not started:
                        await _answer(send, 408, "the request body did not arrive in time",
                                      [(b"connection", b"close")])  # fmt: skip
                    return {"type": "http.disconnect"}
            if msg["type"] == "http.request":
                body_done = not msg.get("more_body", False)
                seen += len(msg.get("body", b""))
                if seen > limit and not started:
                    refused = True
                    await _answer(send, 413, message, [(b"connection", b"close")])
                    return {"type": "http.disconnect"}
            return msg

        async def watched(msg: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted, watched)
        except Exception:
            if not refused:
                raise


def install(app: FastAPI, settings: Settings, larger_bodies: dict[tuple[str, str], int]) -> None:
    """Add the middleware; the last added runs first (the body cap sees a request first)."""
    app.add_middleware(Hygiene, routes=app)
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key"],
        )
    app.add_middleware(TrustedHosts, allowed=settings.resolved_allowed_hosts)
    app.add_middleware(
        BodyCap, limit=settings.max_request_bytes, larger=larger_bodies,
        body_timeout_s=settings.request_body_timeout_s,
    )  # fmt: skip
