"""The divergence detector: does v2's output regress from v1's in a way a user would notice?

`compare(agent, v1_output, v2_output)` → `Verdict(score in [0, 1], reasons, alert)`. Offline and
deterministic; see `signals.py` for what is compared and `evaluate.py` for scoring labelled pairs.
"""

from versioning.divergence.detector import DEFAULT_THRESHOLDS, Verdict, compare

__all__ = ["DEFAULT_THRESHOLDS", "Verdict", "compare"]
