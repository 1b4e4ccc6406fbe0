"""The benchmark runs end to end on a tiny size and writes its JSON (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_quick_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--repeat", "1", "--no-untuned", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "per-step overhead ms d0 p50" in result.stdout and "crewline/asyncio" in result.stdout
    data = json.loads(out.read_text())
    crew = data["crewline"][0]
    assert set(crew) >= {
        "overhead_ms_d0",
        "overhead_ms_d500",
        "throughput",
        "burst",
        "post_runs_ms",
    }
    assert crew["burst"]["runs"] == 20 and crew["throughput"]["20"] > 0
    assert data["asyncio"] and data["sqlite"]
    assert data["temporal"][0]["throughput"]["20"] > 0 and "crewline/temporal" in result.stdout
    assert any("workflow task" in k for k in crew["history_breakdown"])


def test_sse_bench_runs_on_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "sse.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.sse", "--subscribers", "10", "--runs", "2", "--samples",
         "1", "--window", "0.2", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "10 idle event streams over 2 waiting runs" in result.stdout
    data = json.loads(out.read_text())
    assert data["loaded"]["streams_reported"] == 10  # the API held every stream
    assert data["loaded"]["fanout_reached"] == "5/5"  # the approval reached each of its run's
