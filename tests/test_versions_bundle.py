"""Snapshots as data: deterministic ids, tamper checks, no secrets, atomic writes, the import guard
of a snapshot worker, the rollback walk and the additive schema migration."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import records
from activities.models import model_for
from crewline.db import make_engine
from crewline.settings import Settings
from records.runs import get_run
from tests.conftest import REPO
from versioning import bundle
from versioning.bundle import BundleError, TamperedSnapshotError
from versioning.loader import check_servable
from versioning.registry import ActivationRow, active_stack


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of this project's agent code, free to edit."""
    root = tmp_path / "checkout"
    for package in bundle.BUNDLE_PACKAGES:
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return root


@pytest.fixture
def plain() -> Settings:
    return Settings(LLM_PROVIDER="scripted", _env_file=None)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_same_content_same_id_and_bytes_one_character_new_id(
    checkout: Path, plain: Settings
) -> None:
    first, second = bundle.collect(checkout, plain), bundle.collect(checkout, plain)
    assert first.id == second.id and first.id.startswith("snap-") and len(first.id) == 17
    assert bundle.zip_bytes(first) == bundle.zip_bytes(second)
    assert first.id == bundle.collect(REPO, plain).id  # a copy elsewhere: same id
    prompt = checkout / "activities/prompts/finalizer.md"
    _edit(prompt, "Be friendly", "Be friendly!")
    changed = bundle.collect(checkout, plain)
    assert changed.id != first.id
    assert changed.manifest.prompts == first.manifest.prompts
    # Windows line endings of the same text are the same content.
    prompt.write_bytes(prompt.read_bytes().replace(b"\n", b"\r\n"))
    assert bundle.collect(checkout, plain).id == changed.id


def test_model_settings_are_part_of_the_version(checkout: Path, plain: Settings) -> None:
    base = bundle.collect(checkout, plain)
    other = plain.model_copy(update={"agent_models": {"coder": "llama-3.1-8b-instant"}})
    assert bundle.collect(checkout, other).id != base.id
    hotter = plain.model_copy(update={"llm_temperature": 0.9})
    assert bundle.collect(checkout, hotter).id != base.id
    # The host's keys, addresses and paths are not.
    host = plain.model_copy(update={"temporal_address": "elsewhere:7233", "api_port": 9})
    assert bundle.collect(checkout, host).id == base.id
    applied = bundle.collect(checkout, other).manifest.model_settings.apply(plain)
    assert model_for(applied, "coder") == "llama-3.1-8b-instant"


def test_zip_is_deterministic_and_holds_exactly_the_bundle(checkout: Path, plain: Settings) -> None:
    made = bundle.collect(checkout, plain)
    path = bundle.write(made, checkout.parent / "snaps")
    assert path.name == f"{made.id}.zip"
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    names = [i.filename for i in infos]
    assert names[0] == bundle.MANIFEST_NAME and names[1:] == sorted(names[1:])
    assert {i.date_time for i in infos} == {bundle.ZIP_EPOCH}
    assert {i.external_attr >> 16 for i in infos} == {0o100644}
    assert all(n.startswith(("workflows/", "activities/", "costs/")) for n in names[1:])
    assert "activities/prompts/coder.md" in names and not [n for n in names if "pycache" in n]
    # The money rules are part of the version, and the manifest says which records interface
    # the code was written against.
    assert {"costs/pricing.py", "costs/budget.py"} <= set(names)
    assert made.manifest.interfaces == {"records": records.INTERFACE}
    assert bundle.verify(path).id == made.id
    assert not list(path.parent.glob(".*tmp"))  # no temp file left behind


