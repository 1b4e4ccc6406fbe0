"""What every dashboard page shares: its templates, the page response (with the dashboard's
Content-Security-Policy), and turning an API refusal into a message on the page."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from dashboard import render
from dashboard.sessions import Viewer
from services.run_views import url_path

HERE = Path(__file__).parent
# Only this origin's scripts, styles and images; no inline script, no frames, forms post here.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)


def build_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=HERE / "templates")
    env = templates.env
    env.filters["money"] = render.money
    env.filters["markdown"] = render.markdown
    env.filters["urlpath"] = url_path
    env.globals["elapsed"] = render.elapsed
    env.globals["code"] = render.code
    return templates


async def page(
    request: Request,
    name: str,
    viewer: Viewer | None,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    settings = request.app.state.settings
    context.setdefault("error", None)
    # Rendered in a thread: a page renders agent output (Markdown, highlighted code), which
    # must never hold up the event loop every other request and /health wait on.
    response = await run_in_threadpool(
        request.app.state.templates.TemplateResponse,
        request,
        name,
        {
            "viewer": viewer,
            "now": datetime.now(UTC),
            "temporal_ui": f"http://127.0.0.1:{settings.temporal_ui_port}"
            f"/namespaces/{settings.temporal_namespace}",
            **context,
        },
        status_code=status_code,
    )
    response.headers["content-security-policy"] = CSP
    response.headers["cache-control"] = "no-store"
    return response  # type: ignore[no-any-return]


def go(request: Request, url: str) -> Response:
    """After a form: htmx follows `HX-Redirect`, a plain form a 303."""
    if request.headers.get("hx-request"):
        return Response(status_code=204, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def refusal(exc: Exception) -> str:
    """What the API would have answered, as one sentence for the page."""
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    if isinstance(exc, RequestValidationError | ValidationError):
        errors = exc.errors()
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[-1:])}: {e.get('msg')}" for e in errors
        )
    return f"{type(exc).__name__}"


async def confirm(
    request: Request,
    viewer: Viewer,
    question: str,
    detail: str,
    fields: dict[str, str],
    action: str,
    back: str,
) -> HTMLResponse:
    """Ask before a change: a page whose form posts the same fields again, confirmed (works
    without script, with the keyboard, and a stray click changes nothing)."""
    return await page(
        request, "confirm.html", viewer, question=question, detail=detail, fields=fields,
        action=action, target=request.url.path, back=back,
    )  # fmt: skip
