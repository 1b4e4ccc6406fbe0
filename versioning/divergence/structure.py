"""Layer 2: structured parts compared exactly, and edits read as edits.

- **Data.** JSON is parsed and compared as data: key order and list order never matter; a key
  the active output had and the candidate lacks or retypes is a changed contract.
- **Edits.** When the candidate keeps a sentence of the active output nearly word for word but
  changes a figure, a negation, an opposite word or a named thing in it, that one change is the
  difference — a resample rewrites whole sentences, an edit does not. When the whole candidate
  is an edit of the active output (most of its text kept in order), a dropped list item, a
  changed line of code, a new source and a changed bottom line are read the same way.

Tool calls and files written are data too: `compare_effects` compares them as (tool, target)
pairs for a run (the content of files is layer 3's business: behaviour, not bytes).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from difflib import SequenceMatcher
from itertools import pairwise

from versioning.divergence import code, text


@dataclass(frozen=True)
class Change:
    kind: str
    severity: float
    detail: str


EDIT_RATIO = 0.7  # share of tokens kept in order above which `b` is an edit of `a`
NEAR_SENTENCE = 0.75  # a sentence kept this closely is the same sentence, edited
_TOKEN = re.compile(r"[$€£]?\d[\d,.]*\d%?|[$€£]?\d%?|[A-Za-z_][\w'’.-]*[\w]|[A-Za-z_]|\S")


def tokens(source: str) -> list[str]:
    return [t.lower() for t in _TOKEN.findall(source)]


def ratio(a: list[str], b: list[str]) -> float:
    if not a or not b:
        return 0.0
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    kept = sum(block.size for block in matcher.get_matching_blocks())
    return kept / max(len(a), len(b))


def contained(part: list[str], whole: list[str]) -> float:
    """The share of `part` found in `whole`, in order (1.0: `part` is `whole` with cuts)."""
    if not part:
        return 0.0
    matcher = SequenceMatcher(None, part, whole, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks()) / len(part)


def is_edit(a: str, b: str) -> bool:
    return ratio(tokens(a), tokens(b)) >= EDIT_RATIO


# ---- data -------------------------------------------------------------------------------------


def data(a: str, b: str, edit: bool) -> tuple[list[Change], bool]:
    """Changes between the JSON (or YAML) both outputs hold, and whether it is the same data."""
    da, db = code.data_of(a), code.data_of(b)
    if da is None or db is None or "invalid-json" in (da[0], db[0]):
        return [], False
    va, vb = da[1], db[1]
    if code.canonical(va) == code.canonical(vb) or (
        isinstance(va, list) and isinstance(vb, list) and code.same_multiset(va, vb)
    ):
        return [], True
    sa, sb = code.schema(va), code.schema(vb)
    lost = sa - sb
    if lost and (edit or (_data_is_answer(a) and _data_is_answer(b))):
        names = sorted({p.split(":")[0] for p in lost})
        return [Change("schema", 0.9, f"its data lacks or retypes {_short(names)}")], False
    if edit:
        return [Change("data-values", 0.8, "its data has the same shape but other values")], False
    return [], False


def _data_is_answer(source: str) -> bool:
    """The JSON is the answer (all of it, or most of it), not an example inside prose."""
    stripped = source.strip()
    if stripped[:1] in "[{":
        return True
    blocks = [m.group(1) for m in text.FENCE.finditer(source)]
    return bool(blocks) and max(len(x) for x in blocks) >= 0.5 * len(stripped)


# ---- edited sentences -------------------------------------------------------------------------

_NEGATION = re.compile(
    r"\b(?:not|no|never|none|nothing|neither|nor|without|cannot|can't|don't|doesn't|isn't|"
    r"aren't|won't|shouldn't|mustn't|avoid|unsafe|disallowed|forbidden|prohibited)\b|n't\b",
    re.IGNORECASE,
)
_OPPOSITES = [
    ("safe", "unsafe"), ("allowed", "forbidden"), ("allowed", "prohibited"),
    ("approve", "reject"), ("approved", "rejected"), ("enable", "disable"),
    ("enabled", "disabled"), ("include", "exclude"), ("increase", "decrease"),
    ("before", "after"), ("above", "below"), ("more", "less"), ("more", "fewer"),
    ("true", "false"), ("yes", "no"), ("accept", "decline"), ("buy", "sell"),
    ("recommended", "discouraged"), ("required", "optional"), ("minimum", "maximum"),
    ("min", "max"), ("higher", "lower"), ("read-only", "read-write"), ("staging", "production"),
    ("keep", "delete"), ("private", "public"), ("encrypted", "unencrypted"),
    ("valid", "invalid"), ("must", "may"), ("never", "always"), ("first", "last"),
    ("ascending", "descending"), ("asc", "desc"), ("oldest", "newest"), ("earliest", "latest"),
    ("inclusive", "exclusive"), ("open", "closed"), ("on", "off"), ("start", "stop"),
    ("success", "failure"), ("pass", "fail"), ("win", "lose"), ("cheaper", "pricier"),
    ("faster", "slower"), ("larger", "smaller"), ("bigger", "smaller"), ("up", "down"),
    ("over", "under"), ("add", "remove"), ("allow", "deny"), ("allow", "block"),
    ("should", "shouldn't"), ("do", "don't"), ("is", "isn't"), ("can", "cannot"),
]  # fmt: skip
_ANSWER = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def _short(items: list[str] | set[str], n: int = 3) -> str:
    shown = sorted(items)[:n]
    return ", ".join(shown) + (" …" if len(items) > n else "")


def _content(sentence: str) -> set[str]:
    return {w[:6] for w in text.words(sentence) if w not in text._STOP and len(w) > 2}


def _sentences(source: str) -> list[str]:
    plain = text.LIST_MARKER.sub("", source)
    parts = (p.strip(" *_#|-\t") for p in text.SENTENCE_END.split(plain))
    return [p for p in parts if len(tokens(p)) >= 6]


def near_pairs(a: str, b: str) -> list[tuple[str, str]]:
    """Sentences of `a` that `b` kept nearly word for word, each with its edited twin."""
    sb = [(s, tokens(s), _content(s)) for s in _sentences(b)]
    pairs = []
    for sentence in _sentences(a):
        ta, ca = tokens(sentence), _content(sentence)
        if len(ta) < 6:
            continue
        # Cheap prefilter on content words, then the exact ratio.
        shortlist = [
            x for x in sb if len(ca & x[2]) >= min(2, len(ca)) and len(ca & x[2]) >= len(ca) // 2
        ]
        best = max(shortlist, key=lambda x: ratio(ta, x[1]), default=None)
        if best is not None and best[0] != sentence and ratio(ta, best[1]) >= NEAR_SENTENCE:
            pairs.append((sentence, best[0]))
    return pairs


_MONTH = re.compile(r"\b(?:" + "|".join(text.MONTHS) + r")\b", re.IGNORECASE)


def _figures(sentence: str) -> set[str]:
    """Figures with their units, and month names (a date is a figure)."""
    return set(text.numbers(sentence)) | {m.lower() for m in _MONTH.findall(sentence)}


def _hunks(x: str, y: str) -> list[tuple[str, list[str], list[str]]]:
    tx, ty = tokens(x), tokens(y)
    matcher = SequenceMatcher(None, tx, ty, autojunk=False)
    return [
        (op, tx[i1:i2], ty[j1:j2]) for op, i1, i2, j1, j2 in matcher.get_opcodes() if op != "equal"
    ]


def _named(token: str, original: str) -> bool:
    """A proper name or product (Capitalised, an acronym, a version-like name), not a code
    identifier or a path."""
    m = re.search(rf"(?<![\w`/.]){re.escape(token)}(?![\w`/])", original, re.IGNORECASE)
    if not m or not original[: m.start()].strip(" *_#>-:"):
        return False  # absent, or the sentence's first word (capitalised anyway)
    raw = m.group()
    if re.search(r"[_/]|[a-z][A-Z]|\.\w", raw) or raw.lower() in text._STOP:
        return False
    return raw[0].isupper() or bool(re.search(r"\d", raw))


def edited_sentences(a: str, b: str) -> list[Change]:
    ya, yb = _ANSWER.match(a.strip()), _ANSWER.match(b.strip())
    if ya and yb and ya.group(1).lower() != yb.group(1).lower():
        return [Change("polarity", 0.9, f"the answer flipped: {ya.group(1)} → {yb.group(1)}")]
    whole_a, whole_b = a.lower(), b.lower()
    for x, y in near_pairs(text.prose(a), text.prose(b)):
        fx, fy = _figures(x), _figures(y)
        gone, new = fx - fy, fy - fx
        if gone and new:
            return [Change("figure-changed", 0.9, f"{_short(gone)} → {_short(new)} in “{y[:90]}”")]
        neg_x = len(_NEGATION.findall(_ANSWER.sub("", x.strip())))
        neg_y = len(_NEGATION.findall(_ANSWER.sub("", y.strip())))
        if neg_x != neg_y:
            return [Change("polarity", 0.85, f"negation changed in “{y[:90]}”")]
        for op, ha, hb in _hunks(x, y):
            if op != "replace":
                continue
            sa, sb = set(ha), set(hb)
            flipped = [
                f"{p}/{q}" for p, q in _OPPOSITES if (p in sa and q in sb) or (q in sa and p in sb)
            ]
            if flipped:
                return [Change("polarity", 0.85, f"opposite {flipped[0]} in “{y[:90]}”")]
            gone_names = [t for t in ha if _named(t, x) and t not in whole_b]
            new_names = [t for t in hb if _named(t, y) and t not in whole_a]
            if gone_names and new_names:
                return [
                    Change(
                        "term-swapped", 0.8,
                        f"{_short(gone_names, 2)} → {_short(new_names, 2)} in “{y[:90]}”",
                    )
                ]  # fmt: skip
    return []


_LABELLED = re.compile(
    r"^[\W_]*(?:decision|recommendation|recommended|verdict|answer|short answer|bottom line|"
    r"conclusion|choice|pick|tl;?dr|status)[*_]*\s*[:：—-]\s*[*_]*(.+)$",
    re.IGNORECASE | re.M,
)
# A bold opening sentence ("**Approved.**"), not a bold heading or list label.
_BOLD_LEAD = re.compile(r"^[^\w\n*]*\*\*([^*\n]{2,80}?[.!])\*\*", re.M)
_APPROVE = re.compile(
    r"\b(?:approved?|yes|go|looks good|lgtm|sound|fine|ok(?:ay)?|accept(?:ed)?|safe|valid|"
    r"correct|keep)\b",
    re.I,
)
_REJECT = re.compile(
    r"\b(?:reject(?:ed)?|no|not|don'?t|change(?:s)? (?:recommended|needed|required)|revise|"
    r"blocked?|unsafe|invalid|incorrect|replace|avoid|stop|hold)\b",
    re.I,
)


def _lead(source: str) -> str | None:
    """The answer's bottom line: a labelled decision line, or a bold opening phrase."""
    found = _LABELLED.search(source)
    if found:
        return found.group(1).strip()
    head = "\n".join(source.strip().splitlines()[:3])
    bold = _BOLD_LEAD.search(head)
    return bold.group(1).strip() if bold else None


