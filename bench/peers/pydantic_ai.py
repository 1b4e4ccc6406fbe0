"""Pydantic AI's durable execution on Temporal: five agents with the `TemporalDurability`
capability run one after another in a workflow; each model request is an activity; the model
(Pydantic AI's `TestModel`) answers at once."""

from __future__ import annotations

from pydantic_ai import Agent
from pydantic_ai.durable_exec.temporal import (
    PydanticAIPlugin,
    PydanticAIWorkflow,
    TemporalDurability,
)
from pydantic_ai.models.test import TestModel
from temporalio import workflow
from temporalio.client import Plugin

from bench.peers import AGENTS, ANSWER

AGENT_LIST = [
    Agent(
        TestModel(custom_output_text=ANSWER),
        name=name,
        instructions=f"You are the {name}.",
        capabilities=[TemporalDurability()],
    )
    for name in AGENTS
]


def plugin() -> Plugin:
    return PydanticAIPlugin()


@workflow.defn(name="BenchPydanticAIPipeline")
class Pipeline(PydanticAIWorkflow):
    __pydantic_ai_agents__ = AGENT_LIST

    @workflow.run
    async def run(self, query: str) -> str:
        text = query
        for agent in AGENT_LIST:
            text = str((await agent.run(text)).output)
        return text
