"""The signals about what an output *says*: each compares one thing that matters between v1's
and v2's output (what it *does* — data, code, actions, secrets — is in effects.py).

A signal returns findings `(signal, severity in [0, 1], detail)`. Severities are how sure the
change is a regression a user would care about: a refusal, a leaked key or broken JSON is near
1; a figure only added (extra detail) is small. Signals look at what honest rewordings keep —
figures, named and technical things, code behaviour, data, actions, sources — never at wording.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from versioning.divergence import text


@dataclass(frozen=True)
class Finding:
    signal: str
    severity: float
    detail: str


def _short(items: set[str] | list[str], n: int = 4) -> str:
    shown = sorted(items)[:n]
    return ", ".join(shown) + (" …" if len(items) > n else "")


def emptiness(a: str, b: str) -> list[Finding]:
    sa, sb = text.substance(a), text.substance(b)
    if sa >= 15 and sb < max(6, sa // 10):
        return [Finding("empty", 1.0, f"v2 has almost no content ({sb} words vs {sa})")]
    return []


def refusal(a: str, b: str) -> list[Finding]:
    if text.refuses(b) and not text.refuses(a):
        return [Finding("refusal", 1.0, "v2 refuses where v1 answered")]
    return []


def language(a: str, b: str, query: str = "") -> list[Finding]:
    """v2 writes in another language than v1 — and than the request, when it is known."""
    la, _ = text.language(a)
    lb, _ = text.language(b)
    if not (la and lb) or la == lb:
        return []
    asked, _ = text.language(query + " " + query) if query else ("", 0.0)
    if asked and lb == asked:
        return []
    return [Finding("language", 0.95, f"v2 answers in '{lb}', v1 in '{la}'")]


def truncation(a: str, b: str) -> list[Finding]:
    open_fence = b.count("```") % 2 == 1 and a.count("```") % 2 == 0
    shorter = len(b.strip()) < 0.9 * len(a.strip())
    if text.ends_abruptly(b) and not text.ends_abruptly(a) and (open_fence or shorter):
        return [Finding("truncated", 0.9, "v2 stops mid-sentence or leaves a code block open")]
    return []


_MONTH = "|".join(text.MONTHS)
_DATE = re.compile(
    rf"\b(?:(\d{{1,2}})(?:st|nd|rd|th)?\s+({_MONTH})|({_MONTH})\s+(\d{{1,2}})(?:st|nd|rd|th)?)\b",
    re.IGNORECASE,
)


def _dates(source: str) -> set[str]:
    found = set()
    for m in _DATE.finditer(source):
        day = m.group(1) or m.group(4)
        month = (m.group(2) or m.group(3)).lower()
        found.add(f"{month[:3]}-{int(day)}")
    return found


def _facts(sentence: str) -> set[str]:
    return set(text.numbers(sentence)) | _dates(sentence)


def aligned(a: str, b: str, floor: float = 0.5) -> list[tuple[str, str, float]]:
    """Each sentence of v1 with its closest sentence of v2 (content-word overlap >= floor)."""
    sb = [(s, _content(s)) for s in text.sentences(b)]
    pairs = []
    for sentence in text.sentences(a):
        ca = _content(sentence)
        if len(ca) < 3 or not sb:
            continue
        best, overlap = max(
            ((other, len(ca & co) / max(len(ca | co), 1)) for other, co in sb), key=lambda x: x[1]
        )
        if overlap >= floor:
            pairs.append((sentence, best, overlap))
    return pairs


_VALUE = re.compile(r"^[$€£]?(\d+(?:\.\d+)?)")


def _bare(fact: str) -> tuple[str, bool]:
    """(the value, whether the fact names no unit)."""
    m = _VALUE.match(fact)
    return (m.group(1), fact == m.group()) if m else (fact, False)


def _minus(x: set[str], y: set[str]) -> set[str]:
    """Facts of x not in y; '3' and '3day' are the same fact when one side names no unit."""
    values: dict[str, list[bool]] = {}
    for fact in y:
        value, bare = _bare(fact)
        values.setdefault(value, []).append(bare)
    out = set()
    for fact in x - y:
        value, bare = _bare(fact)
        same = values.get(value)
        if not (same and (bare or any(same))):
            out.add(fact)
    return out


def _same_shape(x: str, y: str) -> bool:
    """Two figures of one kind — same currency and unit, close magnitude — e.g. a total, a dose."""
    mx, my = _VALUE.match(x), _VALUE.match(y)
    if not (mx and my) or x[:1] != y[:1] or x[mx.end() :] != y[my.end() :]:
        return False
    vx, vy = float(mx.group(1)), float(my.group(1))
    if vx == vy or min(vx, vy) <= 0:
        return False
    digits = lambda v: len(str(int(v)))  # noqa: E731
    return digits(vx) == digits(vy) and digits(vx) >= 3 and max(vx, vy) / min(vx, vy) < 1.5


def figures(a: str, b: str) -> list[Finding]:
    """A figure changed inside a sentence v2 otherwise kept is a wrong number; figures that only
    move between differently-worded sentences are weak evidence."""
    pa, pb = text.prose(a), text.prose(b)
    all_a = _facts(pa)
    for sentence, other, _ in aligned(pa, pb):
        fa, fb = _facts(sentence), _facts(other)
        gone, new = _minus(fa, fb), _minus(fb, fa) - all_a
        if gone and new:
            return [
                Finding("figure-changed", 0.9, f"{_short(gone)} → {_short(new)} in “{other[:80]}”")
            ]
    na, nb = all_a, _facts(pb)
    removed, added = _minus(na, nb), _minus(nb, na)
    twins = [(x, y) for x in removed for y in added if _same_shape(x, y)]
    if twins:
        x, y = twins[0]
        return [
            Finding("figure-changed", 0.85, f"{x} → {y} (the same kind of figure, another value)")
        ]
    if removed and added:
        return [
            Finding(
                "figures-differ",
                min(0.1 * (len(removed) + len(added)), 0.3),
                f"{_short(removed)} → {_short(added)}",
            )
        ]
    if removed:
        return [Finding("figure-dropped", min(0.1 * len(removed), 0.25), _short(removed))]
    return []


def sources(a: str, b: str) -> list[Finding]:
    ua = {u.rstrip(".").lower() for u in text.URL.findall(a)}
    ub = {u.rstrip(".").lower() for u in text.URL.findall(b)}
    findings = []
    if ub - ua:
        findings.append(Finding("new-source", 0.75, f"v2 cites {_short(ub - ua, 2)}"))
    if ua - ub:
        findings.append(Finding("source-dropped", 0.3, f"v2 no longer cites {_short(ua - ub, 2)}"))
    return findings


def _squash(value: str) -> str:
    return re.sub(r"\s+", " ", value.lower()).strip(" '\"")


def technical(a: str, b: str) -> list[Finding]:
    """Inline code — commands, flags, settings, API names — that v2 replaced or dropped. A span
    whose text is still anywhere in the other version only lost its formatting."""
    whole_a, whole_b = _squash(a), _squash(b)
    ia = {_squash(x) for x in text.INLINE_CODE.findall(text.prose(a))}
    ib = {_squash(x) for x in text.INLINE_CODE.findall(text.prose(b))}
    removed = {x for x in ia - ib if x not in whole_b and len(x) > 1}
    added = {x for x in ib - ia if x not in whole_a and len(x) > 1}
    if removed and added:
        return [Finding("command-changed", 0.8, f"`{_short(removed, 2)}` → `{_short(added, 2)}`")]
    if removed:
        weight = sum(0.35 if len(x) >= 15 else 0.2 for x in removed)
        return [Finding("command-dropped", min(weight, 0.6), _short(removed, 3))]
    if added:
        return [Finding("command-added", 0.15, _short(added, 3))]
    return []


_VARIANT = re.compile(r"\b([A-Za-z]*\d+)(?:-[A-Za-z]\w*|[A-Za-z]+)\b")


def variants(a: str, b: str) -> list[Finding]:
    """A new name that is a variant of one v1 used (Form 4868 → Form 4868-S, v2 → v2x): an
    invented sibling of a real thing."""
    whole_a = _squash(a)
    for match in _VARIANT.finditer(b):
        name, base = match.group().lower(), match.group(1).lower()
        raw = match.group()[len(match.group(1)) :]
        suffix = raw.lstrip("-")
        unit = not (raw.startswith("-") and suffix.isupper()) and re.fullmatch(
            text._UNITS + r"|st|nd|rd|th|h|d|s|px|space|spaces|bit|core", suffix, re.I
        )
        if (
            name not in whole_a and len(base) >= 3 and not unit and base[-1].isdigit()
            and re.search(rf"\b{re.escape(base)}\b", whole_a)
        ):  # fmt: skip
            return [
                Finding(
                    "variant-name", 0.6, f"v2 names {match.group()} where v1 had {match.group(1)}"
                )
            ]
    return []


def _mentions(whole: str, term: str) -> bool:
    return re.search(rf"(?<![\w./-]){re.escape(term)}(?![\w-])", whole) is not None


def terms(a: str, b: str) -> list[Finding]:
    """A named or technical thing swapped inside a sentence v2 otherwise kept (React Native →
    Flutter, bcrypt → SHA-256): the decision changed, not the wording."""
    pa, pb = text.prose(a), text.prose(b)
    whole_a, whole_b = (_squash(text.URL.sub(" ", x)) for x in (pa, pb))
    for sentence, other, _ in aligned(pa, pb, floor=0.45):
        if sentence.count("|") >= 2 or other.count("|") >= 2:  # table rows: cells, not claims
            continue
        # URLs are the sources signal's business.
        ta = {t.lstrip("`") for t in text.salient_terms(sentence) if "://" not in t}
        tb = {t.lstrip("`") for t in text.salient_terms(other) if "://" not in t}
        gone = {t for t in ta - tb if not _mentions(whole_b, t)}
        new = {t for t in tb - ta if not _mentions(whole_a, t)}
        if gone and new:
            return [
                Finding(
                    "term-swapped", 0.75, f"{_short(gone, 2)} → {_short(new, 2)} in “{other[:80]}”"
                )
            ]
    return []


_NEGATION = re.compile(
    r"\b(not|no|never|none|nothing|neither|nor|without|cannot|can't|don't|doesn't|isn't|aren't|"
    r"won't|shouldn't|mustn't|avoid|instead of|prohibited|forbidden|unsafe|disallowed)\b|n't\b",
    re.IGNORECASE,
)
_OPPOSITES = [
    ("safe", "unsafe"), ("allowed", "forbidden"), ("allowed", "prohibited"),
    ("carry-on", "checked"), ("approve", "reject"), ("approved", "rejected"),
    ("enable", "disable"), ("enabled", "disabled"), ("include", "exclude"),
    ("increase", "decrease"), ("before", "after"), ("above", "below"), ("more", "less"),
    ("true", "false"), ("yes", "no"), ("accept", "decline"), ("buy", "sell"),
    ("recommended", "discouraged"), ("required", "optional"), ("minimum", "maximum"),
    ("higher", "lower"), ("read-only", "read-write"), ("staging", "production"),
    ("keep", "delete"), ("private", "public"), ("encrypted", "unencrypted"),
    ("valid", "invalid"), ("fine", "dangerous"), ("must", "can"), ("must", "may"),
    ("never", "always"), ("only", "or"), ("required", "not"),
]  # fmt: skip


def _content(sentence: str) -> set[str]:
    return {w[:6] for w in text.words(sentence) if w not in text._STOP and len(w) > 2}


_ANSWER = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def polarity(a: str, b: str) -> list[Finding]:
    """The answer flipped (a leading yes/no), or near-identical sentences whose negation or an
    opposite word changed."""
    ya, yb = _ANSWER.match(a.strip()), _ANSWER.match(b.strip())
    if ya and yb and ya.group(1).lower() != yb.group(1).lower():
        return [Finding("polarity", 0.9, f"the answer flipped: {ya.group(1)} → {yb.group(1)}")]
    table = lambda s: s.count("|") >= 2  # noqa: E731
    for sentence, other, _ in aligned(a, b, floor=0.55):
        if table(sentence) or table(other):
            continue
        # A leading "No," is the answer (checked above), not a negation of the sentence.
        neg_a, neg_b = (
            len(_NEGATION.findall(_ANSWER.sub("", x.strip()))) for x in (sentence, other)
        )
        wa, wb = set(text.words(sentence)), set(text.words(other))
        only_a, only_b = wa - wb, wb - wa
        flipped = [
            f"{x}/{y}" for x, y in _OPPOSITES
            if (x in only_a and y in only_b) or (y in only_a and x in only_b)
        ]  # fmt: skip
        if neg_a != neg_b or flipped:
            why = f"opposite {flipped[0]}" if flipped else "negation changed"
            return [Finding("polarity", 0.85, f"{why} in “{other[:90]}”")]
    return []


_HEADING = re.compile(r"^\s*(?:#{1,6}\s+|\*\*)([^*\n]{3,60}?)(?:\*\*)?:?\s*$", re.M)


def steps(a: str, b: str) -> list[Finding]:
    """v2 lists fewer steps or items than v1 (both as lists): one was dropped. Rewording, regrouping
    and reordering keep the count; the item nothing in v2 covers is named."""
    sourcey = lambda x: bool(text.URL.search(x))  # noqa: E731 - a source line is not a step
    ia = [x for x in text.list_items(a) if not sourcey(x)]
    ib = [x for x in text.list_items(b) if not sourcey(x)]
    if len(ib) < 3 or len(ib) != len(ia) - 1:  # rewording keeps the count; regrouping changes more
        return []
    pool = [_content(x) for x in ib]
    worst = min(ia, key=lambda x: max((len(_content(x) & p) for p in pool), default=0))
    return [Finding("step-dropped", 0.65, f"{len(ia)} → {len(ib)} items; missing “{worst[:70]}”")]


_REFUSED_BY_USER = re.compile(
    r"\b(?:don't|do not|doesn't|does not|won't|will not|never|without|no)\s+"
    r"(?:want to\s+|need to\s+|plan to\s+|wish to\s+|intend to\s+)?"
    r"([a-z]+(?:\s+a|\s+an|\s+the)?(?:\s+[a-z]+)?)",
    re.IGNORECASE,
)


def constraints(a: str, b: str, query: str) -> list[Finding]:
    """v2 does what the request rules out ("we don't want to rent a car"), v1 did not."""
    wa, wb = {w[:4] for w in text.words(a)}, {w[:4] for w in text.words(b)}
    for match in _REFUSED_BY_USER.finditer(query):
        key = {w[:4] for w in text.words(match.group(1)) if w not in text._STOP and len(w) > 2}
        if key and key <= wb and not key <= wa:
            return [
                Finding(
                    "against-request",
                    0.85,
                    f"v2 does what the request rules out: “{match.group()}”",
                )
            ]
    return []


_VERDICT = re.compile(r"^[^\w\n*]*\*\*([^*\n]{2,60}?[^:*\n])\*\*(?!\s*:)", re.M)


def _lead(source: str) -> re.Match[str] | None:
    """The first bold phrase that opens a line, in the first lines: the bottom line."""
    return _VERDICT.search("\n".join(source.strip().splitlines()[:4]))


def verdict(a: str, b: str) -> list[Finding]:
    """The leading verdict (**Approved.**, **Use X**) no longer says the same thing."""
    va, vb = _lead(a), _lead(b)
    if not (va and vb):
        return []
    ca, cb = _content(va.group(1)), _content(vb.group(1))
    ta, tb = text.salient_terms(va.group(1)), text.salient_terms(vb.group(1))
    if (ca and cb and not ca & cb) or (ta - tb and tb - ta):
        return [Finding("verdict-changed", 0.8, f"“{va.group(1)}” → “{vb.group(1)}”")]
    return []


def requested_section(a: str, b: str, query: str) -> list[Finding]:
    """A section of v1 about something the request asked for, gone from v2 entirely."""
    asked = {w[:5] for w in text.words(query) if w not in text._STOP and len(w) > 3}
    whole_b = _squash(b)
    for heading in _HEADING.findall(a):
        key = [w for w in text.words(heading) if w not in text._STOP and len(w) > 3]
        wanted = [w for w in key if w[:5] in asked]
        if wanted and not any(w[:5] in whole_b for w in wanted):
            return [
                Finding(
                    "section-dropped",
                    0.8,
                    f"v2 drops “{heading.strip()}”, which the request asked for",
                )
            ]
    return []
