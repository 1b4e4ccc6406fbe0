"""The records interface: what a version bundle (the agent runtime) and the control plane (the
services under the API, dashboard and CLI) share — the tables the runtime writes and the services
read (`records.tables`), their typed writers and readers (`records.runs`, `records.ledger`), the
statuses and agent names (`records.statuses`), and the pipeline workflow's contract
(`records.pipeline`: its name, input, result, query, updates and signals).

A bundle is code frozen at snapshot time; this package is the host's. So it is narrow and
schema-stable: changes are additive (a new optional field, a nullable column), and anything else
bumps `INTERFACE`. A snapshot's manifest records the interface it was built against, and a worker
refuses to serve one it does not support (`versioning.loader`), saying so.
"""

from __future__ import annotations

# The interface version this host provides, and the ones its workers can serve.
INTERFACE = 1
SUPPORTED_INTERFACES: frozenset[int] = frozenset({1})
