"""The OpenAI Agents SDK on Temporal (its plugin): five agents run one after another by
`Runner.run` inside a workflow; each model call is an activity; the model answers at once."""

from __future__ import annotations

import os

from temporalio import workflow
from temporalio.client import Plugin

from bench.peers import AGENTS, ANSWER

with workflow.unsafe.imports_passed_through():
    from agents import Agent, Runner, set_tracing_disabled
    from temporalio.openai_agents import OpenAIAgentsPlugin
    from temporalio.openai_agents.testing import ResponseBuilders, TestModel, TestModelProvider


def plugin() -> Plugin:
    # Its leanest setup, as crewline runs without a trace exporter: the SDK's own tracing (which
    # would export to OpenAI, and here only logs that no key is set) is off. The plugin installs
    # a trace provider of its own, which reads the environment, not set_tracing_disabled.
    os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
    set_tracing_disabled(True)
    model = TestModel(lambda: ResponseBuilders.output_message(ANSWER))
    return OpenAIAgentsPlugin(model_provider=TestModelProvider(model))


@workflow.defn(name="BenchOpenAIAgentsPipeline")
class Pipeline:
    @workflow.run
    async def run(self, query: str) -> str:
        text = query
        for name in AGENTS:
            agent = Agent(name=name, instructions=f"You are the {name}.", model="bench-model")
            result = await Runner.run(agent, text)
            text = str(result.final_output)
        return text
