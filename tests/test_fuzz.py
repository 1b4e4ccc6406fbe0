"""Schemathesis against the running API's OpenAPI: every phase (examples, coverage, fuzzing and
the stateful one that chains operations by their links), every check (its default; the
exceptions are explained in tests/schemathesis.toml), authenticated, seeded, bounded. The key it
uses cannot be revoked by the fuzzer (a key cannot revoke itself: 409).

A failure prints the schemathesis report, whose `st replay` / curl lines reproduce each case;
rerunning this test with the same SEED and MAX_EXAMPLES replays the same cases.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import uvicorn
from temporalio.client import Client

from cli.server import create_app
from cli.stack import _ApiServer
from crewline.settings import Settings
from tests.conftest import ADMIN_KEY, free_port

SEED = 20261125
MAX_EXAMPLES = 40  # per operation and phase: about 2,000 cases in all
CONFIG = Path(__file__).with_name("schemathesis.toml")


async def test_the_api_survives_the_fuzzer(
    settings: Settings, client: Client, engine: Any, tmp_path: Path
) -> None:
    # Limits high enough that the fuzzer tests the routes, not the 429s (tested elsewhere).
    roomy = settings.model_copy(update={"key_max_inflight": 10**6, "key_runs_per_minute": 10**6})
    port = free_port()
    app = create_app(roomy, client=client, engine=engine)
    server = _ApiServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    await server.ready.wait()
    try:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "schemathesis"),
            "--no-color", "--config-file", str(CONFIG),
            "run", f"http://127.0.0.1:{port}/openapi.json",
            "--header", f"Authorization: Bearer {ADMIN_KEY}",
            "--phases", "examples,coverage,fuzzing,stateful",
            "--seed", str(SEED),
            "--max-examples", str(MAX_EXAMPLES),
            "--request-timeout", "30",
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out = (await proc.communicate())[0].decode()
    finally:
        server.should_exit = True
        await serving
    report = out[-6000:]
    assert proc.returncode == 0, report
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in out, report  # every phase ran and passed
    generated = re.search(r"(\d+) generated", out)
    assert generated is not None and int(generated.group(1)) >= 1000, report
