"""Version bundles: the agents' code, prompts, tool manifest and model settings as one immutable,
content-addressed zip — a *snapshot*.

Rules upheld here:
- Deterministic. Entries are sorted, timestamps and permissions fixed, text files normalised to
  LF. The id is `snap-` + the first 12 hex of the SHA-256 of the canonical manifest (file hashes,
  model settings, tools), so the same content gives the same id on any machine and one changed
  character of one prompt gives a new one.
- Nothing secret. Hidden files (`.env`), keys and certificates are never collected, symlinks are
  not followed, and a file whose text looks like an API key — or holds a configured one — refuses
  the snapshot instead of being stored.
- Atomic. A snapshot is written to a temp file, fsynced and renamed into place: a crash never
  leaves a half snapshot under a valid name.
- Verified. A zip is used only if its entries are exactly the manifest's files with their hashes
  and the manifest hashes to the id it claims.

What a bundle holds: everything a step executes — the workflow (`workflows/`), the agent runtime
(`activities/`: specs, prompts, tools, the LLM call path) and the money rules (`costs/`: pricing
and budget planning). What it calls outside itself is the host's records interface (`records/`:
the tables it writes, the workflow's contract), whose version the manifest records; a worker
refuses a bundle built for an interface it does not serve (`versioning.loader`).

Nothing here imports the bundle's code: a snapshot is read as data (tools by parsing source).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import json
import os
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ValidationError

from crewline.secrets import find_secret
from crewline.settings import Settings

BUNDLE_PACKAGES: tuple[str, ...] = ("workflows", "activities", "costs")
# What format-1 manifests (before the money rules were part of a version) held.
LEGACY_PACKAGES: tuple[str, ...] = ("workflows", "activities")
MANIFEST_NAME = "crewline-manifest.json"
MANIFEST_FORMAT = 2
INTERFACE_FILE = "activities/__init__.py"
PROMPTS_PREFIX = "activities/prompts/"
TOOLS_PREFIX = "activities/tools/"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
ZIP_FILE_MODE = 0o100644  # regular file, rw-r--r--
MAX_FILE_BYTES = 1_000_000
MAX_BUNDLE_BYTES = 20_000_000
SKIP_DIRS = frozenset({"__pycache__"})
SKIP_SUFFIXES = frozenset({".pyc", ".pyo", ".so", ".zip", ".pem", ".key", ".p12", ".pfx"})
TEXT_SUFFIXES = frozenset(
    {".py", ".md", ".txt", ".json", ".toml", ".yaml", ".yml", ".cfg", ".ini", ".j2", ".typed"}
)


class BundleError(ValueError):
    """A bundle that cannot be snapshotted or used; the message says what to do."""


class TamperedSnapshotError(BundleError):
    """A zip whose contents do not match its manifest or its id."""


class MissingSnapshotError(BundleError):
    """The snapshot's zip is not on this host."""


class ModelSettings(BaseModel):
    """The model settings that change behaviour: they are part of the version, not the host."""

    agent_models: dict[str, str] = {}
    groq_model: str
    llm_model: str | None = None
    max_tokens: int
    temperature: float

    @classmethod
    def of(cls, settings: Settings) -> ModelSettings:
        return cls(
            agent_models=dict(sorted(settings.agent_models.items())),
            groq_model=settings.groq_model,
            llm_model=settings.llm_model,
            max_tokens=settings.llm_max_tokens,
            temperature=settings.llm_temperature,
        )

    def apply(self, settings: Settings) -> Settings:
        """`settings` with this version's model settings in place of the host's."""
        return settings.model_copy(
            update={
                "agent_models": dict(self.agent_models),
                "groq_model": self.groq_model,
                "llm_model": self.llm_model,
                "llm_max_tokens": self.max_tokens,
                "llm_temperature": self.temperature,
            }
        )


class ToolEntry(BaseModel):
    name: str
    side_effects: bool
    description: str = ""


class Manifest(BaseModel):
    format: int = MANIFEST_FORMAT
    files: dict[str, str]  # path -> SHA-256 of its (normalised) bytes
    model_settings: ModelSettings
    tools: list[ToolEntry] = []
    # Format 2: the packages it holds, and the host interfaces it was built against
    # ({"records": N}; a format-1 manifest knew none: interface 0).
    packages: list[str] = list(LEGACY_PACKAGES)
    interfaces: dict[str, int] = {}

    def canonical(self) -> bytes:
        data = self.model_dump(mode="json")
        if self.format < 2:  # a format-1 manifest's id was computed without these
            data.pop("packages")
            data.pop("interfaces")
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def interface(self, name: str) -> int:
        return self.interfaces.get(name, 0)

    @property
    def id(self) -> str:
        return "snap-" + hashlib.sha256(self.canonical()).hexdigest()[:12]

    @property
    def prompts(self) -> list[str]:
        return sorted(p for p in self.files if p.startswith(PROMPTS_PREFIX))


