"""Who may do what: the principal behind a request (an API key's id, name and scope) and the one
table of which scopes each service operation allows (`ALLOWED`). Every service method checks it
first, so the API, the dashboard and anything else calling a service enforce the same rule — a
page cannot forget a check its route makes.

A `run`-scoped key sees and changes only the runs it started: another key's run is "not found",
as if it did not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from records.tables import Run
from services.errors import Forbidden


class Scope(StrEnum):
    READ = "read"  # every GET route: an observer, a dashboard
    RUN = "run"  # start runs; read, cancel, raise the budget of, approve calls in its own runs
    ADMIN = "admin"  # everything: other keys' runs, versions, shadow, keys


READ, RUN, ADMIN = Scope.READ, Scope.RUN, Scope.ADMIN

# Operation -> the scopes allowed. The API's route dependencies declare the same scopes for
# OpenAPI (401/403 documented); tests check that every route and page agrees with this table.
ALLOWED: dict[str, frozenset[Scope]] = {
    # runs (a `run` key: its own runs only)
    "runs.start": frozenset({RUN, ADMIN}),
    "runs.read": frozenset({READ, RUN, ADMIN}),
    "runs.cancel": frozenset({RUN, ADMIN}),
    "runs.budget": frozenset({RUN, ADMIN}),
    "runs.approve": frozenset({RUN, ADMIN}),
    # costs (a `run` key: its own runs' spend only)
    "costs.read": frozenset({READ, RUN, ADMIN}),
    # versions, shadows, divergences: the whole deployment's
    "versions.read": frozenset({READ, ADMIN}),
    "versions.change": frozenset({ADMIN}),
    "shadow.read": frozenset({READ, ADMIN}),
    "shadow.change": frozenset({ADMIN}),
    # keys and the control plane
    "keys.manage": frozenset({ADMIN}),
    "admin.reconcile": frozenset({ADMIN}),
}


@dataclass(frozen=True)
class Principal:
    """The key a request came with (its public id and name; never the key)."""

    key_id: str
    name: str
    scope: Scope

    @property
    def own_runs_only(self) -> bool:
        return self.scope == Scope.RUN

    def may_see(self, run: Run) -> bool:
        return not self.own_runs_only or run.key_id == self.key_id

    @property
    def runs_of(self) -> str | None:
        """The key whose runs this principal is limited to (None: every run)."""
        return self.key_id if self.own_runs_only else None

    def may(self, operation: str) -> bool:
        return self.scope in ALLOWED[operation]


def require(principal: Principal, operation: str) -> None:
    """Refuse with 403 unless the principal's scope allows `operation`."""
    if not principal.may(operation):
        needs = " or ".join(sorted(s.value for s in ALLOWED[operation]))
        raise Forbidden(
            f"key {principal.key_id} has scope {principal.scope.value!r}; this needs {needs}"
        )
