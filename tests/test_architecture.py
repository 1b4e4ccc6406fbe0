"""The house's rules, read from the code (no server): imports point down — entry points → API and
dashboard (never each other) → services → the agent runtime (the version bundle) → the records
interface → plumbing — and a version bundle imports nothing of the host but the records interface
and plumbing, so a snapshot pins everything a step executes."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO
from versioning.bundle import BUNDLE_PACKAGES

# Higher layers may import lower ones; a package's layer is its rank here.
LAYERS: dict[str, int] = {
    "cli": 5,
    "api": 4,
    "dashboard": 4,
    "workers": 4,
    "services": 3,
    "versioning": 3,
    "workflows": 2,
    "activities": 2,
    "costs": 2,
    "records": 1,
    "crewline": 0,
}
NEVER = {("api", "dashboard"), ("dashboard", "api")}


def imports(package: str) -> list[tuple[str, str]]:
    """(file, imported top-level crewline package) for every import in `package`, function-level
    imports included."""
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.partition(".")[0]
                if top in LAYERS and top != package:
                    found.append((str(path.relative_to(REPO)), top))
    return found


def upward() -> list[str]:
    wrong = []
    for package, rank in LAYERS.items():
        for path, target in imports(package):
            if LAYERS[target] > rank or (package, target) in NEVER:
                wrong.append(f"{path} imports {target}")
    return wrong


def test_imports_point_down() -> None:
    assert upward() == []


def test_a_bundle_imports_only_itself_the_records_interface_and_plumbing() -> None:
    allowed = {*BUNDLE_PACKAGES, "records", "crewline"}
    outside = [
        f"{path} imports {target}"
        for package in BUNDLE_PACKAGES
        for path, target in imports(package)
        if target not in allowed
    ]
    assert outside == []


def test_every_package_has_a_layer() -> None:
    packages = {p.parent.name for p in Path(REPO).glob("*/__init__.py")}
    assert packages - {"tests", "bench"} <= set(LAYERS)
