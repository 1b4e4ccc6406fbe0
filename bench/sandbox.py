"""`python -m bench.sandbox`: what the sandbox costs per command — the median wall time of `true`
run in it (bubblewrap's namespaces, the workspace copy, the limits), next to `true` run as a plain
subprocess. Nothing here asserts a timing."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from crewline.sandbox import Sandbox


async def main(runs: int) -> None:
    sandbox = Sandbox()
    found = sandbox.check()
    if not found.ok:
        print(found.describe())
        return
    files = {f"src/f{i}.py": b"x = 1\n" for i in range(10)}
    isolated, plain = [], []
    for _ in range(runs):
        started = time.perf_counter()
        await sandbox.run("true", files)
        isolated.append(time.perf_counter() - started)
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec("true")
        await proc.wait()
        plain.append(time.perf_counter() - started)
    a, b = statistics.median(isolated) * 1000, statistics.median(plain) * 1000
    print(f"`true` over {runs} runs (a 10-file workspace): sandboxed median {a:.1f} ms, "
          f"plain subprocess {b:.1f} ms ({a / b:.1f}x); {found.describe()}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    asyncio.run(main(parser.parse_args().runs))
