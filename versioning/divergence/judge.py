"""Layer 4: an LLM reads both answers and says whether they differ in substance.

The decisions, figures and claims of prose can only be compared by reading them. The judge gets
the request, both answers and a rubric for the agent (same decisions? same facts and figures that
matter? anything the request required missing? anything invented?) and answers with JSON. It is
asked twice, with the answers in both orders: a verdict that flips with the order is *uncertain*,
never an alert. Its calls are priced like any other and ledgered as shadow spend (agent `judge`),
under SHADOW_DAILY_CAP_USD; the caller checks the cap with `estimate_usd` before asking.

`DIVERGENCE_JUDGE` (crewline/settings.py): "auto" runs it whenever a real provider is configured;
the scripted provider cannot judge and says so.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from activities.llm import LLMProvider, LLMRequest, build_provider
from activities.models import model_for
from costs.budget import estimate_tokens
from costs.pricing import Priced, Pricer
from crewline.settings import ConfigurationError, Settings
from versioning.divergence.detector import Finding

MAX_ANSWER_CHARS = 12_000
MAX_TOKENS = 400
RUBRIC: dict[str, str] = {
    "researcher": (
        "Do both reach the same findings and recommendation? Do the facts and figures that matter "
        "(versions, limits, prices, dates, names) agree? Does one state or cite something the "
        "other contradicts, or that looks invented?"
    ),
    "planner": (
        "Do both plans cover every requirement of the request? Do they make the same decisions "
        "(tools, approach, order where it matters)? Is a step the request needs missing from one, "
        "or does one add a step with a side effect nobody asked for?"
    ),
    "executor": (
        "Do both reach the same verdict on the plan? Do they specify the same files, components, "
        "settings and checks in substance? Does one miss a requirement, invent something, or add "
        "an unsafe or unrequested action?"
    ),
    "coder": (
        "Would both programs behave the same on the inputs the request implies, edge cases "
        "included? Does one miss a requirement of the request, or add a side effect (deleting, "
        "sending, overwriting) nobody asked for?"
    ),
    "finalizer": (
        "Do both give the user the same answer: the same decision, the same figures, the same "
        "instructions? Is something the request asked for missing from one, or invented in one?"
    ),
}
SYSTEM = (
    "You are crewline's judge agent: you compare two outputs of its {agent} agent that answer "
    "the same request. They were generated independently, so wording, order, structure, names "
    "and examples differ, and that does not matter. Decide whether they differ in SUBSTANCE "
    "that a user would care about.\n\nRubric: {rubric}\n\n"
    "Reply with one JSON object and nothing else:\n"
    '{{"verdict": "equivalent" or "diverged", "issues": [{{"kind": "decision" | "figure" | '
    '"missing" | "invented" | "safety" | "other", '
    '"detail": "one sentence naming which answer"}}]}}'
    "\nUse an empty issues list when the verdict is equivalent."
)
USER = "Request:\n{query}\n\nAnswer 1:\n<<<\n{first}\n>>>\n\nAnswer 2:\n<<<\n{second}\n>>>"


class Issue(BaseModel):
    kind: str = "other"
    detail: str = ""


class Reply(BaseModel):
    verdict: Literal["equivalent", "diverged"]
    issues: list[Issue] = Field(default_factory=list)


@dataclass(frozen=True)
class Opinion:
    """One order's answer: the verdict (None: unreadable), its issues, what it cost."""

    verdict: str | None
    issues: list[Issue]
    prompt_tokens: int
    completion_tokens: int
    priced: Priced
    model: str
    usage_estimated: bool = False


@dataclass
class Judgement:
    findings: list[Finding] = field(default_factory=list)
    opinions: list[Opinion] = field(default_factory=list)

    @property
    def cost_usd(self) -> Decimal:
        return sum((o.priced.cost_usd for o in self.opinions), Decimal(0))


def _clip(text: str) -> str:
    if len(text) <= MAX_ANSWER_CHARS:
        return text
    return text[:MAX_ANSWER_CHARS] + f"\n[… {len(text) - MAX_ANSWER_CHARS} more characters]"


