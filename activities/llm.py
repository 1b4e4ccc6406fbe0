"""LLM providers behind one small interface: text in, text + token usage out.

SDK clients are built with `max_retries=0`: Temporal owns retries (see `activities/errors.py`), so
a failing call is retried with visible attempts in the workflow history instead of being hidden
inside the SDK. Providers: `groq` (the groq SDK), `openai` (any OpenAI-compatible endpoint: Ollama,
vLLM, LM Studio, llama.cpp) and `scripted` (canned offline answers, always labelled as such).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
from dataclasses import dataclass
from typing import Any, Protocol

import groq
import openai
from pydantic import BaseModel

from activities.errors import MalformedResponseError
from crewline.settings import Settings

SCRIPTED_LABEL = "[scripted offline provider: canned demo output, not a real model]"


@dataclass(frozen=True)
class LLMRequest:
    agent: str
    model: str
    system: str
    user: str
    max_tokens: int
    temperature: float = 0.2
    # Opaque run id sent as the OpenAI-style `user` field (abuse monitoring; never a secret).
    tag: str | None = None


class LLMResponse(BaseModel):
    text: str
    model: str
    provider: str
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int = 0
    # The provider's own usage object, for genai-prices' usage extraction.
    raw_usage: dict[str, Any] | None = None
    usage_estimated: bool = False
    scripted: bool = False
    # The provider's rate-limit headers (x-ratelimit-*), for the shared limiter to adapt to.
    rate_headers: dict[str, str] = {}


class LLMProvider(Protocol):
    name: str
    key_var: str
    url: str  # where its requests go (for messages; never carries a key)

    async def complete(self, request: LLMRequest) -> LLMResponse: ...

    def secrets(self) -> list[str]: ...


def _parse_completion(raw: Any, provider: str, fallback_model: str) -> LLMResponse:
    """Pull text and usage out of an OpenAI-style chat completion, or say what is wrong."""
    choices = getattr(raw, "choices", None)
    if not choices:
        raise MalformedResponseError("response has no choices")
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None)
    if not isinstance(text, str) or not text.strip():
        raise MalformedResponseError("response has an empty message")
    usage = getattr(raw, "usage", None)
    details = getattr(usage, "prompt_tokens_details", None)
    return LLMResponse(
        text=text,
        model=getattr(raw, "model", None) or fallback_model,
        provider=provider,
        prompt_tokens=getattr(usage, "prompt_tokens", None),
        completion_tokens=getattr(usage, "completion_tokens", None),
        cached_tokens=getattr(details, "cached_tokens", None) or 0,
        raw_usage=usage.model_dump(exclude_none=True) if usage is not None else None,
    )


class _ChatCompletionsProvider:
    """Both SDKs are generated from the same OpenAI-style API: one call path serves both."""

    name: str
    key_var: str
    url: str
    _key: str
    _client: Any
    _validation_error: type[Exception]

    async def complete(self, request: LLMRequest) -> LLMResponse:
        try:
            # The raw response: its rate-limit headers tell the shared limiter what is left.
            answer = await self._client.chat.completions.with_raw_response.create(
                model=request.model,
                messages=[
                    {"role": "system", "content": request.system},
                    {"role": "user", "content": request.user},
                ],
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                **({"user": request.tag} if request.tag else {}),
            )
            raw = answer.parse()
            if inspect.isawaitable(raw):  # groq's async raw response parses asynchronously
                raw = await raw
        except (self._validation_error, json.JSONDecodeError) as exc:
            raise MalformedResponseError(f"{type(exc).__name__}: {exc}") from exc
        parsed = _parse_completion(raw, self.name, request.model)
        parsed.rate_headers = {
            k: v for k, v in answer.headers.items() if k.lower().startswith("x-ratelimit-")
        }
        return parsed

    def secrets(self) -> list[str]:
        return [self._key]


class GroqProvider(_ChatCompletionsProvider):
    name = "groq"
    key_var = "GROQ_API_KEY"
    _validation_error = groq.APIResponseValidationError

    def __init__(self, settings: Settings) -> None:
        assert settings.groq_api_key is not None
        self._key = settings.groq_api_key.get_secret_value()
        self.url = settings.groq_base_url or "https://api.groq.com"
        self._client = groq.AsyncGroq(
            api_key=self._key,
            base_url=settings.groq_base_url,
            max_retries=0,
            timeout=settings.llm_timeout_s,
        )


class OpenAICompatProvider(_ChatCompletionsProvider):
    name = "openai"
    key_var = "LLM_API_KEY"
    _validation_error = openai.APIResponseValidationError

    def __init__(self, settings: Settings) -> None:
        # Local servers (Ollama, vLLM) ignore the key, but the SDK insists on one.
        self._key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else "unused"
        self.url = settings.llm_base_url or "?"
        self._client = openai.AsyncOpenAI(
            api_key=self._key,
            base_url=settings.llm_base_url,
            max_retries=0,
            timeout=settings.llm_timeout_s,
        )


class ScriptedProvider:
    """Deterministic offline answers for tests and demos. Every answer carries `SCRIPTED_LABEL`."""

    name = "scripted"
    key_var = "LLM_PROVIDER"
    url = "offline"

    def __init__(self, settings: Settings) -> None:
        self._delay = settings.scripted_delay_s

    async def complete(self, request: LLMRequest) -> LLMResponse:
        from activities.scripted import scripted_answer

        if self._delay:
            await asyncio.sleep(self._delay)
        # The label names the system prompt it was given (first hex of its SHA-256), so a prompt
        # change shows in the answer: a demo of versions can see which prompt a worker serves.
        fingerprint = hashlib.sha256(request.system.encode()).hexdigest()[:6]
        label = SCRIPTED_LABEL.removesuffix("]") + f" · prompt {fingerprint}]"
        text = f"{label}\n{scripted_answer(request.agent, request.user)}"
        return LLMResponse(
            text=text,
            model=request.model,
            provider=self.name,
            # No real tokenizer behind canned text: counts are estimates (~4 chars per token).
            prompt_tokens=(len(request.system) + len(request.user)) // 4 + 1,
            completion_tokens=len(text) // 4 + 1,
            usage_estimated=True,
            scripted=True,
        )

    def secrets(self) -> list[str]:
        return []


def build_provider(settings: Settings) -> LLMProvider:
    """The configured provider; raises `ConfigurationError` saying what to set."""
    name = settings.provider()
    if name == "groq":
        return GroqProvider(settings)
    if name == "openai":
        return OpenAICompatProvider(settings)
    return ScriptedProvider(settings)
