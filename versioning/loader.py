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

from versioning.bundle import BUNDLE_PACKAGES, BundleError, Manifest, verify


class _BundleOnlyFinder(importlib.abc.MetaPathFinder):
    """Resolve `workflows.*` / `activities.*` inside the snapshot zip, or fail loudly."""

    def __init__(self, zip_path: Path, version_id: str) -> None:
        self.zip_path, self.version_id = zip_path, version_id

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] not in BUNDLE_PACKAGES:
            return None
        search = list(path) if path is not None else [str(self.zip_path)]
        spec = importlib.machinery.PathFinder.find_spec(fullname, search)
        if spec is None:
            raise ModuleNotFoundError(
                f"No module named {fullname!r} in snapshot {self.version_id}", name=fullname
            )
        return spec


def load_snapshot(zip_path: Path, version_id: str) -> Manifest:
    """Verify the zip and import the agent code from it from now on; returns its manifest."""
    manifest = verify(zip_path, version_id)
    clashes = [name for name in BUNDLE_PACKAGES if name in sys.modules]
    if clashes:
        raise BundleError(
            f"{clashes} already imported in this process from {sys.modules[clashes[0]].__file__}; "
            "a snapshot must be loaded before any agent code"
        )
    sys.meta_path.insert(0, _BundleOnlyFinder(zip_path, version_id))
    sys.path.insert(0, str(zip_path))
    importlib.invalidate_caches()
    loaded = importlib.import_module("activities")
    if not str(loaded.__file__).startswith(str(zip_path)):
        raise BundleError(f"activities loaded from {loaded.__file__}, not from {zip_path}")
    return manifest
