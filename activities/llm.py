"""LLM providers behind one small interface: a conversation and the tools it may call in, the
model's message (text and/or tool calls), why it stopped, and token usage out.

Tool calling uses the OpenAI function-calling format, which both SDKs speak. SDK clients are built
with `max_retries=0`: Temporal owns retries (see `activities/errors.py`), so a failing call is
retried with visible attempts in the workflow history instead of being hidden inside the SDK.
Providers: `groq` (the groq SDK), `openai` (any OpenAI-compatible endpoint: Ollama, vLLM, LM
Studio, llama.cpp) and `scripted` (canned offline answers that also call tools, always labelled
as such).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import groq
import openai
from pydantic import BaseModel

from activities.errors import MalformedResponseError
from crewline.secrets import redact
from crewline.settings import Settings

SCRIPTED_LABEL = "[scripted offline provider: canned demo output, not a real model]"


@dataclass(frozen=True)
class LLMRequest:
    agent: str
    model: str
    messages: list[dict[str, Any]]  # OpenAI-style: system, user, assistant (+tool_calls), tool
    max_tokens: int
    temperature: float = 0.2
    tools: list[dict[str, Any]] = field(default_factory=list)  # function declarations
    # Opaque run id sent as the OpenAI-style `user` field (abuse monitoring; never a secret).
    tag: str | None = None

    @property
    def system(self) -> str:
        return next((m["content"] for m in self.messages if m["role"] == "system"), "")


class ToolCallOut(BaseModel):
    """A tool call the model asked for; `arguments` is the JSON text it wrote (maybe invalid)."""

    id: str
    name: str
    arguments: str


# An answer longer than this is stored cut (the step says so): no agent's answer is that long
# (max_tokens), and a runaway one must not fill the database or freeze the pages that show it.
MAX_ANSWER_CHARS = 200_000


class LLMResponse(BaseModel):
    text: str
    model: str
    provider: str
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int = 0
    tool_calls: list[ToolCallOut] = []
    # "stop", "tool_calls", "length" (cut off at max_tokens), "content_filter", or None.
    finish_reason: str | None = None
    # The provider's own usage object, for genai-prices' usage extraction.
    raw_usage: dict[str, Any] | None = None
    usage_estimated: bool = False
    scripted: bool = False
    # The provider's rate-limit headers (x-ratelimit-*), for the shared limiter to adapt to.
    rate_headers: dict[str, str] = {}

    # Set when the answer was longer than MAX_ANSWER_CHARS: its length before the cut.
    cut_from: int | None = None

    def cleaned(self, secrets: list[str]) -> LLMResponse:
        """What may be stored and shown of this answer: every configured secret and anything
        shaped like a key cut out (a provider that echoes a request header would otherwise put
        the key in the step, the run page, the database and the workflow history), and the text
        capped at MAX_ANSWER_CHARS."""
        text = redact(self.text, secrets)
        cut = len(text) if len(text) > MAX_ANSWER_CHARS else None
        calls = [
            c.model_copy(update={"arguments": redact(c.arguments, secrets)})
            for c in self.tool_calls
        ]
        return self.model_copy(
            update={"text": text[:MAX_ANSWER_CHARS], "tool_calls": calls, "cut_from": cut}
        )

    @property
    def empty(self) -> bool:
        """No text and no tool call: nothing the agent can use (it was still billed)."""
        return not self.text.strip() and not self.tool_calls

    def message(self) -> dict[str, Any]:
        """The assistant message to send back in the next turn's conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]  # fmt: skip
        return message


class LLMProvider(Protocol):
    name: str
    key_var: str
    url: str  # where its requests go (for messages; never carries a key)

    async def complete(self, request: LLMRequest) -> LLMResponse: ...

    def secrets(self) -> list[str]: ...


