"""Is the LLM provider reachable? A cheap request (its model list: no tokens, nothing billed),
answered from a short cache so `/health` polled by a dashboard or a load balancer does not turn
into traffic to the provider. The key is sent as the SDK sends it and never appears in the
answer: a rejected key is "rejected (401)", not the key."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import groq
import openai

from crewline.settings import ConfigurationError, Settings

CACHE_S = 10.0
TIMEOUT_S = 3.0
GROQ_DEFAULT_URL = "https://api.groq.com"


@dataclass
class ProviderProbe:
    """The last probe's answer per process, reused for `CACHE_S`."""

    _last: tuple[float, dict[str, Any]] | None = field(default=None)

    async def check(self, settings: Settings) -> dict[str, Any]:
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < CACHE_S:
            return self._last[1]
        answer = await _probe(settings)
        self._last = (now, answer)
        return answer


def _where(settings: Settings, provider: str) -> str:
    if provider == "groq":
        return settings.groq_base_url or GROQ_DEFAULT_URL
    return settings.llm_base_url or "?"


async def _probe(settings: Settings) -> dict[str, Any]:
    try:
        provider = settings.provider()
    except ConfigurationError as exc:
        return {"ok": False, "error": str(exc)}
    if provider == "scripted":
        return {"ok": True, "provider": provider, "note": "offline canned answers"}
    url = _where(settings, provider)
    client: Any
    if provider == "groq":
        key = settings.groq_api_key.get_secret_value() if settings.groq_api_key else ""
        client = groq.AsyncGroq(
            api_key=key, base_url=settings.groq_base_url, max_retries=0, timeout=TIMEOUT_S
        )
        errors: tuple[type[Exception], ...] = (groq.APIStatusError, groq.APIConnectionError)
    else:
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else "unused"
        client = openai.AsyncOpenAI(
            api_key=key, base_url=settings.llm_base_url, max_retries=0, timeout=TIMEOUT_S
        )
        errors = (openai.APIStatusError, openai.APIConnectionError)
    try:
        await client.models.list()
    except errors as exc:
        status = getattr(exc, "status_code", None)
        if status in (401, 403):
            return {"ok": False, "provider": provider, "url": url,
                    "error": f"{provider} rejected the key ({status}) at {url}"}  # fmt: skip
        if status is not None:  # it answered: reachable (a server without a model list)
            return {"ok": True, "provider": provider, "url": url}
        return {"ok": False, "provider": provider, "url": url,
                "error": f"{provider} unreachable at {url} ({type(exc).__name__})"}  # fmt: skip
    finally:
        await client.close()
    return {"ok": True, "provider": provider, "url": url}