def _lead_names(line: str) -> set[str]:
    names = re.findall(r"\b[A-Z][\w+#-]*|\b\w*\d\w*", line)
    return {n.lower() for n in names if n.lower() not in text._STOP and len(n) > 1}


def _stance(line: str) -> str | None:
    yes, no = bool(_APPROVE.search(line)), bool(_REJECT.search(line))
    return "approve" if yes and not no else "reject" if no and not yes else None


def bottom_line(a: str, b: str) -> list[Change]:
    """The decision the answer leads with is another one: another named choice, or approval
    turned into rejection."""
    la, lb = _lead(a), _lead(b)
    if not (la and lb):
        return []
    na, nb = _lead_names(la), _lead_names(lb)
    if na and nb and not na & nb:
        return [Change("decision", 0.85, f"“{la[:60]}” → “{lb[:60]}”")]
    sa, sb = _stance(la), _stance(lb)
    if sa and sb and sa != sb:
        return [Change("decision", 0.85, f"{sa} → {sb}: “{la[:60]}” → “{lb[:60]}”")]
    return []


# ---- whole edits ------------------------------------------------------------------------------


def dropped_item(a: str, b: str) -> list[Change]:
    """A list item of `a` gone from `b` while every other item is kept nearly as it was."""
    ia = [x for x in text.list_items(a) if not text.URL.search(x)]
    ib = [x for x in text.list_items(b) if not text.URL.search(x)]
    if len(ib) < 2 or len(ib) >= len(ia):
        return []
    pool = [tokens(x) for x in ib]
    best = [max((ratio(tokens(x), p) for p in pool), default=0.0) for x in ia]
    missing = [x for x, r in zip(ia, best, strict=True) if r < 0.6]
    kept = sum(r >= 0.8 for r in best)
    # An edit removes a step and keeps the rest where it was; a resample that lists fewer of
    # the same points rewrites around them or puts them in another order.
    if missing and kept >= len(ia) - len(missing) - 1 and _kept_in_place(a, b, ia, pool):
        return [
            Change("step-dropped", 0.8, f"{len(ia)} → {len(ib)} items; missing “{missing[0][:80]}”")
        ]
    return []


