"""How client commands talk to the API: one request helper that turns every failure into a
message a user can act on, and exits without the Temporal core's exit-time abort."""

from __future__ import annotations

from typing import Any, NoReturn

import httpx
import typer

from crewline import keyfile as keys
from crewline.process import exit_hard
from crewline.settings import Settings

__all__ = ["api_client", "exit_hard", "fail", "request"]


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    exit_hard(code)


def api_client(settings: Settings, timeout: float = 10) -> httpx.Client:
    key = keys.local_key(settings)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=settings.resolved_api_url, timeout=timeout, headers=headers)


def request(
    settings: Settings, method: str, path: str, *, expect_json: bool = True, **kwargs: Any
) -> Any:
    """The decoded JSON answer (None for a body-less answer; the bytes with `raw=True`), or exit
    2 with the API's message."""
    timeout = kwargs.pop("timeout", 30)
    raw = kwargs.pop("raw", False)
    try:
        with api_client(settings, timeout) as client:
            response = client.request(method, path, **kwargs)
    except httpx.ConnectError:
        fail(
            f"cannot reach the crewline API at {settings.resolved_api_url}; start the stack with "
            "`make up` (or `crewline up`), or set CREWLINE_API_URL"
        )
    if response.status_code == 401:
        fail(
            "the API refused the key: set CREWLINE_API_KEY to a valid key (an admin makes one "
            "with `crewline keys create --scope run --name NAME`); on the machine running "
            f"`crewline up`, the admin key is in {keys.key_file(settings)} (HTTP 401)"
        )
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        if isinstance(detail, list):  # FastAPI validation errors
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {e.get('msg')}" for e in detail
            )
        fail(f"{detail} (HTTP {response.status_code})")
    if raw:
        return response.content
    return response.json() if expect_json else None
