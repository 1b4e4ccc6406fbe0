"""Sign in with an API key, sign out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from crewline.keyfile import key_file
from dashboard import sessions
from dashboard.sessions import COOKIE
from dashboard.web import page

router = APIRouter(prefix="/ui", include_in_schema=False)


def _safe_next(target: str | None) -> str:
    """Only a path of this dashboard (never another site: no open redirect)."""
    if target and target.startswith("/ui/") and not target.startswith("//"):
        return target
    return "/ui/runs"


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return await page(
        request, "login.html", None, next=_safe_next(next), key_path=_key_path(request)
    )


@router.post("/login")
async def login(
    request: Request,
    key: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str | None, Form(max_length=500)] = None,
) -> Response:
    if not _same_origin(request):
        # Login CSRF: another site's page posting its owner's key here would sign the victim in
        # as the attacker (and their next query would land in the attacker's account).
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "sign-in must come from this dashboard's own page; open /ui/login and try again",
        )
    made = await run_in_threadpool(sessions.sign_in, request.app.state.services.ctx.engine, key)
    if made is None:
        return await page(
            request, "login.html", None, status_code=401, next=_safe_next(next),
            key_path=_key_path(request),
            error="That key is not valid: unknown or revoked.",
        )  # fmt: skip
    token, _ = made
    response = RedirectResponse(_safe_next(next), status_code=303)
    sessions.set_cookie(request, response, token)
    return response


def _key_path(request: Request) -> str:
    return str(key_file(request.app.state.settings).resolve())


def _same_origin(request: Request) -> bool:
    """The browser says where the form came from: `Sec-Fetch-Site` (every current browser), else
    `Origin`. A client that sends neither (curl, a script) is not a browser tricked by a page."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return origin.rstrip("/") == own


@router.post("/logout")
async def logout(request: Request) -> Response:
    # No CSRF check needed to sign out: the worst a forged request does is sign you out.
    await run_in_threadpool(
        sessions.sign_out, request.app.state.services.ctx.engine, request.cookies.get(COOKIE)
    )
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
