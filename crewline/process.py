"""Process exit for short-lived commands and worker processes; stopping child processes.

The Temporal SDK's native core can abort a Python process at interpreter exit after all work is
done (temporalio/sdk-python#300). Once output is flushed, `os._exit` means a user never sees a
crash after a success.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from typing import Any, NoReturn


def exit_hard(code: int) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def stop_processes(
    processes: Iterable[subprocess.Popen[Any]], *, timeout_s: float,
    sig: signal.Signals = signal.SIGTERM,
) -> None:  # fmt: skip
    """Signal every live process at once (so they shut down in parallel), then wait for each;
    one still running after `timeout_s` is killed."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.send_signal(sig)
    for process in processes:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