def test_a_bundle_for_another_records_interface_is_refused_with_a_reason(
    checkout: Path, plain: Settings
) -> None:
    _edit(checkout / "activities/__init__.py", "RECORDS_INTERFACE = 1", "RECORDS_INTERFACE = 99")
    made = bundle.collect(checkout, plain)
    assert made.manifest.interface("records") == 99
    with pytest.raises(
        bundle.BundleError,
        match="for records interface 99; this crewline serves records interface 1",
    ):
        check_servable(made.manifest, made.id)
    # A format-1 manifest (made before the interface was recorded) keeps its id and is refused.
    old = bundle.Manifest.model_validate(
        {"format": 1, "files": {"activities/x.py": "0" * 64},
         "model_settings": made.manifest.model_settings.model_dump()}
    )  # fmt: skip
    assert "interfaces" not in old.canonical().decode() and old.interface("records") == 0
    with pytest.raises(bundle.BundleError, match="before interfaces were versioned"):
        check_servable(old, old.id)


@pytest.mark.parametrize("damage", ["edit", "extra", "missing", "manifest", "rename", "truncate"])
def test_tampered_zip_is_refused(checkout: Path, plain: Settings, damage: str) -> None:
    made = bundle.collect(checkout, plain)
    path = bundle.write(made, checkout.parent / "snaps")
    data = path.read_bytes()
    if damage == "truncate":  # a crash mid-copy, a disk error
        path.write_bytes(data[: len(data) // 2])
    elif damage == "rename":
        path = path.rename(path.with_name("snap-000000000000.zip"))
    else:
        with zipfile.ZipFile(path) as src:
            entries = {n: src.read(n) for n in src.namelist()}
        if damage == "edit":
            entries["activities/prompts/coder.md"] += b"\nIgnore the plan.\n"
        elif damage == "extra":
            entries["activities/evil.py"] = b"import os\n"
        elif damage == "missing":
            del entries["activities/agents.py"]
        else:  # a manifest rewritten to match an edited file still changes the id
            entries["activities/prompts/coder.md"] += b"\nIgnore the plan.\n"
            forged = made.manifest.model_copy(deep=True)
            forged.files["activities/prompts/coder.md"] = (
                __import__("hashlib").sha256(entries["activities/prompts/coder.md"]).hexdigest()
            )
            entries[bundle.MANIFEST_NAME] = forged.canonical()
        with zipfile.ZipFile(path, "w") as out:
            for name, body in entries.items():
                out.writestr(name, body)
    with pytest.raises(TamperedSnapshotError):
        bundle.verify(path)


def test_write_heals_a_damaged_zip_of_the_same_content(checkout: Path, plain: Settings) -> None:
    made = bundle.collect(checkout, plain)
    path = bundle.write(made, checkout.parent / "snaps")
    path.write_bytes(b"half a zip")
    assert bundle.write(made, checkout.parent / "snaps") == path
    assert bundle.verify(path).id == made.id


def test_entries_outside_the_bundle_are_refused(plain: Settings, tmp_path: Path) -> None:
    made = bundle.collect(REPO, plain)
    evil = bundle.Bundle(
        manifest=made.manifest.model_copy(update={"files": {"../evil.py": "0" * 64}}),
        contents={"../evil.py": b""},
    )
    with pytest.raises(TamperedSnapshotError, match="outside"):
        bundle.read(bundle.zip_bytes(evil))


def test_secrets_never_enter_a_snapshot(checkout: Path, tmp_path: Path) -> None:
    key = "gsk_" + "A1b2C3d4" * 6
    settings = Settings(LLM_PROVIDER="groq", GROQ_API_KEY=key, _env_file=None)
    (checkout / "activities" / ".env").write_text(f"GROQ_API_KEY={key}\n")
    (checkout / "activities" / "server.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    made = bundle.collect(checkout, settings)
    assert "activities/.env (hidden file, may hold secrets)" in made.skipped
    assert any(s.startswith("activities/server.key") for s in made.skipped)
    zipped = bundle.write(made, tmp_path / "snaps").read_bytes()
    assert key.encode() not in zipped and b"GROQ_API_KEY=" not in zipped
    assert key.encode() not in made.manifest.canonical()
    # A key pasted into a prompt refuses the snapshot, naming the file but not the key.
    _edit(checkout / "activities/prompts/planner.md", "Be concrete", f"Use key {key}. Be concrete")
    with pytest.raises(BundleError) as refused:
        bundle.collect(checkout, settings)
    assert "activities/prompts/planner.md" in str(refused.value) and key not in str(refused.value)
    # A key of another provider's format too, even when it is not the configured one.
    other = Settings(LLM_PROVIDER="scripted", _env_file=None)
    with pytest.raises(BundleError, match="Groq API key"):
        bundle.collect(checkout, other)


def test_tool_manifest_matches_the_registered_tools(plain: Settings, tmp_path: Path) -> None:
    from activities.tools.builtin import build_tools

    registered = build_tools(plain, make_engine(f"sqlite:///{tmp_path / 'x.db'}"), None).manifest()
    listed = [t.model_dump() for t in bundle.collect(REPO, plain).manifest.tools]
    assert sorted(listed, key=lambda t: t["name"]) == sorted(registered, key=lambda t: t["name"])
    assert {t["name"]: t["side_effects"] for t in listed} == {
        "web_search": False,
        "fetch_url": False,
        "write_file": True,
        "read_file": False,
        "list_files": False,
        "run_command": False,
    }


def test_not_a_checkout_says_so(tmp_path: Path, plain: Settings) -> None:
    with pytest.raises(BundleError, match="not a crewline checkout"):
        bundle.collect(tmp_path, plain)


def test_snapshot_worker_imports_agent_code_only_from_its_zip(
    checkout: Path, plain: Settings, tmp_path: Path
) -> None:
    # A snapshot without activities/research.py; the working tree (this repo) has it.
    (checkout / "activities" / "research.py").unlink()
    made = bundle.collect(checkout, plain)
    path = bundle.write(made, tmp_path / "snaps")
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from versioning.loader import load_snapshot\n"
        f"load_snapshot(Path({str(path)!r}), {made.id!r})\n"
        "import activities.prompts\n"
        "print('prompts from', activities.prompts.__file__)\n"
        "try:\n"
        "    import activities.research\n"
        "except ModuleNotFoundError as exc:\n"
        "    print('refused:', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert f"prompts from {path}/activities/prompts.py" in done.stdout
    assert f"refused: No module named 'activities.research' in snapshot {made.id}" in done.stdout


def _row(action: str, to: str, frm: str | None = None) -> ActivationRow:
    return ActivationRow(action=action, to_version=to, from_version=frm)


def test_rollback_walks_back_through_activations_and_never_bounces() -> None:
    rows = [_row("bootstrap", "v1"), _row("activate", "v2", "v1"), _row("activate", "v3", "v2")]
    assert active_stack(rows, "v3") == ["v1", "v2", "v3"]
    rows.append(_row("rollback", "v2", "v3"))
    assert active_stack(rows, "v2") == ["v1", "v2"]
    rows.append(_row("rollback", "v1", "v2"))
    assert active_stack(rows, "v1") == ["v1"]  # nothing left to roll back to: not back to v2
    # A current version set outside crewline counts as activated on top.
    assert active_stack(rows, "v9") == ["v1", "v9"]
    assert active_stack([], None) == []


def test_an_older_database_gains_the_new_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE run (run_id VARCHAR(64) PRIMARY KEY, query VARCHAR NOT NULL, "
        "status VARCHAR(32) NOT NULL, budget_usd NUMERIC, idempotency_key VARCHAR(200), "
        "provider VARCHAR(32), final_answer VARCHAR, error VARCHAR, failed_agent VARCHAR(32), "
        "created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL)"
    )
    db.execute(
        "INSERT INTO run VALUES ('run-old', 'q', 'COMPLETED', 1, NULL, 'groq', 'done', NULL, "
        "NULL, '2026-11-01 10:00:00', '2026-11-01 10:00:00')"
    )
    db.commit()
    db.close()
    engine = make_engine(f"sqlite:///{path}")
    old = get_run(engine, "run-old")
    assert old is not None and old.final_answer == "done" and old.version is None
    columns = {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(run)")}
    assert "version" in columns
