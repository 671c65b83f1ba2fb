"""claude-code-openai-proxy: the Claude Code CLI behind a local API.

API clients (the OpenAI and Anthropic SDKs, OpenClaw, Continue, Cursor, Codex, LangChain) post requests; each one
becomes an agentic Claude Code run with its own tools:

    request -> a door's parser -> Conversation -> Runner.open -> claude -p (stream-json on stdin)
            -> CLI events -> Interpreter -> answer events -> the door's renderer -> SSE frames | one JSON body

Every run goes through one abstraction, a ClaudeProcess that reads stream-json on stdin and writes it on stdout.
A one-shot run writes one user message; the same process can also be pre-started (the warm pool), kept for the
next turn of a conversation (sessions), or held while the client runs the tools Claude called (served to Claude
Code over MCP by this proxy itself).

Contents, each section using only those above it:
    1. Configuration     Settings, flags and environment variables, finding the CLI
    2. Errors            the ProxyError family and its shape per API door
    3. Conversation      the protocol-neutral request: turns, tools, keys, the prompt, images (fetched with care)
    4. Command line      argv, environment, stream-json lines, what a session leaves on disk
    5. Claude Code process   its process tree, stream-json framing, stopping, the MCP tool bridge
    6. Interpreter       CLI events -> answer events and an Answer (the only reader of stream-json)
    7. Usage and limits  the plan's limits as Claude Code reports them, the usage ledger (SQLite)
    8. State on disk     private files written safely, the state directory, the session map, what a crash left
    9. Runs              Run and its states, admission
   10. Idle processes    the warm pool, sessions, parked runs
   11. Processes         starting and stopping Claude Code, what the CLI offers (flags, models), the login check
   12. Runner            routing a conversation to a process, and what becomes of a run: parked, kept or stopped
   13. HTTP guards       no way in from a web page, one log line and one ledger row per request
   14. Request to run    bodies, tokens, budgets, opening a run, the stream driver shared by every door
   15. Chat Completions  the OpenAI door: request models, parser, renderer, handler
   16. Responses         the OpenAI Responses door (and Cursor's Responses-shaped chat requests)
   17. Messages          the Anthropic Messages door, and count_tokens
   18. Usage views       /v1/usage, /metrics (Prometheus), the /status page
   19. The app           health, models, the MCP bridge, create_app (the routes)
   20. Entry point       the server against slow and numerous connections, main

Run it with ``./run.sh`` (``./run.sh --help`` lists every setting; each flag has an environment variable).
It listens on 127.0.0.1:18880 by default. Claude Code runs with permissions skipped unless CLAUDE_PERMISSION_MODE
says otherwise, so the proxy is a remote shell for whoever can reach it: it refuses to listen beyond loopback
without CLAUDE_PROXY_TOKEN, and refuses requests from web pages.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import dataclasses
import datetime
import enum
import functools
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import math
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
import typing
import urllib.parse
import uuid
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import jsonschema
import psutil
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

__version__ = "0.1.0"
logger = logging.getLogger("claude_proxy")
connections_logger = logging.getLogger("claude_proxy.connections")  # its records are throttled (see Throttle)
ModelT = TypeVar("ModelT", bound=BaseModel)
T = TypeVar("T")


# ── 1. Configuration ──────────────────────────────────────────────────────────


def setting(env: str, default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A Settings field read from the environment variable `env` or the matching --flag."""
    return field(default=default, metadata={"env": env, "help": help, "choices": choices})


@dataclass(frozen=True)
class Settings:
    claude_bin: str = setting("CLAUDE_BIN", "", "Claude Code CLI; empty: PATH, then the usual install places")
    host: str = setting("PROXY_HOST", "127.0.0.1", "address to listen on; beyond loopback needs a token")
    allowed_hosts: str = setting(
        "PROXY_ALLOWED_HOSTS", "", "comma-separated extra Host names accepted (DNS-rebinding guard); '*' accepts any"
    )
    allowed_origins: str = setting(
        "PROXY_ALLOWED_ORIGINS", "", "comma-separated browser origins allowed to call the API (CORS); default none"
    )
    port: int = setting("PROXY_PORT", 18880, "port to listen on")
    token: str = setting("CLAUDE_PROXY_TOKEN", "", "bearer token clients must send (Authorization or x-api-key); "
                         "as a flag every user of the machine can read it in ps: prefer the variable or --token-file")
    token_file: str = setting("CLAUDE_PROXY_TOKEN_FILE", "", "file whose first line is the token (instead of --token)")
    model_name: str = setting("MODEL_NAME", "claude-code", "model id that means the CLI's own default model")
    max_turns: int = setting("CLAUDE_MAX_TURNS", 10, "agent turns per request (--max-turns)")
    timeout: float = setting("CLAUDE_TIMEOUT", 300.0, "seconds a request may take, queueing included")
    permission_mode: str = setting(
        "CLAUDE_PERMISSION_MODE", "bypassPermissions", "Claude Code permission mode",
        ("bypassPermissions", "default", "acceptEdits", "plan"),
    )
    cwd: str = setting(
        "CLAUDE_CWD", "",
        "working directory of the CLI; empty: a folder of its own per conversation (under CLAUDE_STATE_DIR, removed "
        "when the conversation expires), or a temporary one removed after the run when sessions are off",
    )
    system_prompt_mode: str = setting(
        "CLAUDE_SYSTEM_PROMPT_MODE", "append", "where the client's system prompt goes",
        ("append", "replace", "inline"),
    )
    max_concurrency: int = setting("CLAUDE_MAX_CONCURRENCY", 4, "Claude Code runs at once")
    max_queue: int = setting("CLAUDE_MAX_QUEUE", 16, "requests waiting for a run slot before 429")
    max_body_bytes: int = setting("PROXY_MAX_BODY_BYTES", 32 << 20, "largest request body accepted")
    read_timeout: float = setting(
        "PROXY_READ_TIMEOUT", 30.0, "seconds a client has to send a whole request (headers and body)"
    )
    max_connections: int = setting("PROXY_MAX_CONNECTIONS", 256, "client connections open at once; more are closed")
    max_line_bytes: int = setting("CLAUDE_MAX_LINE_BYTES", 32 << 20, "largest stream-json line read from the CLI")
    max_retries: int = setting("CLAUDE_CODE_MAX_RETRIES", 3, "API retries inside Claude Code (its default is 10)")
    keepalive: float = setting("CLAUDE_KEEPALIVE", 15.0, "seconds of silence before a keep-alive chunk")
    prime_window: float = setting(
        "CLAUDE_PRIME_WINDOW", 5.0,
        "seconds a request waits for the model to start answering before its stream's headers are sent (a failure "
        "within them gets a real HTTP status)",
    )
    pool_size: int = setting("CLAUDE_POOL_SIZE", 2, "idle pre-started CLI processes kept warm; 0 disables")
    pool_idle_ttl: float = setting("CLAUDE_POOL_IDLE_TTL", 600.0, "seconds an idle CLI process stays alive")
    tool_wait: float = setting("CLAUDE_TOOL_WAIT", 600.0, "seconds a run waits for the client's tool results")
    max_parked: int = setting("CLAUDE_MAX_PARKED", 16, "runs held open waiting for tool results")
    keep_builtin_tools: bool = setting(
        "CLAUDE_KEEP_BUILTIN_TOOLS", False, "keep Claude Code's own tools in requests that bring tools"
    )
    sessions: bool = setting("CLAUDE_SESSIONS", True, "resume the Claude Code session of a conversation that goes on")
    max_live_sessions: int = setting("CLAUDE_MAX_LIVE_SESSIONS", 4, "conversations whose CLI stays alive between turns")
    session_ttl: float = setting("CLAUDE_SESSION_TTL", 86400.0, "seconds a conversation can be resumed after a turn")
    fetch_images: bool = setting("CLAUDE_FETCH_IMAGES", False, "fetch http(s) image URLs (off: only data: URLs)")
    fetch_allowed_networks: str = setting(
        "CLAUDE_FETCH_ALLOWED_NETWORKS", "",
        "comma-separated networks (CIDR) image URLs may lead to although loopback, private or link-local",
    )
    max_image_bytes: int = setting("CLAUDE_MAX_IMAGE_BYTES", 10 << 20, "largest image accepted, decoded")
    show_tool_activity: bool = setting(
        "CLAUDE_SHOW_TOOL_ACTIVITY", False, "stream Claude Code's own tool calls and outcomes as reasoning_content"
    )
    state_dir: str = setting(
        "CLAUDE_STATE_DIR", "~/.local/state/claude-code-openai-proxy",
        "the session map, conversation folders and the usage ledger",
    )
    usage_retention_days: int = setting(
        "CLAUDE_USAGE_RETENTION_DAYS", 90, "days of requests kept in the usage ledger (usage.sqlite3); 0: no ledger"
    )
    max_budget_usd: float = setting(
        "CLAUDE_MAX_BUDGET_USD", 0.0, "most one request may cost, in USD (Claude Code's --max-budget-usd); 0: no limit"
    )
    daily_budget_usd: float = setting(
        "CLAUDE_DAILY_BUDGET_USD", 0.0, "most the requests of a UTC day may cost, in USD (from the ledger); 0: no limit"
    )
    log_level: str = setting(
        "PROXY_LOG_LEVEL", "info", "log level", ("debug", "info", "warning", "error"),
    )


MODEL_ALIASES = ("opus", "sonnet", "haiku")
CLAUDE_INSTALL_PLACES = (
    "~/.claude/local/claude",
    "~/.local/bin/claude",
    "/opt/homebrew/bin/claude",
    "/usr/local/bin/claude",
)
OWNER_VARIABLE = "CLAUDE_PROXY_OWNER"  # marks every process the proxy starts (see marked_processes)
CHILD_ENV_DROPPED = ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_PROXY_TOKEN", "CLAUDE_PROXY_TOKEN_FILE")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
EXCLUDE_DYNAMIC_SECTIONS = "--exclude-dynamic-system-prompt-sections"
IMAGE_FETCH_S = 30.0  # seconds a fetched image may take, redirects included (and never past the request's deadline)
IMAGE_REDIRECTS = 5
CONTENT_DECODERS = {"identity": 0, "gzip": 31, "x-gzip": 31, "deflate": 15}  # zlib wbits (0: not encoded)
MCP_SERVER = "tools"
MCP_PREFIX = f"mcp__{MCP_SERVER}__"
SSE_DONE = "data: [DONE]\n\n"
STDERR_TAIL_LINES = 40
STOP_GRACE_S = 2.0
CONTROL_WAIT_S = 15.0  # seconds a started CLI may take to answer a control request
SUPPORTED_CLI = ("2.1.197", "2.1.331")  # the oldest and newest Claude Code the tests drive (tests/run.sh)
SYSTEM_PROMPT_FILE_BYTES = 100_000
MAX_SESSIONS = 1000  # conversations remembered for resuming; the oldest beyond are forgotten
MAX_MODEL_ID = 256  # characters; a longer "model" is a 400
LEDGER_FILE = "usage.sqlite3"
LOGIN_CHECK_TTL = 300.0  # seconds `claude auth status` is trusted
TRIAL_RETRY_S = 5.0  # Retry-After while the one trial request after a plan limit's reset is under way
WORKDIR_PREFIX = "claude-proxy-"  # each process's private temporary folder: claude-proxy-<owner's tag>-<random>
POOL_ONCE_REMEMBERED = 256  # launch configurations used once, remembered (by hash) to notice a second use


def _parse_bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


SETTING_TYPES: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "bool": _parse_bool, "str": str}


def settings_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """An argparse parser with one --flag per Settings field, its default taken from the environment."""
    parser = argparse.ArgumentParser(
        prog="./run.sh",
        description="Serve the Claude Code CLI as a local API (OpenAI Chat Completions and Responses, Anthropic "
        "Messages). Every flag can also be set with the environment variable shown.",
    )
    for f in dataclasses.fields(Settings):
        env, kind = f.metadata["env"], str(f.type)
        default = environ.get(env, f.default)  # argparse converts (and checks) string defaults with `type`
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, default=default, choices=f.metadata["choices"],
            type=SETTING_TYPES[kind],
            help=f"{f.metadata['help']} [env {env}, default {f.default!r}]",
        )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def load_settings(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags, then environment variables, then defaults; the token from its file if one is named."""
    parser = settings_parser(os.environ if environ is None else environ)
    settings = Settings(**vars(parser.parse_args(argv)))
    if not settings.token_file:
        return settings
    if settings.token:
        parser.error("give the token either in CLAUDE_PROXY_TOKEN (--token) or in CLAUDE_PROXY_TOKEN_FILE, not both")
    try:
        token = (Path(settings.token_file).expanduser().read_text().splitlines() or [""])[0].strip()
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"cannot read the token file {settings.token_file}: {exc}")
    if not token:
        parser.error(f"the token file {settings.token_file} is empty")
    return dataclasses.replace(settings, token=token)


def token_on_argv(argv: Sequence[str]) -> bool:
    return any(word == "--token" or word.startswith("--token=") for word in argv)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def self_url(settings: Settings) -> str:
    """The proxy's own base URL as seen from this machine (Claude Code calls back to it for client tools)."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(settings.host, settings.host)
    return f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"


def find_claude(configured: str) -> str | None:
    """The Claude Code executable: the configured one, else PATH, else the usual install places."""
    if configured:
        path = shutil.which(os.path.expanduser(configured))
        return os.path.abspath(path) if path else None
    found = shutil.which("claude")
    if found:
        return os.path.abspath(found)
    for place in CLAUDE_INSTALL_PLACES:
        candidate = os.path.expanduser(place)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


# ── 2. Errors ─────────────────────────────────────────────────────────────────
# One family of errors; each protocol renders it in its own shape (error_body), and only there.


class ProxyError(Exception):
    """An error with its OpenAI envelope: HTTP status, type, code, and whether a retry may help."""

    status = 500
    type = "server_error"
    code: str | None = None
    retryable = False

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.code
        self.retry_after = retry_after


class InvalidRequest(ProxyError):
    status, type, code = 400, "invalid_request_error", "invalid_value"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


class Unauthorized(ProxyError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class Forbidden(ProxyError):
    status, type, code = 403, "permission_error", "forbidden"


class NotFound(ProxyError):
    status, type, code = 404, "invalid_request_error", "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PayloadTooLarge(ProxyError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class UnsupportedMediaType(ProxyError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"


class Overloaded(ProxyError):
    status, type, code, retryable = 429, "rate_limit_error", "rate_limit_exceeded", True


class ClaudeNotFound(ProxyError):
    status, type, code = 503, "service_unavailable_error", "claude_not_found"


class ShuttingDown(ProxyError):
    status, type, code, retryable = 503, "service_unavailable_error", "shutting_down", True


class ClaudeFailed(ProxyError):
    status, type, code = 502, "api_error", "claude_failed"


class UpstreamError(ClaudeFailed):
    code = "upstream_error"


class UpstreamAuthError(ClaudeFailed):
    type, code = "authentication_error", "claude_not_authenticated"


class UpstreamRateLimited(UpstreamError):
    status, type, code = 429, "rate_limit_error", "upstream_rate_limited"


class UpstreamOverloaded(UpstreamError):
    status, type, code = 503, "service_unavailable_error", "upstream_overloaded"


class NoStructuredOutput(ClaudeFailed):
    code = "structured_output_failed"


class RunTimeout(ProxyError):
    status, type, code = 504, "timeout_error", "timeout"


class PlanLimitReached(ProxyError):
    # Not worth an SDK's retry within seconds: Retry-After says when the plan's limit resets (often hours).
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class BudgetExhausted(ProxyError):
    status, type, code = 429, "insufficient_quota", "insufficient_quota"


class ClientGone(ProxyError):
    """The client went away: nothing is sent; 499 is what the log line says (nginx's "client closed request")."""

    status, type, code = 499, "invalid_request_error", "client_closed_request"


Door = Literal["openai", "responses", "anthropic"]
ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                         404: "not_found_error", 413: "request_too_large", 415: "invalid_request_error",
                         429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def door_of(path: str) -> Door:
    """The API door a path belongs to, whose error shape its caller reads."""
    if path.startswith(("/v1/messages", "/messages")):
        return "anthropic"
    return "responses" if path.startswith(("/v1/responses", "/responses")) else "openai"


def error_body(exc: ProxyError, door: Door) -> dict[str, Any]:
    """The error as the caller's protocol shapes it."""
    if door == "anthropic":
        kind = ANTHROPIC_ERROR_TYPES.get(exc.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": exc.message}}
    body = error_envelope(exc)
    if door == "responses" and exc.status == 429 and exc.type == "rate_limit_error":
        # Codex reads the delay from "try again in N s" in the message, and retries only rate_limit_exceeded.
        wait = f" Please try again in {math.ceil(exc.retry_after)}s." if exc.retry_after else ""
        body["error"].update(code="rate_limit_exceeded", message=exc.message + wait)
    return body


def error_envelope(exc: ProxyError) -> dict[str, Any]:
    """The one OpenAI error body: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def error_headers(exc: ProxyError) -> dict[str, str]:
    # The OpenAI SDKs retry 429 and 5xx unless told not to; re-running an agent can repeat its side effects.
    headers = {"x-should-retry": "true" if exc.retryable else "false"}
    if exc.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after)))
    return headers


def validation_error(exc: ValidationError | RequestValidationError) -> InvalidRequest:
    """The first pydantic error as a 400 naming the offending parameter."""
    first = exc.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    return InvalidRequest(f"Invalid request: {first.get('msg', 'invalid value')} at '{param}'", param=param)


# ── 3. Conversation: the protocol-neutral request ─────────────────────────────
# Every API door parses its body into one Conversation; nothing below this section knows which door it came from.


@dataclass(frozen=True)
class ToolCallItem:
    """A call of one of the client's tools, as an assistant turn carries it."""

    id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True)
class Turn:
    """One message: system/developer text, a user or assistant turn, or a tool result (role "tool").

    `text` marks each image with "[image]"; `images` holds (url, where) for each, data: or http(s) URLs."""

    role: str
    text: str = ""
    images: tuple[tuple[str, str], ...] = ()
    calls: tuple[ToolCallItem, ...] = ()
    call_id: str | None = None
    is_error: bool = False


@dataclass(frozen=True)
class Conversation:
    """What any protocol asks of Claude Code: the turns so far, the client's tools, the model.

    `model` is the id the client asked for (echoed back, and part of every conversation key); `cli_model` the
    --model value (None: the CLI's default). `tools` are MCP tool definitions (canonical JSON, hashable); `schema`
    the JSON schema the final answer must match (canonical JSON), when the client asked for structured output."""

    model: str
    cli_model: str | None
    turns: tuple[Turn, ...]
    tools: tuple[str, ...] = ()
    tool_instruction: str | None = None
    schema: str | None = None

    @functools.cached_property
    def keys(self) -> list[str]:
        """The conversation key of every prefix: keys[n] covers turns[:n]."""
        return prefix_keys(self.model, self.turns)

    @property
    def opening_key(self) -> str:
        """The key of its opening, up to the first user turn: every turn of one conversation shares it (short)."""
        first = next((i for i, turn in enumerate(self.turns) if turn.role == "user"), len(self.turns) - 1)
        return self.keys[first + 1][:16]

    @property
    def system(self) -> str | None:
        """The system and developer turns joined, or None when there are none."""
        joined = "\n\n".join(t.text for t in self.turns if t.role in SYSTEM_ROLES and t.text)
        return joined or None

    def tool_results(self) -> dict[str, Turn]:
        """The tool results that end the conversation, by call id."""
        results: dict[str, Turn] = {}
        for turn in reversed(self.turns):
            if turn.role != "tool" or not turn.call_id:
                break
            results[turn.call_id] = turn
        return results


SYSTEM_ROLES = ("system", "developer")


@dataclass(frozen=True)
class Prompt:
    system: str | None
    text: str


def render_turn(turn: Turn) -> str:
    """One conversation turn in the transcript format of build_prompt."""
    if turn.role == "assistant":
        calls = [f'<tool_call id="{c.id}" name="{c.name}">{c.arguments or "{}"}</tool_call>' for c in turn.calls]
        return "<assistant>\n" + "\n".join(x for x in (turn.text, *calls) if x) + "\n</assistant>"
    if turn.role == "tool":
        error = ' is_error="true"' if turn.is_error else ""
        return f'<tool_result tool_call_id="{turn.call_id or ""}"{error}>\n{turn.text}\n</tool_result>'
    return f"<user>\n{turn.text}\n</user>"


def build_prompt(turns: Sequence[Turn], system_mode: str) -> Prompt:
    """Merge a conversation into a system prompt and one user prompt for Claude Code.

    A conversation that is one user turn is sent as its text. Longer ones become a transcript:

        <conversation>
        <user>…</user>
        <assistant>…<tool_call id="…" name="…">{json}</tool_call></assistant>
        <tool_result tool_call_id="…">…</tool_result>
        </conversation>

        <the final user turn(s), verbatim>

    When the conversation does not end with a user turn, the transcript holds everything and a short request to
    continue follows. In "inline" mode the system text leads the prompt inside <instructions> tags.
    """
    system = "\n\n".join(t.text for t in turns if t.role in SYSTEM_ROLES and t.text) or None
    rest = [t for t in turns if t.role not in SYSTEM_ROLES]
    if not any(t.role == "user" for t in rest):
        raise InvalidRequest("The conversation has no user message", param="messages")
    split = len(rest)
    while split > 0 and rest[split - 1].role == "user":
        split -= 1
    final = "\n\n".join(t.text for t in rest[split:])
    if split > 0:
        history = "\n".join(render_turn(t) for t in rest[:split])
        tail = final or "Continue the conversation above from where it ends."
        final = f"<conversation>\n{history}\n</conversation>\n\n{tail}"
    if system is not None and system_mode == "inline":
        return Prompt(None, f"<instructions>\n{system}\n</instructions>\n\n{final}")
    return Prompt(system, final)


def add_turn(turns: list[Turn], turn: Turn) -> None:
    """Append a turn; consecutive assistant output (messages, then function calls) is one assistant turn, as the
    answer it came from was (see Answer.text)."""
    last = turns[-1] if turns else None
    if last is None or last.role != "assistant" or turn.role != "assistant" or (last.calls and not turn.calls):
        turns.append(turn)
        return
    text = "\n\n".join(t for t in (last.text, turn.text) if t)
    turns[-1] = dataclasses.replace(last, text=text, calls=last.calls + turn.calls)


def prefix_keys(model: str, turns: Sequence[Turn]) -> list[str]:
    """The conversation key of every prefix, in one pass: keys[n] covers turns[:n].

    A key digests a conversation's meaning (model, roles, texts, tool calls, images), blind to formatting clients
    change when they send the history back (content as parts, JSON spacing)."""
    digest = hashlib.sha256(model.encode())
    keys = [digest.hexdigest()]
    for turn in turns:
        calls = [(c.id, c.name, _canonical_json(c.arguments)) for c in turn.calls]
        images = [hashlib.sha256(url.encode()).hexdigest() for url, _ in turn.images]
        canonical = [turn.role, turn.text, calls, turn.call_id, images]
        digest.update(json.dumps(canonical, sort_keys=True).encode())
        keys.append(digest.hexdigest())
    return keys


def _canonical_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text or "{}"), sort_keys=True)
    except ValueError:
        return text


CLAUDE_MODEL_ID = re.compile(r"claude-(?:[a-z]+-)*\d[\w.\-]*(?:\[1m\])?")
MODEL_ALIAS = re.compile(r"[a-z]+(?:\[1m\])?")  # the shape of the CLI's aliases: sonnet, opus[1m], fable, ...


def resolve_model(requested: str, settings: Settings) -> str | None:
    """The --model value for a requested id (None: the CLI's default): an alias-shaped word or an id that names a
    Claude model (claude-<family>-<version>…), which the CLI resolves (one it cannot use is a ModelNotFound from the
    run); anything else, the old default id included, raises ModelNotFound."""
    if requested == settings.model_name:
        return None
    if MODEL_ALIAS.fullmatch(requested) or CLAUDE_MODEL_ID.fullmatch(requested):
        return requested
    valid = ", ".join((settings.model_name, *MODEL_ALIASES, "claude-<model>-<version>"))
    raise ModelNotFound(f"The model '{requested[:200]}' does not exist. Valid ids: {valid}, or an alias that "
                        "GET /v1/models lists", param="model")


def mcp_tool(name: str, description: str | None, parameters: dict[str, Any] | None) -> str:
    """A client tool as an MCP tool definition (canonical JSON)."""
    schema = {"type": "object", "properties": {}, **(parameters or {})}
    return json.dumps({"name": name, "description": description or "", "inputSchema": schema}, sort_keys=True)


