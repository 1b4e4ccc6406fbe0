"""The fake outside world: a scriptable Groq-compatible HTTP server on 127.0.0.1, a fake search.

The server speaks the OpenAI-style chat-completions protocol at `/openai/v1/chat/completions`
(the path the real `groq` SDK calls), identifies the calling agent from its system prompt, and
records every request so tests can count calls per agent. Per agent, a queue of scripted actions
(reply, HTTP error, hang, malformed body) is consumed in order; when it is empty the default reply
is given.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from activities.tools.search import SearchHit

AGENT_RE = re.compile(r"crewline's (\w+) agent", re.IGNORECASE)

# What the product appends to a final answer when the Executor (as the fake's default answers)
# gave no acceptance checks.
NO_CHECKS = "\n\n---\nChecks: not run — the Executor gave no acceptance checks."

DEFAULT_TEXT = {
    "researcher": "RESEARCH-NOTES: snakes move on a grid.",
    "planner": "PLAN: 1. grid 2. snake 3. food",
    "executor": "ARCH: snake.py holds the game loop",
    "coder": "=== FILE: snake.py ===\nprint('snake')\n=== END FILE ===",
    "finalizer": "FINAL-ANSWER: run python snake.py",
    # The divergence judge (versioning/divergence/judge.py): the same substance, unless a test's
    # responder reads the pair (see `judge_by`).
    "judge": '{"verdict": "equivalent", "issues": []}',
}


@dataclass
class Call:
    """A tool call in a reply: the function and its arguments (a dict, or raw text to send
    as-is, e.g. invalid JSON)."""

    name: str
    args: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None


@dataclass
class Reply:
    """A chat completion. `prompt_tokens=None`: about 4 characters per token of the messages,
    like a real tokenizer; `completion_tokens=None`: all of the request's `max_tokens`. `calls`:
    tool calls (with `text` None, the message has no content); `finish_reason` defaults to
    "tool_calls" with calls, else "stop"."""

    text: str | None = None
    prompt_tokens: int | None = 100
    completion_tokens: int | None = 50
    delay_s: float = 0.0
    calls: list[Call] = field(default_factory=list)
    finish_reason: str | None = None
    model: str | None = None  # the model the answer names (default: the one requested)


@dataclass
class Status:
    code: int
    headers: dict[str, str] = field(default_factory=dict)
    message: str = "scripted failure"


@dataclass
class Hang:
    """Accept the request and answer nothing for `seconds` (then drop the connection)."""

    seconds: float


@dataclass
class Malformed:
    body: str = "{not json"


@dataclass
class Seen:
    agent: str
    at: float
    body: dict[str, Any]


class _Server(ThreadingHTTPServer):
    # A real provider accepts a burst of connections; the standard library's backlog of 5 made
    # the kernel drop some mid-handshake, which the client sees as a connection lost after send.
    request_queue_size = 1024


class FakeGroq:
    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.scripts: dict[str, list[Any]] = {}
        self.run_scripts: dict[tuple[str, str], list[Any]] = {}
        # While set, every request is answered with this action (an outage).
        self.outage: Any = None
        # (agent, request body) -> the answer text, or None for the default; lets a test make
        # answers depend on the prompt a version sends.
        self.responder: Callable[[str, dict[str, Any]], str | Reply | None] | None = None
        # (request body) -> seconds to hang before answering nothing, or None.
        self.hang_when: Callable[[dict[str, Any]], float | None] | None = None
        # (N, window_s): like a provider's rate limit, at most N requests in any window_s
        # (sliding, counted on arrival); beyond it a 429 with retry-after. Every answer then
        # carries x-ratelimit-remaining-requests / x-ratelimit-reset-requests.
        self.rate_limit: tuple[int, float] | None = None
        self.admitted: list[float] = []
        self.rejected = 0
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeGroq:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def script(self, agent: str, *actions: Any) -> None:
        with self._lock:
            self.scripts.setdefault(agent, []).extend(actions)

    def script_run(self, run_id: str, agent: str, *actions: Any) -> None:
        """Actions for one run's agent (matched by the request's `user` field = run id)."""
        with self._lock:
            self.run_scripts.setdefault((run_id, agent), []).extend(actions)

    def calls(self, agent: str | None = None, run_id: str | None = None) -> list[Seen]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (agent is None or r.agent == agent)
                and (run_id is None or r.body.get("user") == run_id)
            ]

    def count(self, agent: str) -> int:
        return len(self.calls(agent))

    def _admit(self) -> dict[str, str] | None:
        """Rate-limit headers for an admitted request; None (and a 429 counted) past the limit."""
        if self.rate_limit is None:
            return {}
        limit, window = self.rate_limit
        with self._lock:
            now = time.monotonic()
            self.admitted = [t for t in self.admitted if t > now - window]
            if len(self.admitted) >= limit:
                self.rejected += 1
                return None
            self.admitted.append(now)
            reset = self.admitted[0] + window - now  # until the oldest leaves the window
            return {
                "x-ratelimit-limit-requests": str(limit),
                "x-ratelimit-remaining-requests": str(limit - len(self.admitted)),
                "x-ratelimit-reset-requests": f"{max(reset, 0.0):.2f}s",
            }

    def _retry_after(self) -> str:
        assert self.rate_limit is not None
        with self._lock:
            now = time.monotonic()
            return f"{max(self.admitted[0] + self.rate_limit[1] - now, 0.01):.2f}"

    def _next_action(self, agent: str, run_id: str | None) -> Any:
        with self._lock:
            if self.outage is not None:
                return self.outage
            for queue in (self.run_scripts.get((run_id or "", agent)), self.scripts.get(agent)):
                if queue:
                    return queue.pop(0)
            return Reply()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: str, headers: dict[str, str] | None = None) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                payload = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.endswith("/chat/completions"):
                    self._send(404, json.dumps({"error": {"message": "unknown path"}}))
                    return
                system = next(
                    (m["content"] for m in payload.get("messages", []) if m["role"] == "system"), ""
                )
                match = AGENT_RE.search(system)
                agent = match.group(1).lower() if match else "unknown"
                with fake._lock:
                    fake.requests.append(Seen(agent=agent, at=time.monotonic(), body=payload))
                limit_headers = fake._admit()
                if limit_headers is None:
                    error = {"error": {"message": "rate limit reached", "type": "requests"}}
                    retry = {
                        "retry-after": fake._retry_after(),
                        "x-ratelimit-remaining-requests": "0",
                    }
                    self._send(429, json.dumps(error), retry)
                    return
                action = fake._next_action(agent, payload.get("user"))
                hang = fake.hang_when(payload) if fake.hang_when else None
                if hang:
                    action = Hang(hang)
                if (
                    isinstance(action, Reply) and action.text is None and not action.calls
                    and fake.responder
                ):  # fmt: skip
                    answer = fake.responder(agent, payload)
                    if isinstance(answer, Reply):
                        action = answer
                    elif answer is not None:
                        action = Reply(
                            text=answer,
                            prompt_tokens=action.prompt_tokens,
                            completion_tokens=action.completion_tokens,
                        )
                if isinstance(action, Hang):
                    time.sleep(action.seconds)
                    return
                if isinstance(action, Status):
                    # `{authorization}` echoes the request's header, as some providers do.
                    said = action.message.replace(
                        "{authorization}", self.headers.get("authorization", "")
                    )
                    error = {"error": {"message": said, "type": "scripted"}}
                    self._send(action.code, json.dumps(error), action.headers)
                    return
                if isinstance(action, Malformed):
                    self._send(200, action.body)
                    return
                if action.delay_s:
                    time.sleep(action.delay_s)
                if action.calls:
                    text = action.text
                else:
                    text = action.text if action.text is not None else DEFAULT_TEXT.get(agent, "ok")
                chars = sum(len(str(m.get("content") or "")) for m in payload.get("messages", []))
                prompt_tokens = chars // 4 if action.prompt_tokens is None else action.prompt_tokens
                # A real provider never answers with more than the request's max_tokens.
                limit = int(payload.get("max_tokens") or 1024)
                completion_tokens = (
                    limit
                    if action.completion_tokens is None
                    else min(action.completion_tokens, limit)
                )
                body = {
                    "id": f"chatcmpl-{len(fake.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": action.model or payload.get("model", "fake"),
                    "choices": [
                        {
                            "index": 0,
                            "message": _message(text, action.calls, len(fake.requests)),
                            "finish_reason": action.finish_reason
                            or ("tool_calls" if action.calls else "stop"),
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                }
                self._send(200, json.dumps(body), limit_headers)

        return Handler


def _message(text: str | None, calls: list[Call], n: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = [
            {
                "id": call.id or f"call_{n}_{i}",
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": call.args if isinstance(call.args, str) else json.dumps(call.args),
                },
            }
            for i, call in enumerate(calls)
        ]
    return message


def tool_results(body: dict[str, Any]) -> list[str]:
    """The tool results a request carries (what the model was told its calls returned)."""
    return [str(m.get("content") or "") for m in body.get("messages", []) if m["role"] == "tool"]


class FakeSearch:
    """A search backend that answers from a list, or fails like an unreachable network."""

    name = "fake-search"

    def __init__(self, hits: list[SearchHit] | None = None, fail: Exception | None = None) -> None:
        self.hits = hits or []
        self.fail = fail
        self.queries: list[str] = []

    async def search(self, query: str, max_results: int) -> list[SearchHit]:
        self.queries.append(query)
        if self.fail is not None:
            raise self.fail
        return self.hits[:max_results]


@dataclass
class ReceivedSpan:
    """One span as an OTLP collector received it (decoded from the protobuf on the wire)."""

    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    attributes: dict[str, Any]
    error: bool


class OtlpReceiver:
    """A minimal OTLP/HTTP trace collector on 127.0.0.1: what Jaeger's OTLP port would receive."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """What a user sets as OTEL_EXPORTER_OTLP_ENDPOINT."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def received(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def _decode(self, body: bytes) -> list[ReceivedSpan]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {
                        a.key: getattr(a.value, a.value.WhichOneof("value") or "string_value")
                        for a in span.attributes
                    }
                    found.append(
                        ReceivedSpan(
                            service=resource.get("service.name", ""),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            attributes=attributes,
                            error=span.status.code == 2,
                        )
                    )
        return found

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                spans = receiver._decode(body)
                with receiver._lock:
                    receiver.spans.extend(spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

        return Handler


JUDGE_PAIR = re.compile(r"Answer 1:\n<<<\n(.*?)\n>>>\n\nAnswer 2:\n<<<\n(.*?)\n>>>", re.DOTALL)


def judged_pair(body: dict[str, Any]) -> tuple[str, str]:
    """The two answers a judge request shows, in the order it shows them."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    found = JUDGE_PAIR.search(user)
    assert found is not None, user[:200]
    return found.group(1), found.group(2)


def judge_by(decide: Callable[[str, str], bool]) -> Callable[[str, dict[str, Any]], str | None]:
    """A responder for the judge: `decide(answer 1, answer 2)` → diverged. Other agents get the
    default answer."""

    def respond(agent: str, body: dict[str, Any]) -> str | None:
        if agent != "judge":
            return None
        first, second = judged_pair(body)
        if decide(first, second):
            issue = {"kind": "decision", "detail": "answer 2 recommends something else"}
            return json.dumps({"verdict": "diverged", "issues": [issue]})
        return json.dumps({"verdict": "equivalent", "issues": []})

    return respond
