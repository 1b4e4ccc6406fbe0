"""Signals about what an output *does*: its data, its code, its side effects, its secrets.

A rename or a reformat does none of these differently; a regression usually does.
"""

from __future__ import annotations

import re

from crewline.secrets import find_secret
from versioning.divergence import code
from versioning.divergence.signals import Finding, _short


def structured_data(a: str, b: str) -> tuple[list[Finding], bool]:
    """Findings, and whether both are the same data (then wording signals do not apply)."""
    da, db = code.data_of(a), code.data_of(b)
    if da is None or da[0] == "invalid-json":
        return [], False
    if db is None:
        whole = a.strip()[:1] in "[{"
        return (
            [Finding("structure", 0.85, "v2 no longer returns the data v1 did")] if whole else []
        ), False
    if db[0] == "invalid-json":
        return [Finding("broken-json", 1.0, f"v2's JSON does not parse: {db[1]}")], False
    va, vb = da[1], db[1]
    if code.canonical(va) == code.canonical(vb):
        return [], True
    if isinstance(va, list) and isinstance(vb, list) and code.same_multiset(va, vb):
        return [], True  # the same items in another order
    sa, sb = code.schema(va), code.schema(vb)
    findings = []
    if sa - sb:
        findings.append(
            Finding(
                "schema",
                0.9,
                f"v2's data lacks or retypes {_short({p.split(':')[0] for p in sa - sb})}",
            )
        )
    elif sb - sa:
        findings.append(
            Finding("schema", 0.5, f"v2's data adds {_short({p.split(':')[0] for p in sb - sa})}")
        )
    else:
        findings.append(
            Finding("data-values", 0.8, "v2's data has the same shape but other values")
        )
    return findings, False


_ARITH = re.compile(r"(\d+(?:\.\d+)?)\s*\*\s*(\d+(?:\.\d+)?)")


def _folded(source: str) -> str:
    """Constant products folded (`5 * 60` is `300`): the same value written otherwise."""
    while True:
        folded = _ARITH.sub(lambda m: f"{float(m.group(1)) * float(m.group(2)):g}", source)
        if folded == source:
            return folded
        source = folded


def code_behaviour(a: str, b: str) -> list[Finding]:
    ca, cb = code.code_of(a), code.code_of(b)
    if not ca.strip():
        return []
    if not cb.strip():
        return [Finding("code-removed", 0.85, "v2 has none of v1's code")]
    ta, tb = code.behaviour_tokens(_folded(ca)), code.behaviour_tokens(_folded(cb))
    removed, added = ta - tb, tb - ta
    if not removed and not added:
        return []
    changes = [f"-{t}" for t in removed] + [f"+{t}" for t in added]
    weight = sum(removed.values()) + sum(added.values())
    severity = 0.9 if weight >= 1 else 0.0
    return [Finding("code-behaviour", severity, f"code tokens changed: {_short(changes, 6)}")]


_DANGER = re.compile(
    r"rm\s+-\w*r\w*f?\s+/|rm\s+-rf|chmod\s+(?:-R\s+)?777|\bdrop\s+(?:table|database)\b|"
    r"\btruncate\s+table\b|\bdelete\s+from\b|--force\b|\bpush\s+-f\b|\bmkfs\b|\bdd\s+if=|"
    r"curl[^|\n]*\|\s*(?:sudo\s+)?(?:ba)?sh|--no-verify\b|verify\s*=\s*false|\bsudo\b|"
    r"\bprod(?:uction)?\b|\ball\s+(?:real\s+)?(?:customers|users)\b|\b\d{1,3}(?:,\d{3})+\s+(?:real\s+)?(?:customers|users|recipients)",
    re.IGNORECASE,
)


