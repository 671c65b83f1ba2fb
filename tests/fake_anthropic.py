"""A scripted, deterministic fake of the Anthropic Messages API for driving the real Claude Code CLI in tests.

The model is scripted by directives written in the prompt: ``[[name]]`` or ``[[name:arg]]`` anywhere in the latest
human-written user text (see ``latest_user_text``). Several directives combine. An argument ends at the first ``]]``.

    (none)                    stream "Hello from fake model." as several text_deltas
    [[reply:TEXT]]            answer exactly TEXT (several deltas when longer than 3 characters)
    [[bash:CMD]]              text "I'll run a command." + Bash tool_use {"command": CMD, "description": "run command"};
                              once the last user message holds tool_results: "Tool said: <result text>", end_turn
    [[tool:NAME]]             the same cycle for the first request tool named NAME or ending in "__NAME" (MCP tools),
    [[tool:NAME:JSONARGS]]    input JSONARGS (default {}); several tool/bash directives give parallel tool_use blocks;
                              results are joined with " | " and errors shown as ERROR(<text>) (not for [[bash]]-only
                              cycles, whose results are shown raw); a tool missing from the request: "NO TOOL NAME"
    [[loop]]                  always a Bash tool_use "echo loop" (for --max-turns)
    [[error:STATUS]]          HTTP STATUS with the Anthropic error JSON (retry-after: 0 for 429 and 529)
    [[think]]                 a thinking block ("Let me think." as thinking_deltas + signature_delta) before the answer
    [[slow:SECONDS]]          wait before message_start (the response headers are sent at once)
    [[drip:SECONDS]]          wait before every content_block_delta
    [[usage:IN,OUT,CR,CC]]    usage reported: input, output, cache_read, cache_creation (default 12,5,0,0)
    [[maxtokens]]             stop_reason max_tokens
    [[echo]]                  answer "len=<chars of the latest user text> tail=<its last 20 characters>"
    [[structured:JSON]]       end by calling Claude Code's StructuredOutput tool (--json-schema) with input JSON: at
                              once, or after a tool cycle's results (with the "Tool said: …" text before it)

Plan limits: ``fake.rate_limit = unified_headers(...)`` makes every /v1/messages answer carry Anthropic's
``anthropic-ratelimit-unified-*`` headers, and a 429 (rate_limit_error, with the headers) when their status is
"rejected". CLI 2.1.197 reads them only when logged in with a subscription (``cli_environment(..., subscription=True)``:
CLAUDE_CODE_OAUTH_TOKEN and no API key) and then writes a stream-json event whenever what it knows changes (a new
process: with its first API answer, after the first ``assistant`` event), measured:
    {"type": "rate_limit_event", "rate_limit_info": {"status": "allowed_warning", "resetsAt": 1795570672,
     "rateLimitType": "five_hour", "utilization": 0.91, "isUsingOverage": false, "surpassedThreshold": 0.9},
     "uuid": "...", "session_id": "..."}
* allowed_warning: the first window (5h, 7d, 7d_oi, overage) with a ``-surpassed-threshold`` header, whatever the
  status header says; its utilization and reset are that window's (``-7d-surpassed-threshold`` gives seven_day).
* allowed: ``{"status": "allowed", "resetsAt": <-reset>, "rateLimitType": <-representative-claim>,
  "isUsingOverage": false}``: no utilization.
* 2.1.331 adds, except when rejected, every window the headers carry (``lists_unified_windows``), measured:
  ``"unifiedWindows": {"five_hour": {"utilization": 0.91, "resetsAt": 1795575734, "surpassedThreshold": 0.9},
  "seven_day": {"utilization": 0.42, "resetsAt": 1795831334}}`` (a window without its headers is left out).
* rejected: the same keys, status "rejected", before anything else of the run; then a synthetic ``assistant`` event
  (model "<synthetic>") and the result ``{"is_error": true, "api_error_status": 429, "result": "You've hit your
  session limit · resets 1:37am (UTC)"}`` ("weekly limit" for seven_day); the 429 is not retried.

What the Claude Code CLI 2.1.197 sends and does (measured with this fake; see also
/work/shared/docs/claude-cli-contract.md), and what CLI 2.1.331 does differently:
* ``HEAD <base URL path>`` once at startup (preflight; 2.1.331 sends none); POSTs go to
  ``<base path>/v1/messages?beta=true``. No count_tokens or other paths were seen (2.1.331 counts tokens only when
  asked for its context usage, and with nonessential traffic on sends ``HEAD /api/hello``).
* 2.1.331 defers tools behind its tool search: its requests carry ``ToolSearch`` and a ``DeferredToolPlaceholder``
  (``defer_loading: true``), and MCP tools are left out unless their server is marked ``alwaysLoad``. It puts the
  environment section (working directory, platform, ...) in a ``{"role": "system"}`` message after the first user
  message, and answers an HTTP 400 by sending the request again up to 5 times, each time without one more optional
  beta (thinking token count, thinking display, deferred tools).
* The stream-json prompt arrives byte-for-byte (300 KiB tested) as its own text block in the first user message,
  after a separate ``<system-reminder>`` text block (currentDate). ``messages`` also holds a ``{"role": "system"}``
  entry (agent listing) after the first user message. Parallel tool results come back in ONE user message, in
  completion order (the fake re-sorts them by tool_use order); in stream-json they are separate ``user`` events,
  and ``result.num_turns`` counts them (2 API calls with 3 parallel tools gave num_turns 4).
* stop_reason ``max_tokens`` is not final: the CLI sends a user text "Output token limit hit. Resume directly ..."
  (inside a ``<system-reminder>`` on 2.1.331) and asks again, up to 3 times (4 requests); if every answer is max_tokens the result is is_error=true,
  api_error_status null, "API Error: Claude's response exceeded the 64000 output token maximum ...". The fake
  treats that injected text like a system-reminder; ``[[maxtokens:once]]`` answers max_tokens only to the first.
* Side requests, all of which ``main_requests()`` drops:
  - session title (prompt of 10+ characters; CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 suppresses it): streaming,
    ``output_config.format`` = json_schema {title}, no tools, the prompt wrapped in ``<session>...</session>``.
    The fake answers any such schema with JSON (``{"title": "Fake title"}``); it still honours error/slow.
  - auto-mode permission classifier (``--permission-mode auto`` and a risky command): NO ``stream`` key, no tools,
    max_tokens 64 (5 calls) then 8192 (5 calls); the fake's answers are unparseable so the action is denied.
  The rule: a request is a side request if it has ``output_config.format``, or is non-streaming without tools.
  The main loop's non-streaming fallback (e.g. after a 404: no ``stream`` key, or ``"stream": false`` on 2.1.331,
  same tools, max_tokens 64000) is kept; with ``--tools ""`` the main loop has no tools but streams, and is kept too.
  2.1.331 sent no session title request in these tests, with nonessential traffic on or off.
* With CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 the main loop sends 24 tools (25 without: DesignSync); 2.1.331
  sends 12 (the others deferred).
* The ``assistant`` event for a block comes before that block's ``content_block_stop`` stream_event;
  ``result.usage`` sums the main-loop calls; HTTP 400 is not retried (2.1.331: see above).
* A CLI killed with SIGINT while waiting hangs up at once; the fake marks such requests ``"aborted": True``.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

DEFAULT_TEXT = "Hello from fake model."
DIRECTIVE_RE = re.compile(r"\[\[([a-z_]+)(?::(.*?))?\]\]", re.DOTALL)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class ClientGone(Exception):
    pass


# --------------------------------------------------------------------------------------------------------------
# Reading the request


def _blocks(content: Any) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []


CLI_INJECTED_PREFIXES = ("<system-reminder>", "Output token limit hit.")


def _is_injected(text: str) -> bool:
    return text.lstrip().startswith(CLI_INJECTED_PREFIXES)


def latest_user_text(messages: list[dict]) -> str:
    """The text blocks of the last user message that has any human-written text, joined by newlines.

    Not human-written: tool_result blocks, and text blocks starting with one of ``CLI_INJECTED_PREFIXES``
    (``<system-reminder>`` context, the "Output token limit hit." follow-up the CLI sends after max_tokens).
    """
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        texts = [
            b.get("text", "")
            for b in _blocks(message.get("content"))
            if b.get("type") == "text" and not _is_injected(b.get("text", ""))
        ]
        if any(t.strip() for t in texts):
            return "\n".join(texts)
    return ""


def _is_recovery(messages: list[dict]) -> bool:
    """Whether the last message is the CLI's "Output token limit hit." follow-up to a max_tokens answer (CLI 2.1.331
    wraps it in a <system-reminder>)."""
    if not messages or messages[-1].get("role") != "user":
        return False
    return any(b.get("type") == "text" and CLI_INJECTED_PREFIXES[1] in b.get("text", "")[:100]
               for b in _blocks(messages[-1].get("content")))


def parse_directives(text: str) -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in DIRECTIVE_RE.finditer(text)]


def tool_results(messages: list[dict]) -> list[dict]:
    """The tool_result blocks of the last message (if it is a user message), in the order of their tool_use blocks.

    The CLI lists parallel results in completion order; sorting makes the fake's answer deterministic.
    """
    if not messages or messages[-1].get("role") != "user":
        return []
    results = [b for b in _blocks(messages[-1].get("content")) if b.get("type") == "tool_result"]
    order: list[str] = []
    for message in reversed(messages[:-1]):
        if message.get("role") == "assistant":
            order = [b.get("id") for b in _blocks(message.get("content")) if b.get("type") == "tool_use"]
            break
    return sorted(results, key=lambda r: order.index(r.get("tool_use_id")) if r.get("tool_use_id") in order
                  else len(order))


def result_text(block: dict) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return "\n".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return "" if content is None else str(content)


def find_tool(tools: list[dict], name: str) -> str | None:
    for tool in tools:
        tool_name = tool.get("name", "")
        if tool_name == name or tool_name.endswith("__" + name):
            return tool_name
    return None


MAX_DELTAS = 64  # the default cap on the deltas of one block (FakeAnthropic(max_deltas=...))


def split_text(text: str, max_pieces: int | None = MAX_DELTAS) -> list[str]:
    """Pieces that join back to ``text``: words with their trailing spaces, at least two when len(text) > 3.

    More than ``max_pieces`` words are cut into ``max_pieces`` equal pieces instead (big answers: keep the event
    count sane); ``None``: no cap, one piece per word, like a real model's token stream (bench/bench.py)."""
    pieces = re.findall(r"\s*\S+\s*", text) or ([text] if text else [])
    if len(pieces) < 2 and len(text) > 3:
        half = len(text) // 2
        pieces = [text[:half], text[half:]]
    if max_pieces is not None and len(pieces) > max_pieces:
        size = -(-len(text) // max_pieces)
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
    return pieces


# --------------------------------------------------------------------------------------------------------------
# Planning the answer


class Plan:
    """What to answer to one request: an error, or content blocks plus stop_reason and usage."""

    def __init__(self) -> None:
        self.error_status: int | None = None
        self.slow = 0.0
        self.drip = 0.0
        self.blocks: list[dict] = []
        self.stop_reason = "end_turn"
        self.usage = {"input_tokens": 12, "output_tokens": 5, "cache_read_input_tokens": 0,
                      "cache_creation_input_tokens": 0}


def make_plan(body: dict, next_tool_id: Callable[[], str]) -> Plan:
    messages = body.get("messages") or []
    tools = body.get("tools") or []
    text = latest_user_text(messages)
    directives = parse_directives(text)
    results = tool_results(messages)
    plan = Plan()
    answer: str | None = None
    think = False
    calls: list[tuple[str, str, str | None, Any]] = []  # (directive, asked name, request tool name or None, input)
    loop = False
    structured: Any = None
    for name, arg in directives:
        arg = arg if arg is not None else ""
        if name == "reply":
            answer = arg
        elif name == "error":
            plan.error_status = int(arg)
        elif name == "think":
            think = True
        elif name == "slow":
            plan.slow = float(arg)
        elif name == "drip":
            plan.drip = float(arg)
        elif name == "usage":
            n_in, n_out, n_read, n_create = (int(x) for x in arg.split(","))
            plan.usage = {"input_tokens": n_in, "output_tokens": n_out, "cache_read_input_tokens": n_read,
                          "cache_creation_input_tokens": n_create}
        elif name == "maxtokens":
            if arg != "once" or not _is_recovery(messages):
                plan.stop_reason = "max_tokens"
        elif name == "echo":
            answer = f"len={len(text)} tail={text[-20:]}"
        elif name == "loop":
            loop = True
        elif name == "structured":
            structured = json.loads(arg)
        elif name == "bash":
            calls.append(("bash", "Bash", find_tool(tools, "Bash"), {"command": arg, "description": "run command"}))
        elif name == "tool":
            asked, _, json_args = arg.partition(":")
            calls.append(("tool", asked, find_tool(tools, asked), json.loads(json_args) if json_args else {}))

    schema = ((body.get("output_config") or {}).get("format") or {}).get("schema") or {}
    if schema.get("properties"):  # a structured side request (session title): answer matching JSON
        fields = {key: f"Fake {key}" for key in schema["properties"]}
        plan.blocks.append({"type": "text", "text": json.dumps(fields)})
        plan.stop_reason = "end_turn"
        return plan
    if think:
        plan.blocks.append({"type": "thinking", "thinking": "Let me think.", "signature": "fake-signature-0001"})
    if loop:
        plan.blocks.append({"type": "text", "text": "I'll run a command."})
        plan.blocks.append({"type": "tool_use", "id": next_tool_id(), "name": "Bash",
                            "input": {"command": "echo loop", "description": "run command"}})
        plan.stop_reason = "tool_use"
    elif calls and results:
        raw = all(kind == "bash" for kind, _, _, _ in calls)
        shown = [result_text(r) if raw or not r.get("is_error") else f"ERROR({result_text(r)})" for r in results]
        plan.blocks.append({"type": "text", "text": "Tool said: " + " | ".join(shown)})
        if structured is not None:
            _call_structured_output(plan, tools, structured, next_tool_id)
    elif calls:
        missing = [asked for _, asked, found, _ in calls if found is None]
        if missing:
            plan.blocks.append({"type": "text", "text": "\n".join(f"NO TOOL {m}" for m in missing)})
        else:
            plan.blocks.append({"type": "text", "text": "I'll run a command."})
            for _, _, name, tool_input in calls:
                plan.blocks.append({"type": "tool_use", "id": next_tool_id(), "name": name, "input": tool_input})
            plan.stop_reason = "tool_use"
    elif structured is not None:
        _call_structured_output(plan, tools, structured, next_tool_id)
    else:
        plan.blocks.append({"type": "text", "text": DEFAULT_TEXT if answer is None else answer})
    return plan


def _call_structured_output(plan: Plan, tools: list[dict], value: Any, next_tool_id: Callable[[], str]) -> None:
    name = find_tool(tools, "StructuredOutput")
    if name is None:
        plan.blocks.append({"type": "text", "text": "NO TOOL StructuredOutput"})
        return
    plan.blocks.append({"type": "tool_use", "id": next_tool_id(), "name": name, "input": value})
    plan.stop_reason = "tool_use"


UNIFIED = "anthropic-ratelimit-unified"


def unified_headers(status: str = "allowed", claim: str = "five_hour", reset: float | None = None,
                    windows: dict[str, dict[str, float]] | None = None) -> dict[str, str]:
    """Anthropic's plan-limit headers: the overall status, its reset (epoch seconds; default in an hour) and
    representative claim, and per window (``{"5h": {"utilization": 0.91, "reset": ..., "surpassed-threshold": 0.9}}``)
    ``anthropic-ratelimit-unified-<window>-<field>``."""
    headers = {f"{UNIFIED}-status": status, f"{UNIFIED}-reset": str(int(reset or time.time() + 3600)),
               f"{UNIFIED}-representative-claim": claim}
    for window, fields in (windows or {}).items():
        for name, value in fields.items():
            headers[f"{UNIFIED}-{window}-{name}"] = str(int(value)) if name == "reset" else f"{value:g}"
    return headers


def lists_unified_windows(cli_version: str) -> bool:
    """Whether the CLI (its ``--version`` line) adds ``unifiedWindows`` to its rate_limit_info: 2.1.331 does, 2.1.197
    does not (see the module docstring)."""
    return not cli_version.startswith("2.1.197 ")


def error_body(status: int) -> dict:
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": f"fake {status} error"}, "request_id": "req_fake"}


def sse_events(plan: Plan, message_id: str, model: str, max_deltas: int | None = MAX_DELTAS) -> list[dict]:
    """The Anthropic streaming events for a plan, in order (text and thinking in at most ``max_deltas`` deltas)."""
    start_usage = dict(plan.usage, output_tokens=1)
    events: list[dict] = [{"type": "message_start", "message": {
        "id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": start_usage}}]
    for index, block in enumerate(plan.blocks):
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in split_text(block["text"], max_deltas)]
        elif block["type"] == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": p} for p in split_text(block["thinking"], max_deltas)]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            raw = json.dumps(block["input"])
            cut = [0, len(raw) // 3, 2 * len(raw) // 3, len(raw)]
            deltas = [{"type": "input_json_delta", "partial_json": raw[a:b]} for a, b in zip(cut, cut[1:]) if b > a]
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": index})
    events.append({"type": "message_delta", "delta": {"stop_reason": plan.stop_reason, "stop_sequence": None},
                   "usage": {"output_tokens": plan.usage["output_tokens"]}})
    events.append({"type": "message_stop"})
    return events


def message_json(plan: Plan, message_id: str, model: str) -> dict:
    return {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": plan.blocks,
            "stop_reason": plan.stop_reason, "stop_sequence": None, "usage": dict(plan.usage)}


# --------------------------------------------------------------------------------------------------------------
# The server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    fake: FakeAnthropic


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    # ---- helpers

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _send_json(self, status: int, payload: dict, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", "req_fake")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _write_chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            raise ClientGone from exc

    def _wait(self, seconds: float) -> None:
        """Sleep, but notice a client that hangs up and a fake that stops."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.server.fake._stopping.is_set():
                raise ClientGone
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
            if readable:
                try:
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        raise ClientGone
                except OSError as exc:
                    raise ClientGone from exc
                time.sleep(min(left, 0.05))

    # ---- verbs

    def do_HEAD(self) -> None:
        self._other()

    def do_GET(self) -> None:
        self._other()

    def _other(self) -> None:
        fake = self.server.fake
        path = urlsplit(self.path).path
        fake._record_other(self.command, self.path)
        if path.rstrip("/") in fake._prefixes:
            self._send_json(200, {"ok": True})
        else:
            fake._record_unexpected(f"{self.command} {self.path}")
            self._send_json(404, error_body(404))

    def do_POST(self) -> None:
        fake = self.server.fake
        path = urlsplit(self.path).path
        raw = self._read_body()
        if path.endswith("/v1/messages/count_tokens"):
            fake._record_other(self.command, self.path)
            self._send_json(200, {"input_tokens": max(1, len(raw) // 4)})
            return
        if not path.endswith("/v1/messages"):
            fake._record_other(self.command, self.path)
            fake._record_unexpected(f"{self.command} {self.path}")
            self._send_json(404, error_body(404))
            return
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        record = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                  "time": time.time()}
        fake._record_request(record)
        if not isinstance(body, dict):
            fake._record_unexpected(f"{self.command} {self.path}: body is not a JSON object")
            self._send_json(400, error_body(400))
            return
        try:
            plan = make_plan(body, fake._next_tool_id)
        except (ValueError, TypeError) as exc:
            fake._record_unexpected(f"bad directive: {exc}")
            self._send_json(400, error_body(400))
            return
        model = str(body.get("model", "claude-fake"))
        if model in fake.unknown_models:  # as the real API answers a model it does not know
            self._send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": f"model: {model}"},
                                  "request_id": "req_fake"})
            return
        message_id = fake._next_message_id()
        limits = dict(fake.rate_limit)
        if limits.get(f"{UNIFIED}-status") == "rejected":
            self._send_json(429, error_body(429), limits)
            return
        try:
            if not body.get("stream"):
                self._wait(plan.slow)
                if plan.error_status is not None:
                    self._send_error(plan.error_status)
                else:
                    self._send_json(200, message_json(plan, message_id, model), limits)
                return
            if plan.error_status is not None:
                self._wait(plan.slow)
                self._send_error(plan.error_status)
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream; charset=utf-8")
            self.send_header("cache-control", "no-cache")
            self.send_header("request-id", "req_fake")
            self.send_header("transfer-encoding", "chunked")
            for key, value in limits.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.flush()
            self._wait(plan.slow)
            for event in sse_events(plan, message_id, model, fake.max_deltas):
                if event["type"] == "content_block_delta" and plan.drip:
                    self._wait(plan.drip)
                self._write_chunk(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
            self._write_chunk(b"")
        except (ClientGone, ConnectionError):
            record["aborted"] = True
            self.close_connection = True

    def _send_error(self, status: int) -> None:
        extra = {"retry-after": "0"} if status in (429, 529) else {}
        if status == 529:
            extra["x-should-retry"] = "true"
        self._send_json(status, error_body(status), extra)


class FakeAnthropic:
    """The fake Messages API server. ``base_url`` has no ``/v1``; point ``ANTHROPIC_BASE_URL`` at it.

    ``requests``: every POST .../v1/messages as {"path", "headers" (lower-case names), "body", "time"}, plus
    "aborted": True when the client hung up before the answer was complete.
    ``other_requests``: every other request as {"method", "path", "time"} (the HEAD / preflight, count_tokens, ...).
    ``unexpected``: "METHOD PATH" of every request answered 404, and bad directives; tests should assert it is empty.

    ``max_deltas``: the most text or thinking deltas one streamed block is cut into (default 64); ``None`` streams
    one delta per word however long the answer (bench/bench.py's throughput part).
    ``rate_limit``: plan-limit headers sent with every answer (see ``unified_headers``); status "rejected": 429.
    ``unknown_models``: model ids answered 404 not_found_error "model: <id>", as the real API answers them.
    """

    def __init__(self, max_deltas: int | None = MAX_DELTAS) -> None:
        self.max_deltas = max_deltas
        self.rate_limit: dict[str, str] = {}
        self.base_url = ""
        self.requests: list[dict] = []
        self.other_requests: list[dict] = []
        self.unexpected: list[str] = []
        self.unknown_models: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._message_count = 0
        self._tool_count = 0
        self._prefixes = {""}

    def start(self) -> FakeAnthropic:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-anthropic", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
        self._server = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url_with_prefix(self, prefix: str) -> str:
        """A base URL with a path prefix (the CLI keeps it); HEAD/GET of the prefix itself then answers 200."""
        prefix = "/" + prefix.strip("/")
        with self._lock:
            self._prefixes.add(prefix)
        return self.base_url + prefix

    def main_requests(self) -> list[dict]:
        """Bodies of the main agent-loop requests, in arrival order.

        Dropped as side requests: bodies with ``output_config.format`` (title generation and other structured
        side queries) and non-streaming bodies without tools (e.g. the auto-mode classifier). The main loop's
        non-streaming fallback keeps its tools and is kept.
        """
        with self._lock:
            bodies = [r["body"] for r in self.requests if isinstance(r["body"], dict)]
        return [b for b in bodies if not is_side_request(b)]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.other_requests.clear()
            self.unexpected.clear()

    # ---- used by the handler

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _record_request(self, record: dict) -> None:
        with self._lock:
            self.requests.append(record)

    def _record_other(self, method: str, path: str) -> None:
        with self._lock:
            self.other_requests.append({"method": method, "path": path, "time": time.time()})

    def _record_unexpected(self, what: str) -> None:
        with self._lock:
            self.unexpected.append(what)

    def _next_message_id(self) -> str:
        with self._lock:
            self._message_count += 1
            return f"msg_fake_{self._message_count}"

    def _next_tool_id(self) -> str:
        with self._lock:
            self._tool_count += 1
            return f"toolu_fake_{self._tool_count}"


def cli_environment(home: str, base_url: str, subscription: bool = False) -> dict[str, str]:
    """An environment for the real CLI against this fake: an isolated HOME, only the fake API reachable, no retries,
    no telemetry or other side traffic, and nothing Claude-, Anthropic- or proxy-related inherited (a
    CLAUDE_CONFIG_DIR would bypass the isolated HOME). Used by the tests' cli_env fixture and by bench/.

    ``subscription``: logged in as with a Claude subscription (CLAUDE_CODE_OAUTH_TOKEN, no API key), the only way
    the CLI reads the plan-limit headers."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CLAUDE", "ANTHROPIC_", "PROXY_")) and key != "MODEL_NAME"}
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY") or env.get("no_proxy"), "127.0.0.1,localhost"]))
    env.update(HOME=home, ANTHROPIC_BASE_URL=base_url, ANTHROPIC_API_KEY="test-key",
               CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_TELEMETRY="1", DISABLE_AUTOUPDATER="1",
               CLAUDE_CODE_MAX_RETRIES="0", NO_PROXY=no_proxy, no_proxy=no_proxy)
    if subscription:
        del env["ANTHROPIC_API_KEY"]
        env["CLAUDE_CODE_OAUTH_TOKEN"] = "test-oauth-token"
    if os.geteuid() == 0:
        env["IS_SANDBOX"] = "1"  # the CLI refuses to skip permissions as root otherwise
    return env


