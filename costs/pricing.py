"""Usage → cost in USD.

Prices come from `genai-prices` (offline price data, Decimal arithmetic; Groq responses go
through its usage-extraction path), or from the explicit `MODEL_PRICES` override table for local
or OpenAI-compatible models — a local model is free only if it is priced 0 explicitly. The
`scripted` provider is not a real model and costs nothing. An unknown model is a
`UnknownPriceError` at worker start-up, never a $0 row.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import genai_prices
from genai_prices import Usage, calc_price, extract_usage

from crewline.settings import ConfigurationError, ModelPrice

MTOK = Decimal(1_000_000)


class UnknownPriceError(ConfigurationError, LookupError):
    """No price for a model: a configuration to fix (the message says what to set)."""


@dataclass(frozen=True)
class Priced:
    cost_usd: Decimal
    input_per_mtok: Decimal | None
    output_per_mtok: Decimal | None
    source: str


class Pricer:
    def __init__(self, provider: str, overrides: dict[str, ModelPrice]) -> None:
        self.provider = provider
        self._overrides = overrides

    def _override(self, model: str) -> ModelPrice | None:
        return self._overrides.get(f"{self.provider}/{model}") or self._overrides.get(model)

    def check(self, model: str) -> None:
        """Raise `UnknownPriceError` (saying what to set) if `model` cannot be priced."""
        self.price(model, 1, 1)

    def price(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        cached_tokens: int = 0,
        raw_usage: dict[str, Any] | None = None,
    ) -> Priced:
        override = self._override(model)
        if self.provider == "scripted" and override is None:
            # Free unless MODEL_PRICES gives the demo model a price (to see spend in a demo).
            return Priced(Decimal(0), Decimal(0), Decimal(0), "scripted provider: not a real model")
        if override is not None:
            cost = (
                prompt_tokens * override.input_per_mtok
                + completion_tokens * override.output_per_mtok
            ) / MTOK
            return Priced(
                cost, override.input_per_mtok, override.output_per_mtok, "MODEL_PRICES override"
            )
        try:
            if raw_usage is not None and self.provider == "groq":
                extracted = extract_usage({"model": model, "usage": raw_usage}, provider_id="groq")
                calc = extracted.calc_price()
            else:
                usage = Usage(
                    input_tokens=prompt_tokens,
                    output_tokens=completion_tokens,
                    cache_read_tokens=cached_tokens or None,
                )
                calc = calc_price(usage, model, provider_id=self.provider)
        except LookupError as exc:
            raise UnknownPriceError(
                f"no price known for {self.provider}/{model}: set MODEL_PRICES, e.g. "
                f'MODEL_PRICES=\'{{"{model}": {{"input_per_mtok": "0.59", '
                f'"output_per_mtok": "0.79"}}}}\' (use "0" for a local model)'
            ) from exc
        unit = calc.model_price
        return Priced(
            calc.total_price,
            unit.input_mtok if isinstance(unit.input_mtok, Decimal) else None,
            unit.output_mtok if isinstance(unit.output_mtok, Decimal) else None,
            f"genai-prices {genai_prices.__version__}",
        )
