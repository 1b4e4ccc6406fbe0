"""Run product entry points as real child processes, so tests can SIGKILL them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from crewline.process import stop_processes
from crewline.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GROQ_", "LLM_", "CREWLINE_"))}
    values = settings.model_dump(by_alias=True, exclude_none=True)
    for key, value in values.items():
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, dict):
            import json

            value = json.dumps(value)
        env[key] = str(value)
    env["PYTHONPATH"] = str(REPO)
    return env


def spawn_worker(
    settings: Settings,
    log: Path,
    *args: str,
    pythonpath: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`python -m workers.main` with these settings (unversioned), or with `args` the `crewline`
    command (e.g. `worker --version ID`); cwd is the data dir so no `.env` leaks in.
    `pythonpath`: another checkout to import the platform and working tree from."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = settings_env(settings)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    env.update(extra_env or {})
    command = (
        [sys.executable, "-m", "cli", *args] if args else [sys.executable, "-m", "workers.main"]
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            command, env=env, cwd=settings.data_dir, stdout=out, stderr=subprocess.STDOUT
        )


class WorkerProcesses:
    """Worker processes for one test, numbered in their log names; all stopped at exit."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings, self.logs = settings, logs
        self.started: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, *args: str, pythonpath: Path | None = None, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.logs / f"worker{len(self.started) + 1}.log"
        process = spawn_worker(
            self.settings, log, *args, pythonpath=pythonpath, extra_env=extra_env
        )
        self.started.append(process)
        return process

    def __enter__(self) -> WorkerProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.started:
            stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    stop_processes([process], timeout_s=20)
