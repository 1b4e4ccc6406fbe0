"""The built-in tools, wired to this worker's resources: `web_search`, `fetch_url`, `write_file`,
`read_file`, `list_files`. Which agent may call which is its spec's business
(`activities/agents.yaml`), not this file's.

Keep each `ToolSpec(...)`'s name, `side_effects` and `description` literal: a version snapshot
lists the tools from this source (`crewline version show`), so a change of a tool's side effects
shows in `crewline version diff`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field
from sqlalchemy import Engine

from activities import research
from activities.tools import ToolContext, ToolError, ToolOutput, ToolRegistry, ToolSpec
from activities.tools.files import (
    UnsafePathError,
    list_artifacts,
    read_artifact,
    read_tree,
    safe_relative_path,
    write_artifact,
)
from activities.tools.search import DdgsBackend, SearchBackend, search_output, web_search
from activities.tools.web import FetchPolicy, fetch, page_output
from crewline.db import DbRunner
from crewline.sandbox import Sandbox
from crewline.settings import Settings
from crewline.telemetry import Tracing
from records import runs as store

Path_ = Annotated[
    str, Field(description="a relative path inside the run's workspace, e.g. src/game.py")
]


def default_search_backend(settings: Settings) -> SearchBackend | None:
    return DdgsBackend(settings.search_timeout_s) if settings.search_backend == "ddgs" else None


@dataclass
class Resources:
    settings: Settings
    engine: Engine
    db: DbRunner
    search: SearchBackend | None
    fetch: FetchPolicy
    sandbox: Sandbox

    async def workspace(self, run_id: str, dry_run: bool) -> dict[str, bytes]:
        return await workspace_files(self.settings, self.db, run_id, dry_run)


async def workspace_files(
    settings: Settings, db: Callable[..., Awaitable[Any]], run_id: str, dry_run: bool
) -> dict[str, bytes]:
    """A run's files as a command in the sandbox sees them: what it wrote, or in a dry run what
    it would have written (its intents)."""
    if dry_run:
        intended = await db(store.intended_files_content, run_id)
        return {path: text.encode() for path, text in intended.items()}
    return await asyncio.to_thread(read_tree, settings.artifacts_dir / run_id)


def build_tools(
    settings: Settings,
    engine: Engine,
    search_backend: SearchBackend | None,
    tracing: Tracing | None = None,
    db: DbRunner | None = None,
    sandbox: Sandbox | None = None,
) -> ToolRegistry:
    res = Resources(
        settings, engine, db or DbRunner(engine), search_backend,
        FetchPolicy(settings.fetch_timeout_s, settings.fetch_max_bytes,
                    settings.fetch_allow_private),
        sandbox or Sandbox(settings.sandbox_limits()),
    )  # fmt: skip

    async def record(
        ctx: ToolContext, tool: str, args: dict[str, Any], summary: str, seq: int
    ) -> None:
        await res.db(store.record_intent, ctx.run_id, ctx.agent, seq, tool, summary, args)

    registry = ToolRegistry(recorder=record, tracing=tracing)

    async def search(
        ctx: ToolContext,
        query: Annotated[str, Field(min_length=1, max_length=400, description="what to look up")],
    ) -> ToolOutput:
        if ctx.shadow_of is not None:  # a shadow sees the web its primary saw
            return await research.replayed_search(res.engine, ctx.shadow_of, query)
        found = await web_search(res.search, query, res.settings.search_max_results)
        return search_output(query, found)

    async def fetch_url(
        ctx: ToolContext,
        url: Annotated[str, Field(max_length=2000, description="an http(s) URL to read")],
    ) -> ToolOutput:
        if ctx.shadow_of is not None:
            return await research.replayed_fetch(res.engine, ctx.shadow_of, url)
        final, _kind, text = await fetch(url, res.fetch)
        return page_output(final, text)

    async def write_file(
        ctx: ToolContext,
        path: Path_,
        content: Annotated[str, Field(description="the whole file")],
    ) -> ToolOutput:
        root = res.settings.artifacts_dir / ctx.run_id
        try:
            rel, size, digest = await asyncio.to_thread(write_artifact, root, path, content)
        except (UnsafePathError, ValueError) as exc:
            raise ToolError(str(exc)) from None
        await res.db(store.record_artifact, ctx.run_id, rel, size, digest)
        return ToolOutput(f"wrote {rel} ({size} bytes)", summary=f"wrote {rel} ({size} bytes)",
                          data={"path": rel, "bytes": size, "sha256": digest})  # fmt: skip

    async def read_file(ctx: ToolContext, path: Path_) -> ToolOutput:
        try:
            rel = str(safe_relative_path(path))
        except UnsafePathError as exc:
            raise ToolError(str(exc)) from None
        if ctx.dry_run:  # the workspace a dry run would have written
            text = await res.db(store.intended_file, ctx.run_id, rel)
            if text is None:
                raise ToolError(f"{rel} does not exist (dry run: nothing was written to it)")
        else:
            root = res.settings.artifacts_dir / ctx.run_id
            try:
                text = await asyncio.to_thread(read_artifact, root, rel)
            except FileNotFoundError:
                raise ToolError(f"{rel} does not exist") from None
        return ToolOutput(text, summary=f"read {rel} ({len(text)} characters)",
                          data={"path": rel})  # fmt: skip

    async def list_files(ctx: ToolContext) -> ToolOutput:
        if ctx.dry_run:
            listed = await res.db(store.intended_files, ctx.run_id)
        else:
            root = res.settings.artifacts_dir / ctx.run_id
            listed = await asyncio.to_thread(list_artifacts, root)
        if not listed:
            return ToolOutput("the workspace is empty", summary="no files")
        lines = "\n".join(f"{p}  ({n} bytes)" for p, n in listed)
        return ToolOutput(lines, summary=f"{len(listed)} file(s)")

    async def run_command(
        ctx: ToolContext,
        command: Annotated[
            str,
            Field(
                min_length=1,
                max_length=2000,
                description="a shell command, run in /work (a copy of the workspace)",
            ),
        ],
    ) -> ToolOutput:
        available = res.sandbox.check()
        if not available.ok:
            raise ToolError(available.describe())
        outcome = await res.sandbox.run(command, await res.workspace(ctx.run_id, ctx.dry_run))
        how = outcome.limit or f"exit {outcome.exit_code}"
        text = f"$ {command}\n({how}, {outcome.duration_s:.1f}s)\n{outcome.tail(6000)}"
        data = {"exit_code": outcome.exit_code, "limit": outcome.limit}
        return ToolOutput(text, summary=f"{how} ({outcome.duration_s:.1f}s)", data=data)

    registry.register(
        ToolSpec(
            "web_search",
            side_effects=False,
            description="Search the web (DuckDuckGo): titles, URLs and snippets of the top results",
            fn=search,
        )
    )
    registry.register(
        ToolSpec(
            "fetch_url",
            side_effects=False,
            description="Read a public web page: its main text (HTML turned into readable text)",
            fn=fetch_url,
        )
    )
    registry.register(
        ToolSpec(
            "write_file",
            side_effects=True,
            description="Write a file in the run's workspace (the whole content; replaces it)",
            fn=write_file,
            describe=lambda a: f"would write {a['path']} ({len(a['content'].encode())} bytes)",
        )
    )
    registry.register(
        ToolSpec(
            "read_file",
            side_effects=False,
            description="Read a file from the run's workspace",
            fn=read_file,
        )
    )
    registry.register(
        ToolSpec(
            "list_files",
            side_effects=False,
            description="List the files in the run's workspace",
            fn=list_files,
        )
    )
    registry.register(
        ToolSpec(
            "run_command",
            side_effects=False,
            description="Run a shell command in a sandbox on a copy of the workspace: no network, "
            "nothing kept; python3 (and node where the host has it). Returns the exit code and "
            "the output's tail",
            fn=run_command,
        )
    )
    return registry
