"""The built-in tools, wired to this worker's resources."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Engine

from activities.tools import ToolContext, ToolRegistry, ToolSpec
from activities.tools.files import write_artifact
from activities.tools.search import DdgsBackend, SearchBackend, SearchOutcome, web_search
from crewline.db import DbRunner
from crewline.settings import Settings
from crewline.telemetry import Tracing
from records import runs as store


def default_search_backend(settings: Settings) -> SearchBackend | None:
    return DdgsBackend(settings.search_timeout_s) if settings.search_backend == "ddgs" else None


def build_tools(
    settings: Settings,
    engine: Engine,
    search_backend: SearchBackend | None,
    tracing: Tracing | None = None,
    db: DbRunner | None = None,
) -> ToolRegistry:
    run = db or DbRunner(engine)

    async def _record(
        ctx: ToolContext, tool: str, args: dict[str, Any], summary: str, seq: int
    ) -> None:
        await run(store.record_intent, ctx.run_id, ctx.agent, seq, tool, summary, args)

    registry = ToolRegistry(recorder=_record, tracing=tracing)

    async def _search(ctx: ToolContext, query: str) -> SearchOutcome:
        return await web_search(search_backend, query, settings.search_max_results)

    async def _write_file(ctx: ToolContext, path: str, content: str) -> str:
        root = settings.artifacts_dir / ctx.run_id
        rel, size, digest = await asyncio.to_thread(write_artifact, root, path, content)
        await run(store.record_artifact, ctx.run_id, rel, size, digest)
        return rel

    registry.register(
        ToolSpec("web_search", side_effects=False, description="DuckDuckGo web search", fn=_search)
    )
    registry.register(
        ToolSpec(
            "write_file",
            side_effects=True,
            description="write one artifact file under the run's directory",
            fn=_write_file,
            describe=lambda a: f"would write {a['path']} ({len(a['content'].encode())} bytes)",
        )
    )
    return registry
