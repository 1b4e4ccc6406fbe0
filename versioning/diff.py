"""What changed between two versions: files, prompts (with unified diffs), model settings, tools.

Computed from the two manifests; the unified diffs need the zips' contents, and say so when a zip
is not on this host.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from versioning.bundle import PROMPTS_PREFIX, TEXT_SUFFIXES, BundleError, Manifest, read

MAX_DIFF_LINES = 400  # per file: a diff is for reading


@dataclass
class VersionDiff:
    a: str
    b: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    prompts_changed: list[str] = field(default_factory=list)
    model_settings: dict[str, tuple[object, object]] = field(default_factory=dict)
    tools: dict[str, tuple[object, object]] = field(default_factory=dict)  # name -> (a, b)
    diffs: dict[str, str] = field(default_factory=dict)  # path -> unified diff
    note: str | None = None


def _unified(path: str, old: bytes | None, new: bytes | None, a: str, b: str) -> str:
    before = old.decode("utf-8", errors="replace").splitlines(keepends=True) if old else []
    after = new.decode("utf-8", errors="replace").splitlines(keepends=True) if new else []
    lines = list(difflib.unified_diff(before, after, f"{a}/{path}", f"{b}/{path}"))
    if len(lines) > MAX_DIFF_LINES:
        lines = [*lines[:MAX_DIFF_LINES], f"… {len(lines) - MAX_DIFF_LINES} more lines\n"]
    return "".join(lines)


def diff_versions(
    a: str,
    manifest_a: Manifest,
    b: str,
    manifest_b: Manifest,
    snapshots_dir: Path,
    *,
    all_files: bool = False,
) -> VersionDiff:
    """`all_files`: unified diffs of every changed text file, not only the prompts."""
    files_a, files_b = manifest_a.files, manifest_b.files
    out = VersionDiff(
        a=a,
        b=b,
        added=sorted(set(files_b) - set(files_a)),
        removed=sorted(set(files_a) - set(files_b)),
        changed=sorted(p for p in set(files_a) & set(files_b) if files_a[p] != files_b[p]),
    )
    touched = [*out.added, *out.removed, *out.changed]
    out.prompts_changed = sorted(p for p in touched if p.startswith(PROMPTS_PREFIX))
    settings_a = manifest_a.model_settings.model_dump()
    settings_b = manifest_b.model_settings.model_dump()
    out.model_settings = {
        k: (settings_a.get(k), settings_b.get(k))
        for k in sorted(set(settings_a) | set(settings_b))
        if settings_a.get(k) != settings_b.get(k)
    }
    tools_a = {t.name: t.model_dump() for t in manifest_a.tools}
    tools_b = {t.name: t.model_dump() for t in manifest_b.tools}
    out.tools = {
        name: (tools_a.get(name), tools_b.get(name))
        for name in sorted(set(tools_a) | set(tools_b))
        if tools_a.get(name) != tools_b.get(name)
    }
    wanted = [p for p in sorted(touched) if all_files or p.startswith(PROMPTS_PREFIX)]
    wanted = [p for p in wanted if Path(p).suffix in TEXT_SUFFIXES]
    if not wanted:
        return out
    try:
        contents_a = read(snapshots_dir / f"{a}.zip", a).contents
        contents_b = read(snapshots_dir / f"{b}.zip", b).contents
    except BundleError as exc:
        out.note = f"file contents unavailable on this host: {exc}"
        return out
    for path in wanted:
        out.diffs[path] = _unified(path, contents_a.get(path), contents_b.get(path), a, b)
    return out
