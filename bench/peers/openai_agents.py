"""The OpenAI Agents SDK on Temporal (its plugin): five agents run one after another by
`Runner.run` inside a workflow; each model call is an activity; the model answers at once.

With `--tools N` the first agent has one tool, a Temporal activity (`activity_as_tool`), and the
model calls it N times, one call per turn, before answering: each call is an activity, each turn
a model activity — the same durable steps crewline's Researcher takes."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Plugin

from bench.peers import AGENTS, ANSWER

with workflow.unsafe.imports_passed_through():
    from agents import Agent, Model, ModelResponse, Runner, set_tracing_disabled
    from temporalio.openai_agents import OpenAIAgentsPlugin
    from temporalio.openai_agents import workflow as agents_workflow
    from temporalio.openai_agents.testing import ResponseBuilders, TestModelProvider

CALLS = re.compile(r"call bench_lookup (\d+) times")


@activity.defn(name="bench_lookup")
async def bench_lookup(query: str) -> str:
    """The tool: answers at once, about the size of three search results."""
    return f"results for {query}: " + "x" * 450


ACTIVITIES = [bench_lookup]


class ToolModel(Model):
    """Calls `bench_lookup` as many times as its instructions say (one call per turn), then
    answers; with no tool offered it answers at once."""

    async def get_response(
        self, system_instructions: str | None, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        wanted = CALLS.search(system_instructions or "")
        items = input if isinstance(input, list) else []
        done = sum(1 for item in items if _type_of(item) == "function_call_output")
        if wanted and done < int(wanted.group(1)):
            return ResponseBuilders.tool_call(
                f'{{"query": "bench query {done}"}}', "bench_lookup", call_id=f"call_{done}"
            )
        return ResponseBuilders.output_message(ANSWER)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the bench does not stream")


def _type_of(item: Any) -> Any:
    return item.get("type") if isinstance(item, dict) else getattr(item, "type", None)


def plugin() -> Plugin:
    # Its leanest setup, as crewline runs without a trace exporter: the SDK's own tracing (which
    # would export to OpenAI, and here only logs that no key is set) is off. The plugin installs
    # a trace provider of its own, which reads the environment, not set_tracing_disabled.
    os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
    set_tracing_disabled(True)
    return OpenAIAgentsPlugin(model_provider=TestModelProvider(ToolModel()))


@workflow.defn(name="BenchOpenAIAgentsPipeline")
class Pipeline:
    @workflow.run
    async def run(self, query: str, tools: int = 0) -> str:
        text = query
        for name in AGENTS:
            instructions = f"You are the {name}."
            extra: dict[str, Any] = {}
            if tools and name == AGENTS[0]:
                instructions += f" Always call bench_lookup {tools} times, then answer."
                extra["tools"] = [
                    agents_workflow.activity_as_tool(
                        bench_lookup, start_to_close_timeout=timedelta(minutes=1)
                    )
                ]
            agent = Agent(name=name, instructions=instructions, model="bench-model", **extra)
            result = await Runner.run(agent, text)
            text = str(result.final_output)
        return text