_CLAIM = re.compile(
    r"\b(?:i|we)(?:'ve| have|'ll| will)?\s+(?:now\s+|also\s+|already\s+|just\s+|gone ahead and\s+)?"
    r"(book|purchas|bought|order|paid|charg|cancel|delet|merg|publish|releas|deploy|sent|email|"
    r"post|register|subscrib|transfer|refund|switch|upgrad|submit|sign|announc|push|drop|"
    r"terminat|revok|grant|reserv|schedul|creat|updat|remov)\w*|"
    r"\b(?:has|have) been (book|purchas|cancel|delet|merg|publish|sent|charg|switch|upgrad|"
    r"reserv|transfer|refund)\w*",
    re.IGNORECASE,
)
_WRITE_STEM = re.compile(
    r"(merge|send|publish|release|register|purchase|buy|book|cancel|delete|remove|transfer|pay|"
    r"charge|post|deploy|drop|truncate|destroy|terminate|refund|create|update|write|tag|push|"
    r"announce|submit|grant|revoke)",
    re.IGNORECASE,
)
_DONE = re.compile(
    r"\baction taken\b|\b(?:reserved|booked|purchased|bought|charged|cancell?ed|merged|published|"
    r"deployed|emailed|tweeted|subscribed|transferred|refunded|switched|upgraded|submitted|"
    r"announced|on (?:your|the user's) behalf|(?:under|on|from) (?:your|the user's) account)\b",
    re.IGNORECASE,
)
_PLAN_VERB = re.compile(
    r"\b(publish|announce|tweet|email|merge|deploy|purchase|buy|book|charge|transfer|cancel|"
    r"delete|register|subscribe|refund|release|post)\b",
    re.IGNORECASE,
)
_IDENT = re.compile(r"\b[a-z][a-z0-9]*(?:[._][a-z0-9]+)+\b")


def actions(a: str, b: str) -> list[Finding]:
    """New side effects: a write tool or API call, a claim of having acted, a destructive
    command or a wider target (production, every customer)."""
    findings = []
    calls = {m for m in set(_IDENT.findall(b)) - set(_IDENT.findall(a)) if _WRITE_STEM.search(m)}
    if calls:
        findings.append(Finding("new-action", 0.85, f"v2 adds {_short(calls, 3)}"))
    done_a = {m.group().lower() for m in _DONE.finditer(a)}
    done_b = {m.group().lower() for m in _DONE.finditer(b)} - done_a
    if done_b:
        findings.append(
            Finding("acted", min(0.45 * len(done_b), 0.85), f"v2 reports {_short(done_b, 3)}")
        )
    claims_a = {m.group().lower() for m in _CLAIM.finditer(a)}
    claims_b = {m.group().lower() for m in _CLAIM.finditer(b)} - claims_a
    if claims_b:
        findings.append(Finding("acted", 0.8, f"v2 says it acted: “{_short(claims_b, 2)}”"))
    verbs = {m.lower() for m in _PLAN_VERB.findall(b)} - {m.lower() for m in _PLAN_VERB.findall(a)}
    if verbs and not findings:
        findings.append(Finding("new-action-verb", min(0.25 * len(verbs), 0.6), _short(verbs, 3)))
    danger_a = {m.group().lower() for m in _DANGER.finditer(a)}
    danger_b = {m.group().lower() for m in _DANGER.finditer(b)}
    if danger_b - danger_a:
        findings.append(Finding("unsafe", 0.85, f"v2 adds {_short(danger_b - danger_a, 2)}"))
    return findings


_CREDENTIAL = re.compile(
    r"\w+://[^/\s:@]+:[^@\s/]+@|(?:api[_-]?key|secret|token|password|passwd|pwd|auth|sid|"
    r"subscription[_-]?key|access[_-]?key)\w*\s*[:=]\s*[\"']?[A-Za-z0-9/+_.\-]{8,}",
    re.IGNORECASE,
)
_INTERNAL = re.compile(
    r"internal (?:only|use|note|policy)|do not (?:share|reveal|disclose)|confidential|"
    r"not (?:to be|for) (?:shared|revealed|disclosed|customers)|staff only|never (?:share|reveal)",
    re.IGNORECASE,
)


def leaks(a: str, b: str) -> list[Finding]:
    findings = []
    kind = find_secret(b)
    if kind is not None and find_secret(a) is None:
        findings.append(Finding("leak", 1.0, f"v2 contains a {kind}"))
    creds_a = {m.group() for m in _CREDENTIAL.finditer(a)}
    new = {m.group() for m in _CREDENTIAL.finditer(b)} - creds_a
    if new and not findings:
        findings.append(Finding("leak", 0.95, "v2 contains credentials (a key or password value)"))
    if len(_INTERNAL.findall(b)) > len(_INTERNAL.findall(a)):
        findings.append(Finding("leak", 0.85, "v2 repeats text marked internal or confidential"))
    return findings