def _parse_completion(raw: Any, provider: str, fallback_model: str) -> LLMResponse:
    """Pull the message, the tool calls and usage out of an OpenAI-style chat completion, or say
    what is wrong. An empty message with usage is an answer (billed); the caller decides."""
    choices = getattr(raw, "choices", None)
    if not choices:
        raise MalformedResponseError("response has no choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    if message is None:
        raise MalformedResponseError("response has no message")
    text = getattr(message, "content", None) or ""
    if not isinstance(text, str):
        raise MalformedResponseError("response message content is not text")
    calls: list[ToolCallOut] = []
    for call in getattr(message, "tool_calls", None) or []:
        function = getattr(call, "function", None)
        name = getattr(function, "name", None)
        if not name:
            raise MalformedResponseError("a tool call has no function name")
        calls.append(
            ToolCallOut(
                id=getattr(call, "id", None) or f"call-{len(calls)}",
                name=name,
                arguments=getattr(function, "arguments", None) or "{}",
            )
        )
    usage = getattr(raw, "usage", None)
    details = getattr(usage, "prompt_tokens_details", None)
    return LLMResponse(
        text=text,
        model=getattr(raw, "model", None) or fallback_model,
        provider=provider,
        prompt_tokens=getattr(usage, "prompt_tokens", None),
        completion_tokens=getattr(usage, "completion_tokens", None),
        cached_tokens=getattr(details, "cached_tokens", None) or 0,
        tool_calls=calls,
        finish_reason=getattr(choice, "finish_reason", None),
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
    _timeouts: dict[str, float] = {}

    async def complete(self, request: LLMRequest) -> LLMResponse:
        extra: dict[str, Any] = {}
        if request.tools:
            extra["tools"] = request.tools
        if request.tag:
            extra["user"] = request.tag
        if request.model in self._timeouts:  # LLM_TIMEOUTS: this model's own
            extra["timeout"] = self._timeouts[request.model]
        try:
            # The raw response: its rate-limit headers tell the shared limiter what is left.
            answer = await self._client.chat.completions.with_raw_response.create(
                model=request.model,
                messages=request.messages,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                **extra,
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
        self._timeouts = dict(settings.llm_timeouts)
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
        self._timeouts = dict(settings.llm_timeouts)
        self.url = settings.llm_base_url or "?"
        self._client = openai.AsyncOpenAI(
            api_key=self._key,
            base_url=settings.llm_base_url,
            max_retries=0,
            timeout=settings.llm_timeout_s,
        )


class ScriptedProvider:
    """Offline answers for tests and demos — not a model. It follows each agent's script (the
    Researcher searches, the Coder writes files through `write_file`), varies its wording from run
    to run as a model would, and labels every answer `SCRIPTED_LABEL`."""

    name = "scripted"
    key_var = "LLM_PROVIDER"
    url = "offline"

    def __init__(self, settings: Settings) -> None:
        self._delay = settings.scripted_delay_s

    async def complete(self, request: LLMRequest) -> LLMResponse:
        from activities.scripted import scripted_turn

        if self._delay:
            await asyncio.sleep(self._delay)
        # The label names the system prompt it was given (first hex of its SHA-256), so a prompt
        # change shows in the answer: a demo of versions can see which prompt a worker serves.
        fingerprint = hashlib.sha256(request.system.encode()).hexdigest()[:6]
        label = SCRIPTED_LABEL.removesuffix("]") + f" · prompt {fingerprint}]"
        text, calls = scripted_turn(request)
        if text:
            text = f"{label}\n{text}"
        chars = sum(len(str(m.get("content") or "")) for m in request.messages)
        return LLMResponse(
            text=text,
            model=request.model,
            provider=self.name,
            # No real tokenizer behind canned text: counts are estimates (~4 chars per token).
            prompt_tokens=chars // 4 + 1,
            completion_tokens=(len(text) + sum(len(c.arguments) for c in calls)) // 4 + 1,
            tool_calls=calls,
            finish_reason="tool_calls" if calls else "stop",
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
