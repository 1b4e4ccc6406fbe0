"""API security, one door: who may call what (`auth`), how often (`limits`), and what the
transport accepts (`transport`)."""

from api.security.auth import (
    AUTH_RESPONSES,
    Admin,
    Principal,
    Reader,
    Runner,
    RunReader,
    visible_run,
)
from api.security.limits import check_run_limits
from api.security.transport import install

__all__ = [
    "AUTH_RESPONSES",
    "Admin",
    "Principal",
    "Reader",
    "RunReader",
    "Runner",
    "check_run_limits",
    "install",
    "visible_run",
]