@dataclass(frozen=True)
class Bundle:
    manifest: Manifest
    contents: dict[str, bytes]
    skipped: list[str] = field(default_factory=list)  # "path (why)"

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def size_bytes(self) -> int:
        return sum(len(data) for data in self.contents.values())


def default_source() -> Path:
    """The checkout (or install) this process's agent code comes from (found, not imported)."""
    spec = importlib.util.find_spec("activities")
    if spec is None or spec.origin is None:
        raise BundleError("cannot find the installed `activities` package; pass --from DIR")
    return Path(spec.origin).resolve().parent.parent


def _normalised(rel: str, data: bytes) -> bytes:
    if PurePosixPath(rel).suffix not in TEXT_SUFFIXES:
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{rel} is not UTF-8 text; bundle text files must be") from None
    return text.replace("\r\n", "\n").encode("utf-8")


def _skip_reason(path: Path) -> str | None:
    if path.is_symlink():
        return "symlink, not followed"
    if path.name.startswith("."):
        return "hidden file, may hold secrets"
    if path.suffix in SKIP_SUFFIXES:
        return "build output or key material"
    return None


def _walk(root: Path, package: str) -> tuple[dict[str, bytes], list[str]]:
    found: dict[str, bytes] = {}
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root / package):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            why = _skip_reason(path)
            if why is not None:
                skipped.append(f"{rel} ({why})")
                continue
            if path.stat().st_size > MAX_FILE_BYTES:
                raise BundleError(f"{rel} is over {MAX_FILE_BYTES} bytes; bundles hold code")
            found[rel] = _normalised(rel, path.read_bytes())
    return found, skipped


def check_no_secrets(contents: dict[str, bytes], settings: Settings) -> None:
    secrets = settings.secrets()
    for rel, data in sorted(contents.items()):
        kind = find_secret(data.decode("utf-8", errors="replace"), secrets)
        if kind is not None:
            raise BundleError(
                f"{rel} contains {kind}; secrets never go into a snapshot — read it from the "
                "environment instead"
            )


def _tool_entries(contents: dict[str, bytes]) -> list[ToolEntry]:
    """Tools as declared in `activities/tools/` (literal `ToolSpec(...)` calls), read as data."""
    entries: list[ToolEntry] = []
    for rel in sorted(p for p in contents if p.startswith(TOOLS_PREFIX) and p.endswith(".py")):
        tree = ast.parse(contents[rel], filename=rel)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            fname = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if fname != "ToolSpec":
                continue
            args: dict[str, object] = {}
            if node.args and isinstance(node.args[0], ast.Constant):
                args["name"] = node.args[0].value
            for kw in node.keywords:
                if kw.arg and isinstance(kw.value, ast.Constant):
                    args[kw.arg] = kw.value.value
            if not isinstance(args.get("name"), str) or not isinstance(
                args.get("side_effects"), bool
            ):
                raise BundleError(
                    f"{rel}:{node.lineno}: declare tools as ToolSpec('name', side_effects=True|"
                    "False, description='...') with literal values, so a snapshot can list them"
                )
            entries.append(ToolEntry.model_validate(args, strict=False))
    return sorted(entries, key=lambda t: t.name)


def _interface_of(contents: dict[str, bytes]) -> int:
    """The records interface the bundle's code is written against (`RECORDS_INTERFACE` in its
    `activities/__init__.py`, read as data). 0: code from before interfaces were versioned."""
    source = contents.get(INTERFACE_FILE)
    if source is None:
        return 0
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Constant):
            continue
        named = any(isinstance(t, ast.Name) and t.id == "RECORDS_INTERFACE" for t in node.targets)
        if named and isinstance(node.value.value, int):
            return node.value.value
    return 0


def collect(source: Path, settings: Settings) -> Bundle:
    """Read the bundle of the checkout at `source` (its `workflows/`, `activities/` and
    `costs/`)."""
    source = source.resolve()
    missing = [p for p in BUNDLE_PACKAGES if not (source / p / "__init__.py").is_file()]
    if missing:
        raise BundleError(
            f"{source} is not a crewline checkout: no {' or '.join(f'{m}/' for m in missing)}"
        )
    contents: dict[str, bytes] = {}
    skipped: list[str] = []
    for package in BUNDLE_PACKAGES:
        found, passed = _walk(source, package)
        contents.update(found)
        skipped.extend(passed)
    check_no_secrets(contents, settings)
    manifest = Manifest(
        files={rel: hashlib.sha256(data).hexdigest() for rel, data in sorted(contents.items())},
        model_settings=ModelSettings.of(settings),
        tools=_tool_entries(contents),
        packages=list(BUNDLE_PACKAGES),
        interfaces={"records": _interface_of(contents)},
    )
    return Bundle(manifest=manifest, contents=contents, skipped=skipped)