def _kept_in_place(a: str, b: str, ia: list[str], pool: list[list[str]]) -> bool:
    """`b`'s items appear in `a` in the same order, and the text around the lists is the same."""
    where = [max(range(len(ia)), key=lambda i: ratio(tokens(ia[i]), p)) for p in pool]
    in_order = all(x < y for x, y in pairwise(where))
    rest_a, rest_b = _outside_lists(a), _outside_lists(b)
    # `b`'s prose is `a`'s with cuts (a dropped step may have taken a continuation line).
    return in_order and (rest_a == rest_b or contained(rest_b, rest_a) >= 0.9)


def _outside_lists(source: str) -> list[str]:
    return [
        t for line in source.splitlines() if not text.LIST_ITEM.match(line) for t in tokens(line)
    ]


def new_sources(a: str, b: str) -> list[Change]:
    ua = {u.rstrip(".").lower() for u in text.URL.findall(a)}
    ub = {u.rstrip(".").lower() for u in text.URL.findall(b)}
    hosts_a = {re.sub(r"^https?://(www\.)?", "", u).split("/")[0] for u in ua}
    new = {u for u in ub - ua if re.sub(r"^https?://(www\.)?", "", u).split("/")[0] not in hosts_a}
    if new:
        return [Change("new-source", 0.75, f"cites {_short(new, 2)}, which v1 did not")]
    return []


