"""Make a snapshot zip the one source of agent code in this process.

A worker that serves a version imports `workflows` and `activities` from the verified zip
(zipimport), never from the working tree: editing a prompt in the checkout does not change what a
running version does. An import guard first in `sys.meta_path` makes the zip the *only* source of
those packages — without it, an editable install's finder would quietly supply a module the
snapshot does not have from the working tree.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from records import INTERFACE, SUPPORTED_INTERFACES
from versioning.bundle import BUNDLE_PACKAGES, BundleError, Manifest, verify


class _BundleOnlyFinder(importlib.abc.MetaPathFinder):
    """Resolve `workflows.*` / `activities.*` inside the snapshot zip, or fail loudly."""

    def __init__(self, zip_path: Path, version_id: str, packages: Sequence[str]) -> None:
        self.zip_path, self.version_id, self.packages = zip_path, version_id, tuple(packages)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] not in self.packages:
            return None
        search = list(path) if path is not None else [str(self.zip_path)]
        spec = importlib.machinery.PathFinder.find_spec(fullname, search)
        if spec is None:
            raise ModuleNotFoundError(
                f"No module named {fullname!r} in snapshot {self.version_id}", name=fullname
            )
        return spec


def check_servable(manifest: Manifest, version_id: str) -> None:
    """Refuse a bundle built against a records interface this host does not provide."""
    needs = manifest.interface("records")
    if needs not in SUPPORTED_INTERFACES:
        made = "before interfaces were versioned" if needs == 0 else "by another crewline"
        serves = ", ".join(map(str, sorted(SUPPORTED_INTERFACES)))
        raise BundleError(
            f"snapshot {version_id} was built {made} for records interface {needs}; this "
            f"crewline serves records interface {serves} (current: {INTERFACE}). Serve it with "
            "the crewline release it was made with, or snapshot the agents again with this one "
            "(`crewline version snapshot`)"
        )


def load_snapshot(zip_path: Path, version_id: str) -> Manifest:
    """Verify the zip and import the agent code from it from now on; returns its manifest."""
    manifest = verify(zip_path, version_id)
    check_servable(manifest, version_id)
    clashes = [name for name in (*BUNDLE_PACKAGES, *manifest.packages) if name in sys.modules]
    if clashes:
        raise BundleError(
            f"{clashes} already imported in this process from {sys.modules[clashes[0]].__file__}; "
            "a snapshot must be loaded before any agent code"
        )
    # Every bundle package name is the zip's alone, even one this (older) bundle lacks: the
    # working tree must never fill a gap.
    sys.meta_path.insert(0, _BundleOnlyFinder(zip_path, version_id, BUNDLE_PACKAGES))
    sys.path.insert(0, str(zip_path))
    importlib.invalidate_caches()
    loaded = importlib.import_module("activities")
    if not str(loaded.__file__).startswith(str(zip_path)):
        raise BundleError(f"activities loaded from {loaded.__file__}, not from {zip_path}")
    return manifest
