"""Request and response shapes of `/versions`."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field, StrictBool, StrictFloat, field_validator

from services.models import DivergenceDetail, Usd

VERSION_ID_PATTERN = r"^snap-[0-9a-f]{12}$"


class VersionSummary(BaseModel):
    id: str
    created_at: datetime
    source: str
    # Sent as a zip through POST /versions (not snapshotted from a checkout on this machine):
    # code someone uploaded, which `crewline up` runs only with ALLOW_UPLOADED_BUNDLES.
    uploaded: bool = False
    note: str | None
    files: int
    prompts: int
    size_bytes: int
    active: bool = False
    candidate: bool = False
    live_workers: int = 0
    runs: int = 0
    spend_usd: Usd = Decimal(0)
    shadow_spend_usd: Usd = Decimal(0)


class VersionList(BaseModel):
    deployment: str
    active: str | None
    candidate: str | None = None
    shadow_rate: float = 0.0
    shadow_paused: str | None = None
    # Temporal's conflict token for the deployment as read now (hex): pass it back as `if_token`
    # to change the current version only if nobody changed it since.
    deployment_token: str
    items: list[VersionSummary]


class FileEntry(BaseModel):
    path: str
    sha256: str


class WorkerOut(BaseModel):
    identity: str
    host: str
    last_heartbeat: datetime


class VersionDetail(VersionSummary):
    files_list: list[FileEntry]
    model_settings: dict[str, Any]
    tools: list[dict[str, Any]]
    workers: list[WorkerOut] = []


class SnapshotIn(BaseModel):
    note: str | None = Field(default=None, max_length=500)


class SnapshotOut(VersionSummary):
    created: bool = Field(description="false: this exact content was already a version")
    skipped: list[str] = []


class ChangeIn(BaseModel):
    reason: str | None = Field(default=None, max_length=500)
    move_inflight: StrictBool = Field(
        default=False,
        description="also re-pin the open runs of the version being left onto the target",
    )
    force: StrictBool = Field(
        default=False, description="move in-flight runs even if the workflow code differs"
    )
    if_token: str | None = Field(
        default=None,
        pattern=r"^(?:[0-9a-fA-F]{2}){0,128}$",
        description="`deployment_token` from GET /versions: fail (409) if anything changed since",
    )


class RollbackIn(ChangeIn):
    from_version: str | None = Field(
        default=None,
        pattern=VERSION_ID_PATTERN,
        description="the version to roll back from; a retry after it happened changes nothing",
    )


class ActivationOut(BaseModel):
    action: str
    from_version: str | None
    to_version: str
    changed: bool
    moved_runs: int = 0
    at: datetime | None = None
    reason: str | None = None
    by: str | None = None


class HistoryOut(BaseModel):
    items: list[ActivationOut]


class VersionDiffOut(BaseModel):
    a: str
    b: str
    added: list[str]
    removed: list[str]
    changed: list[str]
    prompts_changed: list[str]
    model_settings: dict[str, list[Any]]
    tools: dict[str, list[Any]]
    diffs: dict[str, str]
    note: str | None = None


class ShadowIn(BaseModel):
    rate: StrictFloat = Field(ge=0, le=1, allow_inf_nan=False, description="share of runs, 0 stops")


class ShadowState(BaseModel):
    candidate: str | None
    rate: float
    paused: str | None = None
    daily_cap_usd: Usd
    spent_today_usd: Usd


class CalibrateIn(BaseModel):
    runs: int = Field(default=5, ge=1, le=50, description="recent completed runs to re-run")

    @field_validator("runs", mode="before")
    @classmethod
    def _not_a_bool(cls, value: object) -> object:
        if isinstance(value, bool):  # JSON true is not the integer 1
            raise ValueError("must be an integer")
        return value


class Calibration(BaseModel):
    """A started calibration: its runs start after this answer; their verdicts appear at
    `status` (GET) as each finishes."""

    version: str
    shadow_runs: list[str]
    status: str = Field(description="where the verdicts appear as the runs finish")


class AgentReport(BaseModel):
    compared: int
    alerts: int
    alert_rate: float | None
    uncertain: int = Field(0, description="pairs a layer spoke on but could not be trusted")
    worst: list[DivergenceDetail]
    noise: dict[str, float] = Field(
        default={},
        description="how often each signal family fires between two runs of the active version "
        "itself (`crewline shadow calibrate`); at 0.2 or more it reports uncertain, not alert",
    )
    noisy: list[str] = Field(default=[], description="signal families too noisy to alert on")


class VersionReport(BaseModel):
    version: str
    shadow: ShadowState
    shadow_runs: int
    by_status: dict[str, int]
    compared_runs: int
    per_agent: dict[str, AgentReport]
    intents_differ: list[str]
    candidate_spend_usd: Usd
    active_spend_usd: Usd  # the primaries of the shadowed runs
    candidate_seconds_p50: float | None
    active_seconds_p50: float | None
