"""API security, one door: who may call what (`auth`: keys, and the scopes of `services.access`)
and what the transport accepts (`transport`)."""

from api.security.auth import (
    AUTH_RESPONSES,
    CanApprove,
    CanCancelRuns,
    CanChangeShadow,
    CanChangeVersions,
    CanManageKeys,
    CanRaiseBudgets,
    CanReadCosts,
    CanReadRuns,
    CanReadShadow,
    CanReadVersions,
    CanReconcile,
    CanStartRuns,
    allow,
)
from api.security.transport import install

__all__ = [
    "AUTH_RESPONSES",
    "CanApprove",
    "CanCancelRuns",
    "CanChangeShadow",
    "CanChangeVersions",
    "CanManageKeys",
    "CanRaiseBudgets",
    "CanReadCosts",
    "CanReadRuns",
    "CanReadShadow",
    "CanReadVersions",
    "CanReconcile",
    "CanStartRuns",
    "allow",
    "install",
]
