"""The sandbox: run a command the agents wrote, isolated, on a throwaway copy of a workspace.

Isolation is bubblewrap's (Debian's `bubblewrap`: the unprivileged container tool Flatpak uses):
new user, PID, network, IPC, UTS and cgroup namespaces; a root file system holding only the
host's system directories read-only (`/usr`, `/bin`, `/lib*`, the dynamic linker's cache), a
private `/tmp` and `/proc`, and the workspace copy as the one writable place (`/work`); no
environment but PATH, HOME and the locale. When the worker runs as root, the command runs as
`nobody` on the host too. Limits: CPU seconds, address space (memory), processes, file size and
open files as rlimits; wall time and output size watched from outside — a command past any limit
is killed and the result names the limit. When the command returns, everything it started dies
with its PID namespace, and its workspace copy is deleted.

What it protects against: reading anything on the host outside the system directories (the data
directory, keys, the app database, other runs, the worker's environment and `/proc`), writing
anywhere but the throwaway copy, the network (loopback included: the sandbox has its own),
signalling host processes, fork bombs, memory and CPU exhaustion, floods of output, processes left
behind. What it does not: kernel exploits (namespaces are not a VM), reading what the system
directories hold (world-readable by design), spending the CPU and memory its limits allow, and
side channels between concurrent commands. Without bubblewrap (or with user namespaces disabled)
nothing runs: `check()` says why, and tools report it — never an unsandboxed fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath

NOBODY = 65534
SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/sbin")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime")
INTERPRETERS = ("python3", "node")
WORKDIR = "/work"


@dataclass(frozen=True)
class Limits:
    wall_s: float = 60.0
    cpu_s: int = 30
    memory_mb: int = 1024
    processes: int = 64
    output_bytes: int = 200_000
    file_mb: int = 64
    open_files: int = 256


@dataclass
class Outcome:
    command: str
    exit_code: int | None  # None: killed, or never started
    output: str  # stdout and stderr, interleaved, capped (its tail if cut)
    duration_s: float
    killed_by: str | None = None  # the limit that stopped it, or why it could not run
    truncated: bool = False

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and self.killed_by is None

    @property
    def limit(self) -> str | None:
        """The limit it ran into: the one that killed it, or one it failed against (memory,
        processes) — read from what the command printed."""
        if self.killed_by:
            return self.killed_by
        if self.exit_code in (0, None):
            return None
        text = self.output[-4000:]
        if "MemoryError" in text or "Cannot allocate memory" in text or "out of memory" in text:
            return "memory limit"
        if "Resource temporarily unavailable" in text or "fork: retry" in text:
            return "process limit"
        return None

    def tail(self, chars: int = 2000) -> str:
        return self.output if len(self.output) <= chars else "…" + self.output[-chars:]


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str | None = None  # why not, and what to do
    interpreters: tuple[str, ...] = ()
    python_modules: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        if not self.ok:
            return f"sandbox unavailable: {self.reason}"
        extras = f" (with {', '.join(self.python_modules)})" if self.python_modules else ""
        return f"sandbox: {', '.join(self.interpreters) or 'no interpreter'}{extras}; no network"


def _bwrap() -> str | None:
    return shutil.which("bwrap")


def _drop_to(limits: Limits, uid: int | None) -> None:
    """In the child, before exec: a new process group, the rlimits, and (as root) nobody."""
    os.setsid()
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    memory = limits.memory_mb * 1024 * 1024
    # CPU: SIGXCPU at the limit (named in the result), SIGKILL a second later.
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    for which, value in (
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_FSIZE, limits.file_mb * 1024 * 1024),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(which, (value, value))
    if uid is not None:  # as nobody, the count is the sandbox's own processes
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))


def bwrap_args(bwrap: str, workspace: Path, command: str) -> list[str]:
    args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session",
            "--uid", str(NOBODY), "--gid", str(NOBODY), "--hostname", "sandbox"]  # fmt: skip
    for path in SYSTEM_DIRS:
        if Path(path).exists():
            args += ["--ro-bind", path, path]
    for path in SYSTEM_FILES:
        if Path(path).exists():
            args += ["--ro-bind", path, path]
    args += [
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
        "--tmpfs", "/opt/bin", "--symlink", "/usr/bin/python3", "/opt/bin/python",
        "--bind", str(workspace), WORKDIR, "--chdir", WORKDIR,
        "--clearenv", "--setenv", "PATH", "/opt/bin:/usr/local/bin:/usr/bin:/bin",
        "--setenv", "HOME", WORKDIR, "--setenv", "LANG", "C.UTF-8",
        "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--setenv", "TMPDIR", "/tmp",
        "/bin/sh", "-c", command,
    ]  # fmt: skip
    return args


class Sandbox:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()

    def check(self) -> Availability:
        return _check(self.limits)

    async def run(self, command: str, files: Mapping[str, bytes]) -> Outcome:
        """`command` (a shell command line) in a fresh copy of `files` (path → bytes)."""
        started = time.monotonic()
        available = self.check()
        if not available.ok:
            return Outcome(command, None, "", 0.0, killed_by=available.describe())
        bwrap = _bwrap()
        assert bwrap is not None
        uid = NOBODY if os.geteuid() == 0 else None
        with tempfile.TemporaryDirectory(prefix="crewline-sandbox-") as tmp:
            workspace = Path(tmp) / "work"
            await asyncio.to_thread(_copy_in, workspace, files, uid)
            return await self._watch(bwrap_args(bwrap, workspace, command), command, uid, started)

    async def _watch(
        self, args: list[str], command: str, uid: int | None, started: float
    ) -> Outcome:
        limits = self.limits
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=lambda: _drop_to(limits, uid), env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert proc.stdout is not None
        out = bytearray()
        killed_by: str | None = None
        truncated = False

        async def read() -> None:
            nonlocal killed_by, truncated
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                out.extend(chunk)
                if len(out) > limits.output_bytes:
                    truncated = True
                    killed_by = f"output limit: more than {limits.output_bytes} bytes"
                    del out[: len(out) - limits.output_bytes]
                    _kill(proc.pid)
                    return

        try:
            await asyncio.wait_for(read(), timeout=limits.wall_s)
            await asyncio.wait_for(proc.wait(), timeout=max(1.0, limits.wall_s / 10))
        except TimeoutError:
            killed_by = killed_by or f"wall time limit: {limits.wall_s:g} s"
        finally:
            _kill(proc.pid)
            await proc.wait()
        code = proc.returncode
        if killed_by is None and code is not None and code < 0:
            killed_by = _signal_reason(-code, limits)
        elif killed_by is None and code is not None and code > 128 and _died_of(code, limits):
            killed_by = _signal_reason(code - 128, limits)
        text = out.decode("utf-8", errors="replace")
        return Outcome(
            command, None if killed_by else code, text, time.monotonic() - started,
            killed_by=killed_by, truncated=truncated,
        )  # fmt: skip


def _died_of(code: int, limits: Limits) -> bool:
    """A shell's exit status for a child killed by a limit's signal."""
    return code - 128 in (signal.SIGXCPU, signal.SIGXFSZ)


def _signal_reason(sig: int, limits: Limits) -> str:
    if sig == signal.SIGXCPU:
        return f"CPU time limit: {limits.cpu_s} s"
    if sig == signal.SIGXFSZ:
        return f"file size limit: {limits.file_mb} MB"
    return f"killed by signal {signal.Signals(sig).name}"


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _copy_in(workspace: Path, files: Mapping[str, bytes], uid: int | None) -> None:
    workspace.mkdir(parents=True)
    for rel, data in files.items():
        path = PurePosixPath(rel)
        if path.is_absolute() or ".." in path.parts:
            continue  # the workspace's own rule; never followed out of the copy
        target = workspace.joinpath(*path.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    if uid is not None:
        for root, dirs, names in os.walk(workspace.parent):
            os.chown(root, uid, uid)
            for name in (*dirs, *names):
                os.chown(os.path.join(root, name), uid, uid)


@cache
def _check(limits: Limits) -> Availability:
    """Whether commands can run isolated here (checked once per process)."""
    bwrap = _bwrap()
    if bwrap is None:
        return Availability(False, "bubblewrap is not installed: install bubblewrap "
                                   "(Debian/Ubuntu: apt-get install bubblewrap)")  # fmt: skip
    uid = NOBODY if os.geteuid() == 0 else None
    found: list[str] = []
    modules: list[str] = []
    with tempfile.TemporaryDirectory(prefix="crewline-sandbox-check-") as tmp:
        workspace = Path(tmp) / "work"
        _copy_in(workspace, {}, uid)
        probe = "true; for i in python3 node; do command -v $i >/dev/null && echo have:$i; done; "
        probe += "python3 -c 'import pytest' 2>/dev/null && echo have:pytest; exit 0"
        try:
            done = subprocess.run(
                bwrap_args(bwrap, workspace, probe), capture_output=True, text=True,
                timeout=20, preexec_fn=lambda: _drop_to(limits, uid),
                env={"PATH": "/usr/bin:/bin"},
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Availability(False, f"bubblewrap could not start: {exc}")
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return Availability(False, f"bubblewrap failed ({why[0][:200]}); are unprivileged "
                                       "user namespaces enabled?")  # fmt: skip
        for line in done.stdout.splitlines():
            if line.startswith("have:"):
                name = line.removeprefix("have:")
                (modules if name == "pytest" else found).append(name)
    return Availability(True, None, tuple(found), tuple(modules))