def tool_instruction(choice: str | None, names: Sequence[str], where: str) -> str | None:
    """What a required or named tool choice asks of Claude, as a system instruction (best effort): "required"
    or a tool name; "auto", "none" and None ask nothing."""
    if choice in (None, "auto", "none"):
        return None
    if choice == "required":
        return "Answer by calling one or more of the available tools."
    if choice not in names:
        raise InvalidRequest(f"tool_choice names '{choice}', which is not in tools", param=where)
    return f"Answer by calling the tool {choice}."


JSON_OBJECT_SCHEMA = '{"type": "object"}'


def output_schema(kind: Any, schema: Any, where: str) -> str | None:
    """The schema of a structured-output request as canonical JSON: "json_schema" with its schema, "json_object" as
    any object, "text" (or nothing) as None. A schema that is not one is a 400: Claude Code 2.1.197 silently ignores
    an invalid --json-schema and answers in prose."""
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return JSON_OBJECT_SCHEMA
    if kind != "json_schema":
        raise InvalidRequest(f"Unsupported response format type {str(kind)[:50]!r}", param=where)
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{where} needs a JSON schema object", param=where)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidRequest(f"Invalid JSON schema at {where}: {exc.message}", param=where) from None
    return json.dumps(schema, sort_keys=True)


# Images: data: URLs are decoded; http(s) URLs are fetched only when CLAUDE_FETCH_IMAGES allows it.


def image_block(media_type: str, data: bytes, max_bytes: int, where: str) -> dict[str, Any]:
    """An Anthropic base64 image block; refuses types Claude cannot read and images over max_bytes."""
    media_type = media_type.split(";")[0].strip().lower()
    if media_type not in IMAGE_TYPES:
        raise InvalidRequest(f"Unsupported image type '{media_type}' in {where}; use png, jpeg, gif or webp",
                             param=where)
    if len(data) > max_bytes:
        raise InvalidRequest(f"The image in {where} is larger than CLAUDE_MAX_IMAGE_BYTES ({max_bytes})", param=where)
    return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                        "data": base64.b64encode(data).decode()}}


def data_url_image(url: str, max_bytes: int, where: str) -> dict[str, Any]:
    header, _, payload = url.partition(",")
    if not header.startswith("data:") or not header.endswith(";base64"):
        raise InvalidRequest(f"The image in {where} is not a base64 data: URL", param=where)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"The image in {where} is not valid base64", param=where) from None
    return image_block(header[5:-7], data, max_bytes, where)


async def fetch_image(url: str, where: str, settings: Settings, deadline: float) -> dict[str, Any]:
    """The image block for an image URL: decoded from a data: URL or, when CLAUDE_FETCH_IMAGES allows it (a proxy
    that fetches any URL it is given is an SSRF hole), downloaded within IMAGE_FETCH_S seconds and the request's
    `deadline` (monotonic), from public addresses only (see image_address), at most max_image_bytes once decoded.
    Every failure says the same, so that answers cannot map which hosts and ports exist."""
    if url.startswith("data:"):
        return data_url_image(url, settings.max_image_bytes, where)
    if not url.startswith(("http://", "https://")):
        raise InvalidRequest(f"Unsupported image URL in {where}", param=where)
    if not settings.fetch_images:
        raise InvalidRequest(f"Image URLs are not fetched (set CLAUDE_FETCH_IMAGES=1); send a data: URL in {where}",
                             param=where)
    failed = InvalidRequest(
        f"Could not fetch the image in {where}: it must be a png, jpeg, gif or webp image of at most "
        f"{settings.max_image_bytes} bytes at a public http(s) address, sent within {IMAGE_FETCH_S:.0f} s; or send "
        "a data: URL", param=where)
    try:
        limit = max(0.0, min(IMAGE_FETCH_S, deadline - time.monotonic()))
        media_type, data = await asyncio.wait_for(download_image(url, settings), limit)
        return image_block(media_type, data, settings.max_image_bytes, where)
    except (httpx.HTTPError, OSError, ValueError, zlib.error, asyncio.TimeoutError, InvalidRequest) as exc:
        logger.debug("image fetch failed: %r", str(exc)[:200])
        raise failed from None


async def download_image(url: str, settings: Settings) -> tuple[str, bytes]:
    """The media type and decoded bytes of an image URL. Redirects are followed here, each hop's address checked
    (httpx following them would connect wherever a public server points it); ValueError for what is refused."""
    allowed = [ipaddress.ip_network(net.strip(), strict=False)
               for net in settings.fetch_allowed_networks.split(",") if net.strip()]
    async with httpx.AsyncClient(timeout=IMAGE_FETCH_S, follow_redirects=False, trust_env=False) as client:
        for _ in range(IMAGE_REDIRECTS + 1):
            target = httpx.URL(url)
            if target.scheme not in ("http", "https"):
                raise ValueError(f"redirected to a {target.scheme} URL")
            address = await image_address(target, allowed)
            # Connect to the address just checked (resolving again could give another: DNS rebinding); the name
            # still goes in Host and in TLS (SNI, and the certificate is checked against it).
            request = client.build_request(
                "GET", target.copy_with(host=address), headers={"Host": target.netloc.decode("ascii"),
                                                                "Accept": ", ".join(IMAGE_TYPES)},
                extensions={"sni_hostname": target.host})
            response = await client.send(request, stream=True)
            try:
                if not response.has_redirect_location:
                    response.raise_for_status()
                    return response.headers.get("content-type", ""), await read_image(response, settings)
                url = str(target.join(response.headers["location"]))
            finally:
                await response.aclose()
    raise ValueError("too many redirects")


async def image_address(target: httpx.URL, allowed: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """The address to fetch `target` from: its name resolved, every address checked, so that a name cannot lead to
    loopback, link-local or private addresses (this machine, the LAN, cloud metadata at 169.254.169.254) unless
    CLAUDE_FETCH_ALLOWED_NETWORKS lists them."""
    port = target.port or (443 if target.scheme == "https" else 80)
    found = await asyncio.get_running_loop().getaddrinfo(target.host, port, type=socket.SOCK_STREAM)
    addresses = [str(info[4][0]) for info in found]
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not (address.is_global and not address.is_multicast) and not any(address in net for net in allowed):
            raise ValueError(f"{target.host} has the address {address}, which is not public")
    if not addresses:
        raise ValueError(f"{target.host} has no address")
    return addresses[0]


async def read_image(response: httpx.Response, settings: Settings) -> bytes:
    """The body of an image response, decoded as it streams in and refused as soon as it passes max_image_bytes
    (a small gzip body can stand for gigabytes)."""
    limit = settings.max_image_bytes
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in IMAGE_TYPES:
        raise ValueError(f"not an image: {media_type[:50]!r}")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in CONTENT_DECODERS:
        raise ValueError(f"unsupported content-encoding {encoding[:50]!r}")
    wbits = CONTENT_DECODERS[encoding]
    decoder = zlib.decompressobj(wbits) if wbits else None
    data = bytearray()
    async for chunk in response.aiter_raw():
        data += decoder.decompress(chunk, limit + 1 - len(data)) if decoder else chunk
        if len(data) > limit:
            raise ValueError(f"over {limit} bytes")
    return bytes(data)


async def user_content(text: str, turns: Sequence[Turn], settings: Settings,
                       deadline: float) -> list[dict[str, Any]]:
    """The content of the user message sent to Claude Code: the prompt text, then the images of `turns`."""
    places = [place for turn in turns if turn.role == "user" for place in turn.images]
    images = [await fetch_image(url, where, settings, deadline) for url, where in places]
    return [{"type": "text", "text": text}, *images]


# ── 4. Claude Code's command line: argv, environment, stream-json, files ──────


@dataclass(frozen=True)
class Launch:
    """What is fixed when a Claude Code process starts (a warm process can serve requests with an equal Launch)."""

    model: str | None = None
    system_prompt: str | None = None
    cwd: str | None = None
    tools: tuple[str, ...] = ()
    persist: bool = False
    resume: str | None = None
    json_schema: str | None = None

    def same_run(self, other: Launch) -> bool:
        """Whether a process started for `other` answers like one for this (where it runs aside)."""
        def aside(launch: Launch) -> Launch:
            return dataclasses.replace(launch, cwd=None, persist=False, resume=None)

        return aside(self) == aside(other)


def build_argv(claude_bin: str, settings: Settings, launch: Launch, system_prompt_file: str | None = None,
               mcp_config_file: str | None = None, session_id: str | None = None,
               cli_flags: frozenset[str] = frozenset()) -> list[str]:
    """The CLI's argv. The prompt is never in it: it goes on stdin as stream-json. `cli_flags` are the flags the
    installed CLI lists in --help (cli_flags_of): optional flags it lacks are left out.

    Caller-controlled values use --flag=value so that a value starting with '-' cannot become a flag
    (CLI 2.1.197 parses any such argv word as an option).
    """
    argv = [
        claude_bin, "-p",
        "--input-format=stream-json", "--output-format=stream-json", "--verbose", "--include-partial-messages",
        f"--max-turns={settings.max_turns}", f"--permission-mode={settings.permission_mode}",
    ]
    if settings.max_budget_usd > 0:
        argv.append(f"--max-budget-usd={settings.max_budget_usd}")
    if EXCLUDE_DYNAMIC_SECTIONS in cli_flags:
        # Claude Code writes the working directory, memory path and environment into its system prompt, and the
        # proxy gives every conversation a folder of its own: two conversations then share no cached prefix. This
        # flag (CLI 2.1.197 and later) moves those sections into the first user message, so the tools and system
        # prompt are byte-identical across conversations and read from the prompt cache instead of written again.
        argv.append(EXCLUDE_DYNAMIC_SECTIONS)
    if not launch.persist:
        argv.append("--no-session-persistence")
    if launch.resume:
        argv.append(f"--resume={launch.resume}")
    elif session_id:
        argv.append(f"--session-id={session_id}")  # known from the start: its transcript can be found and removed
    if launch.model:
        argv.append(f"--model={launch.model}")
    if launch.system_prompt is not None:
        flag = "--system-prompt" if settings.system_prompt_mode == "replace" else "--append-system-prompt"
        if system_prompt_file:
            argv.append(f"{flag}-file={system_prompt_file}")
        else:
            argv.append(f"{flag}={launch.system_prompt}")
    if launch.json_schema:
        # Claude Code then ends by calling its StructuredOutput tool, validated against the schema (CLI 2.1.197).
        argv.append(f"--json-schema={launch.json_schema}")
    if mcp_config_file:
        argv += [f"--mcp-config={mcp_config_file}", "--strict-mcp-config", f"--allowedTools=mcp__{MCP_SERVER}"]
        if not settings.keep_builtin_tools:
            argv.append("--tools=")
    return argv


def mcp_config(url: str, secret: str) -> str:
    """The --mcp-config of a process serving the client's tools: the proxy's MCP endpoint, the bridge's secret as a
    bearer token. It goes in a mode-600 file, never on argv, which every user of the machine can read (ps)."""
    # alwaysLoad: the client's tools are always in the prompt, never deferred behind Claude Code's tool search (which
    # hides MCP tools on CLI 2.1.331 whenever its own tools are on, and on 2.1.197 with ENABLE_TOOL_SEARCH); on
    # 2.1.331 it also makes the first turn wait until this server is connected.
    server = {"type": "http", "url": url, "headers": {"Authorization": f"Bearer {secret}"}, "alwaysLoad": True}
    return json.dumps({"mcpServers": {MCP_SERVER: server}})


def child_env(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The CLI's environment: ours, minus what would confuse a nested CLI or leak the proxy token."""
    env = {k: v for k, v in environ.items() if k not in CHILD_ENV_DROPPED}
    env.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
    env["CLAUDE_CODE_MAX_RETRIES"] = str(settings.max_retries)
    env["MCP_TOOL_TIMEOUT"] = str(int((settings.tool_wait + settings.timeout) * 1000))
    # A client tool call is held until the client's next request brings its result. CLI 2.1.331 moves an MCP call
    # still running after CLAUDE_CODE_MCP_AUTO_BACKGROUND_MS (2 minutes when CLAUDE_AUTO_BACKGROUND_TASKS is on) to
    # the background and answers the model "still running" in its place; 0 turns that off.
    env["CLAUDE_CODE_MCP_AUTO_BACKGROUND_MS"] = "0"
    return env


def cli_flags_of(help_text: str) -> frozenset[str]:
    """The long flags a CLI's --help lists (how version-dependent flags are detected)."""
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text))


def user_message(content: list[dict[str, Any]]) -> bytes:
    """One stream-json input line carrying a user turn (text and image blocks)."""
    message = {"type": "user", "message": {"role": "user", "content": content}}
    return json.dumps(message, ensure_ascii=False).encode() + b"\n"


def control_request(request_id: str, subtype: str) -> bytes:
    """One stream-json input line asking the CLI something outside any turn (e.g. "initialize"); the CLI answers
    with a control_response event carrying the same request_id (see control_response)."""
    request = {"type": "control_request", "request_id": request_id, "request": {"subtype": subtype}}
    return json.dumps(request).encode() + b"\n"


