"""Which model each agent calls, and the provider rate limits that apply to those models.

Part of the version bundle: a snapshot pins the rule together with its model settings
(`versioning.bundle.ModelSettings`, applied to the settings a worker serves it with).
"""

from __future__ import annotations

from crewline.settings import ConfigurationError, RateLimit, Settings
from records.statuses import AGENTS


def check_agent_models(settings: Settings) -> None:
    """`AGENT_MODELS` may only name agents that exist (a typo would silently do nothing)."""
    unknown = sorted(set(settings.agent_models) - set(AGENTS))
    if unknown:
        raise ConfigurationError(
            f"AGENT_MODELS names unknown agents {unknown}; known: {list(AGENTS)}"
        )


def model_for(settings: Settings, agent: str) -> str:
    if agent in settings.agent_models:
        return settings.agent_models[agent]
    provider = settings.provider()
    if provider == "openai":
        return settings.llm_model or "llama3.1"
    if provider == "scripted":
        return "scripted-v1"
    return settings.groq_model


def rate_limits(settings: Settings) -> dict[str, RateLimit]:
    """The limit of each model the agents use that has one (LLM_RATE_LIMITS first, then
    GROQ_RATE_LIMIT for the Groq models)."""
    limits = dict(settings.llm_rate_limits)
    if settings.groq_rate_limit is not None and settings.provider() == "groq":
        for agent in AGENTS:
            limits.setdefault(
                model_for(settings, agent), RateLimit(requests_per_minute=settings.groq_rate_limit)
            )
    return limits
