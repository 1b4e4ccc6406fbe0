"""Code and structured data, compared by what changes behaviour.

Code is reduced to its behaviour-relevant tokens — operators, comparisons, keywords, literals,
called and accessed member names — with local names, comments, docstrings and layout dropped,
so a rename or a reformat compares equal and a flipped `<`, a dropped `+ 1`, a removed call or a
`verify` turned `decode` does not. JSON and YAML are parsed and compared as data.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import yaml

from versioning.divergence.text import FENCE, FILE_BLOCK, code_blocks

_TOKEN = re.compile(
    r"""(?P<comment>\#[^\n]*|//[^\n]*|/\*.*?\*/|--\s[^\n]*)
    |(?P<docstr>\"\"\".*?\"\"\"|'''.*?''')
    |(?P<str>"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|`(?:\\.|[^`\\])*`)
    |(?P<num>\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b)
    |(?P<member>(?<=\.)[A-Za-z_]\w*)
    |(?P<name>[A-Za-z_]\w*)
    |(?P<op>->|=>|\*\*=?|//=?|<<=?|>>=?|[<>!=]=?=?|&&|\|\||[-+*/%&|^~]=?|\?\?|!|:=)""",
    re.VERBOSE | re.DOTALL,
)
# Words whose presence or absence changes what code does (any language crewline sees).
KEYWORDS = frozenset(
    """if else elif while for in not and or is return yield break continue try except finally
    raise throw catch await async with lambda def class function const let var new delete
    true false none null undefined nil default select where join left right inner outer on
    group by having order limit offset distinct insert update set values into create drop
    alter table index exists between like union all any case when then end asc desc count
    sum avg min max""".split()  # noqa: SIM905
)
_IGNORED_OPS = frozenset({"->", "=>"})  # type-hint and arrow syntax: layout, not behaviour


_GLOB = re.compile(r"::\*|\bimport\s+\*|\.\*(?=;)")  # glob imports: which names, not behaviour


def behaviour_tokens(code: str) -> Counter[str]:
    found: Counter[str] = Counter()
    code = _GLOB.sub(" ", code)
    for match in _TOKEN.finditer(code):
        kind = match.lastgroup
        value = match.group()
        if kind in ("comment", "docstr"):
            continue
        if kind == "str":
            inner = value[1:-1].strip()
            # Literal text matters when it is data (a flag, a key, a mode); prose does not.
            found["str:" + inner.lower()] += 1 if len(inner.split()) <= 2 and inner else 0
        elif kind == "num":
            found["num:" + f"{float(value):g}"] += 1
        elif kind == "member":
            found["." + value] += 1
        elif kind == "name":
            low = value.lower()
            if low in KEYWORDS:
                found["kw:" + low] += 1
        elif kind == "op" and value not in _IGNORED_OPS:
            found["op:" + value] += 1
    return +found


def _parse_data(text: str) -> Any:
    stripped = text.strip()
    if not stripped:
        return None
    if stripped[0] in "[{":
        return json.loads(stripped)
    loaded = yaml.safe_load(stripped)
    return loaded if isinstance(loaded, dict | list) else None


def data_of(text: str) -> tuple[str, Any] | None:
    """('json'|'yaml', parsed) when the answer is (or holds one block of) structured data;
    ('invalid-json', error) when it plainly tries to be JSON and is not."""
    stripped = text.strip()
    candidates: list[tuple[str, str]] = []
    if stripped[:1] in "[{":
        candidates.append(("json", stripped))
    for match in FENCE.finditer(text):
        head = text[match.start() : match.start() + 12].lower()
        if "json" in head:
            candidates.append(("json", match.group(1)))
        elif "yaml" in head or "yml" in head:
            candidates.append(("yaml", match.group(1)))
    for kind, body in candidates:
        try:
            parsed = json.loads(body) if kind == "json" else _parse_data(body)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            if kind == "json":
                return "invalid-json", str(exc)[:120]
            continue
        if parsed is not None:
            return kind, parsed
    return None


def schema(value: Any, path: str = "$") -> set[str]:
    """Key paths with their value types: what a consumer of the data relies on."""
    if isinstance(value, dict):
        out = {f"{path}:object"}
        for key, item in value.items():
            out |= schema(item, f"{path}.{key}")
        return out
    if isinstance(value, list):
        out = {f"{path}:array"}
        for item in value:
            out |= schema(item, f"{path}[]")
        return out
    kind = (
        "number"
        if isinstance(value, int | float) and not isinstance(value, bool)
        else (type(value).__name__)
    )
    return {f"{path}:{kind}"}


def canonical(value: Any) -> Any:
    """Order-insensitive form: key order never matters; list order is compared both ways."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def same_multiset(a: list[Any], b: list[Any]) -> bool:
    dump = lambda items: sorted(json.dumps(canonical(i), sort_keys=True) for i in items)  # noqa: E731
    return dump(a) == dump(b)


def code_of(text: str) -> str:
    return "\n".join(code_blocks(text))


_DATA_FENCE = re.compile(r"```(?:json|jsonc|yaml|yml|csv|tsv|text|txt|output|console|log)\b", re.I)


def program_of(text: str) -> str:
    """The code that runs: code blocks without the data, sample output and examples they show."""
    kept = [m.group(1) for m in FILE_BLOCK.finditer(text)]
    for match in FENCE.finditer(text):
        body = match.group(1)
        if _DATA_FENCE.match(text, match.start()):
            continue
        try:
            json.loads(body)
            continue  # data, whatever the fence says
        except ValueError:
            kept.append(body)
    return "\n".join(kept)
