"""The divergence detector: does the candidate's output regress from the active version's in a
way a user would notice — or is it only another honest generation of the same answer?

`compare(agent, a, b)` → `Verdict` (layers 1-2, offline); `detector` documents the layers and the
score; `judge` is layer 4; `evaluate` scores labelled pairs.
"""

from versioning.divergence.detector import DEFAULT_THRESHOLD, Finding, Verdict, compare

__all__ = ["DEFAULT_THRESHOLD", "Finding", "Verdict", "compare"]
