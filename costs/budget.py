"""Budget reservations: reserve a call's worst case before making it, so spend never passes budget.

Worst case = estimated prompt tokens * input price + `max_tokens` * output price. The completion
part is a hard bound (the provider stops at `max_tokens`); the prompt part uses a deliberately
pessimistic estimate (1 token per 3 UTF-8 bytes + per-message overhead; real tokenizers average
about 4 characters per token in English). If the worst case does not fit, `max_tokens` is shrunk
to fit when that still leaves a useful answer, otherwise the call is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from costs.pricing import Pricer

MESSAGE_OVERHEAD_TOKENS = 16


def estimate_tokens(*texts: str) -> int:
    """Pessimistic offline token estimate (no tokenizer download needed)."""
    return sum(len(t.encode("utf-8")) // 3 + MESSAGE_OVERHEAD_TOKENS for t in texts)


@dataclass(frozen=True)
class CallPlan:
    max_tokens: int
    reserved_usd: Decimal
    shrunk: bool


class BudgetExhaustedError(Exception):
    def __init__(self, needed_usd: Decimal, left_usd: Decimal) -> None:
        super().__init__(f"needs up to ${needed_usd:.6f} but only ${left_usd:.6f} is left")
        self.needed_usd, self.left_usd = needed_usd, left_usd


def plan_call(
    pricer: Pricer,
    model: str,
    prompt_tokens: int,
    max_tokens: int,
    left_usd: Decimal | None,
    min_tokens: int,
) -> CallPlan:
    worst = pricer.price(model, prompt_tokens, max_tokens).cost_usd
    if left_usd is None or worst <= left_usd:
        return CallPlan(max_tokens, worst, shrunk=False)
    prompt_cost = pricer.price(model, prompt_tokens, 0).cost_usd
    per_output_token = pricer.price(model, 0, 1_000_000).cost_usd / 1_000_000
    if per_output_token > 0 and left_usd > prompt_cost:
        fits = int((left_usd - prompt_cost) / per_output_token)
        fits = min(fits, max_tokens)
        while fits >= min_tokens:  # guard against non-linear (tiered) prices
            cost = pricer.price(model, prompt_tokens, fits).cost_usd
            if cost <= left_usd:
                return CallPlan(fits, cost, shrunk=True)
            fits = int(fits * 0.95)
    raise BudgetExhaustedError(worst, left_usd)