def zip_bytes(bundle: Bundle) -> bytes:
    """The deterministic zip: manifest first, then files in path order, fixed metadata."""
    buffer = io.BytesIO()
    entries = [(MANIFEST_NAME, bundle.manifest.canonical())]
    entries += sorted(bundle.contents.items())
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.external_attr = ZIP_FILE_MODE << 16
            info.create_system = 3  # unix, so the mode above is honoured everywhere
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data, compresslevel=9)
    return buffer.getvalue()


def write(bundle: Bundle, directory: Path) -> Path:
    """Store the snapshot as `<directory>/<id>.zip`, atomically; an existing valid one is kept."""
    target = directory / f"{bundle.id}.zip"
    if target.is_file():
        try:
            verify(target, bundle.id)
            return target
        except TamperedSnapshotError:
            pass  # same id, bad bytes: rewrite it from the verified source below
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{bundle.id}.zip.{uuid.uuid4().hex}.tmp"  # unique across hosts too
    try:
        with tmp.open("wb") as out:
            out.write(zip_bytes(bundle))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
    return target


def _check_entry_name(name: str, packages: list[str]) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or path.parts[:1] not in [(p,) for p in packages]:
        raise TamperedSnapshotError(f"snapshot entry {name!r} is outside {tuple(packages)}")


def read(source: Path | bytes, expected_id: str | None = None) -> Bundle:
    """Open a snapshot zip (a path or its bytes) and verify it; never returns unverified content."""
    label = source.name if isinstance(source, Path) else "uploaded snapshot"
    if isinstance(source, Path) and not source.is_file():
        raise MissingSnapshotError(f"{source} does not exist on this host")
    try:
        archive = zipfile.ZipFile(source if isinstance(source, Path) else io.BytesIO(source))
    except (zipfile.BadZipFile, OSError) as exc:
        raise TamperedSnapshotError(f"{label} is not a readable zip ({exc})") from None
    try:
        return _verified(archive, label, expected_id)
    except (
        zipfile.BadZipFile,
        zlib.error,
        NotImplementedError,
        RuntimeError,
        OSError,
        EOFError,
    ) as exc:
        # Corrupt deflate data, an encrypted entry, an unknown compression method: a zip this
        # crewline cannot read is refused like any other bad bundle (never a 500).
        raise TamperedSnapshotError(f"{label}: an entry cannot be read ({exc})") from None
    finally:
        archive.close()


def _verified(archive: zipfile.ZipFile, label: str, expected_id: str | None) -> Bundle:
    infos = archive.infolist()
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise TamperedSnapshotError(f"{label} has duplicate entries")
    if sum(i.file_size for i in infos) > MAX_BUNDLE_BYTES:
        raise TamperedSnapshotError(f"{label} unpacks to over {MAX_BUNDLE_BYTES} bytes")
    if MANIFEST_NAME not in names:
        raise TamperedSnapshotError(f"{label} has no {MANIFEST_NAME}")
    try:
        manifest = Manifest.model_validate_json(archive.read(MANIFEST_NAME))
    except ValidationError as exc:
        raise TamperedSnapshotError(
            f"{label}: unreadable manifest ({exc.error_count()} errors)"
        ) from None
    files = [n for n in names if n != MANIFEST_NAME]
    if not set(manifest.packages) <= set(BUNDLE_PACKAGES):
        raise TamperedSnapshotError(
            f"{label} claims packages {manifest.packages}; a bundle holds only "
            f"{list(BUNDLE_PACKAGES)}"
        )
    for name in files:
        _check_entry_name(name, manifest.packages)
    extra, lost = set(files) - set(manifest.files), set(manifest.files) - set(files)
    if extra or lost:
        raise TamperedSnapshotError(
            f"{label} does not match its manifest: extra {sorted(extra)}, missing {sorted(lost)}"
        )
    contents = {name: archive.read(name) for name in files}
    for name, data in contents.items():
        if hashlib.sha256(data).hexdigest() != manifest.files[name]:
            raise TamperedSnapshotError(f"{label}: {name} was changed after the snapshot was taken")
    if expected_id is not None and manifest.id != expected_id:
        raise TamperedSnapshotError(
            f"{label}: its manifest hashes to {manifest.id}, not {expected_id}"
        )
    return Bundle(manifest=manifest, contents=contents)


def verify(path: Path, expected_id: str | None = None) -> Manifest:
    return read(path, expected_id or path.stem).manifest
