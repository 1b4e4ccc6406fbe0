"""Writing the Coder's artifacts: real files under `<data dir>/artifacts/<run id>/`.

This is a side-effect tool (registered with `side_effects=True`), so dry-run records an intent
instead. Paths are confined to the run's directory; writes go through a temp file and a rename so
a crash never leaves a half-written artifact, and rewriting the same file on retry is harmless.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath

MAX_ARTIFACT_BYTES = 1_000_000
FILE_BLOCK = re.compile(
    r"^=== FILE: (?P<path>[^\n=]+?) ===\n(?P<body>.*?)^=== END FILE ===", re.MULTILINE | re.DOTALL
)


class UnsafePathError(ValueError):
    pass


def safe_relative_path(raw: str) -> PurePosixPath:
    path = PurePosixPath(raw.strip().replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or not path.parts or path.name in {"", "."}:
        raise UnsafePathError(f"refusing artifact path {raw!r}")
    return path


def parse_files(text: str) -> dict[str, str]:
    """The `=== FILE: path ===` blocks of a Coder answer, by path (last one wins)."""
    return {m["path"].strip(): m["body"] for m in FILE_BLOCK.finditer(text)}


def write_artifact(root: Path, rel: str, content: str) -> tuple[str, int, str]:
    """Write one file atomically under `root`; returns (path, size, sha256)."""
    path = safe_relative_path(rel)
    data = content.encode("utf-8")
    if len(data) > MAX_ARTIFACT_BYTES:
        raise ValueError(f"artifact {rel} is {len(data)} bytes, over {MAX_ARTIFACT_BYTES}")
    target = root.joinpath(*path.parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return str(path), len(data), hashlib.sha256(data).hexdigest()