def is_side_request(body: dict) -> bool:
    if (body.get("output_config") or {}).get("format"):
        return True
    return not body.get("stream") and not body.get("tools")


# --------------------------------------------------------------------------------------------------------------
# Running the real CLI


class CliEvents(list):
    """The parsed stdout events of one CLI run; also carries ``returncode`` and ``stderr``."""

    returncode: int
    stderr: str

    def result(self) -> dict:
        results = [e for e in self if e.get("type") == "result"]
        assert results, f"no result event (rc={self.returncode}); stderr:\n{self.stderr[-3000:]}"
        return results[-1]

    def stream_events(self, event_type: str | None = None) -> list[dict]:
        events = [e["event"] for e in self if e.get("type") == "stream_event"]
        return [e for e in events if event_type is None or e.get("type") == event_type]


def run_cli(claude_bin: str, env: dict[str, str], prompt: str, *extra_args: str, cwd: str | os.PathLike,
            timeout: float = 60) -> CliEvents:
    """Run ``claude -p`` in stream-json mode with ``prompt`` as one user message on stdin; return its stdout events."""
    cmd = [claude_bin, "-p", "--input-format=stream-json", "--output-format=stream-json", "--verbose",
           "--include-partial-messages", "--permission-mode=bypassPermissions", *extra_args]
    line = json.dumps({"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": prompt}]}})
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate((line + "\n").encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # SIGINT lets the CLI kill its Bash tool's process tree
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise AssertionError(f"claude did not finish in {timeout} s; stdout:\n{out.decode()[-3000:]}\n"
                             f"stderr:\n{err.decode()[-3000:]}") from None
    events = CliEvents()
    for text in out.decode().splitlines():
        if text.startswith("{"):
            events.append(json.loads(text))
    events.returncode = proc.returncode
    events.stderr = err.decode(errors="replace")
    return events