def parse(text: str) -> Reply | None:
    """The judge's JSON (also inside a code fence or after some words), or None."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match is None:
        return None
    try:
        return Reply.model_validate(json.loads(match.group()))
    except (ValueError, ValidationError):
        return None


class Judge:
    def __init__(self, settings: Settings, provider: LLMProvider | None = None) -> None:
        self.provider = provider or build_provider(settings)
        if self.provider.name == "scripted":
            raise ConfigurationError(
                "DIVERGENCE_JUDGE=llm needs a real model: the scripted provider cannot read "
                "answers. Configure GROQ_API_KEY or LLM_PROVIDER=openai, or set "
                "DIVERGENCE_JUDGE=off"
            )
        self.model = settings.divergence_judge_model or model_for(settings, "finalizer")
        self.pricer = Pricer(self.provider.name, settings.model_prices)
        self.pricer.check(self.model)

    def _messages(self, agent: str, query: str, first: str, second: str) -> list[dict[str, str]]:
        rubric = RUBRIC.get(agent, RUBRIC["finalizer"])
        return [
            {"role": "system", "content": SYSTEM.format(agent=agent, rubric=rubric)},
            {"role": "user", "content": USER.format(
                query=query or "(not recorded)", first=_clip(first), second=_clip(second))},
        ]  # fmt: skip

    def estimate_usd(self, agent: str, query: str, a: str, b: str) -> Decimal:
        """The most both orders can cost: the prompt estimated, the answer at MAX_TOKENS."""
        prompt = estimate_tokens(*(m["content"] for m in self._messages(agent, query, a, b)))
        return 2 * self.pricer.price(self.model, prompt, MAX_TOKENS).cost_usd

    async def ask(self, agent: str, query: str, first: str, second: str) -> Opinion:
        messages = self._messages(agent, query, first, second)
        answer = await self.provider.complete(
            LLMRequest(agent="judge", model=self.model, messages=messages,
                       max_tokens=MAX_TOKENS, temperature=0.0)
        )  # fmt: skip
        estimated = answer.prompt_tokens is None or answer.completion_tokens is None
        prompt = (
            answer.prompt_tokens
            if answer.prompt_tokens is not None
            else estimate_tokens(*(m["content"] for m in messages))
        )
        completion = (
            answer.completion_tokens if answer.completion_tokens is not None else MAX_TOKENS
        )
        priced = self.pricer.price(
            answer.model or self.model, prompt, completion, raw_usage=answer.raw_usage
        )
        reply = parse(answer.text)
        return Opinion(
            reply.verdict if reply else None, reply.issues if reply else [], prompt, completion,
            priced, answer.model or self.model, estimated or answer.usage_estimated,
        )  # fmt: skip

    async def compare(self, agent: str, query: str, a: str, b: str) -> Judgement:
        """Both orders, concurrently; the finding they agree on, or an uncertain one."""
        forward, backward = await asyncio.gather(
            self.ask(agent, query, a, b), self.ask(agent, query, b, a)
        )
        return Judgement(combine(forward, backward), [forward, backward])


def _issues(opinion: Opinion) -> str:
    details = [f"{i.kind}: {i.detail}" for i in opinion.issues if i.detail][:3]
    return "; ".join(details) or "the judge gave no detail"


def combine(forward: Opinion, backward: Opinion) -> list[Finding]:
    """Agreement is a verdict; disagreement or an unreadable answer is uncertain."""
    verdicts = (forward.verdict, backward.verdict)
    if None in verdicts:
        return [
            Finding("judge", "judge", 0.0, "the judge's answer was not the JSON asked for",
                    True, "unreadable judge answer")
        ]  # fmt: skip
    if verdicts == ("equivalent", "equivalent"):
        return []
    if verdicts == ("diverged", "diverged"):
        kinds = sorted({i.kind for i in forward.issues + backward.issues} - {""}) or ["other"]
        return [Finding("judge", f"judge:{kinds[0]}", 0.9, _issues(forward))]
    said = forward if forward.verdict == "diverged" else backward
    return [
        Finding("judge", "judge", 0.9, _issues(said), True,
                "the verdict flipped when the answers swapped places")
    ]  # fmt: skip
