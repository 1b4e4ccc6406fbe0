"""A run's workspace: the files its agents write, under `<data dir>/artifacts/<run id>/`.

Writing is a side-effect tool (`write_file`), so a dry run records an intent instead; a dry run's
workspace, as `read_file` and `list_files` see it, is what the run *would* have written (its
intents' content). Paths are confined to the run's directory (no absolute path, no `..`, no
control or bidirectional-override characters); writes go through a temp file and a rename so a
crash never leaves a half-written file, and writing the same file again on a retry is harmless.

Also here: the old `=== FILE: path ===` text format, read tolerantly (fences stripped, spaces and
indentation around markers forgiven, a block cut off at the token limit reported, never dropped).
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MAX_ARTIFACT_BYTES = 1_000_000
MAX_FILES = 200


class UnsafePathError(ValueError):
    pass


def safe_relative_path(raw: str) -> PurePosixPath:
    """`raw` as a path inside the workspace, or `UnsafePathError` saying why not."""
    text = raw.strip().replace("\\", "/")
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in text):
        raise UnsafePathError(
            f"refusing path {raw[:200]!r}: control or invisible formatting characters"
        )
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts or not path.parts or path.name in {"", "."}:
        raise UnsafePathError(
            f"refusing path {raw[:200]!r}: use a relative path inside the workspace, "
            "like src/main.py"
        )
    if len(text) > 255:
        raise UnsafePathError(f"refusing path {raw[:60]!r}…: longer than 255 characters")
    return path


def write_artifact(root: Path, rel: str, content: str) -> tuple[str, int, str]:
    """Write one file atomically under `root`; returns (path, size, sha256)."""
    path = safe_relative_path(rel)
    data = content.encode("utf-8")
    if len(data) > MAX_ARTIFACT_BYTES:
        raise ValueError(f"{rel} is {len(data)} bytes, over the {MAX_ARTIFACT_BYTES}-byte limit")
    target = root.joinpath(*path.parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return str(path), len(data), hashlib.sha256(data).hexdigest()


def read_artifact(root: Path, rel: str) -> str:
    path = safe_relative_path(rel)
    target = root.joinpath(*path.parts)
    if not target.is_file():
        raise FileNotFoundError(str(path))
    return target.read_bytes()[:MAX_ARTIFACT_BYTES].decode("utf-8", errors="replace")


def list_artifacts(root: Path) -> list[tuple[str, int]]:
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            found.append((path.relative_to(root).as_posix(), path.stat().st_size))
    return found[:MAX_FILES]


def read_tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (a run's workspace), by relative path."""
    return {rel: (root / rel).read_bytes() for rel, _ in list_artifacts(root)}


# ---- the old text format ------------------------------------------------------------------------
_MARKER = re.compile(
    r"^[ \t]*(?:\*\*)?===[ \t]*FILE:[ \t]*(?P<path>.+?)[ \t]*===(?:\*\*)?[ \t]*$", re.M
)
_END = re.compile(r"^[ \t]*===[ \t]*END[ \t]+FILE[ \t]*===[ \t]*$", re.M)
_FENCE = re.compile(r"^[ \t]*```[\w.+-]*[ \t]*\n(?P<body>.*?)\n?[ \t]*```[ \t]*$", re.S)
# "**main.py**" / "### `main.py`" / "main.py:" on its own line, then a fenced block: how models
# write files when not told otherwise.
_HEADED = re.compile(
    r"^[ \t]*(?:#+[ \t]*|\*\*|__)?`?(?P<path>[\w.-]+(?:/[\w.-]+)*\.[\w]+)`?(?:\*\*|__)?:?[ \t]*\n"
    r"[ \t]*```[\w.+-]*[ \t]*\n(?P<body>.*?)(?:\n[ \t]*```[ \t]*$|\Z)",
    re.M | re.S,
)


@dataclass
class ParsedFiles:
    files: dict[str, str] = field(default_factory=dict)
    truncated: list[str] = field(default_factory=list)  # a last block with no end marker


def parse_files(text: str, *, cut_off: bool = False) -> ParsedFiles:
    """The `=== FILE: path ===` … `=== END FILE ===` blocks of an answer, by path (last one
    wins), each body without a Markdown fence around it. A block with no end marker is kept and
    listed as truncated when the answer was cut off (`cut_off`), else read to the next marker."""
    found = ParsedFiles()
    markers = list(_MARKER.finditer(text))
    if not markers:
        for block in _HEADED.finditer(text):
            body = block["body"]
            closed = text[block.end() - 3 : block.end()] == "```"
            if not closed and cut_off:
                found.truncated.append(block["path"])
            found.files[block["path"]] = body.rstrip("\n") + "\n"
        return found
    for i, marker in enumerate(markers):
        start = marker.end() + 1
        stop = markers[i + 1].start() if i + 1 < len(markers) else len(text)
        end = _END.search(text, start, stop)
        body = text[start : end.start() if end else stop]
        if end is None and i + 1 == len(markers) and cut_off:
            found.truncated.append(marker["path"].strip())
        fenced = _FENCE.match(body.strip("\n"))
        if fenced:
            body = fenced["body"] + "\n"
        found.files[marker["path"].strip().strip("`*")] = body
    return found
