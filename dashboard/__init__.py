"""The dashboard: server-rendered pages over crewline's API, served by the API process at `/`.

What the Temporal Web UI does not show — runs with their spend, budgets, artifacts and outputs,
costs as charts, versions and shadow reports, health — for people watching agents work. Pages
are Jinja templates rendered on the server; the only script is a vendored copy of htmx (polling
the live parts of a page); charts are SVG drawn on the server; every asset is served from this
package (no CDN, no Node.js). One door: `install(app)`.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from dashboard.pages import auth, costs, health, runs, versions
from dashboard.render import PYGMENTS_CSS
from dashboard.sessions import SignInRequired
from dashboard.web import HERE, build_templates, page

_HEADINGS = {403: "Not allowed", 404: "Not found", 409: "Not now", 422: "Not accepted"}


async def _sign_in(request: Request, exc: Exception) -> Response:
    if request.headers.get("hx-request"):
        # A poll after the session ended: htmx goes to the sign-in page.
        return Response(status_code=401, headers={"HX-Redirect": "/ui/login"})
    back = request.url.path if request.method == "GET" else "/ui/runs"
    if request.method == "GET" and request.url.query:
        back += f"?{request.url.query}"
    return RedirectResponse(f"/ui/login?next={quote(back)}", status_code=303)


async def _http_error(request: Request, exc: Exception) -> Response:
    """On a dashboard page an API refusal is a page saying why; elsewhere the API's JSON."""
    assert isinstance(exc, HTTPException)
    if not request.url.path.startswith("/ui/"):
        return await http_exception_handler(request, exc)
    viewer = getattr(request.state, "viewer", None)
    return await page(
        request, "error.html", viewer, status_code=exc.status_code,
        heading=_HEADINGS.get(exc.status_code, "Something went wrong"),
        message=str(exc.detail), back=request.headers.get("referer", "").split("?")[0] or None,
    )  # fmt: skip


def install(app: FastAPI) -> None:
    app.state.templates = build_templates()
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="dashboard-static")
    for module in (auth, runs, costs, versions, health):
        app.include_router(module.router)
    app.add_exception_handler(SignInRequired, _sign_in)
    app.add_exception_handler(HTTPException, _http_error)

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/ui/runs", status_code=303)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> RedirectResponse:
        return RedirectResponse("/ui/static/favicon.svg", status_code=301)

    @app.get("/ui/code.css", include_in_schema=False)
    async def code_css() -> Response:
        return Response(PYGMENTS_CSS, media_type="text/css")
