"""`python -m bench.sse`: what idle event streams cost one API process — `GET /runs/{id}/events`
subscribers that wait on runs that wait for approval (nothing happens, so the streams stay
open and quiet, as a dashboard left open does).

The embedded stack (`crewline up`, scripted provider, a throwaway data directory) runs the
server, the worker and a first API; a second API process (`crewline api`) on the same database
and Temporal serves the streams, so its figures are the streams' alone. It measures that
process with 0 subscribers (the baseline), then with `--subscribers` (default 1,000) spread
over `--runs` waiting runs: resident memory, CPU while idle, threads — each the median of
`--samples` windows of `--window` seconds — and, with everyone subscribed, how long one approval
takes to reach all the subscribers of its run; then as many clients each asking for its run once
a second instead (how the CLI and the dashboard watched before the stream). Prints them side by
side with the ratio. Nothing here asserts a figure."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from bench.harness import free_port, rss_mb

ADMIN = "bench-sse-admin-key-0123456789abcdef"


def _proc(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measure(pid: int, samples: int, window: float) -> dict[str, float]:
    """Medians over `samples` windows: RSS (MiB), CPU (% of one core), threads."""
    rss, cpu, threads = [], [], []
    for _ in range(samples):
        before, started = _cpu_s(pid), time.monotonic()
        time.sleep(window)
        cpu.append((_cpu_s(pid) - before) / (time.monotonic() - started) * 100)
        rss.append(rss_mb(pid))
        threads.append(_proc(pid, "Threads"))
    return {
        "rss_mib": statistics.median(rss),
        "cpu_percent": statistics.median(cpu),
        "threads": statistics.median(threads),
    }


def _wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code in (200, 503):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


class Subscriber:
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.connected = asyncio.Event()
        self.decided_at: float | None = None

    async def follow(self, http: httpx.AsyncClient) -> None:
        async with aconnect_sse(http, "GET", f"/runs/{self.run_id}/events") as source:
            source.response.raise_for_status()
            self.connected.set()
            async for event in source.aiter_sse():
                if event.event == "approval" and event.json().get("state") == "APPROVED":
                    self.decided_at = time.perf_counter()
                    return


async def subscribed(
    api: str, pid: int, run_ids: list[str], count: int, args: argparse.Namespace
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=count + 50, max_keepalive_connections=count + 50)
    timeout = httpx.Timeout(60, read=None)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(
        base_url=api, headers=headers, limits=limits, timeout=timeout
    ) as http:
        subs = [Subscriber(run_ids[i % len(run_ids)]) for i in range(count)]
        tasks = [asyncio.create_task(s.follow(http)) for s in subs]
        opened = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in subs)), 300)
        open_s = time.perf_counter() - opened
        await asyncio.sleep(2)  # their catch-up reads are over: idle from here
        metrics = (await http.get("/metrics")).text
        streams = next(
            float(line.split()[1]) for line in metrics.splitlines()
            if line.startswith("crewline_event_streams ")
        )  # fmt: skip
        idle = await asyncio.to_thread(measure, pid, args.samples, args.window)
        # One approval, fanned out: the time from the API's answer to each of that run's
        # subscribers holding the event.
        target = run_ids[0]
        waiting = (await http.get(f"/runs/{target}/approvals")).json()
        sent_at = time.perf_counter()
        answer = await http.post(
            f"/runs/{target}/approvals/{waiting[0]['call_id']}", json={"decision": "approve"}
        )
        answer.raise_for_status()
        mine = [s for s in subs if s.run_id == target]
        deadline = time.monotonic() + 30
        while any(s.decided_at is None for s in mine) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        reached = sorted((s.decided_at - sent_at) * 1000 for s in mine if s.decided_at)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        **idle,
        "streams_reported": streams,
        "open_all_s": open_s,
        "fanout_ms_median": statistics.median(reached) if reached else None,
        "fanout_ms_max": reached[-1] if reached else None,
        "fanout_reached": f"{len(reached)}/{len(mine)}",
    }


async def polled(
    api: str, pid: int, run_ids: list[str], count: int, args: argparse.Namespace
) -> dict[str, Any]:
    """What the same watchers cost when each asks for its run once a second (how the CLI and
    the dashboard watched a run before the stream)."""
    limits = httpx.Limits(max_connections=count + 50, max_keepalive_connections=count + 50)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    answered = 0
    stop = asyncio.Event()

    async def poll(http: httpx.AsyncClient, run_id: str) -> None:
        nonlocal answered
        while not stop.is_set():
            started = time.monotonic()
            try:
                (await http.get(f"/runs/{run_id}")).raise_for_status()
                answered += 1
            except httpx.HTTPError:
                pass
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))

    async with httpx.AsyncClient(
        base_url=api, headers=headers, limits=limits, timeout=httpx.Timeout(60)
    ) as http:
        tasks = [asyncio.create_task(poll(http, run_ids[i % len(run_ids)])) for i in range(count)]
        await asyncio.sleep(3)  # past the first burst
        before, started = answered, time.monotonic()
        idle = await asyncio.to_thread(measure, pid, args.samples, args.window)
        rate = (answered - before) / (time.monotonic() - started)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {**idle, "answers_per_s": rate}


def main(args: argparse.Namespace) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.subscribers + 1024
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        up_port, api_port, temporal_port = free_port(), free_port(), free_port()
        env = {
            **os.environ, "LLM_PROVIDER": "scripted", "SCRIPTED_DELAY_S": "0",
            "CREWLINE_DATA_DIR": str(work / "data"), "API_PORT": str(up_port),
            "TEMPORAL_PORT": str(temporal_port), "TEMPORAL_UI_PORT": str(free_port()),
            "WORKER_METRICS_PORT": "0", "LOG_LEVEL": "WARNING", "CREWLINE_ADMIN_KEY": ADMIN,
            "SEARCH_BACKEND": "none",
        }  # fmt: skip
        here = [sys.executable, "-m", "cli"]
        log = (work / "up.log").open("wb")
        stack = subprocess.Popen([*here, "up"], env=env, cwd=work, stdout=log, stderr=log)
        api_env = {**env, "API_PORT": str(api_port),
                   "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}"}  # fmt: skip
        api_proc: subprocess.Popen[bytes] | None = None
        try:
            _wait_http(f"http://127.0.0.1:{up_port}")
            api_log = (work / "api.log").open("wb")
            api_proc = subprocess.Popen(
                [*here, "api"], env=api_env, cwd=work, stdout=api_log, stderr=api_log
            )
            api = f"http://127.0.0.1:{api_port}"
            _wait_http(api)
            auth = {"Authorization": f"Bearer {ADMIN}"}
            run_ids = [
                httpx.post(
                    f"{api}/runs", headers=auth, timeout=30,
                    json={"query": f"Build a snake game #{i}", "approve": ["write_file"]},
                ).json()["run_id"]
                for i in range(args.runs)
            ]  # fmt: skip
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                page = httpx.get(
                    f"{api}/runs", headers=auth, params={"status": "WAITING_FOR_APPROVAL",
                                                         "limit": 200},
                ).json()  # fmt: skip
                if page["total"] >= args.runs:
                    break
                time.sleep(1)
            else:
                raise RuntimeError("the runs did not all reach WAITING_FOR_APPROVAL")
            time.sleep(2)
            baseline = measure(api_proc.pid, args.samples, args.window)
            loaded = asyncio.run(subscribed(api, api_proc.pid, run_ids, args.subscribers, args))
            polling = (
                asyncio.run(polled(api, api_proc.pid, run_ids[1:], args.subscribers, args))
                if args.pollers else None
            )  # fmt: skip
        finally:
            for proc in (api_proc, stack):
                if proc is not None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    report = {"subscribers": args.subscribers, "runs": args.runs, "baseline": baseline,
              "loaded": loaded, "polling": polling}  # fmt: skip
    print(
        f"one API process, {args.subscribers} idle event streams over {args.runs} waiting runs "
        f"vs none (medians of {args.samples} x {args.window:g} s windows):"
    )
    header = f"{'':<22}{'0 streams':>12}{f'{args.subscribers} streams':>16}{'ratio':>8}"
    if polling:
        header += f"{f'{args.subscribers} polling 1/s':>20}"
    print(header)
    for name, unit in (("rss_mib", "RSS MiB"), ("cpu_percent", "CPU % of a core"),
                       ("threads", "threads")):  # fmt: skip
        a, b = baseline[name], loaded[name]
        ratio = f"{b / a:>7.2f}x" if a else f"{'-':>8}"
        row = f"{unit:<22}{a:>12.1f}{b:>16.1f}{ratio}"
        if polling:
            row += f"{polling[name]:>20.1f}"
        print(row)
    if polling:
        print(f"the pollers got {polling['answers_per_s']:.0f} answers/s "
              f"(asked for {args.subscribers}/s)")  # fmt: skip
    per = (loaded["rss_mib"] - baseline["rss_mib"]) * 1024 / max(args.subscribers, 1)
    reported, opened = loaded["streams_reported"], loaded["open_all_s"]
    print(f"memory per stream: {per:.1f} KiB; streams the API reported: {reported:.0f}; "
          f"all opened in {opened:.1f} s")  # fmt: skip
    print(
        f"one approval reached its run's {loaded['fanout_reached']} subscribers: median "
        f"{loaded['fanout_ms_median']:.0f} ms, last {loaded['fanout_ms_max']:.0f} ms"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument(
        "--no-pollers",
        dest="pollers",
        action="store_false",
        help="skip the comparison with as many clients polling once a second",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/sse.json"))
    main(parser.parse_args())
    sys.stdout.flush()
    os._exit(0)
