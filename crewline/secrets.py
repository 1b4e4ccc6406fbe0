"""What a secret looks like: the provider key formats crewline knows, plus the keys it is
configured with. One list, used wherever text leaves the process (snapshots; log redaction).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Formats of keys that must never be written anywhere but the environment.
KEY_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("crewline API key", re.compile(r"\bcrl_[0-9a-f]{8}_[A-Za-z0-9_-]{20,}")),
    ("Groq API key", re.compile(r"\bgsk_[A-Za-z0-9]{20,}")),
    ("OpenAI-style API key", re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}")),
    ("AWS access key id", re.compile(r"\bAKIA[0-9A-Z]{16}\b")),
    ("GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}")),
    ("Slack token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    ("private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("bearer token", re.compile(r"\bBearer\s+[A-Za-z0-9._~+/-]{16,}=*")),
)
# A configured secret shorter than this is too likely to occur by chance to be searched for.
MIN_SECRET_CHARS = 8


REDACTED = "[redacted]"


def redact(text: str, known: Iterable[str] = ()) -> str:
    """`text` with every configured secret and anything shaped like a key cut out."""
    for value in sorted((k for k in known if len(k) >= MIN_SECRET_CHARS), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    for _, pattern in KEY_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def find_secret(text: str, known: Iterable[str] = ()) -> str | None:
    """The kind of the first secret found in `text` (never the secret itself), or None."""
    for value in known:
        if len(value) >= MIN_SECRET_CHARS and value in text:
            return "a configured API key"
    for kind, pattern in KEY_PATTERNS:
        if pattern.search(text):
            return kind
    return None
