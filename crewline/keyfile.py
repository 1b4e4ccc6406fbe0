"""Where this machine's admin key lives, and which key a client here sends: light enough for the
CLI to import without the services behind the API (every CLI command starts with it)."""

from __future__ import annotations

from pathlib import Path

from crewline.settings import Settings

KEY_FILE = "admin.key"


def key_file(settings: Settings) -> Path:
    return settings.data_dir / KEY_FILE


def local_key(settings: Settings) -> str | None:
    """The key a client on this machine uses: CREWLINE_API_KEY, else CREWLINE_ADMIN_KEY, else
    the key `crewline up` wrote to the data directory."""
    for configured in (settings.api_key, settings.admin_key):
        if configured is not None:
            return configured.get_secret_value()
    try:
        return key_file(settings).read_text().strip() or None
    except OSError:
        return None