def parse_event(line: bytes) -> dict[str, Any] | None:
    """A stream-json event, or None for a blank or non-JSON line (the CLI may print stray text)."""
    line = line.strip()
    if not line.startswith(b"{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        logger.debug("skipping a line that is not JSON: %.200r", line)
        return None
    return event if isinstance(event, dict) else None


async def cli_output(claude_bin: str, args: Sequence[str], env: Mapping[str, str], timeout: float = 10) -> bytes:
    """The stdout of a quick CLI command that starts no run (--version, auth status)."""
    proc = await asyncio.create_subprocess_exec(claude_bin, *args, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
                                                env=dict(env))
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return out


def cli_project_name(folder: str) -> str:
    """The name of the folder under CLAUDE_CONFIG_DIR/projects where Claude Code keeps the transcripts of sessions run
    in `folder` (CLI 2.1.197): each UTF-16 unit but an ASCII letter or digit becomes "-"; a name over 200 characters
    is cut there and followed by "-" and the folder's Java-style string hash in base 36."""
    raw = folder.encode("utf-16-le")
    units = [int.from_bytes(raw[i:i + 2], "little") for i in range(0, len(raw), 2)]
    name = "".join(chr(unit) if chr(unit).isascii() and chr(unit).isalnum() else "-" for unit in units)
    if len(name) <= 200:
        return name
    code = 0
    for unit in units:
        code = (code * 31 + unit) & 0xFFFFFFFF
    code = abs(code - (1 << 32) if code >= 1 << 31 else code)
    digits = ""
    while not digits or code:
        code, digit = divmod(code, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
    return f"{name[:200]}-{digits}"


@dataclass(frozen=True)
class Footprint:
    """What a conversation's Claude Code session leaves on disk: its transcript (under CLAUDE_CONFIG_DIR/projects,
    in the folder named after the conversation's folder: <session id>.jsonl and a folder of that id) and, when the
    proxy made it (`owned`), the conversation's folder, whose transcripts' folder then goes with it."""

    folder: str
    owned: bool
    session_id: str | None

    def remove(self, projects: Path) -> None:
        transcripts = projects / cli_project_name(os.path.realpath(self.folder))
        if self.owned:
            shutil.rmtree(self.folder, ignore_errors=True)
            shutil.rmtree(transcripts, ignore_errors=True)
        elif self.session_id:
            (transcripts / f"{self.session_id}.jsonl").unlink(missing_ok=True)
            shutil.rmtree(transcripts / self.session_id, ignore_errors=True)


# ── 5. A Claude Code process: framing, stopping, the tool bridge ──────────────


def _descendants(pid: int) -> set[psutil.Process]:
    try:
        return set(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return set()


def _kill_all(processes: set[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()  # psutil checks the pid still names the same process before signalling


def marked_processes(match: Callable[[str], bool]) -> list[psutil.Process]:
    """This user's processes (this one aside) whose OWNER_VARIABLE `match` accepts.

    Every CLI process the proxy starts carries a mark in its environment, and everything it starts inherits it:
    the Bash tool's commands too, which run in sessions of their own (setsid) and are re-parented once the CLI is
    gone, beyond the reach of process groups and of the CLI's own clean-up (measured on CLI 2.1.197)."""
    found = []
    for process in psutil.process_iter(["uids"]):
        try:
            if process.pid == os.getpid() or process.info["uids"] is None or process.info["uids"].real != os.getuid():
                continue
            mark = process.environ().get(OWNER_VARIABLE)
        except psutil.Error:  # gone meanwhile, or not ours to read
            continue
        if mark is not None and match(mark):
            found.append(process)
    return found


class ExitNoticed(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's protocol for a subprocess with pipes, resolving `exited` the moment the process ends: on Python
    3.11, Process.wait() also waits for the pipes to close, which a tool process that inherited them can keep open
    long after the CLI died."""

    def __init__(self, exited: asyncio.Future[None], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=1 << 16, loop=loop)
        self.exited = exited

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


async def start_cli(argv: list[str], env: dict[str, str], cwd: str) -> tuple[asyncio.subprocess.Process,
                                                                           asyncio.Future[None]]:
    """Start the CLI in its own session, so signals meant for the proxy's terminal do not reach it: what
    asyncio.create_subprocess_exec does, with a protocol that notices the exit (see ExitNoticed)."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    try:
        transport, protocol = await loop.subprocess_exec(
            lambda: ExitNoticed(exited, loop), *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=cwd, env=env, start_new_session=True,
        )
    except (FileNotFoundError, PermissionError) as exc:
        raise ClaudeNotFound(f"Cannot run the Claude Code CLI at {argv[0]}: {exc}. Set CLAUDE_BIN.") from exc
    except OSError as exc:
        raise ClaudeFailed(f"Cannot start the Claude Code CLI: {exc}") from exc
    return asyncio.subprocess.Process(transport, protocol, loop), exited


async def end_marked(mark: str, what: str) -> None:
    """End every process carrying `mark` (see marked_processes): what `what`, now gone, left running."""
    left = await asyncio.to_thread(marked_processes, mark.__eq__)
    _kill_all(set(left))
    logger.warning("%s; stopped the %d processes it left", what, len(left))


class ClaudeProcess:
    """One Claude Code CLI process reading stream-json on stdin and writing stream-json on stdout.

    Events are read by a background task into a queue, so waiting for one can time out (keep-alives, deadlines)
    without losing a partial line, and a process that dies while idle is noticed.
    """

    def __init__(self, proc: asyncio.subprocess.Process, exited: asyncio.Future[None], workdir: str,
                 max_line_bytes: int, mark: str = "") -> None:
        self.proc = proc
        self._exited = exited
        self.workdir = workdir
        self.mark = mark  # its OWNER_VARIABLE: what it leaves behind if it dies unexpectedly carries it too
        self._exit_expected = False  # we are ending it (stop, finish): its exit is no accident
        self._sweep: asyncio.Task[None] | None = None
        self._watcher = asyncio.create_task(self._watch_exit())
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._events: asyncio.Queue[dict[str, Any] | ProxyError | None] = asyncio.Queue()
        self._readers = [
            asyncio.create_task(self._read_stdout(max_line_bytes)),
            asyncio.create_task(self._read_stderr()),
        ]
        self._stopping: asyncio.Task[None] | None = None
        self.interrupted: ProxyError | None = None
        self.bridge: ToolBridge | None = None
        # The total_cost_usd of its last result: the CLI adds up the cost of all its turns (and, CLI 2.1.331, those
        # of the session it resumed: see Processes.spent).
        self.billed = 0.0
        self.cwd = workdir
        self.footprint: Footprint | None = None  # its saved session: removed with it unless a session keeps it
        self.launch = Launch()  # what it was started with

    @classmethod
    async def spawn(cls, argv: list[str], env: dict[str, str], cwd: str, workdir: str,
                    max_line_bytes: int) -> ClaudeProcess:
        proc, exited = await start_cli(argv, env, cwd)
        return cls(proc, exited, workdir, max_line_bytes, env.get(OWNER_VARIABLE, ""))

    async def _wait_exit(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exited), timeout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and self._stopping is None and not self._readers[0].done()

    def running(self) -> bool:
        """Alive, asking the OS: a process that has just died is a zombie before asyncio notices."""
        try:
            return self.alive and psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    async def send(self, line: bytes) -> None:
        """Write one stream-json line."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line)
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise await self.failure() from exc

    @property
    def has_pending(self) -> bool:
        """Whether events already read from the CLI are waiting."""
        return not self._events.empty()

    async def next_event(self) -> dict[str, Any] | None:
        """The next event; None once stdout has ended."""
        item = await self._events.get()
        if item is None:
            self._events.put_nowait(None)
        if isinstance(item, ProxyError):
            raise item
        return item

    async def failure(self) -> ProxyError:
        """Why the process ended without a result, from its exit code and the end of its stderr."""
        if self.interrupted is not None:
            return self.interrupted
        await self._wait_exit(STOP_GRACE_S)
        await asyncio.wait({self._readers[1]}, timeout=0.5)
        stderr = "\n".join(self.stderr_tail).strip()
        code = self.proc.returncode
        message = f"Claude Code exited with code {code}" + (f": {stderr}" if stderr else " without a result")
        if "root/sudo" in stderr:
            message += (
                " — skipping permissions as root needs IS_SANDBOX=1 in the service environment (containers and"
                " sandboxes only), or set CLAUDE_PERMISSION_MODE=acceptEdits"
            )
        return ClaudeFailed(message)

    async def _read_stdout(self, max_line_bytes: int) -> None:
        # Our own line framing: one tool result can be many MiB, beyond asyncio's 64 KiB readline limit.
        assert self.proc.stdout is not None
        line = bytearray()
        try:
            while chunk := await self.proc.stdout.read(1 << 18):
                start = 0
                while (end := chunk.find(b"\n", start)) >= 0:
                    line += chunk[start:end]
                    self._put(line)
                    line, start = bytearray(), end + 1
                line += chunk[start:]
                if len(line) > max_line_bytes:
                    self._events.put_nowait(ClaudeFailed(
                        f"Claude Code wrote a line over {max_line_bytes} bytes; raise CLAUDE_MAX_LINE_BYTES"
                    ))
                    return
            self._put(line)
        finally:
            self._events.put_nowait(None)

    def _put(self, line: bytearray) -> None:
        if (event := parse_event(bytes(line))) is not None:
            self._events.put_nowait(event)

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr_tail.append(line.decode(errors="replace").rstrip())

    def _close_input(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None and not self.proc.stdin.is_closing():
                self.proc.stdin.close()

    async def _watch_exit(self) -> None:
        await self._exited
        self._expect_exit()

    def _expect_exit(self) -> None:
        """Note that the process is being ended by us; if it has already ended without us (kill -9, a crash), its
        tree is gone and its tool processes live on, re-parented: end every process carrying its mark."""
        if self.proc.returncode is not None and not self._exit_expected and self.mark and self._sweep is None:
            what = f"Claude Code (pid {self.pid}) ended on its own with code {self.proc.returncode}"
            self._sweep = asyncio.get_running_loop().create_task(end_marked(self.mark, what))
        self._exit_expected = True

    async def stop(self, reason: ProxyError | None = None) -> None:
        """Stop the process and every process it started; safe to call twice and from a cancelled task.

        `reason` is what the request still reading this process is told (an interrupted CLI reports a cryptic
        error_during_execution result of its own)."""
        self._expect_exit()
        self.interrupted = self.interrupted or reason
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._terminate())
        await asyncio.shield(self._stopping)

    async def _terminate(self) -> None:
        # Claude Code's Bash tool runs commands under setsid, outside our process group, and they are re-parented
        # when the CLI dies: note the whole tree before any signal. SIGINT first: the CLI then ends its own tool
        # processes (SIGTERM/SIGKILL of the CLI orphan them, measured on CLI 2.1.197).
        tree = _descendants(self.pid)
        self._close_input()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if self.proc.returncode is not None:
                break
            tree |= _descendants(self.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if sig == signal.SIGINT:
                    self.proc.send_signal(sig)
                else:
                    os.killpg(self.pid, sig)
            await self._wait_exit(STOP_GRACE_S if sig == signal.SIGINT else 1.0)
        _kill_all(tree)
        if self._sweep is not None:
            await self._sweep
        await asyncio.wait(self._readers, timeout=1.0)
        for reader in self._readers:
            reader.cancel()
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def finish(self) -> None:
        """Let a process whose work is done exit on its own (stdin closed) and end what it left running;
        stop() then cleans up."""
        self._expect_exit()
        tree = _descendants(self.pid)
        self._close_input()
        await self._wait_exit(1.0)
        _kill_all(tree | _descendants(self.pid))


class ToolBridge:
    """The client's tools, served over MCP by the proxy itself to one Claude Code process.

    Claude calls them natively; each tools/call waits until the client sends the result in its next request.
    Results may arrive before the CLI asks for them.
    """

    def __init__(self, tools: tuple[str, ...]) -> None:
        self.secret = secrets.token_urlsafe(24)
        self.tools = [json.loads(tool) for tool in tools]
        self._results: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def _future(self, tool_use_id: str) -> asyncio.Future[dict[str, Any]]:
        if tool_use_id not in self._results:
            self._results[tool_use_id] = asyncio.get_running_loop().create_future()
        return self._results[tool_use_id]

    def deliver(self, tool_use_id: str, text: str, is_error: bool = False) -> None:
        future = self._future(tool_use_id)
        if not future.done():
            future.set_result({"content": [{"type": "text", "text": text}], "isError": is_error})

    async def call(self, tool_use_id: str) -> dict[str, Any]:
        return await asyncio.shield(self._future(tool_use_id))

    def close(self) -> None:
        for future in self._results.values():
            future.cancel()


async def answer_mcp(bridge: ToolBridge, message: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON-RPC reply to one MCP message from Claude Code (None for notifications)."""
    if "id" not in message:
        return None
    params = message.get("params") or {}
    match message.get("method"):
        case "initialize":
            result: dict[str, Any] = {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "claude-code-openai-proxy", "version": __version__},
            }
        case "ping":
            result = {}
        case "tools/list":
            result = {"tools": bridge.tools}
        case "tools/call":
            tool_use_id = (params.get("_meta") or {}).get("claudecode/toolUseId")
            if not tool_use_id:
                return _jsonrpc_error(message["id"], -32602, "tools/call without _meta claudecode/toolUseId")
            result = await bridge.call(tool_use_id)
        case other:
            return _jsonrpc_error(message["id"], -32601, f"Method not found: {other}")
    return {"jsonrpc": "2.0", "id": message["id"], "result": result}


def _jsonrpc_error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


# ── 6. Interpreter: CLI events into a neutral answer ──────────────────────────
# The only place that knows stream-json: stop reasons, results, top-level vs sub-agent events, the MCP prefix.


def result_error(result: dict[str, Any], retry_delay_s: float | None, used_tools: bool,
                 rate_limit: Mapping[str, Any] | None = None) -> ProxyError:
    """The ProxyError for a CLI result with is_error (the CLI says "success" for API errors, so is_error rules);
    a 429 after a rate_limit_event "rejected" is the plan's limit, reached until it resets."""
    status = result.get("api_error_status")
    message = result.get("result") or "; ".join(result.get("errors") or []) or "Claude Code reported an error"
    if status == 429 and rate_limit is not None and rate_limit.get("status") == "rejected":
        return plan_limit_error(str(rate_limit.get("rateLimitType") or ""), number(rate_limit.get("resetsAt")),
                                time.time())
    error: ProxyError
    if status in (401, 403):
        error = upstream_auth_error(str(message))
    elif status == 429:
        error = UpstreamRateLimited(str(message), retry_after=retry_delay_s or 30)
    elif status == 529 or "overloaded" in str(message).lower():
        error = UpstreamOverloaded(str(message), retry_after=retry_delay_s or 30)
    elif status == 404:  # the API does not know the model (the CLI passes any --model through to it)
        error = ModelNotFound(str(message), param="model")
    elif status is not None:
        error = UpstreamError(str(message))
    else:
        error = ClaudeFailed(str(message))
    error.retryable = isinstance(status, int) and (status == 429 or status >= 500) and not used_tools
    return error


def upstream_auth_error(detail: str) -> UpstreamAuthError:
    return UpstreamAuthError(
        f"Claude Code is not authenticated ({detail}). Run `claude` once and log in as the user the proxy runs as,"
        " or give the service CLAUDE_CODE_OAUTH_TOKEN (from `claude setup-token`) or ANTHROPIC_API_KEY."
    )


# Plan limits, as Claude Code reports them in rate_limit_event (CLI 2.1.197, logged in with a subscription only):
#   {"type": "rate_limit_event", "rate_limit_info": {"status": "allowed_warning", "resetsAt": 1795570672,
#    "rateLimitType": "five_hour", "utilization": 0.91, "isUsingOverage": false, "surpassedThreshold": 0.9}, ...}
# "allowed" and "rejected" carry no utilization. The CLI emits one when what it knows changes (a new process: at its
# first API answer); a "rejected" one comes before the result of the refused request (is_error, api_error_status 429).
# CLI 2.1.331 adds every window the API reported, except in a "rejected" one: "unifiedWindows": {"five_hour":
#   {"utilization": 0.91, "resetsAt": 1795570672, "surpassedThreshold": 0.9}, "seven_day": {"utilization": 0.42, ...}}
LIMIT_NAMES = {"five_hour": "5-hour session limit", "seven_day": "weekly limit", "seven_day_opus": "weekly Opus limit",
               "seven_day_sonnet": "weekly Sonnet limit", "seven_day_overage_included": "weekly limit (overage)",
               "overage": "usage credit limit"}


def number(value: Any) -> float | None:
    """A JSON number as a float; None for anything else (booleans included)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def limit_name(kind: str) -> str:
    return LIMIT_NAMES.get(kind) or (f"{kind.replace('_', ' ')} limit" if kind else "usage limit")


def span(seconds: float) -> str:
    """A duration for people: "2 d 3 h", "4 h 12 min", "7 min"."""
    hours, minutes = divmod(max(math.ceil(seconds / 60), 1), 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{minutes} min" if not days else ""]
    return " ".join(part for part in parts if part and not part.startswith("0 "))


def utc_minute(moment: float) -> str:
    """A time for people: "2026-11-25 03:10 UTC"."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(moment))


def plan_limit_error(kind: str, resets_at: float | None, now: float) -> PlanLimitReached:
    """The 429 of a reached plan limit, saying which one and when it resets (Retry-After: until then)."""
    if resets_at is None:
        return PlanLimitReached(f"Claude's {limit_name(kind)} is reached", retry_after=60)
    return PlanLimitReached(f"Claude's {limit_name(kind)} is reached; it resets at {utc_minute(resets_at)} (in "
                            f"{span(resets_at - now)})", retry_after=max(resets_at - now, 1.0))


def cut_short(result: dict[str, Any], stop_reason: str | None) -> str | None:
    """Why a result ends the answer early without an error (finish "length"): max turns or max budget (the CLI says
    why in `errors`), or max tokens after the CLI's own attempts to continue; None when it does not."""
    if result.get("subtype") in ("error_max_turns", "error_max_budget_usd"):
        return "; ".join(result.get("errors") or []) or str(result["subtype"])
    if stop_reason == "max_tokens" and result.get("api_error_status") is None:
        return "The answer reached the model's output token limit"
    return None


TOOL_INPUT_KEYS = ("command", "file_path", "path", "pattern", "url", "query", "description", "prompt")
INPUT_TOKEN_FIELDS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
CLI_TIMING_FIELDS = ("ttft_ms", "time_to_request_ms")  # in the result event (CLI 2.1.197 and later)


def tool_summary(name: str, tool_input: dict[str, Any]) -> str:
    """A one-line description of a tool call, e.g. "Bash: ls -la"."""
    value = next((tool_input[k] for k in TOOL_INPUT_KEYS if isinstance(tool_input.get(k), str)), None)
    text = value.strip().splitlines()[0] if value and value.strip() else json.dumps(tool_input, ensure_ascii=False)
    return f"{name}: {text[:160]}"


def tool_outcome(name: str, block: dict[str, Any]) -> str:
    """A short outcome of a tool call, e.g. "exit 0, 12 lines" or "failed: No such file"."""
    content = block.get("content")
    if isinstance(content, list):
        content = "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    text = str(content or "").strip()
    if block.get("is_error"):
        return f"failed: {text.splitlines()[0][:160] if text else 'error'}"
    lines = len(text.splitlines())
    return ("exit 0, " if name == "Bash" else "") + f"{lines} line{'' if lines == 1 else 's'}"


BlockKind = Literal["text", "reasoning", "tool_call"]
Finish = Literal["stop", "length", "tool_calls"]


@dataclass
class Block:
    """One part of an answer: text, reasoning (thinking, or Claude Code's tool activity), or a client tool call."""

    kind: BlockKind
    text: str = ""  # the text, the reasoning, or a tool call's JSON arguments
    call_id: str = ""
    name: str = ""
    signature: str = ""


@dataclass
class Answer:
    """Everything one request's answer holds so far: blocks, token counts, cost, and why it ended."""

    blocks: list[Block] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*INPUT_TOKEN_FIELDS, "output_tokens"), 0))
    cost: float | None = None
    finish: Finish = "stop"
    cut_short: str | None = None  # why finish is "length": max turns, max budget or max tokens
    model: str | None = None  # the model that answered, as the API named it
    first_output: float | None = None  # time.monotonic() of its first output (set by the Run)
    timing: dict[str, int] = field(default_factory=dict)  # the CLI's own CLI_TIMING_FIELDS for the last turn

    def of_kind(self, kind: BlockKind) -> list[Block]:
        return [block for block in self.blocks if block.kind == kind]

    @property
    def text(self) -> str:
        """The text blocks that have text, a blank line between two (as one message's content, and as the stream
        separates them: see ChatRenderer.render)."""
        return "\n\n".join(block.text for block in self.of_kind("text") if block.text)


@dataclass(frozen=True)
class Started:
    """Block `index` of the answer began (its kind, call id and name are set)."""

    index: int


@dataclass(frozen=True)
class Delta:
    """More of block `index`: text, reasoning or argument JSON; or, with `signature`, a thinking block's signature."""

    index: int
    text: str
    signature: bool = False


@dataclass(frozen=True)
class Ended:
    index: int


AnswerEvent = Started | Delta | Ended


class Interpreter:
    """Reads a run's CLI events (one request's worth at a time) into answer events and an Answer.

    Only top-level turns count (sub-agents' events carry a parent_tool_use_id). Calls of the client's tools
    (MCP_PREFIX) become tool_call blocks; a message that stops for them sets `awaiting`. Raises the ProxyError a
    failed run stands for."""

    def __init__(self, show_activity: bool = False, billed: float = 0.0,
                 on_rate_limit: Callable[[Mapping[str, Any]], None] | None = None, structured: bool = False) -> None:
        self.show_activity = show_activity
        self.structured = structured  # the answer is the result's structured_output; the model's text is remarks
        self.billed = billed  # the process's total_cost_usd so far (see ClaudeProcess.billed)
        self.on_rate_limit = on_rate_limit  # told every rate_limit_info
        self.rate_limit: Mapping[str, Any] | None = None  # the latest one
        self.answer = Answer()
        self.session_id: str | None = None
        self.done = False  # the result event was read
        # The API began an answer (a stream_event); an API error or refusal is a synthetic assistant message instead.
        self.answering = False
        self.used_tools = False  # a tool ran (retrying the run could repeat its effects)
        self.awaiting: tuple[str, ...] = ()  # client tool calls the run now waits for
        self._stop_reason: str | None = None
        self._retry_delay_s: float | None = None
        self._blocks: dict[int, int] = {}  # the API message's content block index -> index in answer.blocks
        self._own_tools: dict[str, str] = {}  # tool_use id -> name, for Claude Code's own tools

    def next_answer(self) -> None:
        """Start the answer to the next request (a run continued with tool results)."""
        self.answer, self.awaiting, self._blocks = Answer(), (), {}

    def feed(self, event: dict[str, Any]) -> list[AnswerEvent]:
        """The answer events one CLI event yields (often none)."""
        self.session_id = event.get("session_id") or self.session_id
        top_level = event.get("parent_tool_use_id") is None
        match event.get("type"):
            case "system" if event.get("subtype") == "api_retry":
                self._retrying(event)
            case "stream_event" if top_level:
                self.answering = True
                return self._stream_event(event.get("event") or {})
            case "assistant" | "user":
                return self._activity(event, top_level)
            case "rate_limit_event" if isinstance(info := event.get("rate_limit_info"), dict):
                self.rate_limit = info
                if self.on_rate_limit is not None:
                    self.on_rate_limit(info)
            case "result":
                return self._result(event)
        return []

    def _retrying(self, event: dict[str, Any]) -> None:
        self._retry_delay_s = (event.get("retry_delay_ms") or 0) / 1000 or None
        if event.get("error_status") in (401, 403):
            # The CLI would retry a bad credential for minutes; it will not get better.
            raise upstream_auth_error(f"the Anthropic API answered {event['error_status']}")

    def _result(self, result: dict[str, Any]) -> list[AnswerEvent]:
        self.done = True
        if (total := number(result.get("total_cost_usd"))) is not None:
            self.answer.cost, self.billed = max(total - self.billed, 0.0), total
        self.answer.timing = {name: result[name] for name in CLI_TIMING_FIELDS if isinstance(result.get(name), int)}
        if reason := cut_short(result, self._stop_reason):
            self.answer.finish, self.answer.cut_short = "length", reason
        elif result.get("is_error"):
            if "structured_output" in str(result.get("subtype")):
                raise NoStructuredOutput(f"Claude did not produce output matching the schema ({result['subtype']})")
            raise result_error(result, self._retry_delay_s, self.used_tools, self.rate_limit)
        elif self.structured:
            return self._structured(result)
        return []

    def _structured(self, result: dict[str, Any]) -> list[AnswerEvent]:
        """The structured output as the answer's one text block (JSON). Claude Code 2.1.197 reports success even
        when the model never called StructuredOutput: then there is no answer to give, only an error."""
        if "structured_output" not in result:
            raise NoStructuredOutput("Claude answered without output matching the requested schema (it did not "
                                     "call Claude Code's StructuredOutput tool); try again or simplify the schema")
        text = json.dumps(result["structured_output"], ensure_ascii=False)
        index = len(self.answer.blocks)
        self.answer.blocks.append(Block("text", text))
        self.answer.finish = "stop"
        return [Started(index), Delta(index, text), Ended(index)]

    def _stream_event(self, raw: dict[str, Any]) -> list[AnswerEvent]:
        index = raw.get("index", 0)
        match raw.get("type"):
            case "message_start":
                self._blocks = {}
                self.answer.model = (raw.get("message") or {}).get("model") or self.answer.model
                usage = (raw.get("message") or {}).get("usage") or {}
                for name in INPUT_TOKEN_FIELDS:
                    self.answer.tokens[name] += int(usage.get(name) or 0)
            case "content_block_start":
                return self._start(index, raw.get("content_block") or {})
            case "content_block_delta":
                return self._delta(index, raw.get("delta") or {})
            case "content_block_stop" if index in self._blocks:
                return self._end(self._blocks[index])
            case "message_delta":
                self.answer.tokens["output_tokens"] += int((raw.get("usage") or {}).get("output_tokens") or 0)
                self._stop((raw.get("delta") or {}).get("stop_reason"))
        return []

    def _start(self, index: int, content: dict[str, Any]) -> list[AnswerEvent]:
        name = str(content.get("name", ""))
        match content.get("type"):
            case "text":
                block = Block("reasoning" if self.structured else "text")
            case "thinking":
                block = Block("reasoning")
            case "tool_use" if name.startswith(MCP_PREFIX):
                block = Block("tool_call", call_id=str(content.get("id", "")), name=name[len(MCP_PREFIX):])
            case _:
                return []
        self._blocks[index] = len(self.answer.blocks)
        self.answer.blocks.append(block)
        return [Started(self._blocks[index])]

    def _delta(self, block_index: int, delta: dict[str, Any]) -> list[AnswerEvent]:
        # A text or thinking delta whose block start was not seen (or of another kind) starts its block.
        text_kind = "reasoning" if self.structured else "text"
        implied = {"text_delta": text_kind, "thinking_delta": "reasoning"}.get(str(delta.get("type")))
        known = self._blocks.get(block_index)
        started: list[AnswerEvent] = []
        if implied and (known is None or self.answer.blocks[known].kind != implied):
            started = self._start(block_index, {"type": "thinking" if implied == "reasoning" else "text"})
        elif known is None:
            return []
        return [*started, *self._grow(self._blocks[block_index], delta)]

    def _grow(self, index: int, delta: dict[str, Any]) -> list[AnswerEvent]:
        text = delta.get("text") or delta.get("thinking") or delta.get("partial_json") or ""
        if delta.get("type") == "signature_delta" and delta.get("signature"):
            self.answer.blocks[index].signature += delta["signature"]
            return [Delta(index, delta["signature"], signature=True)]
        if not text:
            return []
        self.answer.blocks[index].text += text
        return [Delta(index, text)]

    def _end(self, index: int) -> list[AnswerEvent]:
        block = self.answer.blocks[index]
        events: list[AnswerEvent] = []
        if block.kind == "tool_call" and not block.text:
            block.text = "{}"  # a call without arguments still carries a JSON object
            events.append(Delta(index, "{}"))
        return [*events, Ended(index)]

    def _stop(self, stop_reason: str | None) -> None:
        self._stop_reason = stop_reason
        calls = tuple(self.answer.blocks[i].call_id for i in self._blocks.values()
                      if self.answer.blocks[i].kind == "tool_call")
        if stop_reason == "tool_use" and calls:
            self.answer.finish, self.awaiting = "tool_calls", calls
        elif stop_reason == "max_tokens":
            self.answer.finish = "length"
        elif stop_reason is not None:
            self.answer.finish = "stop"

    def _activity(self, event: dict[str, Any], top_level: bool) -> list[AnswerEvent]:
        """Tool use (noted: retrying could repeat its effects), and with show_activity what Claude Code's own
        tools are doing at the top level, as a reasoning block: one line per call and per outcome."""
        lines = []
        for block in (event.get("message") or {}).get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use":
                self.used_tools = True
                if not str(block.get("name", "")).startswith(MCP_PREFIX):
                    self._own_tools[block["id"]] = block["name"]
                    lines.append(f"\n{tool_summary(block['name'], block.get('input') or {})}\n")
            elif block.get("type") == "tool_result" and (name := self._own_tools.get(block.get("tool_use_id", ""))):
                lines.append(f"→ {tool_outcome(name, block)}\n")
        if not lines or not self.show_activity or not top_level:
            return []
        index = len(self.answer.blocks)
        self.answer.blocks.append(Block("reasoning", text="".join(lines)))
        return [Started(index), Delta(index, "".join(lines)), Ended(index)]


def control_response(event: dict[str, Any], request_id: str) -> dict[str, Any] | None:
    """The payload of a successful control_response to `request_id` (see control_request), else None."""
    response = event.get("response") if event.get("type") == "control_response" else None
    if not isinstance(response, dict) or response.get("request_id") != request_id:
        return None
    payload = response.get("response") if response.get("subtype") == "success" else None
    return payload if isinstance(payload, dict) else {}


def offered_models(initialized: Mapping[str, Any]) -> tuple[str, ...]:
    """The model ids an initialize response offers: the values the CLI accepts for --model (aliases such as
    "sonnet" or "opus[1m]"; "default" is MODEL_NAME here) and the model ids they stand for."""
    models = [m for m in initialized.get("models") or [] if isinstance(m, dict)]
    values = [str(m["value"]) for m in models if m.get("value") and m["value"] != "default"]
    resolved = [str(m["resolvedModel"]) for m in models if m.get("resolvedModel")]
    return tuple(dict.fromkeys(values + resolved))


# ── 7. Usage and limits: the plan's limits, the usage ledger ──────────────────
# What Claude Code's runs cost and how close the plan's limits are: kept across requests, and (the ledger) restarts.


def utc_day(moment: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(moment))


def utc_time(moment: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment)) if moment is not None else None


def next_utc_day(now: float) -> float:
    """When the next UTC day begins (Unix time has no leap seconds: days are 86400 s)."""
    return (math.floor(now / 86400) + 1) * 86400.0


@dataclass
class LimitWindow:
    """What Claude Code last reported of one plan limit (see rate_limit_event in section 5)."""

    kind: str  # five_hour, seven_day, …
    status: str  # allowed, allowed_warning, rejected
    resets_at: float | None
    utilization: float | None  # 0..1, when reported
    threshold: float | None  # the warning threshold it passed
    seen: float

    def current(self, now: float) -> bool:
        """Whether it still holds (its window has not reset)."""
        return self.resets_at is None or self.resets_at > now


# Anthropic's anthropic-ratelimit-unified-<window>-* header names (CLI 2.1.197 reads 5h, 7d, 7d_oi and overage).
LIMIT_HEADER_NAMES = {"five_hour": "5h", "seven_day": "7d", "seven_day_overage_included": "7d_oi",
                      "seven_day_opus": "7d_opus", "seven_day_sonnet": "7d_sonnet", "overage": "overage"}
LIMIT_STATUS_ORDER = {"allowed": 1, "allowed_warning": 2, "rejected": 3}
UNIFIED = "anthropic-ratelimit-unified"


class PlanLimits:
    """The plan's limits as Claude Code last reported them, by limit type; requests are refused while one is reached.

    A reached limit refuses every request at once, no Claude Code started, until its reset time; then one trial
    request goes through while the others still get 429 (Retry-After TRIAL_RETRY_S) until it finds out.
    A limit close to being reached (allowed_warning) or reached is logged once per window."""

    def __init__(self) -> None:
        self.windows: dict[str, LimitWindow] = {}
        self._trial = False
        self._logged: set[tuple[str, str, float | None]] = set()

    def note(self, info: Mapping[str, Any], now: float | None = None) -> None:
        """A rate_limit_info Claude Code reported: its limit, and every window it lists in unifiedWindows (CLI
        2.1.331): the others "allowed", or "allowed_warning" past a threshold; the reported one gains its utilization,
        which an "allowed" report leaves out."""
        now = time.time() if now is None else now
        listed = info.get("unifiedWindows")
        windows = {k: w for k, w in listed.items() if isinstance(w, dict)} if isinstance(listed, dict) else {}
        lead = info.get("rateLimitType")
        for kind, window in windows.items():
            if kind != lead:
                status = "allowed" if window.get("surpassedThreshold") is None else "allowed_warning"
                self._note({**window, "rateLimitType": kind, "status": status}, now)
        self._note({**windows.get(lead, {}), **info}, now)

    def _note(self, info: Mapping[str, Any], now: float) -> None:
        kind, status = str(info.get("rateLimitType") or "unknown"), str(info.get("status") or "allowed")
        resets_at, utilization = number(info.get("resetsAt")), number(info.get("utilization"))
        old = self.windows.get(kind)
        if status == "rejected":
            resets_at, utilization = resets_at or now + 60, utilization if utilization is not None else 1.0
        elif utilization is None and old is not None and old.resets_at == resets_at:
            utilization = old.utilization  # "allowed" reports no utilization: the same window's last one holds
        window = LimitWindow(kind, status, resets_at, utilization, number(info.get("surpassedThreshold")), now)
        self.windows[kind], self._trial = window, False
        self._log(window, now)

    def _log(self, window: LimitWindow, now: float) -> None:
        key = (window.kind, window.status, window.resets_at)
        if window.status not in ("allowed_warning", "rejected") or key in self._logged:
            return
        self._logged = {seen for seen in self._logged if seen[2] is None or seen[2] > now} | {key}
        used = f" ({window.utilization:.0%} used)" if window.utilization is not None else ""
        resets = f"; it resets at {utc_minute(window.resets_at)}" if window.resets_at else ""
        state = "is reached" if window.status == "rejected" else "is close"
        logger.warning("Claude's %s %s%s%s", limit_name(window.kind), state, used, resets)

    def admit(self, now: float) -> bool:
        """Raise PlanLimitReached while a limit is known to be reached; True for the one trial request after its
        reset (whoever gets True calls end_trial once that request has found out)."""
        reached = [w for w in self.windows.values() if w.status == "rejected"]
        if holding := [w for w in reached if w.current(now)]:
            last = max(holding, key=lambda w: w.resets_at or now)
            raise plan_limit_error(last.kind, last.resets_at, now)
        if not reached:
            return False
        if self._trial:
            raise PlanLimitReached("Claude's plan limit should have reset and a request is finding out; try again "
                                   "in a few seconds", retry_after=TRIAL_RETRY_S)
        self._trial = True
        return True

    def end_trial(self, now: float) -> None:
        """The trial request found out: a reached limit it learned nothing new about is no longer believed."""
        if self._trial:
            self._trial = False
            self.windows = {k: w for k, w in self.windows.items() if w.status != "rejected" or w.current(now)}

    def headers(self, now: float) -> list[tuple[str, str]]:
        """Anthropic's anthropic-ratelimit-unified-* headers for what is known now (none when nothing is): the status
        and reset of the limit that matters most (the worst status, then the latest report), and every window's."""
        current = [w for w in self.windows.values() if w.current(now)]
        if not current:
            return []
        lead = max(current, key=lambda w: (LIMIT_STATUS_ORDER.get(w.status, 0), w.seen))
        headers = [(f"{UNIFIED}-status", lead.status), (f"{UNIFIED}-representative-claim", lead.kind)]
        for window in current:
            name = f"{UNIFIED}-{LIMIT_HEADER_NAMES.get(window.kind, window.kind)}"
            values = {"utilization": window.utilization, "reset": window.resets_at,
                      "surpassed-threshold": window.threshold}
            headers += [(f"{name}-{key}", f"{value:g}" if key != "reset" else str(int(value)))
                        for key, value in values.items() if value is not None]
        if lead.resets_at is not None:
            headers.append((f"{UNIFIED}-reset", str(int(lead.resets_at))))
        return headers

    def report(self, now: float) -> list[dict[str, Any]]:
        """Each limit as last reported, for /v1/usage and the status page ("reset": its window is over)."""
        return [{"limit": w.kind, "name": limit_name(w.kind), "status": w.status if w.current(now) else "reset",
                 "utilization": w.utilization, "surpassed_threshold": w.threshold, "resets_at": utc_time(w.resets_at),
                 "reported_at": utc_time(w.seen)} for w in sorted(self.windows.values(), key=lambda w: w.kind)]


# The ledger: one row per API request. Columns are named as the request's log fields (log_fields), but request_id.
LEDGER_COLUMNS = ("time", "request_id", "endpoint", "model", "served_model", "status", "error", "reason", "stream",
                  "ttft", "duration", "input_tokens", "cached_tokens", "output_tokens", "cost_usd", "conversation",
                  "route", "finish")
# One migration per schema version; PRAGMA user_version counts those applied. Only ever append.
LEDGER_MIGRATIONS = (
    """CREATE TABLE requests (
        time REAL NOT NULL, request_id TEXT, endpoint TEXT NOT NULL, model TEXT, served_model TEXT,
        status INTEGER NOT NULL, error TEXT, reason TEXT, stream INTEGER, ttft REAL, duration REAL,
        input_tokens INTEGER, cached_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, conversation TEXT,
        route TEXT, finish TEXT);
    CREATE INDEX requests_by_time ON requests (time);""",
)
TOTAL_FIELDS = ("date", "model", "requests", "errors", "input_tokens", "cached_tokens", "output_tokens", "cost_usd")
TOTALS_SQL = """SELECT date(time, 'unixepoch') AS day, COALESCE(model, ''), COUNT(*),
    SUM(status >= 400 OR error IS NOT NULL), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(cached_tokens), 0),
    COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cost_usd), 0)
    FROM requests WHERE time >= ? AND time < ? GROUP BY day, model ORDER BY day, model"""


class Ledger:
    """The usage ledger: a row per API request in SQLite (WAL), kept `retention_days`; and the current UTC day's
    spending in memory, for the daily budget.

    Every database call runs on one worker thread, in order, so a read sees the writes before it and the event loop
    never waits on the disk (an insert took 0.2 ms, but 4 ms at the 99th percentile and 8 ms at worst with fsync,
    measured on a small Linux box). A database that cannot be opened or written (corrupt, read-only, disk full)
    never fails a request: its first failure is logged, `error` says what is wrong, and the proxy serves on."""

    def __init__(self, path: Path | None, retention_days: int) -> None:
        self.path = path  # None: no ledger kept
        self.retention_s = retention_days * 86400.0
        self.error: str | None = None
        self._db: sqlite3.Connection | None = None
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self._day, self._spent = utc_day(time.time()), 0.0
        self._pruned = ""  # the UTC day old rows were last removed

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` on the ledger's thread, after every write before it."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, work, *args)

    async def open(self) -> None:
        if self.path is not None:
            await self.run(self._open, self.path)

    def _open(self, path: Path) -> None:
        db = None
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; a power cut may lose the last rows
            (version,) = db.execute("PRAGMA user_version").fetchone()
            for applied, migration in enumerate(LEDGER_MIGRATIONS[version:], version + 1):
                db.executescript(f"BEGIN; {migration}; PRAGMA user_version = {applied}; COMMIT;")
            with contextlib.suppress(OSError):  # a read-only ledger (not ours to change) can still be read
                path.chmod(0o600)
            (spent,) = db.execute("SELECT SUM(cost_usd) FROM requests WHERE time >= ?",
                                  (next_utc_day(time.time()) - 86400,)).fetchone()
            self._db, self._spent = db, self._spent + (spent or 0.0)
        except (sqlite3.Error, OSError) as exc:
            self._failed("open", exc)
            if db is not None:
                db.close()

    def _failed(self, doing: str, exc: BaseException) -> None:
        if self.error is None:
            logger.warning("usage ledger %s: cannot %s it (%s); requests are served but not recorded", self.path,
                           doing, exc)
        self.error = f"cannot {doing} {self.path}: {exc}"

    def spent_today(self, now: float) -> float:
        """What the requests of the current UTC day have cost so far."""
        return self._spent if self._day == utc_day(now) else 0.0

    def add(self, row: Mapping[str, Any]) -> None:
        """A finished request (on the event loop): its cost counted at once, its row written on the thread."""
        day = utc_day(row["time"])
        if day > self._day:
            self._day, self._spent = day, 0.0
        if day == self._day:
            self._spent += row.get("cost_usd") or 0.0
        if self.path is not None:
            self._worker.submit(self._write, row)

    def _write(self, row: Mapping[str, Any]) -> None:
        if self._db is None:
            return
        try:
            if (day := utc_day(row["time"])) != self._pruned:
                self._db.execute("DELETE FROM requests WHERE time < ?", (row["time"] - self.retention_s,))
                self._pruned = day
            self._db.execute(f"INSERT INTO requests ({', '.join(LEDGER_COLUMNS)}) VALUES "
                             f"({', '.join('?' * len(LEDGER_COLUMNS))})", [row.get(c) for c in LEDGER_COLUMNS])
        except sqlite3.Error as exc:
            self._failed("write", exc)

    def _query(self, sql: str, args: Sequence[Any], names: Sequence[str]) -> list[dict[str, Any]]:
        if self._db is None:
            return []
        try:
            return [dict(zip(names, row, strict=True)) for row in self._db.execute(sql, args).fetchall()]
        except sqlite3.Error as exc:
            self._failed("read", exc)
            return []

    def totals(self, since: float, until: float) -> list[dict[str, Any]]:
        """Requests, errors, tokens and cost by UTC day and model asked, for since <= time < until (thread only)."""
        return self._query(TOTALS_SQL, (since, until), TOTAL_FIELDS)

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The last `limit` requests, newest first (thread only)."""
        sql = f"SELECT {', '.join(LEDGER_COLUMNS)} FROM requests ORDER BY time DESC LIMIT ?"
        return self._query(sql, (limit,), LEDGER_COLUMNS)

    async def close(self) -> None:
        """Write what is pending, then close (shutdown)."""
        await self.run(self._close)
        self._worker.shutdown(wait=False)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def check_budget(settings: Settings, ledger: Ledger) -> None:
    """Refuse requests once the day's have spent CLAUDE_DAILY_BUDGET_USD, until the next UTC day."""
    now = time.time()
    if settings.daily_budget_usd > 0 and (spent := ledger.spent_today(now)) >= settings.daily_budget_usd:
        raise BudgetExhausted(f"The daily budget (CLAUDE_DAILY_BUDGET_USD, ${settings.daily_budget_usd:g}) is spent: "
                              f"${spent:.4f} today; requests are refused until 00:00 UTC",
                              retry_after=next_utc_day(now) - now)


# ── 8. State on disk, and what a proxy that is gone left behind ───────────────
# Files the proxy keeps (CLAUDE_STATE_DIR) must survive a planted link, a corrupt file and a directory that cannot be
# written: each fault is reported and degrades a feature, none stops the proxy or fails a request. A proxy that was
# killed leaves processes (known by their mark) and folders (named after it) which the next one to start removes.


def write_private(path: Path, text: str) -> None:
    """Replace `path` with a file only this user can read, atomically and following no link: the text goes to a new
    file of a random name (O_EXCL and O_NOFOLLOW: a planted file or link is never written through), which is then
    renamed over `path` (a rename replaces a link at `path` itself, never what it points to)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class StateDir:
    """CLAUDE_STATE_DIR: the session map and the conversation folders. One that cannot be written is reported (GET /)
    and conversations are not kept until it can be again (`check`), instead of failing requests."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: str | None = None

    @property
    def usable(self) -> bool:
        return self.error is None

    def check(self) -> bool:
        """Whether the directory can be written now (it is made if missing); notes the fault or its end."""
        try:
            (self.path / "conversations").mkdir(mode=0o700, parents=True, exist_ok=True)
            probe = self.path / ".probe"
            write_private(probe, "")
            probe.unlink()
        except OSError as exc:
            self.failed(f"cannot write {self.path}", exc)
            return False
        if self.error is not None:
            logger.info("the state directory %s can be written again; conversations are kept again", self.path)
            self.error = None
        return True

    def failed(self, what: str, exc: OSError) -> None:
        if self.error is None:
            logger.warning("%s (%s): conversations are not kept until it can be written", what, exc.strerror or exc)
        self.error = f"{what}: {exc.strerror or exc}"


SESSION_FIELDS: dict[str, tuple[type, ...]] = {"session_id": (str,), "cwd": (str,), "owned": (bool,),
                                               "updated": (int, float)}


def valid_session_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and all(
        isinstance(entry.get(name), kinds) and not (kinds != (bool,) and isinstance(entry.get(name), bool))
        for name, kinds in SESSION_FIELDS.items()) and math.isfinite(entry["updated"])


def load_session_map(path: Path) -> dict[str, dict[str, Any]]:
    """The saved session map's valid entries (only their known fields). A file that is not a JSON object is moved
    aside with a warning; invalid entries are dropped with one (the next save writes the file without them)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        return set_aside(path, str(exc)[:200])
    if not isinstance(saved, dict):
        return set_aside(path, f"a JSON {type(saved).__name__}, not an object")
    entries = {key: {name: entry[name] for name in SESSION_FIELDS} for key, entry in saved.items()
               if valid_session_entry(entry)}
    if len(entries) < len(saved):
        logger.warning("dropped %d invalid entries of %s", len(saved) - len(entries), path)
    return entries


def set_aside(path: Path, why: str) -> dict[str, dict[str, Any]]:
    aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        path.replace(aside)
        logger.warning("%s is unusable (%s): moved to %s; starting with no known conversations", path, why, aside)
    except OSError as exc:
        logger.warning("%s is unusable (%s) and cannot be moved aside (%s)", path, why, exc.strerror or exc)
    return {}


@dataclass(frozen=True)
class Owner:
    """A proxy process as the marks of the processes it starts name it (OWNER_VARIABLE is "<pid>-<start time>/<n>"):
    its start time tells it from a later process given the same pid, so a proxy that is gone is known as gone."""

    pid: int
    started: str

    @classmethod
    def this(cls) -> Owner:
        me = psutil.Process()
        return cls(me.pid, f"{me.create_time():.2f}")

    @classmethod
    def of_mark(cls, mark: str) -> Owner | None:
        pid, _, started = mark.split("/")[0].partition("-")
        return cls(int(pid), started) if pid.isdigit() and started else None

    @property
    def tag(self) -> str:
        return f"{self.pid}-{self.started}"

    def running(self) -> bool:
        try:
            return f"{psutil.Process(self.pid).create_time():.2f}" == self.started
        except psutil.Error:
            return False


def orphans(this: Owner) -> list[psutil.Process]:
    """What proxies that are gone (SIGKILL, a crash) left running: their CLIs and everything those started, by the
    mark they carry (see marked_processes). A live proxy's processes, this one's included, are never among them."""
    gone: dict[Owner, bool] = {}

    def orphaned(mark: str) -> bool:
        owner = Owner.of_mark(mark)
        if owner is None or owner == this:
            return False
        if owner not in gone:
            gone[owner] = not owner.running()
        return gone[owner]

    return marked_processes(orphaned)


def owner_of(name: str) -> Owner | None:
    """The proxy that made a folder named "<prefix><owner's tag>-<unique part>" (None: not one of those names)."""
    return Owner.of_mark(name.rpartition("-")[0])


def sweep_conversations(folders: Path, known: set[str], projects: Path) -> int:
    """Remove the conversation folders in `folders` that no saved session knows and no live proxy is using (a crash
    left them), with their transcripts, and the transcripts of conversation folders that are gone; how many."""
    removed = 0
    for folder in list(folders.iterdir()) if folders.is_dir() else []:
        owner = owner_of(folder.name)
        if os.path.realpath(folder) not in known and (owner is None or not owner.running()):
            Footprint(str(folder), True, None).remove(projects)
            removed += 1
    present = {cli_project_name(os.path.realpath(f)) for f in folders.iterdir()} if folders.is_dir() else set()
    for transcripts in projects.glob(cli_project_name(os.path.realpath(folders)) + "-*"):
        if transcripts.name not in present:
            shutil.rmtree(transcripts, ignore_errors=True)
            removed += 1
    return removed


def sweep_workdirs(temporary: Path) -> int:
    """Remove the private folders (WORKDIR_PREFIX<owner>-…) of processes whose proxy is gone; how many."""
    removed = 0
    for folder in temporary.glob(WORKDIR_PREFIX + "*"):
        owner = owner_of(folder.name.removeprefix(WORKDIR_PREFIX))
        if owner is not None and not owner.running():
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


# ── 9. Runs: a process at work for a request ──────────────────────────────────


class Background:
    """Tasks started for later (stopping a process, refilling the pool), each referenced until it ends, so none is
    garbage-collected half-way and all can be awaited at shutdown."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def start(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


class Admission:
    """At most `running` runs at once and `waiting` in line; beyond that, Overloaded. acquire() and release() are
    separate calls, not `async with`: a run holds its slot beyond the request that took it, until it is closed."""

    def __init__(self, running: int, waiting: int) -> None:
        self._slots = asyncio.Semaphore(running)
        self._waiting = 0
        self._max_waiting = waiting
        self.running = 0

    def check(self) -> None:
        """Raise Overloaded when every slot and every place in line is taken (a request can be refused before its
        body is read)."""
        if self._slots.locked() and self._waiting >= self._max_waiting:
            raise Overloaded("Too many requests in flight; try again shortly", retry_after=5)

    async def acquire(self, deadline: float) -> None:
        self.check()
        self._waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), max(deadline - time.monotonic(), 0))
        except asyncio.TimeoutError:
            raise RunTimeout("Timed out waiting for a free Claude Code slot") from None
        finally:
            self._waiting -= 1
        self.running += 1

    def release(self) -> None:
        self.running -= 1
        self._slots.release()

    @property
    def queued(self) -> int:
        return self._waiting


class RunState(enum.Enum):
    RUNNING = "running"  # answering a request
    AWAITING = "awaiting tool results"  # parked until the client's next request brings them
    DONE = "done"  # the result is read; the process is waiting on stdin
    KEPT = "kept"  # the process is kept for the conversation's next turn
    STOPPED = "stopped"  # the process is gone (or going)


class Run:
    """A Claude Code process at work for a conversation: its events, interpreted, until the result, the client's
    tool calls, or the deadline.

    A run that stops to wait for the client's tools outlives its request (AWAITING): it is parked, and the request
    carrying the tool results continues it. `close` hands the run back to its owner, who keeps, parks or stops it."""

    def __init__(self, process: ClaudeProcess, conversation: Conversation, deadline: float,
                 release: Callable[[Run], Awaitable[None]], show_activity: bool = False,
                 on_rate_limit: Callable[[Mapping[str, Any]], None] | None = None) -> None:
        self.process = process
        self.conversation = conversation
        self.deadline = deadline
        self.state = RunState.RUNNING
        self.interpreter = Interpreter(show_activity, process.billed, on_rate_limit,
                                       structured=conversation.schema is not None)
        self.failed = False  # the request saw an error: nothing of this run is worth keeping
        self.route = "new"  # how the Runner found its process: new, warm, kept, resumed, or parked (tool results)
        self._release = release
        self._backlog: deque[AnswerEvent | None] = deque()
        self._closed = False

    @property
    def answer(self) -> Answer:
        return self.interpreter.answer

    async def _read(self, wait: float | None) -> list[AnswerEvent] | None:
        """The answer events of the next CLI event; None when `wait` seconds pass first."""
        try:
            event = await self._next_event(wait)
            if event is None:
                return None
            events = self.interpreter.feed(event)
            if events and self.answer.first_output is None:
                self.answer.first_output = time.monotonic()
            return events
        except BaseException:
            self.failed = True
            raise
        finally:
            self._settle()

    async def _next_event(self, wait: float | None) -> dict[str, Any] | None:
        remaining = self.deadline - time.monotonic()
        limit = remaining if wait is None else min(wait, remaining)
        try:
            event = await asyncio.wait_for(self.process.next_event(), max(limit, 0))
        except asyncio.TimeoutError:
            if time.monotonic() >= self.deadline:
                raise RunTimeout("Claude Code did not finish within CLAUDE_TIMEOUT") from None
            return None
        if event is None:
            raise await self.process.failure()
        if self.process.interrupted is not None:
            raise self.process.interrupted
        return event

    def _settle(self) -> None:
        self.process.billed = self.interpreter.billed
        if self.interpreter.done:
            self.state = RunState.DONE
        elif self.interpreter.awaiting:
            self.state = RunState.AWAITING

    async def prime(self, window: float) -> None:
        """Wait until the model starts answering (or `window` passes), so early failures become HTTP statuses."""
        end = time.monotonic() + window
        while self.state is RunState.RUNNING and (remaining := end - time.monotonic()) > 0:
            events = await self._read(remaining)
            if events is None:
                return
            self._backlog.extend(events)
            if self.interpreter.answering:
                return

    async def events(self, idle: float | None = None) -> AsyncIterator[AnswerEvent | None]:
        """Answer events up to the result or to client tool calls; None after every `idle` seconds of silence."""
        while self._backlog:
            yield self._backlog.popleft()
        while self.state is RunState.RUNNING:
            events = await self._read(idle)
            for event in events if events is not None else [None]:
                yield event

    @property
    def has_pending(self) -> bool:
        """Whether more is already waiting to be read (so a stream can send what it has in one write)."""
        return bool(self._backlog) or self.process.has_pending

    def continue_with(self, results: Mapping[str, Turn], conversation: Conversation, deadline: float) -> None:
        """Continue a parked run: hand the client's tool results to Claude Code for the next answer."""
        assert self.process.bridge is not None
        for call_id, turn in results.items():
            self.process.bridge.deliver(call_id, turn.text, turn.is_error)
        self.interpreter.next_answer()
        self.conversation, self.deadline, self.state, self._closed = conversation, deadline, RunState.RUNNING, False

    async def close(self) -> None:
        """Hand the run back to its owner (parked, kept or stopped); idempotent, safe when cancelled."""
        if not self._closed:
            self._closed = True
            await asyncio.shield(self._release(self))


# ── 10. Where idle processes wait: the warm pool, sessions, parked runs ───────


class WarmPool:
    """Idle, pre-started CLI processes for the launch configurations used most recently, and more than once.

    A process started with --input-format stream-json has done its ~1 s of start-up and waits for a message on
    stdin, so a request that takes one answers at once. The `size` slots are shared round-robin among the most
    recent configurations that came back: one used once (a timestamp in a system prompt makes every request its
    own) gets no process started for it, and is remembered by its hash only, so distinct configurations cost
    neither CLI starts nor memory. Idle processes expire after `ttl` seconds and hold no run slot.
    """

    def __init__(self, size: int, ttl: float, spawn: Callable[[Launch], Awaitable[ClaudeProcess]],
                 retire: Callable[[ClaudeProcess], Coroutine[Any, Any, None]], background: Background) -> None:
        self.size = size
        self.ttl = ttl
        self._spawn = spawn
        self._retire = retire
        self._background = background
        self._idle: dict[Launch, list[tuple[ClaudeProcess, float]]] = {}
        self._recent: dict[Launch, float] = {}  # configurations used again, least recent first: `size` at most
        self._once: dict[int, float] = {}  # hashes of configurations used once (a collision costs one pre-start)
        self._refill: asyncio.Task[None] | None = None

    @property
    def idle_count(self) -> int:
        return sum(len(entries) for entries in self._idle.values())

    def take(self, launch: Launch) -> ClaudeProcess | None:
        """A warm, live process for `launch`, if there is one; dead ones are retired, never handed out."""
        entries = self._idle.pop(launch, [])
        while entries:
            process, _ = entries.pop()
            if process.running():
                if entries:
                    self._idle[launch] = entries
                return process
            self._background.start(self._retire(process))
        return None

    def learn(self, launch: Launch) -> None:
        """Note that `launch` was just used: the second use makes it a configuration worth pre-starting for."""
        if self.size <= 0:
            return
        now = time.monotonic()
        if launch not in self._recent and self._once.pop(hash(launch), None) is None:
            self._once[hash(launch)] = now
            while len(self._once) > POOL_ONCE_REMEMBERED:
                del self._once[next(iter(self._once))]
            return
        self._recent.pop(launch, None)
        self._recent[launch] = now
        while len(self._recent) > self.size:
            del self._recent[next(iter(self._recent))]

    def refill(self) -> None:
        """Start the processes the recent configurations lack, in the background. Called when a run ends:
        starting CLIs while a run is answering would slow that answer on a small machine."""
        if self.size > 0 and (self._refill is None or self._refill.done()):
            self._refill = self._background.start(self._fill())

    def targets(self) -> dict[Launch, int]:
        """How many idle processes each recent configuration should have: round-robin, most recent first."""
        recent = list(reversed(self._recent))[: self.size]
        return {launch: self.size // len(recent) + (i < self.size % len(recent)) for i, launch in enumerate(recent)}

    async def _fill(self) -> None:
        while (launch := self._missing()) is not None:
            try:
                process = await self._spawn(launch)
            except ProxyError as exc:
                logger.warning("could not pre-start a Claude Code process: %s", exc.message)
                return
            self._idle.setdefault(launch, []).append((process, time.monotonic()))

    def _missing(self) -> Launch | None:
        for launch, target in self.targets().items():
            if sum(process.alive for process, _ in self._idle.get(launch, [])) < target:
                return launch
        return None

    async def expire(self) -> None:
        """Retire idle processes past their time, dead ones, and those no recent configuration wants."""
        now = time.monotonic()
        self._recent = {launch: seen for launch, seen in self._recent.items() if now - seen < self.ttl}
        self._once = {key: seen for key, seen in self._once.items() if now - seen < self.ttl}
        targets = self.targets()
        retired: list[ClaudeProcess] = []
        for launch, entries in list(self._idle.items()):
            fresh = [(p, t) for p, t in entries if p.alive and now - t < self.ttl]
            keep = fresh[: targets.get(launch, 0)]
            retired += [p for p, _ in entries if all(p is not k for k, _ in keep)]
            if keep:
                self._idle[launch] = keep
            else:
                del self._idle[launch]
        await asyncio.gather(*(self._retire(process) for process in retired))

    def close(self) -> None:
        if self._refill is not None:
            self._refill.cancel()


@dataclass
class Session:
    """A conversation this proxy answered: the Claude Code session to resume, in its folder, and maybe its process."""

    session_id: str
    cwd: str
    owned: bool
    updated: float
    process: ClaudeProcess | None = None

    @property
    def footprint(self) -> Footprint:
        return Footprint(self.cwd, self.owned, self.session_id)


class SessionStore:
    """Conversations by the key of their turns so far, the reply included (see prefix_keys).

    A request whose history is such a conversation plus new user turns continues it: the kept CLI process gets just
    the new turn, or, once that process is gone, `--resume` replays the session from disk. The map is saved in
    `path`, so it outlives a restart; entries expire after `ttl` seconds (MAX_SESSIONS at most), and at most
    `max_live` processes are kept.
    """

    def __init__(self, path: Path, max_live: int, ttl: float, state: StateDir | None = None) -> None:
        self.path = path
        self.max_live = max_live
        self.ttl = ttl
        self.state = state or StateDir(path.parent)
        self.sessions: dict[str, Session] = {key: Session(**entry) for key, entry in load_session_map(path).items()}

    def save(self) -> None:
        """Write the map; a state directory that cannot be written is noted (sessions pause), never an error."""
        entries = {key: {f: getattr(s, f) for f in SESSION_FIELDS} for key, s in self.sessions.items()}
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(self.path, json.dumps(entries))
        except OSError as exc:
            self.state.failed(f"cannot write {self.path}", exc)

    def find(self, conversation: Conversation) -> tuple[str, int] | None:
        """The key of the longest known conversation the request continues with new user turns, and where those
        turns start."""
        turns, keys = conversation.turns, conversation.keys
        for i in range(len(turns) - 2, -1, -1):
            if turns[i].role == "assistant" and keys[i + 1] in self.sessions:
                return (keys[i + 1], i + 1) if all(t.role == "user" for t in turns[i + 1:]) else None
        return None

    def take(self, key: str) -> Session:
        session = self.sessions.pop(key)
        self.save()
        return session

    def keep(self, key: str, session: Session) -> tuple[list[ClaudeProcess], list[Footprint]]:
        """Remember a conversation. Returns what to remove: the processes beyond max_live and, beyond MAX_SESSIONS
        conversations, the files of the oldest (least recently used first). A conversation already known under
        `key` (the same messages answered the same way again) is replaced: its process and files go too."""
        processes, footprints = self._drop([key] if key in self.sessions else [])
        self.sessions[key] = session
        by_age = sorted(self.sessions.items(), key=lambda item: item[1].updated)
        older, old_footprints = self._drop([k for k, _ in by_age[: max(0, len(by_age) - MAX_SESSIONS)]])
        processes, footprints = processes + older, footprints + old_footprints
        live = [s for k, s in by_age if s.process is not None and k in self.sessions]
        for old in live[: max(0, len(live) - self.max_live)]:
            assert old.process is not None
            processes.append(old.process)
            old.process = None
        self.save()
        return processes, footprints

    def expire(self, idle_ttl: float) -> tuple[list[ClaudeProcess], list[Footprint]]:
        """Processes idle longer than idle_ttl, and conversations older than ttl: what to remove."""
        now = time.time()
        processes, footprints = self._drop([k for k, s in self.sessions.items() if now - s.updated > self.ttl])
        for session in self.sessions.values():
            if session.process is not None and now - session.updated > idle_ttl:
                processes.append(session.process)
                session.process = None
        if footprints or processes:
            self.save()
        return processes, footprints

    def _drop(self, keys: list[str]) -> tuple[list[ClaudeProcess], list[Footprint]]:
        dropped = [self.sessions.pop(key) for key in keys]
        return [s.process for s in dropped if s.process], [s.footprint for s in dropped]


def carries_calls_of(conversation: Conversation, run: Run) -> bool:
    """Whether `conversation` has an assistant turn with the very tool calls the run made (their ids and names; the
    ids are the API's random ones), in the same model: the mark of the conversation a parked run belongs to, an
    edited one included. Arguments are not compared: clients may send them back reformatted."""
    made = {(block.call_id, block.name) for block in run.answer.of_kind("tool_call")}
    return conversation.model == run.conversation.model and any(
        {(call.id, call.name) for call in turn.calls} == made
        for turn in conversation.turns if turn.role == "assistant" and turn.calls)


class Parking:
    """Runs waiting for the client's tool results, by the ids of the calls they wait for.

    A run is parked holding no run slot, for at most `wait` seconds; beyond `limit` runs the oldest is ended."""

    def __init__(self, wait: float, limit: int, end: Callable[[Run], Coroutine[Any, Any, None]],
                 background: Background) -> None:
        self.wait = wait
        self.limit = limit
        self._end = end
        self._background = background
        self.runs: dict[str, Run] = {}
        self._timers: dict[Run, asyncio.TimerHandle] = {}

    def park(self, run: Run) -> None:
        run.state = RunState.AWAITING
        for call_id in run.interpreter.awaiting:
            self.runs[call_id] = run
        loop = asyncio.get_running_loop()
        self._timers[run] = loop.call_later(self.wait, lambda: self._background.start(self.end(run)))
        if len(self._timers) > self.limit:
            self._background.start(self.end(next(iter(self._timers))))

    def unpark(self, run: Run) -> None:
        for call_id in run.interpreter.awaiting:
            self.runs.pop(call_id, None)
        if timer := self._timers.pop(run, None):
            timer.cancel()

    async def end(self, run: Run) -> None:
        self.unpark(run)
        await self._end(run)

    def find(self, conversation: Conversation) -> tuple[Run | None, list[Run]]:
        """The parked run `conversation` continues with its tool results (it must answer every call the run waits
        for, right after the conversation that led to them), and the parked runs it left behind: calls it
        answers otherwise, or moved on from. Only runs whose calls the conversation carries are concerned: a tool
        result naming another conversation's call id leaves that conversation's run alone."""
        results = conversation.tool_results()
        own = {run for run in self.runs.values() if carries_calls_of(conversation, run)}
        superseded = {run for run in own if not set(run.interpreter.awaiting) <= set(results)}
        run = self.runs.get(next(iter(results), ""))
        if run is None or run not in own or run in superseded:
            return None, list(superseded)
        history = len(conversation.turns) - len(results) - 1
        if set(run.interpreter.awaiting) != set(results) or history < 0 \
                or conversation.keys[history] != run.conversation.keys[-1]:
            return None, [*superseded, run]
        return run, list(superseded)

    def close(self) -> None:
        for run in list(self._timers):
            self.unpark(run)

    @property
    def count(self) -> int:
        return len(self._timers)


# ── 11. Processes: starting, asking and stopping Claude Code ──────────────────


class Processes:
    """Starts and stops Claude Code CLI processes; every live one is in `live` (and its tool bridge in `bridges`)
    until it is stopped."""

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.env = child_env(settings, environ)
        self.claude_bin = find_claude(settings.claude_bin)
        self.claude_version: str | None = None
        self.cli_flags: frozenset[str] = frozenset()  # what the CLI's --help lists, for build_argv
        self.cli_models: tuple[str, ...] | None = None  # what the CLI offers (offered_models), once asked
        self._asking_models = asyncio.Lock()
        self.live: set[ClaudeProcess] = set()
        self.bridges: dict[str, ToolBridge] = {}
        self.state = StateDir(Path(settings.state_dir).expanduser())
        self.owner = Owner.this()
        self.started = 0  # processes started so far: each one's mark is this owner's tag and its number
        self.closed = False

    def require_claude(self) -> str:
        self.claude_bin = self.claude_bin or find_claude(self.settings.claude_bin)
        if self.claude_bin is None:
            where = f"CLAUDE_BIN={self.settings.claude_bin}" if self.settings.claude_bin else "PATH"
            raise ClaudeNotFound(
                f"The Claude Code CLI (claude) was not found in {where} nor in the usual install places. "
                "Install it (npm install -g @anthropic-ai/claude-code) or set CLAUDE_BIN to its path."
            )
        return self.claude_bin

    async def sweep(self, conversations: set[str] | None) -> None:
        """End what proxies that are gone left running (see orphans), before this one starts any process, then
        remove their folders: private ones, and the conversations (and transcripts) no saved session knows, when
        sessions are on (`conversations`: the folders of those known)."""
        left = await asyncio.to_thread(orphans, self.owner)
        _kill_all(set(left))
        if left:
            logger.warning("stopped %d processes left running by a proxy that was killed or crashed", len(left))
        removed = await asyncio.to_thread(sweep_workdirs, Path(tempfile.gettempdir()))
        if conversations is not None and self.state.check():
            known = {os.path.realpath(folder) for folder in conversations}
            folders = self.state.path / "conversations"
            removed += await asyncio.to_thread(sweep_conversations, folders, known, self.projects)
        if removed:
            logger.info("removed %d folders left by a proxy that was killed or crashed", removed)

    async def probe(self) -> None:
        """Note the CLI's version (for the health endpoint) and the flags it knows (for every run's argv), once;
        a missing CLI is reported, not fatal."""
        if self.claude_bin is None:
            logger.warning("Claude Code CLI not found; set CLAUDE_BIN (requests answer 503 until it is found)")
            return
        version, help_text = await asyncio.gather(self._output("--version"), self._output("--help"))
        self.claude_version, self.cli_flags = version.strip() or None, cli_flags_of(help_text)
        logger.info("Claude Code CLI: %s (%s)", self.claude_bin, self.claude_version or "version unknown")
        if EXCLUDE_DYNAMIC_SECTIONS not in self.cli_flags:
            logger.warning("this Claude Code CLI lacks %s: new conversations will miss the prompt cache (the "
                           "supported CLIs are %s to %s)", EXCLUDE_DYNAMIC_SECTIONS, *SUPPORTED_CLI)

    async def _output(self, *args: str) -> str:
        assert self.claude_bin is not None
        try:
            return (await cli_output(self.claude_bin, args, self.env)).decode(errors="replace")
        except (OSError, asyncio.TimeoutError) as exc:
            logger.warning("claude %s failed: %s", " ".join(args), exc)
            return ""

    async def offered_models(self) -> tuple[str, ...]:
        """The model ids the CLI offers (see offered_models), asked once with an `initialize` control request on
        a process started for it. That costs no API request; a CLI that does not answer it offers none."""
        async with self._asking_models:
            if self.cli_models is None:
                self.cli_models = await self._ask_models()
        return self.cli_models or ()

    async def _ask_models(self) -> tuple[str, ...] | None:
        """The offered models; None when no CLI could be started (it is asked again next time)."""
        try:
            process = await self.spawn(Launch())
        except ProxyError as exc:
            logger.warning("could not ask Claude Code for its models: %s", exc.message)
            return None
        try:
            await process.send(control_request("models", "initialize"))
            initialized = await asyncio.wait_for(self._control_response(process, "models"), CONTROL_WAIT_S)
        except (ProxyError, asyncio.TimeoutError):
            initialized = None
        finally:
            await self.retire(process)
        return offered_models(initialized or {})

    @staticmethod
    async def _control_response(process: ClaudeProcess, request_id: str) -> dict[str, Any] | None:
        # A CLI without the control request may take the line for a prompt (and answer it) or end.
        while (event := await process.next_event()) is not None and event.get("type") != "result":
            if (payload := control_response(event, request_id)) is not None:
                return payload
        return None

    async def spent(self, process: ClaudeProcess) -> float:
        """The total_cost_usd a process resuming a session starts from, asked before its first turn with a
        `get_usage` control request (no API request): CLI 2.1.331 carries the session's total over from its
        transcript, 2.1.197 starts from zero (measured). Zero when the CLI does not answer or has ended."""
        try:
            await process.send(control_request("usage", "get_usage"))
            usage = await asyncio.wait_for(self._control_response(process, "usage"), CONTROL_WAIT_S)
        except (ProxyError, asyncio.TimeoutError):
            usage = None
        return number(((usage or {}).get("session") or {}).get("total_cost_usd")) or 0.0

    async def spawn(self, launch: Launch) -> ClaudeProcess:
        """A new CLI process for `launch` with a private temporary directory, removed when the process stops: its
        working directory, unless one is configured or sessions give it a conversation folder of its own."""
        claude_bin = self.require_claude()
        workdir = tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{self.owner.tag}-")
        folder = launch.cwd or (self._new_conversation_folder() if launch.persist else None)
        if launch.persist and folder is None:
            launch = dataclasses.replace(launch, persist=False)  # the state directory failed: no session
        footprint = Footprint(folder, launch.cwd is None, launch.resume or str(uuid.uuid4())) \
            if launch.persist and folder else None
        bridge = ToolBridge(launch.tools) if launch.tools else None
        try:
            argv = self._argv(claude_bin, launch, workdir, bridge, footprint)
            self.started += 1
            env = {**self.env, OWNER_VARIABLE: f"{self.owner.tag}/{self.started}"}
            process = await ClaudeProcess.spawn(argv, env, folder or workdir, workdir, self.settings.max_line_bytes)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            if footprint and not launch.resume:  # a resumed session's files stay with its session
                footprint.remove(self.projects)
            raise
        process.cwd, process.footprint, process.launch = folder or workdir, footprint, launch
        if bridge:
            process.bridge = self.bridges[bridge.secret] = bridge
        self.live.add(process)
        if self.closed:  # shutdown began while this process was starting
            await self.retire(process)
            raise ShuttingDown("The proxy is shutting down", retry_after=5)
        return process

    def _argv(self, claude_bin: str, launch: Launch, workdir: str, bridge: ToolBridge | None,
              footprint: Footprint | None) -> list[str]:
        """The CLI's argv; what is too long or too secret for it goes in files in the process's private `workdir`."""
        prompt_file = None
        if launch.system_prompt and len(launch.system_prompt.encode()) > SYSTEM_PROMPT_FILE_BYTES:
            # Linux refuses a single argv string over 128 KiB (E2BIG); the CLI reads a file as well.
            prompt_file = os.path.join(workdir, ".system-prompt.txt")
            Path(prompt_file).write_text(launch.system_prompt)
        config_file = None
        if bridge:
            config_file = os.path.join(workdir, ".mcp-config.json")
            write_private(Path(config_file), mcp_config(f"{self_url(self.settings)}/mcp", bridge.secret))
        session_id = footprint.session_id if footprint and not launch.resume else None
        return build_argv(claude_bin, self.settings, launch, prompt_file, config_file, session_id, self.cli_flags)

    @property
    def projects(self) -> Path:
        """Where Claude Code keeps its transcripts: CLAUDE_CONFIG_DIR/projects, ~/.claude/projects by default."""
        config = self.env.get("CLAUDE_CONFIG_DIR") or os.path.join(self.env.get("HOME", "~"), ".claude")
        return Path(config).expanduser() / "projects"

    def _new_conversation_folder(self) -> str | None:
        # --resume finds a session only from the folder it was created in, so a conversation keeps its own folder.
        folder = self.state.path / "conversations" / f"{self.owner.tag}-{uuid.uuid4().hex}"
        try:
            folder.mkdir(mode=0o700, parents=True)
        except OSError as exc:
            self.state.failed(f"cannot make a conversation folder in {self.state.path}", exc)
            return None
        return str(folder)

    async def retire(self, process: ClaudeProcess, reason: ProxyError | None = None) -> None:
        """Stop a process that serves no run, and forget it and the session files it still owns."""
        try:
            await process.stop(reason)
        finally:
            self.live.discard(process)
            if process.footprint:
                process.footprint.remove(self.projects)
            if process.bridge:
                self.bridges.pop(process.bridge.secret, None)
                process.bridge.close()

    async def remove(self, processes: list[ClaudeProcess], footprints: list[Footprint]) -> None:
        """Stop processes and delete the conversations the session store let go of."""
        await asyncio.gather(*(self.retire(process) for process in processes))
        for footprint in footprints:
            footprint.remove(self.projects)

    async def stop_all(self) -> None:
        """Refuse new processes and stop every one."""
        self.closed = True
        reason = ShuttingDown("The run was stopped: the proxy is shutting down", retry_after=5)
        await asyncio.gather(*(self.retire(process, reason) for process in list(self.live)), return_exceptions=True)


class LoginCheck:
    """Whether Claude Code is logged in, and how: `claude auth status` (it makes no API call and costs no tokens),
    run at most every LOGIN_CHECK_TTL seconds; callers get the last answer while a newer one is found out."""

    def __init__(self, processes: Processes) -> None:
        self.processes = processes
        self.state: dict[str, Any] | None = None
        self._checked = 0.0
        self._check: asyncio.Task[None] | None = None

    async def current(self) -> dict[str, Any]:
        """The login state (waiting only for the first check): logged_in, method, provider, subscription, …"""
        stale = self.state is None or time.monotonic() - self._checked > LOGIN_CHECK_TTL
        if stale and (self._check is None or self._check.done()):
            self._check = asyncio.get_running_loop().create_task(self._run())
        if self.state is None and self._check is not None:
            await asyncio.shield(self._check)
        return self.state or {}

    async def _run(self) -> None:
        try:
            found = json.loads(await cli_output(self.processes.require_claude(), ["auth", "status", "--json"],
                                                self.processes.env))
            names = {"logged_in": "loggedIn", "method": "authMethod", "provider": "apiProvider",
                     "subscription": "subscriptionType", "email": "email", "organization": "orgName"}
            self.state = {name: found.get(key) for name, key in names.items()}
        except (OSError, ValueError, AttributeError, asyncio.TimeoutError, ProxyError) as exc:
            self.state = {"logged_in": None, "error": f"`claude auth status` failed: {str(exc)[:200]}"}
        self._checked = time.monotonic()


# ── 12. Runner: routing a conversation, and what becomes of a run ─────────────


class Runner:
    """Starts, routes, keeps and stops Claude Code processes for the app.

    `open(conversation)` is the one entry point: the parked run the conversation brings tool results for, else the
    conversation's live session, else its session resumed from disk, else a warm or new process. Closing a run
    hands it back here, and only here is it decided whether its process is parked, kept for the conversation's
    next turn or stopped. Every process is in `live` until it is stopped, so shutdown stops every one."""

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.background = Background()
        self.processes = Processes(settings, environ)
        self.admission = Admission(settings.max_concurrency, settings.max_queue)
        self.pool = WarmPool(settings.pool_size, settings.pool_idle_ttl, self.processes.spawn,
                             self.processes.retire, self.background)
        self.parking = Parking(settings.tool_wait, settings.max_parked, self._stop_run, self.background)
        self.sessions = SessionStore(
            self.processes.state.path / "sessions.json", settings.max_live_sessions, settings.session_ttl,
            self.processes.state,
        ) if settings.sessions else None
        self.limits = PlanLimits()
        self.login = LoginCheck(self.processes)

    @property
    def closed(self) -> bool:
        return self.processes.closed

    @property
    def kept_count(self) -> int:
        """Processes kept for a conversation's next turn."""
        return sum(s.process is not None for s in self.sessions.sessions.values()) if self.sessions else 0

    async def start(self) -> None:
        """Before the first request: end and remove what proxies that are gone left behind, note the CLI's version."""
        known = {session.cwd for session in self.sessions.sessions.values()} if self.sessions else None
        await self.processes.sweep(known)
        await self.processes.probe()

    # -- routing a conversation to a process

    async def open(self, conversation: Conversation, deadline: float) -> Run:
        """A run answering `conversation`, its first user message sent; the caller must close it."""
        if self.closed:
            raise ShuttingDown("The proxy is shutting down", retry_after=5)
        if conversation.tools and (run := await self._continue_parked(conversation, deadline)):
            run.route = "parked"
            return run
        prompt = build_prompt(conversation.turns, self.settings.system_prompt_mode)
        system = "\n\n".join(x for x in (prompt.system, conversation.tool_instruction) if x) or None
        launch = Launch(model=conversation.cli_model, system_prompt=system, cwd=self.settings.cwd or None,
                        tools=conversation.tools, persist=self.sessions is not None and self.processes.state.usable,
                        json_schema=conversation.schema)
        if found := self._find_session(conversation):
            key, start = found
            new_turns = conversation.turns[start:]
            content = await user_content(build_prompt(new_turns, "append").text, new_turns, self.settings, deadline)
            return await self._continue_session(key, launch, content, conversation, deadline)
        content = await user_content(prompt.text, conversation.turns, self.settings, deadline)
        await self.admission.acquire(deadline)
        try:
            process, route = self.pool.take(launch), "warm"
            if process is None:
                process, route = await self.processes.spawn(launch), "new"
        except BaseException:
            self.admission.release()
            raise
        self.pool.learn(launch)
        return await self._begin(process, content, conversation, deadline, route)

    async def _continue_parked(self, conversation: Conversation, deadline: float) -> Run | None:
        run, left_behind = self.parking.find(conversation)
        await asyncio.gather(*(self.parking.end(old) for old in left_behind))
        if run is None:
            return None
        self.parking.unpark(run)
        try:
            await self.admission.acquire(deadline)
        except BaseException:
            self.parking.park(run)
            raise
        run.continue_with(conversation.tool_results(), conversation, deadline)
        return run

    def _find_session(self, conversation: Conversation) -> tuple[str, int] | None:
        """The known conversation this request continues (see SessionStore.find), if it can still be resumed:
        Claude Code deletes old transcripts, and a session without one cannot be resumed."""
        found = self.sessions.find(conversation) if self.sessions else None
        if self.sessions is None or found is None:
            return None
        session = self.sessions.sessions[found[0]]
        if session.process is not None and session.process.running():
            return found
        if any(self.processes.projects.glob(f"*/{session.session_id}.jsonl")):
            return found
        self.sessions.take(found[0])
        self.background.start(self.processes.remove([session.process] if session.process else [],
                                                    [session.footprint]))
        return None

    async def _continue_session(self, key: str, launch: Launch, content: list[dict[str, Any]],
                                conversation: Conversation, deadline: float) -> Run:
        """Continue a known conversation with its new turns only: on its kept process, or on one resuming its
        Claude Code session from disk (--resume). If that cannot start, the conversation stays known."""
        assert self.sessions is not None
        session = self.sessions.take(key)
        try:
            await self.admission.acquire(deadline)
        except BaseException:
            self._remember(key, session)
            raise
        try:
            kept = session.process is not None and session.process.running()
            process = await self._session_process(launch, session)
        except BaseException:
            self.admission.release()
            self._remember(key, session)
            raise
        return await self._begin(process, content, conversation, deadline, "kept" if kept else "resumed")

    async def _session_process(self, launch: Launch, session: Session) -> ClaudeProcess:
        """The kept process, if it still runs and was started for the same model, system prompt, tools and schema
        (a conversation's key does not cover its tools or schema); else one resuming the session from disk."""
        kept = session.process
        if kept is not None and not (kept.running() and launch.same_run(kept.launch)):
            await self.processes.retire(kept)
            session.process = None
        process = session.process
        if process is None:
            process = await self.processes.spawn(
                dataclasses.replace(launch, cwd=session.cwd, persist=True, resume=session.session_id))
            try:
                process.billed = await self.processes.spent(process)  # each answer's cost is its own share
            except BaseException:
                await self.processes.retire(process)
                raise
        process.footprint = session.footprint  # the conversation's files are the run's now, kept again with it
        return process

    async def _begin(self, process: ClaudeProcess, content: list[dict[str, Any]], conversation: Conversation,
                     deadline: float, route: str) -> Run:
        run = Run(process, conversation, deadline, self._release, self.settings.show_tool_activity, self.limits.note)
        run.route = route
        try:
            # stdin stays open until the result is read: the CLI exits on EOF without flushing a large pending
            # write to stdout (a 300 KB result line was cut short on CLI 2.1.197).
            await process.send(user_message(content))
        except BaseException:
            run.failed = True
            await run.close()
            raise
        return run

    # -- what becomes of a run: parked, kept or stopped

    async def _release(self, run: Run) -> None:
        try:
            if run.state is RunState.AWAITING and not run.failed and run.process.alive and not self.closed:
                self.parking.park(run)  # waits for the client's tool results, holding no run slot
            elif self._keepable(run):
                await self._keep(run)
            else:
                if run.state is RunState.DONE:
                    await run.process.finish()
                await self._stop_run(run)
        finally:
            self.admission.release()
            if not self.closed:
                self.pool.refill()

    def _keepable(self, run: Run) -> bool:
        return (run.state is RunState.DONE and not run.failed and self.sessions is not None and not self.closed
                and run.process.alive and run.process.footprint is not None and run.interpreter.session_id is not None
                and not run.answer.of_kind("tool_call"))

    async def _keep(self, run: Run) -> None:
        """Keep a finished run's session under the key of the conversation with its reply, and its process waiting
        on stdin; not with a per-request budget: --max-budget-usd counts the cost of all of a process's turns, and a
        session resumed in a new process starts from zero (CLI 2.1.197; 2.1.331 too, though its total_cost_usd
        carries the session's earlier cost over)."""
        assert run.interpreter.session_id is not None
        reply = Turn("assistant", run.answer.text)
        key = prefix_keys(run.conversation.model, (*run.conversation.turns, reply))[-1]
        process, live, footprint = run.process, not self.settings.max_budget_usd, run.process.footprint
        assert footprint is not None
        if not live:
            await process.finish()  # the CLI writes the transcript --resume reads as it exits
        session = Session(run.interpreter.session_id, footprint.folder, footprint.owned, time.time(),
                          process if live else None)
        process.footprint = None
        run.state = RunState.KEPT
        self._remember(key, session)
        if not live:
            await self._stop_run(run)

    def _remember(self, key: str, session: Session) -> None:
        assert self.sessions is not None
        self.background.start(self.processes.remove(*self.sessions.keep(key, session)))

    async def _stop_run(self, run: Run) -> None:
        run.state = RunState.STOPPED
        await self.processes.retire(run.process)

    async def maintain(self) -> None:
        """Expire idle warm processes and kept sessions, for as long as the app runs."""
        interval = max(0.2, min(self.settings.pool_idle_ttl / 2, 30.0))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.pool.expire()
                if self.sessions:
                    await self.processes.remove(*self.sessions.expire(self.settings.pool_idle_ttl))
                    if not self.processes.state.usable:
                        self.processes.state.check()
            except Exception:  # one bad round must not end maintenance for good
                logger.exception("maintenance failed; trying again in %.0f s", interval)

    async def stop_all(self) -> None:
        """Refuse new runs and stop every process (shutdown)."""
        self.pool.close()
        self.parking.close()
        await self.processes.stop_all()


# ── 13. HTTP guards and the request log ───────────────────────────────────────


def app_state(request: Request) -> tuple[Settings, Runner]:
    return request.app.state.settings, request.app.state.runner


def app_ledger(request: Request) -> Ledger:
    ledger: Ledger = request.app.state.ledger
    return ledger


def error_response(exc: ProxyError, door: Door = "openai") -> JSONResponse:
    # Anthropic's clients know an overloaded API by 529 (and retry it); OpenAI's by 503.
    status = 529 if door == "anthropic" and isinstance(exc, UpstreamOverloaded) else exc.status
    return JSONResponse(error_body(exc, door), status_code=status, headers=error_headers(exc))


def host_name(host: str) -> str:
    """The name in a Host header, lower-cased, without its port or IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def accepted_hosts(settings: Settings, local_addresses: frozenset[str]) -> frozenset[str] | None:
    """The Host names this proxy answers to (None: any): loopback, the listen address (every local address when
    it listens on all of them) and PROXY_ALLOWED_HOSTS."""
    extra = {name.strip().lower() for name in settings.allowed_hosts.split(",") if name.strip()}
    if "*" in extra:
        return None
    listen = local_addresses if settings.host in ("", "0.0.0.0", "::") else {settings.host.lower()}
    return frozenset({"localhost", *listen, *extra})


def local_addresses() -> frozenset[str]:
    return frozenset(a.address.split("%")[0].lower() for addrs in psutil.net_if_addrs().values() for a in addrs)


def browser_refusal(headers: Mapping[str, str], method: str, hosts: frozenset[str] | None,
                    origins: frozenset[str]) -> ProxyError | None:
    """Why a request must be refused as coming from a web page, or None.

    With permissions skipped, a request that reaches Claude Code is a shell command: a page in the user's browser
    must not get one in, neither cross-origin (Origin, Sec-Fetch-Site) nor by rebinding its own name to 127.0.0.1
    (Host)."""
    host = headers.get("host", "")
    name = host_name(host)
    if hosts is not None and name not in hosts and not is_loopback(name):
        return Forbidden(f"Host '{host[:100]}' is not this proxy; add it to PROXY_ALLOWED_HOSTS to accept it")
    origin = headers.get("origin")
    if origin is not None:
        if origin in origins or origin in (f"http://{host}", f"https://{host}"):
            return None
        return Forbidden(f"Requests from web pages are refused (Origin '{origin[:100]}'); "
                         "list the page's origin in PROXY_ALLOWED_ORIGINS to allow it")
    navigation = method == "GET" and headers.get("sec-fetch-mode") == "navigate"
    if headers.get("sec-fetch-site") in ("cross-site", "same-site") and not navigation:
        return Forbidden("Requests from other web sites are refused; list the origin in PROXY_ALLOWED_ORIGINS")
    return None


def log_fields(scope: MutableMapping[str, Any]) -> dict[str, Any]:
    """The fields of a request's log line, filled in by whoever handles it (request.state.log)."""
    fields: dict[str, Any] = scope.setdefault("state", {}).setdefault("log", {})
    return fields


def log_value(value: Any) -> str:
    """A log field that cannot forge log lines: escaped and cut short."""
    return str(value).encode("unicode_escape").decode()[:200]


class RequestLog:
    """ASGI middleware: one log line per request, whatever became of it (method, path, status, duration, and the
    fields its handler noted: id, model, tokens, error). Never a prompt's text."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.monotonic(), 0
        scope.setdefault("state", {})["started"] = started

        async def noting_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        fields = log_fields(scope)
        try:
            await self.app(scope, receive, noting_status)
        finally:
            extra = " ".join(f"{key}={log_value(value)}" for key, value in fields.items())
            logger.info("%s %s status=%s duration=%.2fs %s", scope["method"], log_value(scope["path"]),
                        status or 499, time.monotonic() - started, extra)


API_ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/messages")


def endpoint_of(method: str, path: str) -> str | None:
    """The API endpoint a request calls (with or without /v1), or None for the proxy's own routes."""
    endpoint = path if path.startswith("/v1/") else "/v1" + path
    return endpoint if method == "POST" and endpoint in API_ENDPOINTS else None


def ledger_row(fields: Mapping[str, Any], endpoint: str, status: int, started: float,
               duration: float) -> dict[str, Any]:
    """A request's ledger row: what its handler noted (log_fields) and how it ended."""
    row = {column: fields.get(column) for column in LEDGER_COLUMNS}
    row.update(time=started, request_id=fields.get("id"), endpoint=endpoint, status=status,
               duration=round(duration, 3))
    return row


class Accounting:
    """ASGI middleware: the plan-limit headers on every response, and each API request's ledger row handed to
    `record` (the ledger and the metrics) once its response is complete, whatever its door and its status."""

    def __init__(self, app: Any, limits: PlanLimits, record: Callable[[dict[str, Any]], None]) -> None:
        self.app = app
        self.limits = limits
        self.record = record

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = endpoint_of(scope["method"], scope["path"])
        started, clock, status = time.time(), time.monotonic(), 0

        def finish(code: int) -> None:
            nonlocal endpoint
            if endpoint is not None:
                self.record(ledger_row(log_fields(scope), endpoint, code, started, time.monotonic() - clock))
                endpoint = None

        async def accounting(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                plan = [(k.encode(), v.encode()) for k, v in self.limits.headers(time.time())]
                message = {**message, "headers": [*message.get("headers", []), *plan]}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finish(status)  # before the last bytes go out: whoever reads the ledger next finds the row
            await send(message)

        try:
            await self.app(scope, receive, accounting)
        except Exception:
            finish(status or 500)
            raise
        finally:
            finish(status or 499)


class BrowserGuard:
    """ASGI middleware refusing web pages (see browser_refusal) on every route, before anything else runs."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.hosts = accepted_hosts(settings, local_addresses())
        self.origins = frozenset(o.strip() for o in settings.allowed_origins.split(",") if o.strip())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            if refusal := browser_refusal(headers, scope["method"], self.hosts, self.origins):
                log_fields(scope).update(error="refused", reason=refusal.message)
                await error_response(refusal, door_of(scope["path"]))(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ── 14. From a request to a run: bodies, tokens, budgets, the stream driver ───


async def read_json(request: Request, max_bytes: int) -> Any:
    """The request body as JSON, refusing other content types and bodies over `max_bytes`."""
    # A body without Content-Type is what a web page's no-cors fetch or sendBeacon sends (a CORS "simple" request,
    # no preflight): reading it as JSON would let any page run commands here.
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"Expected Content-Type application/json, got '{content_type or 'none'}'")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLarge(f"The request body is larger than PROXY_MAX_BODY_BYTES ({max_bytes} bytes)")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise PayloadTooLarge(f"The request body is larger than PROXY_MAX_BODY_BYTES ({max_bytes} bytes)")
    except ClientDisconnect:  # gone, or closed for sending too slowly (PROXY_READ_TIMEOUT)
        raise ClientGone("The client went away before sending the whole body") from None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {str(exc)[:200]}") from None
    if MAYBE_UNSENDABLE.search(body) and unsendable(parsed):
        raise InvalidRequest("The request body holds a NUL character or an unpaired surrogate (\\u0000, \\ud800…), "
                             "which no text sent to Claude Code can carry")
    return parsed


# JSON escapes or UTF-8 bytes that may stand for a NUL or a surrogate: only a body holding one is walked.
MAYBE_UNSENDABLE = re.compile(rb"\\u0000|\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
UNSENDABLE = re.compile("[\x00\ud800-\udfff]")


def unsendable(value: Any) -> bool:
    """Whether a parsed JSON value has a NUL or an unpaired surrogate in a string: neither can reach the CLI (argv
    refuses NUL, UTF-8 has no surrogates), nor be echoed back."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and UNSENDABLE.search(item):
            return True
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item
    return False


def parse_body(model: type[ModelT], body: Any) -> ModelT:
    """A request body validated into its pydantic model; a 400 naming the offending parameter otherwise."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def bearer_token(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    return authorization[7:].strip() if authorization[:7].lower() == "bearer " else None


def check_token(request: Request, token: str) -> None:
    """Require the configured token as a bearer token or x-api-key; compared in constant time."""
    if not token:
        return
    offered = bearer_token(request) or request.headers.get("x-api-key", "")
    if not hmac.compare_digest(offered.encode(), token.encode()):
        raise Unauthorized("Missing or invalid API key: send 'Authorization: Bearer <CLAUDE_PROXY_TOKEN>'")


async def read_run_body(request: Request) -> Any:
    """The JSON body of a request that starts a run, refused before a byte of it is read when the token is wrong,
    every run slot and place in line is taken (429), or its Content-Length is over the limit (413): a refused
    request costs no memory for its body."""
    settings, runner = app_state(request)
    check_token(request, settings.token)
    runner.admission.check()
    return await read_json(request, settings.max_body_bytes)


async def wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None if the client went away first (then `work` is cancelled, stopping its run)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    finally:
        watcher.cancel()


def note_answer(request: Request, answer: Answer, error: ProxyError | None = None) -> None:
    """The answer's tokens, cost, model, finish and time to first output (or an in-stream error) for the
    request's log line and ledger row."""
    fields = log_fields(request.scope)
    fields.update(input_tokens=sum(answer.tokens[name] for name in INPUT_TOKEN_FIELDS),
                  cached_tokens=answer.tokens["cache_read_input_tokens"], output_tokens=answer.tokens["output_tokens"],
                  cost_usd=answer.cost, served_model=answer.model)
    started = request.scope.get("state", {}).get("started")
    if answer.first_output is not None and started is not None:
        fields["ttft"] = round(answer.first_output - started, 3)
    fields.update({f"cli_{name}": value for name, value in answer.timing.items()})
    if error is not None:
        fields.update(error=error.code, reason=error.message)
    else:
        fields["finish"] = answer.finish
        if answer.cut_short:
            fields["reason"] = answer.cut_short


def note_closed(request: Request) -> None:
    """The client left before the whole answer reached it."""
    fields = log_fields(request.scope)
    fields.pop("finish", None)
    fields.update(error="client_closed", reason="The client closed the connection before the answer was complete")


async def open_run(request: Request, conversation: Conversation) -> Run:
    """A run for the conversation that has started answering (or failed with an HTTP status): see Run.prime.

    Nothing starts while the day's budget is spent or a plan limit is known to be reached; after the limit's reset,
    one trial request finds out (by the time its answer starts, Claude Code has said whether it is refused). A client
    that goes away meanwhile (waiting in line, or for the first answer) takes its request with it."""
    settings, runner = app_state(request)
    started = request.scope.setdefault("state", {}).setdefault("started", time.monotonic())
    log_fields(request.scope)["conversation"] = conversation.opening_key
    check_budget(settings, app_ledger(request))
    trial = runner.limits.admit(time.time())

    async def opened() -> Run:
        run = await runner.open(conversation, started + settings.timeout)
        log_fields(request.scope)["route"] = run.route
        try:
            await run.prime(settings.prime_window)
        except BaseException:
            await run.close()
            raise
        return run

    try:
        run = await until_disconnect(request, opened())
    finally:
        if trial:
            runner.limits.end_trial(time.time())
    if run is None:
        raise ClientGone("The client went away before its run started")
    return run


async def collect(request: Request, run: Run) -> Answer | None:
    """The whole answer of a run (stream=false); None when the client left first (the run is then closed)."""

    async def drain() -> Answer:
        async for _ in run.events():
            pass
        return run.answer

    try:
        answer = await until_disconnect(request, drain())
    except ProxyError as exc:
        await run.close()
        note_answer(request, run.answer, exc)
        raise
    note_answer(request, run.answer)
    if answer is None:
        note_closed(request)
        await run.close()
    return answer


class StreamRenderer(typing.Protocol):
    """What a protocol sends over SSE: its opening frames, the frames of each answer event, keep-alives, and its
    closing frames for a finished answer or a failure."""

    def opening(self, answer: Answer) -> list[str]: ...

    def frames(self, event: AnswerEvent, answer: Answer) -> list[str]: ...

    def keepalive(self) -> list[str]: ...

    def closing(self, answer: Answer) -> list[str]: ...

    def failure(self, error: ProxyError, answer: Answer) -> list[str]: ...


async def stream_body(request: Request, run: Run, stream: StreamRenderer) -> AsyncIterator[str]:
    """The SSE body of a run, in any protocol. Headers are sent by now, so errors travel in-stream.

    A client disconnect cancels this generator; `finally` then stops the run (shielded from the cancellation)."""
    settings, _ = app_state(request)
    error: ProxyError | None = None
    frames: list[str] = []
    delivered = False
    try:
        try:
            yield "".join(stream.opening(run.answer))
            async for event in run.events(idle=settings.keepalive):
                frames += stream.keepalive() if event is None else stream.frames(event, run.answer)
                if frames and not run.has_pending:  # one write for all the CLI has written so far
                    yield "".join(frames)
                    frames.clear()
            frames += stream.closing(run.answer)
        except ProxyError as exc:
            error = exc
        except Exception:
            logger.exception("failed while streaming %s", request.url.path)
            error = ProxyError("Internal error while streaming")
        if error is not None:
            frames += stream.failure(error, run.answer)
        # The last frames go out before the run is closed: the client need not wait for the CLI to exit.
        yield "".join(frames)
        delivered = True
    finally:
        note_answer(request, run.answer, error)
        if not delivered:
            note_closed(request)
        await run.close()


def sse_response(request: Request, run: Run, stream: StreamRenderer) -> StreamingResponse:
    return StreamingResponse(stream_body(request, run, stream), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def respond(request: Request, conversation: Conversation, stream: bool, renderer: StreamRenderer,
                  body_of: Callable[[Answer], dict[str, Any]]) -> Response:
    """A run answering the conversation: streamed through `renderer`, or as the one JSON body `body_of` makes."""
    run = await open_run(request, conversation)
    if stream:
        return sse_response(request, run, renderer)
    answer = await collect(request, run)
    if answer is None:
        return Response(status_code=499)
    # The body goes out first; closing the run (the CLI exiting, or being kept) happens after.
    return JSONResponse(body_of(answer), background=BackgroundTask(run.close))


def note_error(request: Request, exc: ProxyError) -> JSONResponse:
    log_fields(request.scope).update(error=exc.code, reason=exc.message)
    return error_response(exc, door_of(request.url.path))


async def on_proxy_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProxyError)
    return note_error(request, exc)


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return note_error(request, validation_error(exc))


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return note_error(request, NotFound(f"No route {request.method} {request.url.path[:200]}"))
    error = InvalidRequest(str(exc.detail))
    error.status = exc.status_code
    return note_error(request, error)


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path[:200])
    return note_error(request, ProxyError("Internal server error"))


def sse(payload: dict[str, Any], event: str | None = None) -> str:
    """One server-sent event: a line of JSON, under an `event:` name when the protocol names its events."""
    data = f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"
    return f"event: {event}\n{data}" if event else data


# ── 15. OpenAI Chat Completions: parser, renderer, handler ────────────────────
# https://platform.openai.com/docs/api-reference/chat/create


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class ImageURL(_Lenient):
    url: str
    detail: str | None = None


class ContentPart(_Lenient):
    type: str
    text: str | None = None
    image_url: ImageURL | None = None


class FunctionCall(_Lenient):
    name: str
    arguments: str = ""


class ToolCall(_Lenient):
    id: str
    type: str = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Lenient):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(_Lenient):
    type: str = "function"
    function: FunctionDef | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatRequest(_Lenient):
    model: str = Field(max_length=MAX_MODEL_ID)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    # Accepted and ignored: Claude Code has no knob for them.
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


IGNORED_HINTS = (
    "temperature", "top_p", "seed", "user", "store", "metadata", "max_tokens", "max_completion_tokens",
    "reasoning_effort", "parallel_tool_calls", "prompt_cache_key", "frequency_penalty", "presence_penalty", "stop",
)


def check_request(req: ChatRequest) -> list[str]:
    """Refuse what would silently change meaning; return the hint fields that will be ignored."""
    if req.n is not None and req.n > 1:
        raise InvalidRequest("Only n=1 is supported", param="n", code="unsupported_value")
    if req.logprobs or req.top_logprobs:
        raise UnsupportedParameter("logprobs are not available from Claude Code", param="logprobs")
    present = req.model_fields_set | set(req.model_extra or {})
    return sorted(name for name in present if name in IGNORED_HINTS or name in (req.model_extra or {}))


def part_text(part: ContentPart, where: str) -> str:
    """The text of one content part ("[image]" marks where an image was); other kinds are refused, naming them."""
    if part.type in ("text", "input_text") and part.text is not None:
        return part.text
    if part.type == "image_url" and part.image_url is not None:
        return "[image]"
    raise InvalidRequest(f"Unsupported content part type '{part.type}' in {where}", param=where)


def content_text(content: str | list[ContentPart] | None, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part_text(part, f"{where}.content[{i}]") for i, part in enumerate(content))


def chat_turn(message: ChatMessage, where: str) -> Turn:
    role = "tool" if message.role == "function" else message.role
    images = tuple(
        (part.image_url.url, f"{where}.content[{j}]") for j, part in enumerate(message.content)
        if part.type == "image_url" and part.image_url is not None
    ) if role == "user" and isinstance(message.content, list) else ()
    calls = tuple(ToolCallItem(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or [])
    call_id = message.tool_call_id or (message.name if role == "tool" else None)
    return Turn(role, content_text(message.content, where), images, calls, call_id)


def function_of(tool: ToolDef, where: str) -> FunctionDef:
    """The function a tool declares, nested as OpenAI sends it or flat as Cursor does."""
    if tool.type != "function":
        raise InvalidRequest(f"Unsupported tool type '{tool.type}'; only function tools are supported",
                             param=f"{where}.type")
    if tool.function is not None:
        return tool.function
    try:
        return FunctionDef.model_validate(tool.model_extra or {})
    except ValidationError as exc:
        raise InvalidRequest(f"Invalid function tool at {where}", param=where) from exc


def bridge_tools(req: ChatRequest) -> tuple[str, ...]:
    """The request's tools as MCP tool definitions, or () when none are exposed."""
    if not req.tools or req.tool_choice == "none":
        return ()
    functions = [function_of(tool, f"tools[{i}]") for i, tool in enumerate(req.tools)]
    return tuple(mcp_tool(f.name, f.description, f.parameters) for f in functions)


def tool_choice_instruction(req: ChatRequest) -> str | None:
    """What tool_choice "required" or a named function asks of Claude (see tool_instruction)."""
    choice = req.tool_choice
    if isinstance(choice, dict):
        function = choice.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest("tool_choice.function must be an object with a name", param="tool_choice")
        choice = function["name"]
    names = [function_of(tool, f"tools[{i}]").name for i, tool in enumerate(req.tools or [])]
    return tool_instruction(choice, names, "tool_choice")


def chat_schema(req: ChatRequest) -> str | None:
    """response_format: {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}, json_object or text."""
    form = req.response_format or {}
    named = form.get("json_schema")
    schema = named.get("schema") if isinstance(named, dict) else None
    return output_schema(form.get("type"), schema, "response_format.json_schema.schema")


def chat_conversation(req: ChatRequest, settings: Settings) -> Conversation:
    """The neutral request of a Chat Completions request."""
    turns = tuple(chat_turn(message, f"messages[{i}]") for i, message in enumerate(req.messages))
    return Conversation(req.model, resolve_model(req.model, settings), turns, bridge_tools(req),
                        tool_choice_instruction(req), chat_schema(req))


def openai_usage(tokens: Mapping[str, int], cost: float | None) -> dict[str, Any]:
    """OpenAI usage from Anthropic token counts.

    prompt_tokens counts every input token the model read: fresh input plus cache reads plus cache writes, so that
    prompt_tokens >= cached_tokens as OpenAI clients assume. `cost` (Claude Code's total_cost_usd for the run,
    side requests included) is reported as usage.total_cost_usd.
    """
    cached = tokens.get("cache_read_input_tokens", 0)
    written = tokens.get("cache_creation_input_tokens", 0)
    prompt = tokens.get("input_tokens", 0) + cached + written
    completion = tokens.get("output_tokens", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "total_cost_usd": cost,
    }


class ChatRenderer:
    """Chat Completions chunks from answer events, and the completion from the Answer they built.

    The text of successive text blocks (successive assistant turns of an agentic run) is separated by a blank line
    in both; client tool calls become tool_calls, thinking and tool activity reasoning_content."""

    def __init__(self, model: str, include_usage: bool = False) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self._last_text: int | None = None  # the text block the last text chunk came from
        self._calls: dict[int, int] = {}  # block index -> index in tool_calls

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }

    def role_chunk(self) -> dict[str, Any]:
        return self.chunk({"role": "assistant", "content": ""})

    def keepalive_chunk(self) -> dict[str, Any]:
        return self.chunk({})

    def render(self, event: AnswerEvent, answer: Answer) -> list[dict[str, Any]]:
        """The chunks of one answer event (often none)."""
        block = answer.blocks[event.index]
        if isinstance(event, Started) and block.kind == "tool_call":
            self._calls[event.index] = len(self._calls)
            call = {"id": block.call_id, "type": "function", "function": {"name": block.name, "arguments": ""}}
            return [self.chunk({"tool_calls": [{"index": self._calls[event.index], **call}]})]
        if not isinstance(event, Delta) or event.signature:
            return []
        if block.kind == "tool_call":
            fragment = {"index": self._calls[event.index], "function": {"arguments": event.text}}
            return [self.chunk({"tool_calls": [fragment]})]
        if block.kind == "reasoning":
            return [self.chunk({"reasoning_content": event.text})]
        separator = "\n\n" if self._last_text not in (None, event.index) else ""
        self._last_text = event.index
        return [self.chunk({"content": separator + event.text})]

    def finish(self, answer: Answer) -> list[dict[str, Any]]:
        """The finish chunk, and the usage chunk when the client asked for one."""
        chunks = [self.chunk({}, answer.finish)]
        if self.include_usage:
            chunks.append({**self.chunk({}), "choices": [], "usage": openai_usage(answer.tokens, answer.cost)})
        return chunks

    def completion(self, answer: Answer) -> dict[str, Any]:
        calls = [{"id": b.call_id, "type": "function", "function": {"name": b.name, "arguments": b.text}}
                 for b in answer.of_kind("tool_call")]
        message: dict[str, Any] = {"role": "assistant", "content": answer.text or (None if calls else ""),
                                   "refusal": None}
        if calls:
            message["tool_calls"] = calls
        if reasoning := "".join(b.text for b in answer.of_kind("reasoning")):
            message["reasoning_content"] = reasoning
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": answer.finish, "logprobs": None}],
            "usage": openai_usage(answer.tokens, answer.cost),
        }


class ChatStream:
    """The SSE body of a streamed Chat Completion: chunks as `data:` lines, errors in-stream, then [DONE]."""

    def __init__(self, renderer: ChatRenderer) -> None:
        self.renderer = renderer

    def opening(self, answer: Answer) -> list[str]:
        return [sse(self.renderer.role_chunk())]

    def frames(self, event: AnswerEvent, answer: Answer) -> list[str]:
        return [sse(chunk) for chunk in self.renderer.render(event, answer)]

    def keepalive(self) -> list[str]:
        return [sse(self.renderer.keepalive_chunk())]

    def closing(self, answer: Answer) -> list[str]:
        return [*map(sse, self.renderer.finish(answer)), SSE_DONE]

    def failure(self, error: ProxyError, answer: Answer) -> list[str]:
        return [sse(error_envelope(error)), SSE_DONE]


async def answer_as_chat(request: Request, conversation: Conversation, stream: bool,
                         include_usage: bool) -> Response:
    """A run answering the conversation as a Chat Completion: streamed as chunks, or as one completion."""
    renderer = ChatRenderer(conversation.model, include_usage)
    log_fields(request.scope).update(id=renderer.id, model=conversation.model, stream=stream)
    return await respond(request, conversation, stream, ChatStream(renderer), renderer.completion)


async def chat_completion(request: Request, body: dict[str, Any]) -> Response:
    """POST /v1/chat/completions: one Claude Code run (or its continuation), streamed or as one completion."""
    settings, _ = app_state(request)
    req = parse_body(ChatRequest, body)
    log_fields(request.scope).update(model=req.model, stream=req.stream)  # known even if the model is refused
    if ignored := check_request(req):
        logger.debug("ignoring request fields: %s", ", ".join(ignored))
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return await answer_as_chat(request, chat_conversation(req, settings), req.stream, include_usage)


# ── 16. OpenAI Responses: parser, renderer, handler ───────────────────────────
# https://platform.openai.com/docs/api-reference/responses/create — Codex, the Vercel AI SDK, the Agents SDK.


class ResponsesRequest(_Lenient):
    model: str = Field(max_length=MAX_MODEL_ID)
    input: str | list[Any] = Field(default_factory=list)
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    previous_response_id: str | None = None
    # Accepted and echoed, without effect on Claude Code.
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None


class ResponseStore:
    """The responses this proxy issued, the most recent `limit`: the conversation each one ends (what
    previous_response_id continues) and its output items by id (what an item_reference stands for)."""

    def __init__(self, limit: int = MAX_SESSIONS) -> None:
        self.limit = limit
        self._conversations: dict[str, tuple[Turn, ...]] = {}
        self._items: dict[str, tuple[str, dict[str, Any]]] = {}  # item id -> (response id, item)

    def remember(self, response_id: str, turns: tuple[Turn, ...], items: list[dict[str, Any]]) -> None:
        self._conversations[response_id] = turns
        self._items.update((item["id"], (response_id, item)) for item in items)
        while len(self._conversations) > self.limit:
            oldest = next(iter(self._conversations))
            del self._conversations[oldest]
            self._items = {k: v for k, v in self._items.items() if v[0] != oldest}

    def conversation(self, response_id: str) -> tuple[Turn, ...]:
        if response_id not in self._conversations:
            raise InvalidRequest(f"Previous response '{response_id[:100]}' not found: this proxy did not issue it or "
                                 "has forgotten it; send the whole conversation in input",
                                 param="previous_response_id", code="previous_response_not_found")
        return self._conversations[response_id]

    def item(self, item_id: Any, where: str) -> dict[str, Any]:
        if not isinstance(item_id, str) or item_id not in self._items:
            raise InvalidRequest(f"Item '{str(item_id)[:100]}' in {where} not found: this proxy did not issue it or "
                                 "has forgotten it; send the item itself", param=where)
        return self._items[item_id][1]


def input_part_text(part: Any, role: str, where: str) -> tuple[str, tuple[str, str] | None]:
    """The text of one content part of an input message, and its image (url, where) if it is one."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
        return part["text"], None
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return part["refusal"], None
    if kind == "input_image" and role == "user":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise InvalidRequest(f"Only image_url images are supported (no file_id) in {where}", param=where)
        return "[image]", (url, where)
    raise InvalidRequest(f"Unsupported content part {str(kind)[:50]!r} in {where}", param=where)


def message_turn(item: dict[str, Any], where: str) -> Turn:
    role, content = item.get("role"), item.get("content")
    if role not in ("user", "assistant", "system", "developer"):
        raise InvalidRequest(f"Unsupported role {str(role)[:50]!r} in {where}", param=f"{where}.role")
    if isinstance(content, str):
        return Turn(str(role), content)
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or a list of parts", param=f"{where}.content")
    parts = [input_part_text(part, str(role), f"{where}.content[{j}]") for j, part in enumerate(content)]
    return Turn(str(role), "".join(text for text, _ in parts), tuple(image for _, image in parts if image))


def output_text(output: Any, where: str) -> str:
    """A function call's output: a string, or a list of text parts."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "".join(input_part_text(part, "tool", f"{where}[{j}]")[0] for j, part in enumerate(output))
    raise InvalidRequest(f"{where} must be a string or a list of parts", param=where)


def input_turn(item: dict[str, Any], where: str) -> Turn | None:
    """The turn an input item stands for (None: reasoning and items Claude Code has no use for)."""
    kind = item.get("type", "message")
    call_id = str(item.get("call_id") or "")
    match kind:
        case "message":
            return message_turn(item, where)
        case "function_call" | "custom_tool_call":
            arguments = item.get("arguments") if kind == "function_call" else json.dumps({"input": item.get("input")})
            return Turn("assistant", calls=(ToolCallItem(call_id, str(item.get("name", "")), str(arguments or "")),))
        case "function_call_output" | "custom_tool_call_output":
            return Turn("tool", output_text(item.get("output"), f"{where}.output"), call_id=call_id)
    logger.debug("ignoring an input item of type %r", str(kind)[:50])
    return None


def responses_turns(req: ResponsesRequest, store: ResponseStore) -> tuple[Turn, ...]:
    turns = list(store.conversation(req.previous_response_id)) if req.previous_response_id else []
    if req.instructions and not req.previous_response_id:
        turns.append(Turn("system", req.instructions))
    items: list[Any] = [{"role": "user", "content": req.input}] if isinstance(req.input, str) else req.input
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        if item.get("type") == "item_reference":
            item = store.item(item.get("id"), where)
        if (turn := input_turn(item, where)) is not None:
            add_turn(turns, turn)
    return tuple(turns)


def responses_tools(req: ResponsesRequest) -> list[FunctionDef]:
    """The request's function tools; hosted and unknown tool types (web_search, custom, namespace…) are ignored."""
    functions = []
    for i, tool in enumerate(req.tools or []):
        if tool.get("type") != "function":
            logger.debug("ignoring a tool of type %r", str(tool.get("type"))[:50])
            continue
        try:
            functions.append(FunctionDef.model_validate(tool))
        except ValidationError as exc:
            raise InvalidRequest(f"Invalid function tool at tools[{i}]", param=f"tools[{i}]") from exc
    return functions


def responses_conversation(req: ResponsesRequest, settings: Settings, store: ResponseStore) -> Conversation:
    """The neutral request of a Responses request (or of Cursor's Responses-shaped chat request)."""
    functions = responses_tools(req) if req.tool_choice != "none" else []
    choice = req.tool_choice
    if isinstance(choice, dict):
        choice = choice.get("name") if choice.get("type") == "function" else None
    instruction = tool_instruction(choice, [f.name for f in functions], "tool_choice") if functions else None
    tools = tuple(mcp_tool(f.name, f.description, f.parameters) for f in functions)
    form = (req.text or {}).get("format") or {}
    schema = output_schema(form.get("type"), form.get("schema"), "text.format.schema")
    return Conversation(req.model, resolve_model(req.model, settings), responses_turns(req, store), tools,
                        instruction, schema)


def responses_usage(answer: Answer) -> dict[str, Any]:
    usage = openai_usage(answer.tokens, answer.cost)
    return {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
            "input_tokens_details": {"cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
                                     "cache_write_tokens": usage["prompt_tokens_details"]["cache_write_tokens"]},
            "output_tokens_details": {"reasoning_tokens": 0}}


def failure_detail(error: ProxyError) -> dict[str, Any]:
    body = error_body(error, "responses")["error"]
    return {"code": body["code"] or "server_error", "message": body["message"]}


ITEM_PREFIXES = {"text": "msg", "reasoning": "rs", "tool_call": "fc"}


class ResponsesRenderer:
    """A Response object from an Answer, and its stream of events: each block of the answer is one output item
    (text → message, reasoning → reasoning with a summary, tool call → function_call), added, grown and done.
    A finished response is remembered (ResponseStore) so that its id and its items' ids can be referred to."""

    def __init__(self, req: ResponsesRequest, conversation: Conversation, store: ResponseStore) -> None:
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created_at = int(time.time())
        self.req, self.conversation, self.store = req, conversation, store
        self.sequence = 0
        self._item_ids: dict[int, str] = {}

    def item_id(self, index: int, block: Block) -> str:
        return self._item_ids.setdefault(index, f"{ITEM_PREFIXES[block.kind]}_{uuid.uuid4().hex}")

    def item(self, index: int, block: Block, done: bool = True) -> dict[str, Any]:
        item_id, status = self.item_id(index, block), "completed" if done else "in_progress"
        if block.kind == "text":
            content = [{"type": "output_text", "text": block.text, "annotations": [], "logprobs": []}] if done else []
            return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}
        if block.kind == "reasoning":
            summary = [{"type": "summary_text", "text": block.text}] if done else []
            return {"id": item_id, "type": "reasoning", "summary": summary}
        return {"id": item_id, "type": "function_call", "status": status, "call_id": block.call_id,
                "name": block.name, "arguments": block.text if done else ""}

    def response(self, answer: Answer | None, error: ProxyError | None = None) -> dict[str, Any]:
        """The Response object: in progress (no answer yet), completed, incomplete (cut short) or failed."""
        status = "in_progress" if answer is None else "incomplete" if answer.finish == "length" else "completed"
        tools = [{"type": "function", "name": f.name, "description": f.description, "parameters": f.parameters,
                  "strict": bool((f.model_extra or {}).get("strict"))} for f in responses_tools(self.req)]
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": "failed" if error else status, "model": self.req.model,
            "output": [self.item(i, b) for i, b in enumerate(answer.blocks)] if answer else [],
            "usage": responses_usage(answer) if answer else None,
            "error": failure_detail(error) if error else None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": self.req.instructions, "metadata": self.req.metadata or {},
            "parallel_tool_calls": self.req.parallel_tool_calls is not False,
            "tool_choice": self.req.tool_choice if self.req.tool_choice in ("none", "auto", "required") else "auto",
            "tools": tools, "temperature": self.req.temperature, "top_p": self.req.top_p,
            "max_output_tokens": self.req.max_output_tokens, "previous_response_id": self.req.previous_response_id,
            "reasoning": self.req.reasoning, "store": self.req.store is not False,
            "text": self.req.text or {"format": {"type": "text"}},
        }

    def finished(self, answer: Answer) -> dict[str, Any]:
        """The completed Response, remembered for previous_response_id and item_reference."""
        response = self.response(answer)
        calls = tuple(ToolCallItem(b.call_id, b.name, b.text) for b in answer.of_kind("tool_call"))
        turns = (*self.conversation.turns, Turn("assistant", answer.text, calls=calls))
        self.store.remember(self.id, turns, response["output"])
        return response

    # The stream (see StreamRenderer)

    def event(self, kind: str, **fields: Any) -> str:
        self.sequence += 1
        return sse({"type": kind, "sequence_number": self.sequence, **fields}, event=kind)

    def opening(self, answer: Answer) -> list[str]:
        response = self.response(None)
        return [self.event("response.created", response=response),
                self.event("response.in_progress", response=response)]

    def frames(self, event: AnswerEvent, answer: Answer) -> list[str]:
        """The events of one answer event (see the class docstring)."""
        block = answer.blocks[event.index]
        place = {"item_id": self.item_id(event.index, block), "output_index": event.index}
        if isinstance(event, Started):
            return [self.event("response.output_item.added", output_index=event.index,
                               item=self.item(event.index, block, done=False)), *self._part(block, place, "added")]
        if isinstance(event, Delta) and not event.signature:
            match block.kind:
                case "text":
                    return [self.event("response.output_text.delta", **place, content_index=0, delta=event.text,
                                       logprobs=[])]
                case "reasoning":
                    return [self.event("response.reasoning_summary_text.delta", **place, summary_index=0,
                                       delta=event.text)]
                case "tool_call":
                    return [self.event("response.function_call_arguments.delta", **place, delta=event.text)]
        if isinstance(event, Ended):
            item = self.item(event.index, block)
            return [*self._part(block, place, "done"),
                    self.event("response.output_item.done", output_index=event.index, item=item)]
        return []

    def _part(self, block: Block, place: dict[str, Any], stage: str) -> list[str]:
        """The events that open (added) or close (done) a message's text part or a reasoning summary part."""
        done = stage == "done"
        match block.kind:
            case "text":
                part = {"type": "output_text", "text": block.text if done else "", "annotations": []}
                text = [self.event("response.output_text.done", **place, content_index=0, text=block.text,
                                   logprobs=[])] if done else []
                return [*text, self.event(f"response.content_part.{stage}", **place, content_index=0, part=part)]
            case "reasoning":
                part = {"type": "summary_text", "text": block.text if done else ""}
                text = [self.event("response.reasoning_summary_text.done", **place, summary_index=0,
                                   text=block.text)] if done else []
                return [*text, self.event(f"response.reasoning_summary_part.{stage}", **place, summary_index=0,
                                          part=part)]
        return [self.event("response.function_call_arguments.done", **place, name=block.name,
                           arguments=block.text)] if done else []

    def keepalive(self) -> list[str]:
        return [": keep-alive\n\n"]  # an SSE comment: every client ignores it, none counts it as an event

    def closing(self, answer: Answer) -> list[str]:
        response = self.finished(answer)
        return [self.event(f"response.{response['status']}", response=response)]

    def failure(self, error: ProxyError, answer: Answer) -> list[str]:
        return [self.event("response.failed", response=self.response(answer, error))]


def response_store(request: Request) -> ResponseStore:
    store: ResponseStore = request.app.state.responses
    return store


async def create_response(request: Request) -> Response:
    """POST /v1/responses: a Claude Code run answering a Responses request, streamed as events or as one object."""
    settings, _ = app_state(request)
    req = parse_body(ResponsesRequest, await read_run_body(request))
    log_fields(request.scope).update(model=req.model, stream=req.stream)  # known even if the model is refused
    conversation = responses_conversation(req, settings, response_store(request))
    renderer = ResponsesRenderer(req, conversation, response_store(request))
    log_fields(request.scope).update(id=renderer.id)
    return await respond(request, conversation, req.stream, renderer, renderer.finished)


async def cursor_completion(request: Request, body: dict[str, Any]) -> Response:
    """A Responses-shaped body posted to /v1/chat/completions (Cursor does this), answered as a Chat Completion."""
    settings, _ = app_state(request)
    req = parse_body(ResponsesRequest, body)
    log_fields(request.scope).update(model=req.model, stream=req.stream)
    conversation = responses_conversation(req, settings, response_store(request))
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    return await answer_as_chat(request, conversation, req.stream, include_usage)


# ── 17. Anthropic Messages: parser, renderer, handlers ────────────────────────
# https://docs.anthropic.com/en/api/messages — the Anthropic SDKs, ANTHROPIC_BASE_URL clients, agents.


class MessagesRequest(_Lenient):
    model: str = Field(max_length=MAX_MODEL_ID)
    messages: list[dict[str, Any]]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    stream: bool = False
    # Accepted without effect on Claude Code: max_tokens (required by the API), thinking, metadata, sampling…
    max_tokens: int | None = None


CLIENT_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def block_image(block: dict[str, Any], where: str) -> str:
    """An image block's source as a URL: base64 sources become data: URLs (same rules and limits as every door)."""
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise InvalidRequest(f"Unsupported image source in {where}; use base64 or url", param=where)


def blocks_of(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(block, dict) for block in content):
        raise InvalidRequest(f"{where} must be a string or a list of content blocks", param=where)
    return content


def tool_result_turn(block: dict[str, Any], where: str) -> Turn:
    parts = blocks_of(block.get("content") or "", f"{where}.content")
    text = "".join(str(part.get("text", "")) if part.get("type") == "text" else "[image]" for part in parts)
    return Turn("tool", text, call_id=str(block.get("tool_use_id", "")), is_error=bool(block.get("is_error")))


def anthropic_turns(role: Any, content: Any, where: str) -> list[Turn]:
    """The turns of one message: a user message's tool results first (the API puts them first), then its text and
    images; an assistant message's text and tool calls. Thinking blocks are dropped, as Claude Code keeps its own."""
    if role not in ("user", "assistant"):
        raise InvalidRequest(f"Unsupported role {str(role)[:50]!r} in {where}", param=f"{where}.role")
    turns, texts, images, calls = [], [], [], []
    for j, block in enumerate(blocks_of(content, f"{where}.content")):
        place, kind = f"{where}.content[{j}]", block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "image" and role == "user":
            texts.append("[image]")
            images.append((block_image(block, place), place))
        elif kind == "tool_use" and role == "assistant":
            calls.append(ToolCallItem(str(block.get("id", "")), str(block.get("name", "")),
                                      json.dumps(block.get("input") or {})))
        elif kind == "tool_result" and role == "user":
            turns.append(tool_result_turn(block, place))
        elif kind in ("thinking", "redacted_thinking", "server_tool_use", "web_search_tool_result"):
            continue
        else:
            raise InvalidRequest(f"Unsupported content block {str(kind)[:50]!r} in {place}", param=place)
    separator = "\n\n" if role == "assistant" else ""
    if texts or calls or not turns:
        turns.append(Turn(role, separator.join(texts), tuple(images), tuple(calls)))
    return turns


def system_turns(system: str | list[dict[str, Any]] | None) -> list[Turn]:
    if system is None:
        return []
    blocks = blocks_of(system, "system")
    if any(block.get("type") != "text" or not isinstance(block.get("text"), str) for block in blocks):
        raise InvalidRequest("system must be a string or a list of text blocks", param="system")
    return [Turn("system", "\n\n".join(block["text"] for block in blocks))]


def messages_tools(req: MessagesRequest) -> list[dict[str, Any]]:
    """The client's tools; server tools (a type such as web_search_20250305) are ignored."""
    tools = []
    for i, tool in enumerate(req.tools or []):
        if tool.get("type") not in (None, "custom"):
            logger.debug("ignoring a server tool of type %r", str(tool.get("type"))[:50])
            continue
        if not isinstance(tool.get("name"), str) or not CLIENT_TOOL_NAME.fullmatch(tool["name"]):
            raise InvalidRequest(f"Invalid tool name at tools[{i}]", param=f"tools[{i}].name")
        tools.append(tool)
    return tools


def messages_conversation(req: MessagesRequest, settings: Settings) -> Conversation:
    """The neutral request of a Messages request."""
    turns = system_turns(req.system)
    for i, message in enumerate(req.messages):
        for turn in anthropic_turns(message.get("role"), message.get("content"), f"messages[{i}]"):
            add_turn(turns, turn)
    choice = req.tool_choice or {}
    tools = messages_tools(req) if choice.get("type") != "none" else []
    named = {"any": "required", "tool": choice.get("name")}.get(str(choice.get("type")))
    instruction = tool_instruction(named, [t["name"] for t in tools], "tool_choice") if tools else None
    definitions = tuple(mcp_tool(t["name"], t.get("description"), t.get("input_schema")) for t in tools)
    return Conversation(req.model, resolve_model(req.model, settings), tuple(turns), definitions, instruction)


def anthropic_usage(answer: Answer) -> dict[str, int]:
    """Anthropic's usage: input_tokens is the fresh input only; cache reads and writes are counted apart."""
    return {name: answer.tokens[name] for name in (*INPUT_TOKEN_FIELDS, "output_tokens")}


STOP_REASONS: dict[Finish, str] = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


class MessagesRenderer:
    """A Message from an Answer, and its stream: each block of the answer is one content block (text, thinking,
    tool_use with the client's tool name), started, grown by deltas and stopped."""

    def __init__(self, model: str) -> None:
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self.model = model

    def block(self, block: Block, done: bool = True) -> dict[str, Any]:
        if block.kind == "text":
            return {"type": "text", "text": block.text if done else ""}
        if block.kind == "reasoning":
            return {"type": "thinking", "thinking": block.text if done else "",
                    "signature": block.signature if done else ""}
        arguments = json.loads(block.text or "{}") if done else {}
        return {"type": "tool_use", "id": block.call_id, "name": block.name, "input": arguments}

    def message(self, answer: Answer, done: bool = True) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [self.block(b) for b in answer.blocks] if done else [],
                "stop_reason": STOP_REASONS[answer.finish] if done else None, "stop_sequence": None,
                "usage": anthropic_usage(answer)}

    # The stream (see StreamRenderer)

    @staticmethod
    def event(kind: str, **fields: Any) -> str:
        return sse({"type": kind, **fields}, event=kind)

    def opening(self, answer: Answer) -> list[str]:
        return [self.event("message_start", message=self.message(answer, done=False))]

    def frames(self, event: AnswerEvent, answer: Answer) -> list[str]:
        block = answer.blocks[event.index]
        if isinstance(event, Started):
            return [self.event("content_block_start", index=event.index, content_block=self.block(block, False))]
        if isinstance(event, Ended):
            return [self.event("content_block_stop", index=event.index)]
        if event.signature:
            delta = {"type": "signature_delta", "signature": event.text}
        elif block.kind == "text":
            delta = {"type": "text_delta", "text": event.text}
        elif block.kind == "reasoning":
            delta = {"type": "thinking_delta", "thinking": event.text}
        else:
            delta = {"type": "input_json_delta", "partial_json": event.text}
        return [self.event("content_block_delta", index=event.index, delta=delta)]

    def keepalive(self) -> list[str]:
        return [self.event("ping")]

    def closing(self, answer: Answer) -> list[str]:
        delta = {"stop_reason": STOP_REASONS[answer.finish], "stop_sequence": None}
        return [self.event("message_delta", delta=delta, usage=anthropic_usage(answer)), self.event("message_stop")]

    def failure(self, error: ProxyError, answer: Answer) -> list[str]:
        return [sse(error_body(error, "anthropic"), event="error")]


async def create_message(request: Request) -> Response:
    """POST /v1/messages: a Claude Code run answering a Messages request, streamed as events or as one message."""
    settings, _ = app_state(request)
    req = parse_body(MessagesRequest, await read_run_body(request))
    log_fields(request.scope).update(model=req.model, stream=req.stream)  # known even if the model is refused
    conversation = messages_conversation(req, settings)
    renderer = MessagesRenderer(req.model)
    log_fields(request.scope).update(id=renderer.id)
    return await respond(request, conversation, req.stream, renderer, renderer.message)


TOKENS_PER_IMAGE = 1600  # what Anthropic documents for an image of about 1.15 megapixels


async def count_tokens(request: Request) -> dict[str, int]:
    """POST /v1/messages/count_tokens: a local estimate (about 4 characters a token), never a Claude Code run;
    some clients call it dozens of times per message."""
    settings, _ = app_state(request)
    check_token(request, settings.token)
    req = parse_body(MessagesRequest, await read_json(request, settings.max_body_bytes))
    conversation = messages_conversation(req, settings)
    characters = sum(len(t.text) + sum(len(c.arguments) for c in t.calls) for t in conversation.turns)
    characters += sum(len(tool) for tool in conversation.tools)
    images = sum(len(t.images) for t in conversation.turns)
    return {"input_tokens": max(1, math.ceil(characters / 4)) + images * TOKENS_PER_IMAGE}


# ── 18. Usage views: /v1/usage, /metrics, /status ─────────────────────────────
# What the ledger, the plan's limits and the Runner know: for programs (JSON, Prometheus) and for people (a page).

TTFT_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 60)
DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class StateGauges:
    """Prometheus gauges read when scraped: runs, processes, the plan's limits and today's spending."""

    def __init__(self, runner: Runner, ledger: Ledger) -> None:
        self.runner, self.ledger = runner, ledger

    def collect(self) -> Iterator[Metric]:
        runner, now = self.runner, time.time()
        runs = GaugeMetricFamily("claude_proxy_runs", "Claude Code runs: running, queued for a slot, parked waiting "
                                 "for the client's tool results", labels=["state"])
        for state, count in (("running", runner.admission.running), ("queued", runner.admission.queued),
                             ("parked", runner.parking.count)):
            runs.add_metric([state], count)
        processes = GaugeMetricFamily("claude_proxy_processes", "Claude Code processes: live (all), warm (idle in "
                                      "the pool), kept (for a conversation's next turn)", labels=["kind"])
        for kind, count in (("live", len(runner.processes.live)), ("warm", runner.pool.idle_count),
                            ("kept", runner.kept_count)):
            processes.add_metric([kind], count)
        used = GaugeMetricFamily("claude_proxy_plan_utilization", "How much of a plan limit is used (0-1), as Claude "
                                 "Code last reported it", labels=["limit"])
        reached = GaugeMetricFamily("claude_proxy_plan_limit_reached", "1 while a plan limit is reached",
                                    labels=["limit"])
        resets = GaugeMetricFamily("claude_proxy_plan_reset_timestamp_seconds", "When a plan limit's window resets",
                                   labels=["limit"])
        for window in runner.limits.windows.values():
            if window.utilization is not None:
                used.add_metric([window.kind], window.utilization)
            reached.add_metric([window.kind], float(window.status == "rejected" and window.current(now)))
            if window.resets_at is not None:
                resets.add_metric([window.kind], window.resets_at)
        spent = GaugeMetricFamily("claude_proxy_spent_today_usd", "What the requests of the current UTC day cost",
                                  value=self.ledger.spent_today(now))
        yield from (runs, processes, used, reached, resets, spent)


class Metrics:
    """The app's Prometheus metrics, in a registry of its own: counters and histograms fed with each ledger row,
    and StateGauges."""

    def __init__(self, runner: Runner, ledger: Ledger) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("claude_proxy_requests", "API requests by endpoint, model asked and HTTP status",
                                ["endpoint", "model", "status"], registry=registry)
        self.errors = Counter("claude_proxy_errors", "API requests that failed (in-stream failures too), by error "
                              "code", ["endpoint", "code"], registry=registry)
        self.ttft = Histogram("claude_proxy_time_to_first_token_seconds", "Seconds from a request to the first "
                              "output of its answer", ["endpoint"], buckets=TTFT_BUCKETS, registry=registry)
        self.duration = Histogram("claude_proxy_request_duration_seconds", "Seconds from a request to the end of its "
                                  "response", ["endpoint"], buckets=DURATION_BUCKETS, registry=registry)
        self.tokens = Counter("claude_proxy_tokens", "Tokens by model asked and kind: input (all input read), cached "
                              "(cache reads among them), output", ["model", "kind"], registry=registry)
        self.cost = Counter("claude_proxy_cost_usd", "What requests cost, as Claude Code reported it, by model asked",
                            ["model"], registry=registry)
        registry.register(StateGauges(runner, ledger))

    def observe(self, row: Mapping[str, Any]) -> None:
        """Count one ledger row."""
        endpoint, model = row["endpoint"], row["model"] or ""
        self.requests.labels(endpoint, model, str(row["status"])).inc()
        if row["error"]:
            self.errors.labels(endpoint, row["error"]).inc()
        if row["ttft"] is not None:
            self.ttft.labels(endpoint).observe(row["ttft"])
        self.duration.labels(endpoint).observe(row["duration"])
        for kind in ("input", "cached", "output"):
            self.tokens.labels(model, kind).inc(row[f"{kind}_tokens"] or 0)
        self.cost.labels(model).inc(row["cost_usd"] or 0)


def day_start(text: str, param: str) -> float:
    try:
        day = datetime.date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"'{param}' must be a date, YYYY-MM-DD (UTC)", param=param) from None
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc).timestamp()


def usage_range(since: str | None, until: str | None, now: float) -> tuple[float, float]:
    """[start, end) in Unix time for two UTC days, both included; by default the 30 days up to today."""
    end = day_start(until, "until") + 86400 if until else next_utc_day(now)
    start = day_start(since, "since") if since else end - 30 * 86400
    if start >= end:
        raise InvalidRequest("'since' is after 'until'", param="since")
    return start, end


async def usage_report(request: Request) -> dict[str, Any]:
    """GET /v1/usage?since=YYYY-MM-DD&until=YYYY-MM-DD: the ledger's totals by UTC day and model asked, today's
    spending and the budgets, and the plan's limits."""
    settings, runner = app_state(request)
    check_token(request, settings.token)
    ledger, now = app_ledger(request), time.time()
    start, end = usage_range(request.query_params.get("since"), request.query_params.get("until"), now)
    days = await ledger.run(ledger.totals, start, end)
    return {
        "object": "usage", "since": utc_day(start), "until": utc_day(end - 1), "days": days,
        "totals": {name: sum(day[name] for day in days) for name in TOTAL_FIELDS[2:]},
        "today": {"date": utc_day(now), "cost_usd": ledger.spent_today(now)},
        "budgets": {"request_usd": settings.max_budget_usd or None, "daily_usd": settings.daily_budget_usd or None},
        "plan": runner.limits.report(now),
        "ledger": {"path": str(ledger.path) if ledger.path else None, "error": ledger.error},
    }


async def metrics_text(request: Request) -> Response:
    """GET /metrics: the Prometheus text format."""
    settings, _ = app_state(request)
    check_token(request, settings.token)
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# The status page: HTML made here, no script; a person with the token signs in with a form (POST /status/login) and
# gets an HttpOnly, SameSite=Strict cookie holding an HMAC of the token, never the token itself nor in a URL.
STATUS_COOKIE = "claude_proxy_status"
STATUS_REFRESH_S = 10
RECENT_REQUESTS = 50
PAGE_HEADERS = {"cache-control": "no-store", "referrer-policy": "no-referrer", "x-frame-options": "DENY",
                "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                           "frame-ancestors 'none'"}
PAGE_STYLE = """
:root { color-scheme: light dark; --muted: #6b7280; --line: #d1d5db44; --bad: #dc2626; --warn: #d97706; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 72rem;
       padding: 1rem; }
h1 { font-size: 1.3rem; margin: 0; } h2 { font-size: 1.05rem; margin: 1.6rem 0 .6rem; }
.muted, th { color: var(--muted); } .bad { color: var(--bad); } .warn { color: var(--warn); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(8.5rem, 1fr)); gap: .6rem; margin: 0; }
.cards div { border: 1px solid var(--line); border-radius: .5rem; padding: .5rem .7rem; }
.cards dt { color: var(--muted); font-size: .8rem; } .cards dd { margin: 0; font-size: 1.25rem; font-weight: 600; }
.cards.text { grid-template-columns: repeat(auto-fill, minmax(15rem, 1fr)); } .cards.text dd { font-size: 1rem; }
.limit { margin: .5rem 0; } meter { width: 100%; height: 1.1rem; }
.scroll { overflow-x: auto; } table { border-collapse: collapse; width: 100%; font-size: .85rem; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
form.login { display: grid; gap: .6rem; max-width: 22rem; margin-top: 2rem; }
input, button { font: inherit; padding: .45rem .6rem; }
"""


def status_cookie(token: str) -> str:
    """The status page's cookie: an HMAC of the token (the cookie jar never holds the token itself)."""
    return hmac.new(token.encode(), b"claude-code-openai-proxy status page", hashlib.sha256).hexdigest()


def may_see_status(request: Request, token: str) -> bool:
    """No token set, the status cookie, or the token as for the API (curl, a monitor)."""
    cookie = request.cookies.get(STATUS_COOKIE, "")
    if not token or hmac.compare_digest(cookie.encode(), status_cookie(token).encode()):
        return True
    try:
        check_token(request, token)
    except Unauthorized:
        return False
    return True


def page(title: str, body: str, refresh: bool = False) -> str:
    meta = f'<meta http-equiv="refresh" content="{STATUS_REFRESH_S}">' if refresh else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1">{meta}<title>{html.escape(title)}</title>'
            f"<style>{PAGE_STYLE}</style></head><body>{body}</body></html>")


def login_page(problem: str = "") -> str:
    note = f'<p class="bad" id="problem">{html.escape(problem)}</p>' if problem else ""
    return page("Sign in · Claude Code proxy", f"""<h1>Claude Code proxy</h1>{note}
<form class="login" method="post" action="/status/login"><label for="token">The proxy's token
(CLAUDE_PROXY_TOKEN)</label><input id="token" name="token" type="password" autocomplete="current-password" required
autofocus><button type="submit">Sign in</button></form>""")


def cards(items: Sequence[tuple[str, str, Any]], kind: str = "") -> str:
    """Figures as labelled cards: (id, label, value); integers with thousands separators."""
    shown = [(key, label, f"{value:,}" if isinstance(value, int) else str(value)) for key, label, value in items]
    figures = "".join(f'<div><dt>{html.escape(label)}</dt><dd id="{key}">{html.escape(value)}</dd></div>'
                      for key, label, value in shown)
    return f'<dl class="cards {kind}">{figures}</dl>'


def table(head: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]], numeric: frozenset[int]) -> str:
    """A table of (row id, escaped cells); the id is the row's tooltip. Columns in `numeric` are right-aligned."""
    def cells(tag: str, row: Sequence[str]) -> str:
        return "".join(f'<{tag}{" class=num" if i in numeric else ""}>{cell}</{tag}>' for i, cell in enumerate(row))
    body = "".join(f'<tr data-id="{html.escape(key)}" title="{html.escape(key)}">{cells("td", row)}</tr>'
                   for key, row in rows)
    return f'<div class="scroll"><table><thead><tr>{cells("th", head)}</tr></thead><tbody>{body}</tbody></table></div>'


def claude_section(processes: Processes, login: Mapping[str, Any]) -> str:
    logged = login.get("logged_in")
    state = "yes" if logged else "no" if logged is False else "unknown"
    how = ", ".join(str(login[k]) for k in ("method", "subscription", "email", "organization") if login.get(k))
    return "<h2>Claude Code</h2>" + cards([
        ("cli-version", "CLI", processes.claude_version or ("not found" if not processes.claude_bin else "unknown")),
        ("logged-in", "Logged in", state + (f" ({how})" if how else "")),
    ], "text") + (f'<p class="bad">{html.escape(str(login["error"]))}</p>' if login.get("error") else "")


LIMIT_STATES = {"allowed": ("within the limit", ""), "allowed_warning": ("close to the limit", "warn"),
                "rejected": ("reached", "bad"), "reset": ("window over, not reported since", "muted")}


def plan_section(limits: PlanLimits, now: float) -> str:
    rows = []
    for window in sorted(limits.windows.values(), key=lambda w: w.kind):
        status = window.status if window.current(now) else "reset"
        words, level = LIMIT_STATES.get(status, (status, ""))
        used = f" · {window.utilization:.0%} used" if window.utilization is not None else ""
        reset = window.resets_at
        later = f" · resets {utc_minute(reset)} (in {span(reset - now)})" if reset and reset > now else ""
        meter = (f'<meter min="0" max="1" low="0.75" high="0.9" optimum="0" value="{window.utilization}"></meter>'
                 if window.utilization is not None else "")
        kind = html.escape(window.kind)
        rows.append(f'<div class="limit" id="limit-{kind}"><b>{html.escape(limit_name(window.kind))}</b> '
                    f'<span class="{level}">{html.escape(words + used)}</span><span class="muted">{later}</span>'
                    f"{meter}</div>")
    none = '<p class="muted">Not reported yet: Claude Code reports plan limits when logged in with a subscription.</p>'
    return "<h2>Plan limits</h2>" + ("".join(rows) or none)


def runner_section(runner: Runner) -> str:
    return "<h2>Runs and processes</h2>" + cards([
        ("running", "Running", runner.admission.running), ("queued", "Queued", runner.admission.queued),
        ("parked", "Parked tool runs", runner.parking.count), ("warm", "Warm processes", runner.pool.idle_count),
        ("kept", "Kept for a conversation", runner.kept_count), ("live", "Live processes", len(runner.processes.live)),
    ])


def today_section(days: Sequence[Mapping[str, Any]], settings: Settings, spent: float) -> str:
    total = {name: sum(day[name] for day in days) for name in TOTAL_FIELDS[2:]}
    budget = f" of ${settings.daily_budget_usd:g}" if settings.daily_budget_usd else ""
    return "<h2>Today (UTC)</h2>" + cards([
        ("today-requests", "Requests", total["requests"]), ("today-errors", "Errors", total["errors"]),
        ("today-input", "Input tokens", total["input_tokens"]), ("today-cached", "Cached", total["cached_tokens"]),
        ("today-output", "Output tokens", total["output_tokens"]), ("today-cost", "Cost", f"${spent:.4f}{budget}"),
    ])


def request_cells(row: Mapping[str, Any]) -> tuple[str, list[str]]:
    """One ledger row: its request id, and its escaped table cells."""
    model = row["model"] or ""
    if row["served_model"] and row["served_model"] != model:
        model += f" → {row['served_model']}"
    outcome = str(row["status"]) + (f" {row['error']}" if row["error"] else "")
    if row["finish"] and row["finish"] != "stop":
        outcome += f" {row['finish']}"
    reason = f' title="{html.escape(row["reason"])}"' if row["reason"] else ""
    level = "bad" if row["error"] or row["status"] >= 400 else ""
    seconds = [f"{row[k]:.2f} s" if row[k] is not None else "" for k in ("ttft", "duration")]
    tokens = " / ".join(f"{row[k] or 0:,}" for k in ("input_tokens", "cached_tokens", "output_tokens"))
    cost = f"${row['cost_usd']:.4f}" if row["cost_usd"] is not None else ""
    cells = [time.strftime("%m-%d %H:%M:%S", time.gmtime(row["time"])), row["endpoint"].removeprefix("/v1/"), model]
    return row["request_id"] or "", [
        *map(html.escape, cells), f'<span class="{level}"{reason}>{html.escape(outcome)}</span>',
        html.escape(row["route"] or ""), *seconds, tokens, cost]


async def status_page(request: Request) -> Response:
    """GET /status: the proxy at a glance, for a person; it refreshes itself."""
    settings, runner = app_state(request)
    if not may_see_status(request, settings.token):
        return HTMLResponse(login_page(), status_code=401, headers=PAGE_HEADERS)
    ledger, now = app_ledger(request), time.time()
    today = await ledger.run(ledger.totals, next_utc_day(now) - 86400, next_utc_day(now))
    recent = await ledger.run(ledger.recent, RECENT_REQUESTS)
    head = ("Time (UTC)", "Endpoint", "Model", "Status", "Route", "First token", "Duration", "Tokens in / cached / out",
            "Cost")
    signed_in = '<form method="post" action="/status/logout"><button>Sign out</button></form>' if settings.token else ""
    problem = f'<p class="bad">Usage ledger: {html.escape(ledger.error)}</p>' if ledger.error else ""
    body = (f'<header><h1>Claude Code proxy</h1><p class="muted">claude-code-openai-proxy {__version__} · '
            f"{utc_minute(now)} · refreshes every {STATUS_REFRESH_S} s</p>{signed_in}</header>{problem}"
            + claude_section(runner.processes, await runner.login.current()) + plan_section(runner.limits, now)
            + runner_section(runner) + today_section(today, settings, ledger.spent_today(now))
            + f"<h2>Last {RECENT_REQUESTS} requests</h2>"
            + table(head, [request_cells(row) for row in recent], frozenset({5, 6, 7, 8})))
    return HTMLResponse(page("Claude Code proxy status", body, refresh=True), headers=PAGE_HEADERS)


async def read_form(request: Request, max_bytes: int = 4096) -> dict[str, str]:
    """A small urlencoded form body (the status page's sign-in)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType(f"Expected a form (application/x-www-form-urlencoded), got '{content_type}'")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge("The form is too large")
    return {key: values[0] for key, values in urllib.parse.parse_qs(body.decode(errors="replace")).items()}


async def status_login(request: Request) -> Response:
    """POST /status/login: the token from the sign-in form, for a cookie (303 back to /status)."""
    settings, _ = app_state(request)
    offered = (await read_form(request)).get("token", "")
    if not settings.token or not hmac.compare_digest(offered.encode(), settings.token.encode()):
        log_fields(request.scope).update(error="invalid_api_key")
        problem = "Wrong token: it is the value of CLAUDE_PROXY_TOKEN."
        return HTMLResponse(login_page(problem), status_code=401, headers=PAGE_HEADERS)
    response = RedirectResponse("/status", status_code=303, headers=PAGE_HEADERS)
    response.set_cookie(STATUS_COOKIE, status_cookie(settings.token), max_age=30 * 86400, path="/status",
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


async def status_logout(request: Request) -> Response:
    response = RedirectResponse("/status", status_code=303, headers=PAGE_HEADERS)
    response.delete_cookie(STATUS_COOKIE, path="/status", httponly=True, samesite="strict")
    return response


# ── 19. The app: health, models, the MCP bridge, routes ───────────────────────


def model_card(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "claude-code"}


async def health(request: Request) -> dict[str, Any]:
    """Status, the Claude Code CLI, its version and whether it is logged in (or why there is none); never spawns a
    run. Who is logged in (email, organization) is only on the status page, behind the token."""
    settings, runner = app_state(request)
    processes = runner.processes
    claude_bin = processes.claude_bin or find_claude(settings.claude_bin)
    claude: dict[str, Any] = {"found": claude_bin is not None, "path": claude_bin, "version": processes.claude_version}
    if claude_bin is None:
        claude["error"] = "Claude Code CLI not found: install it or set CLAUDE_BIN"
    else:
        login = await runner.login.current()
        claude["login"] = {k: login.get(k) for k in ("logged_in", "method", "provider", "subscription", "error")}
    state = runner.processes.state
    status = "unavailable" if not claude_bin else "degraded" if runner.sessions and not state.usable else "ok"
    return {"status": status, "service": "claude-code-openai-proxy", "version": __version__, "claude": claude,
            "pool": {"idle": runner.pool.idle_count},
            "runs": {"running": runner.admission.running, "queued": runner.admission.queued,
                     "awaiting_tools": runner.parking.count},
            "state": {"path": str(state.path), "usable": state.usable, "error": state.error}}


async def model_ids(request: Request) -> list[str]:
    """MODEL_NAME (the CLI's default model), the usual aliases, and what the installed CLI offers."""
    settings, runner = app_state(request)
    check_token(request, settings.token)
    offered = await runner.processes.offered_models()
    return list(dict.fromkeys((settings.model_name, *MODEL_ALIASES, *offered)))


async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(m) for m in await model_ids(request)]}


async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    if model_id not in await model_ids(request) and not CLAUDE_MODEL_ID.fullmatch(model_id):
        raise ModelNotFound(f"The model '{model_id[:200]}' does not exist; GET /v1/models lists them", param="model")
    return model_card(model_id)


async def mcp_endpoint(request: Request) -> Response:
    # Claude Code's MCP client calls back here for the client's tools, with its bridge's secret as a bearer token
    # (from its --mcp-config file: a secret in the URL would be on argv, visible to every user in ps).
    settings, runner = app_state(request)
    bridge = runner.processes.bridges.get(bearer_token(request) or "")
    if bridge is None:
        raise NotFound("No such tool bridge")
    message = await read_json(request, settings.max_body_bytes)
    reply = await answer_mcp(bridge, message) if isinstance(message, dict) else None
    return JSONResponse(reply) if reply is not None else Response(status_code=202)


async def chat_completions(request: Request) -> Response:
    """POST /v1/chat/completions, in the Chat Completions shape or, from Cursor, the Responses shape."""
    body = await read_run_body(request)
    if isinstance(body, dict) and "input" in body and "messages" not in body:
        return await cursor_completion(request, body)
    return await chat_completion(request, body)


def create_app(settings: Settings, environ: Mapping[str, str] | None = None) -> FastAPI:
    """The FastAPI app; its state (settings, the Runner, the ledger, the metrics) lives on app.state."""
    runner = Runner(settings, os.environ if environ is None else environ)
    keep_ledger = settings.usage_retention_days > 0
    ledger = Ledger(runner.processes.state.path / LEDGER_FILE if keep_ledger else None, settings.usage_retention_days)
    metrics = Metrics(runner, ledger)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.gather(runner.start(), ledger.open())
        maintenance = asyncio.create_task(runner.maintain())
        yield
        maintenance.cancel()
        await runner.stop_all()
        await ledger.close()

    def record(row: dict[str, Any]) -> None:
        ledger.add(row)
        metrics.observe(row)

    app = FastAPI(title="claude-code-openai-proxy", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings, app.state.runner, app.state.responses = settings, runner, ResponseStore()
    app.state.ledger, app.state.metrics = ledger, metrics
    if origins := [o.strip() for o in settings.allowed_origins.split(",") if o.strip()]:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(BrowserGuard, settings=settings)
    app.add_middleware(Accounting, limits=runner.limits, record=record)  # refused requests are counted too
    app.add_middleware(RequestLog)  # outermost: refused requests are logged too
    app.add_exception_handler(ProxyError, on_proxy_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_api_route("/", health, methods=["GET"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id:path}", get_model, methods=["GET"])
    app.add_api_route("/v1/usage", usage_report, methods=["GET"])
    app.add_api_route("/metrics", metrics_text, methods=["GET"])
    app.add_api_route("/status", status_page, methods=["GET"])
    app.add_api_route("/status/login", status_login, methods=["POST"])
    app.add_api_route("/status/logout", status_logout, methods=["POST"])
    app.add_api_route("/mcp", mcp_endpoint, methods=["POST"])
    for path in ("/v1/chat/completions", "/chat/completions"):
        app.add_api_route(path, chat_completions, methods=["POST"])
    for path in ("/v1/responses", "/responses"):
        app.add_api_route(path, create_response, methods=["POST"])
    for path in ("/v1/messages", "/messages"):
        app.add_api_route(path, create_message, methods=["POST"])
        app.add_api_route(f"{path}/count_tokens", count_tokens, methods=["POST"])
    return app


# ── 20. Entry point: the server, against slow and numerous connections ────────
# uvicorn closes idle keep-alive connections (after 5 s) and refuses headers over 16 KiB (h11), but waits forever for
# a request that is still arriving, and accepts connections until the process runs out of file descriptors.


class ServerConfig(uvicorn.Config):
    """uvicorn's settings plus the limits GuardedProtocol reads."""

    def __init__(self, app: Any, settings: Settings, **kwargs: Any) -> None:
        super().__init__(app, http=GuardedProtocol, **kwargs)
        self.read_timeout = settings.read_timeout
        self.max_connections = settings.max_connections


class GuardedProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with a connection cap (connections beyond PROXY_MAX_CONNECTIONS are closed as they
    arrive) and a deadline for each request's headers and body (PROXY_READ_TIMEOUT from the connection's opening or
    from the previous response's end), past which the connection is closed: slow clients cannot hold the proxy."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        limits = typing.cast(ServerConfig, self.config)
        if len(self.connections) > limits.max_connections:
            connections_logger.warning("closed a new connection: %d are open (PROXY_MAX_CONNECTIONS)",
                                       len(self.connections) - 1)
            self.transport.close()
            return
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        """The next request must be received in full within the read timeout."""
        if self._deadline is not None:
            self._deadline.cancel()
        if not self.transport.is_closing():
            timeout = typing.cast(ServerConfig, self.config).read_timeout
            self._deadline = self.loop.call_later(timeout, self._read_expired, self.cycle)

    def _read_expired(self, cycle_before: Any) -> None:
        received = self.cycle is not None and self.cycle is not cycle_before and not self.cycle.more_body
        if not received and not self.transport.is_closing():
            connections_logger.warning("closed a connection that did not send its request within %.0f s "
                                       "(PROXY_READ_TIMEOUT)", typing.cast(ServerConfig, self.config).read_timeout)
            self.transport.close()


class Throttle(logging.Filter):
    """At most one record of each message per `window` seconds, the next one saying how many were held back: a flood
    of bad connections must not fill the disk with log lines."""

    def __init__(self, window: float = 10.0) -> None:
        super().__init__()
        self.window = window
        self.last: dict[str, float] = {}
        self.held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = f"{record.name}:{record.msg}", time.monotonic()
        if now - self.last.get(key, -math.inf) < self.window:
            self.held[key] = self.held.get(key, 0) + 1
            return False
        if len(self.last) > 1000:  # messages are few; this only bounds what a stream of distinct ones could hold
            self.last.clear()
        self.last[key] = now
        if held := self.held.pop(key, 0):
            record.msg = f"{record.msg} [{held} more like this in the last {self.window:.0f} s]"
        return True


def allow_open_files(wanted: int) -> None:
    """Raise the soft limit on open files towards `wanted` as far as the hard limit allows: macOS starts processes
    with 256, which PROXY_MAX_CONNECTIONS connections and the CLIs' pipes would exhaust before the cap is reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY
                                                        else min(wanted, hard), hard))


class ProxyServer(uvicorn.Server):
    """uvicorn, stopping every Claude Code run first on shutdown so open streams end at once."""

    def __init__(self, config: uvicorn.Config, runner: Runner) -> None:
        super().__init__(config)
        self.runner = runner

    async def shutdown(self, sockets: Any = None) -> None:
        await self.runner.stop_all()
        await super().shutdown(sockets)


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(argv)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if token_on_argv(sys.argv[1:] if argv is None else argv):
        logger.warning("the token given as --token can be read by every user of this machine (ps); "
                       "set CLAUDE_PROXY_TOKEN or CLAUDE_PROXY_TOKEN_FILE instead")
    if not is_loopback(settings.host) and not settings.token:
        sys.exit(
            f"Refusing to listen on {settings.host} without a token: Claude Code runs shell commands for anyone who "
            "can reach this port. Set CLAUDE_PROXY_TOKEN (or --token) to a long random secret, or listen on "
            "127.0.0.1."
        )
    allow_open_files(2 * settings.max_connections + 256)  # connections, plus 3 pipes per CLI and its files
    app = create_app(settings)
    config = ServerConfig(app, settings, host=settings.host, port=settings.port, log_level=settings.log_level,
                          access_log=False, timeout_graceful_shutdown=5)
    throttle = Throttle()  # after uvicorn has set up its loggers
    for name in ("uvicorn.error", "asyncio", connections_logger.name):
        logging.getLogger(name).addFilter(throttle)
    ProxyServer(config, app.state.runner).run()


if __name__ == "__main__":
    main()
