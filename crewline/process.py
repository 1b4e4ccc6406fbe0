"""Process exit for short-lived commands and worker processes.

The Temporal SDK's native core can abort a Python process at interpreter exit after all work is
done (temporalio/sdk-python#300). Once output is flushed, `os._exit` means a user never sees a
crash after a success.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def exit_hard(code: int) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
