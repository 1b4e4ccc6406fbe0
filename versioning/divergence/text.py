"""Reading agent outputs as data: prose vs code, sentences, numbers with units, salient terms.

Pure functions, no I/O. What two honest versions of an answer keep — figures, named things,
commands, sources — is extracted here so the detector can compare exactly that.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache

FENCE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
FILE_BLOCK = re.compile(r"^=== FILE: [^\n]*===\n(.*?)(?:^=== END FILE ===|\Z)", re.M | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
URL = re.compile(r"https?://[^\s)>\]\"'`,]+")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[*])|\n+")
LIST_MARKER = re.compile(r"^\s*(?:[-*+•]|\d{1,2}[.)]|#+|>|\[[ xX]\])\s+", re.M)
WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")

_WORD_NUMBERS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50", "hundred": "100",
    "half": "0.5", "once": "1", "twice": "2", "single": "1", "dozen": "12",
}  # fmt: skip
_UNITS = (
    r"%|percent|°\s?[cf]|km/s|m/s|km/h|mph|kph|ms|µs|ns|kb|mb|gb|tb|kib|mib|gib|km|cm|mm|m|kg|mg|"
    r"g|lb|lbs|oz|ml|l|k|x|mg/day|mg/kg|usd|eur|gbp|"
    r"seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?|"
    r"cups?|tbsp|tsp|tablespoons?|teaspoons?|steps?|times|people|users?|items?|files?"
)
NUMBER = re.compile(
    r"(?P<cur>[$€£])?\s?(?P<num>\d+(?:[.,]\d+)*)(?:\s?(?P<unit>" + _UNITS + r"))?(?![\w/])",
    re.IGNORECASE,
)
MONTHS = (
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december",
)  # fmt: skip


def code_blocks(text: str) -> list[str]:
    """Fenced code and `=== FILE ===` blocks."""
    return [m.group(1) for m in FENCE.finditer(text)] + [
        m.group(1) for m in FILE_BLOCK.finditer(text)
    ]


def prose(text: str) -> str:
    """The text without its code blocks."""
    return FILE_BLOCK.sub(" ", FENCE.sub(" ", text))


def sentences(text: str) -> list[str]:
    plain = LIST_MARKER.sub("", prose(text))
    parts = (p.strip(" *_#|-\t") for p in SENTENCE_END.split(plain))
    return [p for p in parts if len(WORD.findall(p)) >= 3]


def words(text: str) -> list[str]:
    return [w.lower().strip("'’") for w in WORD.findall(text)]


def _canonical_number(raw: str) -> str:
    value = raw.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", raw) else raw
    value = value.replace(",", ".")
    try:
        number = float(value)
    except ValueError:
        return raw
    return f"{number:g}"


def _unit(raw: str | None) -> str:
    if not raw:
        return ""
    unit = raw.lower().replace(" ", "")
    for long, short in (("percent", "%"), ("minute", "min"), ("second", "s"), ("hour", "h")):
        unit = unit.replace(long, short)
    return unit.rstrip("s") if len(unit) > 3 else unit


def numbers(text: str) -> Counter[str]:
    """Figures with their unit or currency (list numbering and version-like ids left out)."""
    found: Counter[str] = Counter()
    body = LIST_MARKER.sub(" ", text)
    lowered = f" {body.lower()} "
    for word, digit in _WORD_NUMBERS.items():
        lowered = re.sub(rf"(?<=[\s(]){word}(?=[\s-])", digit, lowered)
    for match in NUMBER.finditer(lowered):
        raw = match.group("num")
        if len(raw) > 12:  # ids, hashes, timestamps: not figures a reader weighs
            continue
        unit = _unit(match.group("unit"))
        cur = match.group("cur") or ""
        found[f"{cur}{_canonical_number(raw)}{unit}"] += 1
    return found


_STOP = frozenset(
    """a an the and or but if then else of to in on at by for with from as is are was were be
    been being it its this that these those you your we our they their he she his her i me
    my not no yes do does did done can could should would will shall may might must have has
    had so than too very just also only more most less least all any each every some such
    own same other into over under about after before up down out off again further once
    here there when where why how what which who whom both few nor s t don now use using
    used step steps note notes see need needs one""".split()  # noqa: SIM905
)


def salient_terms(text: str) -> set[str]:
    """What a paraphrase keeps: named things, technical tokens, inline code, URLs."""
    terms: set[str] = set()
    for span in INLINE_CODE.findall(text):
        terms.add("`" + span.strip().lower())
    for url in URL.findall(text):
        terms.add(url.rstrip(".").lower())
    plain = URL.sub(" ", INLINE_CODE.sub(" ", prose(text)))
    for line in plain.splitlines():
        tokens = re.findall(r"[A-Za-z][\w.+#/-]*[\w+#]|[A-Za-z]", line)
        for i, tok in enumerate(tokens):
            low = tok.lower()
            if low in _STOP or len(tok) < 2:
                continue
            technical = bool(re.search(r"[a-z][A-Z]|[_./#+]|\d", tok)) or (
                "-" in tok and any(c.isupper() for c in tok)
            )
            acronym = tok.isupper() and len(tok) >= 2
            named = tok[0].isupper() and i > 0 and not tokens[i - 1].endswith(":")
            if technical or acronym or named:
                terms.add(low)
        terms.update(t.lower() for t in re.findall(r"\b\d+[A-Za-z][\w-]*|\b\d+-[A-Za-z]\w*", line))
    return terms


# --- whole-answer properties -------------------------------------------------------------------

REFUSAL = re.compile(
    r"\b(i\s*(?:am|'m)\s*(?:sorry|afraid|unable|not able)|i\s*(?:can(?:no|')t|won't|will not|"
    r"must decline|cannot)\s+(?:help|assist|provide|do|write|create|comply|share|support|"
    r"fulfil|fulfill)|(?:can(?:no|')t|unable to)\s+(?:help|assist)\s+with|"
    r"not (?:able|allowed|permitted) to (?:help|assist|provide)|against (?:my|our) (?:policy|"
    r"guidelines)|i\s*(?:have to|must) (?:decline|refuse))",
    re.IGNORECASE,
)
PLACEHOLDER = re.compile(r"\b(tbd|todo|tba|n/a|lorem ipsum|placeholder|coming soon|\.\.\.)\b", re.I)


LIST_ITEM = re.compile(
    r"^\s*(?:[-*+•]|\d{1,2}[.):]|\[[ xX]\]|(?:step|phase|stage)\s+\d{1,2}[.:),]?|[a-h][.)])"
    r"\s+(.*\S)",
    re.M | re.IGNORECASE,
)


def list_items(text: str) -> list[str]:
    """Bulleted or numbered items of three words or more (steps, checklist entries)."""
    return [
        m.group(1) for m in LIST_ITEM.finditer(prose(text)) if len(WORD.findall(m.group(1))) >= 3
    ]


def refuses(text: str) -> bool:
    return bool(REFUSAL.search(text[:600]))


def substance(text: str) -> int:
    """Words of actual content: headings, placeholders and markup left out."""
    kept = []
    for line in text.splitlines():
        stripped = line.strip()
        if (
            not stripped
            or stripped.startswith("#")
            or re.fullmatch(r"[*_=-]+.*[*_=-]+:?", stripped)
        ):
            continue
        kept.append(PLACEHOLDER.sub(" ", stripped))
    return len(WORD.findall(" ".join(kept))) + len(re.findall(r"[{}\[\]()=<>]", text)) // 4


def ends_abruptly(text: str) -> bool:
    """Cut off: an unclosed code fence, or a last line that stops mid-sentence."""
    if text.count("```") % 2:
        return True
    if re.search(r"^=== FILE:", text, re.M) and not re.search(r"=== END FILE ===\s*\Z", text):
        return True
    last = text.rstrip().splitlines()[-1].strip() if text.strip() else ""
    if not last or last.startswith(("```", "|", "#", "===")) or re.search(r"https?://\S+$", last):
        return False
    if re.search(r"[.!?:;)\]}\"'`*>%…]$|\d$", last):
        return False
    bare = LIST_MARKER.sub("", last)
    if LIST_MARKER.match(text.rstrip().splitlines()[-1]):
        # A list item: cut off only if it breaks the punctuation its sibling items keep.
        items = [x.strip() for x in text.splitlines() if LIST_MARKER.match(x)][:-1]
        ends = sum(bool(re.search(r"[.!?:;)\]}\"'`*>%…]$", x)) for x in items)
        return len(items) >= 2 and ends >= 0.8 * len(items) and len(WORD.findall(bare)) >= 3
    # A short list item or a label needs no full stop; a long line ending in a word does, and so
    # does the last line of a wrapped paragraph (its line above is prose too).
    lines = text.rstrip().splitlines()
    above = lines[-2].strip() if len(lines) >= 2 else ""
    continues = (
        bool(above) and not LIST_MARKER.match(lines[-1]) and not above.startswith(("#", "|", "```"))
        and len(WORD.findall(above)) >= 6 and len(WORD.findall(bare)) >= 3
    )  # fmt: skip
    return len(WORD.findall(bare)) >= 6 or continues or bool(re.search(r"[,(\-–—]$", last))


def breaks_its_style(text: str) -> bool:
    """The last line stops unpunctuated where the answer's other lines of its kind all end with
    punctuation: cut off, even when it ends on a figure ("… 160 GSM-7")."""
    lines = [x.strip() for x in prose(text).splitlines() if len(WORD.findall(x)) >= 5]
    if len(lines) < 4 or text.count("```") % 2:
        return False
    last, others = lines[-1], lines[:-1]
    if text.rstrip().splitlines()[-1].strip() != last:
        return False
    punctuated = sum(bool(re.search(r"[.!?:;)\]}\"'`*>%…]$", x)) for x in others)
    return punctuated >= 0.9 * len(others) and not re.search(r"[.!?:;)\]}\"'`*>…]$", last)


@cache
def _identifier() -> object:
    import py3langid

    return py3langid


def language(text: str) -> tuple[str, float]:
    """(ISO code, confidence) of the prose, ('', 0) when there is too little of it."""
    plain = " ".join(sentences(text))
    if len(WORD.findall(plain)) < 12:
        return "", 0.0
    ident = _identifier()
    lang, _ = ident.classify(plain)  # type: ignore[attr-defined]
    ranked = ident.rank(plain)  # type: ignore[attr-defined]
    top = [score for _, score in ranked[:2]]
    margin = (top[0] - top[1]) if len(top) == 2 else 0.0
    return str(lang), float(margin)