_LOCAL_DEF = re.compile(
    r"\b(?:def|function|class|fn|func)\s+([A-Za-z_]\w*)|"
    r"\b([A-Za-z_]\w*)\s*[:=]\s*(?:function|\(|async\s*\()"
)


def _line_tokens(line: str, local: set[str]) -> list[str]:
    toks = code.behaviour_tokens(line)
    out = []
    for tok, n in sorted(toks.items()):
        if tok.startswith(".") and tok[1:] in local:
            continue  # a method this code defines: renaming it is a rename
        if tok.startswith("str:") and not re.fullmatch(r"[\w.:/@-]{1,40}", tok[4:]):
            continue  # message text, not data
        out += [tok] * n
    return out


_ARITH = re.compile(r"(\d+(?:\.\d+)?)\s*\*\s*(\d+(?:\.\d+)?)")
# Added to a line that was kept, these widen what it matches or invert what it tests.
_WIDENING = frozenset({"kw:or", "op:||", "kw:not", "op:!"})


def _folded(source: str) -> str:
    """Constant products folded (`5 * 60` is `300`): the same value written otherwise."""
    while True:
        folded = _ARITH.sub(lambda m: f"{float(m.group(1)) * float(m.group(2)):g}", source)
        if folded == source:
            return folded
        source = folded


def _code_lines(source: str, local: set[str]) -> list[str]:
    lines = (" ".join(_line_tokens(x, local)) for x in _folded(source).splitlines())
    return [x for x in lines if x]


def code_edits(a: str, b: str) -> list[Change]:
    """What `b`'s code no longer does that `a`'s did, line by line, read by behaviour (names,
    comments and layout dropped): a token of `a`'s changed lines missing from `b`'s, or a kept
    line widened (`or`, `not` added). Lines only added are extra detail; moved lines are moves."""
    ca, cb = code.program_of(a), code.program_of(b)
    if not ca.strip() or not cb.strip():
        return []
    local = {m.group(1) or m.group(2) for m in _LOCAL_DEF.finditer(ca + "\n" + cb)}
    if ratio(tokens(ca), tokens(cb)) < 0.6 and contained(tokens(cb), tokens(ca)) < 0.9:
        return []  # rewritten, not edited: behaviour is for the checks (layer 3) to compare
    la, lb = _code_lines(ca, local), _code_lines(cb, local)
    set_a, set_b = set(la), set(lb)
    gone_lines: list[str] = []
    new_lines: list[str] = []
    widened: Counter[str] = Counter()
    for op, i1, i2, j1, j2 in SequenceMatcher(None, la, lb, autojunk=False).get_opcodes():
        if op in ("replace", "delete"):
            gone_lines += [x for x in la[i1:i2] if x not in set_b]
        if op in ("replace", "insert"):
            new_lines += [x for x in lb[j1:j2] if x not in set_a]
        if op == "replace":
            old = Counter(" ".join(x for x in la[i1:i2] if x not in set_b).split())
            new = Counter(" ".join(x for x in lb[j1:j2] if x not in set_a).split())
            widened += Counter({t: n for t, n in (new - old).items() if t in _WIDENING})
    gone = Counter(" ".join(gone_lines).split()) - Counter(" ".join(new_lines).split())
    if gone:
        added = Counter(" ".join(new_lines).split()) - Counter(" ".join(gone_lines).split())
        diff = [f"-{t}" for t in sorted(gone)] + [f"+{t}" for t in sorted(added)]
        return [Change("code-changed", 0.9, f"its code no longer does the same: {_short(diff, 6)}")]
    if widened:
        return [Change("code-changed", 0.85, f"a kept line now also has {_short(set(widened))}")]
    return []


def compare(agent: str, a: str, b: str) -> list[Change]:
    edit = is_edit(a, b)
    changes, same_data = data(a, b, edit)
    if same_data:
        return changes
    changes += edited_sentences(a, b) or bottom_line(a, b)
    changes += code_edits(a, b)  # it decides itself whether the code was edited or rewritten
    if edit:
        changes += dropped_item(a, b)
        changes += new_sources(a, b)
    return changes
