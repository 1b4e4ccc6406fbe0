"""`python -m bench.cli`: how long a CLI command takes, start to exit — the median of N
invocations each of `--help`, `status RUN`, `runs` and `costs` against a running embedded stack
(`crewline up`, scripted provider, a throwaway data directory), next to the same API call made
in-process with httpx (what the command itself must at least cost).

`--baseline DIR` times a second checkout's CLI (e.g. `git worktree add /tmp/before HEAD~5`) in
the same session, interleaved, and prints the ratio. Nothing here asserts a timing."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.harness import free_port

COMMANDS = (["--help"], ["status", "{run}"], ["runs"], ["costs"])


def _time(command: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{command} failed: {done.stderr.decode()[-400:]}")
    return time.perf_counter() - started


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        api_port = free_port()
        env = {
            **os.environ, "LLM_PROVIDER": "scripted", "SCRIPTED_DELAY_S": "0",
            "CREWLINE_DATA_DIR": str(work / "data"), "API_PORT": str(api_port),
            "TEMPORAL_PORT": str(free_port()), "TEMPORAL_UI_PORT": str(free_port()),
            "WORKER_METRICS_PORT": "0", "LOG_LEVEL": "WARNING",
        }  # fmt: skip
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: bytecode caches on
        here = [sys.executable, "-m", "cli"]
        stack = subprocess.Popen([*here, "up"], env=env, cwd=work, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)  # fmt: skip
        try:
            url = f"http://127.0.0.1:{api_port}"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code in (200, 503):
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            key = (work / "data" / "admin.key").read_text().strip()
            auth = {"Authorization": f"Bearer {key}"}
            run = httpx.post(f"{url}/runs", json={"query": "Build a snake game"}, headers=auth)
            run_id = run.json()["run_id"]
            systems = {"this checkout": (here, work)}
            if args.baseline:
                systems["baseline"] = ([sys.executable, "-m", "cli"], args.baseline.resolve())
            times: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.runs):  # interleaved: drift hits every command alike
                for name, (command, cwd) in systems.items():
                    run_env = {**env, "PYTHONPATH": str(cwd)} if name == "baseline" else env
                    for words in COMMANDS:
                        argv = [w.format(run=run_id) for w in words]
                        times.setdefault((name, argv[0]), []).append(
                            _time(command + argv, run_env, cwd)
                        )
            api = {
                "status": f"/runs/{run_id}", "runs": "/runs", "costs": "/costs",
            }  # fmt: skip
            direct = {}
            with httpx.Client(base_url=url, headers=auth) as http:
                for name, path in api.items():
                    samples = []
                    for _ in range(args.runs):
                        started = time.perf_counter()
                        http.get(path).raise_for_status()
                        samples.append(time.perf_counter() - started)
                    direct[name] = statistics.median(samples) * 1000
        finally:
            stack.terminate()
            stack.wait(timeout=60)
    print(f"median of {args.runs} invocations, ms (the API call alone, in-process httpx):")
    header = f"{'command':<10}" + "".join(f"{name:>16}" for name in systems) + f"{'API call':>10}"
    if args.baseline:
        header += f"{'ratio':>8}"
    print(header)
    for words in COMMANDS:
        word = words[0]
        row = f"{word:<10}"
        meds = [statistics.median(times[(name, word)]) * 1000 for name in systems]
        row += "".join(f"{m:>16.0f}" for m in meds)
        row += f"{direct[word]:>10.1f}" if word in direct else f"{'-':>10}"
        if args.baseline:
            row += f"{meds[0] / meds[1]:>7.2f}x"
        print(row)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--baseline", type=Path, help="another checkout whose CLI to time")
    main(parser.parse_args())
    sys.stdout.flush()
    os._exit(0)
