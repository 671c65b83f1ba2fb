#!/usr/bin/env python3
"""Benchmark: is asking the proxy faster than running `claude -p` yourself?

    .venv/bin/python bench/bench.py [--runs N] [--json PATH]

Everything runs on this machine against the scripted fake Anthropic API (tests/fake_anthropic.py) and the real
Claude Code CLI: the newest supported one, pinned in tests/.cli by ./tests/run.sh (this script runs
`./tests/run.sh --install-only` first, which installs only what is missing), or --claude PATH (e.g. the oldest
supported, tests/.cli-2.1.197/node_modules/.bin/claude). The proxy is started as the tests start it (tests/proxy_harness.py).
No traffic leaves 127.0.0.1, so what is measured is the CLI's and the proxy's own overhead, not a model.

1. Latency, N runs of each after one warm-up, interleaved round by round so drift hits all alike:
   (a) `printf %s "$PROMPT" | claude -p --output-format=stream-json --verbose --include-partial-messages
       --permission-mode=bypassPermissions`, run directly in a fresh empty working directory (what a user runs;
       the same time as the prompt in argv): time to first token = the first text_delta stream_event line,
       total = the process has exited;
   (b) the proxy with CLAUDE_POOL_SIZE=0 (a cold CLI per request), streamed: time to first token = the first SSE
       chunk with non-empty delta.content, total = `data: [DONE]`;
   (c) the proxy with the warm pool on (CLAUDE_POOL_SIZE=2 by default). Its warm-up round asks twice, cold, which
       teaches the pool (a configuration is pre-started for from its second use); before each measured request the
       bench waits until GET / reports the pool full and the pre-started processes have gone quiet (start-up done),
       as a user's think time would allow;
   (w) for reference, no proxy: a CLI started in advance with --input-format=stream-json, then one message written
       to its stdin, timed from the write: the floor for (c).
   Before every run all processes of the bench are left to go quiet, so one run's clean-up does not slow the next.
   Targets (ratios of medians, first token and total): (c)/(a) <= 0.15 and (b)/(a) <= 1.05.
   From the same runs (the fake API's request log, the CLI's result events, the proxy's log lines):
   (d) the cached prefix two new conversations share: how much of the tools + system prompt the fake API received
       is byte-identical between the first two (b) conversations (each in a folder of its own), and between the
       first two (a) runs (claude -p in two folders, without --exclude-dynamic-system-prompt-sections), and how
       many bytes end at a cache breakpoint both share. Target: 100% for (b).
   (e) Anthropic API requests (POSTs to /v1/messages and count_tokens) per plain answer of (a), (b), (c), (w), and
       from the warm proxy's idle pool over --idle-wait seconds once the runs are over. Targets: exactly 1; 0.
   (f) the warm path: the proxy's added latency, (c)'s first token at the client minus the CLI's own ttft_ms (from
       the message it read to its first token), and the CLI's time_to_request_ms for the first message of a warm
       process (from the proxy's log line); for reference the same for (w), and for a second message written to
       the (w) process. Targets (p50): added latency <= 20 ms, first-message time_to_request_ms <= 40 ms.
2. Throughput: one long streamed answer (--long-words words, one text delta each: the fake runs with max_deltas=None,
   like a real model's token stream) through the proxy with the pool
   off: content chunks per second at the client, and the proxy process's own CPU time per chunk (user + system,
   its children excluded). The same answer from `claude -p` directly gives the CLI's own rate for comparison.
3. Memory: --streams concurrent streamed requests that drip their answers so they overlap (CLAUDE_MAX_CONCURRENCY
   is raised to match); the proxy process's own peak RSS (children excluded) is sampled while they run. Each CLI
   process takes ~300 MB, so 16 streams need ~5 GB of free memory.

4. Soak (only with --soak SECONDS, e.g. 300; the other parts are then left out): a bounded loop of mixed requests
   from --soak-clients threads against one proxy (warm pool and sessions on, short TTLs so that expiry happens within
   the run): plain and streamed answers, conversations that go on, client tool round trips, Bash tool runs,
   distinct system prompts, API errors, requests abandoned while queued or answering. Every --soak-every seconds it
   samples the proxy's RSS, open files, child processes, conversation folders, transcripts and private folders;
   the report shows their course, the requests by kind and the unexpected errors (there should be none), and what
   is left once the proxy has been idle.

Every process the bench starts is stopped at the end, and the bench checks that none is left.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
sys.path.insert(0, str(TESTS))  # the helpers shared with the tests

import proxy_harness  # noqa: E402
from fake_anthropic import FakeAnthropic, cli_environment  # noqa: E402

PINNED_CLI = TESTS / ".cli/node_modules/.bin/claude"
MODEL = "claude-code"
PROMPT = "Say hello."
EXPECTED = "Hello from fake model."  # the fake's default answer
TARGETS = {"b": 1.05, "c": 0.15}  # the largest allowed median ratio to (a)
ADDED_LATENCY_MS = 20  # (f): the proxy's added latency on the warm path, p50
FIRST_REQUEST_MS = 40  # (f): the CLI's time_to_request_ms for the first message of a warm process, p50
ROWS = {
    "a": "(a) claude -p, run directly",
    "b": "(b) proxy, pool off",
    "c": "(c) proxy, pool warm",
    "w": "(w) claude pre-started, no proxy",
}
REQUEST_TIMEOUT = 120.0


# ── Helpers ────────────────────────────────────────────────────────────────


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def p90(values: list[float]) -> float:
    """The nearest-rank 90th percentile (the largest value for fewer than 10 samples)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def cpu_seconds(process: psutil.Process) -> float:
    """The process's own CPU time (user + system), its children excluded."""
    times = process.cpu_times()
    return times.user + times.system


def tree_cpu(roots: list[psutil.Process]) -> dict[int, float]:
    """CPU seconds of each process in the trees under `roots`, by pid."""
    found: dict[int, float] = {}
    for root in roots:
        with contextlib.suppress(psutil.Error):
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    found[process.pid] = cpu_seconds(process)
    return found


def wait_quiet(roots: list[psutil.Process], timeout: float = 15.0, window: float = 0.25,
               busy: float = 0.05) -> float:
    """Wait until the process trees under `roots` use less than `busy` of a core over `window` seconds.

    Returns the seconds waited. A process that appears between two samples counts with all its CPU time, so a
    CLI still starting up keeps the trees busy."""
    start = time.monotonic()
    before = tree_cpu(roots)
    while time.monotonic() - start < timeout:
        time.sleep(window)
        after = tree_cpu(roots)
        used = sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in after.items())
        if used < busy * window:
            break
        before = after
    return time.monotonic() - start


def find_cli(explicit: str | None) -> str:
    """The CLI to drive: --claude, else $TEST_CLAUDE_BIN, else the pinned one (./tests/run.sh --install-only)."""
    for path in (explicit, os.environ.get("TEST_CLAUDE_BIN")):
        if path:
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                sys.exit(f"not an executable Claude Code CLI: {path}")
            return path
    # The one place that pins and installs it; a no-op when tests/.cli already holds the pinned packages.
    if subprocess.run(["bash", str(TESTS / "run.sh"), "--install-only"]).returncode != 0:
        sys.exit("./tests/run.sh --install-only failed to install the pinned Claude Code CLI (it needs npm); "
                 "or pass --claude PATH.")
    return str(PINNED_CLI)


def cli_version(path: str) -> str:
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_state() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "main.py"], cwd=REPO, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return commit + (" (main.py modified)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ── The fake Anthropic API, in its own process ─────────────────────────────


def serve_fake_api() -> None:
    """Run tests/fake_anthropic.py's server until stdin closes; print its base URL first.

    It runs in its own process so that its threads do not compete with the timing client for the GIL. For the
    throughput part, it streams one delta per word however long the answer (the tests' fake cuts any answer into
    at most 64 deltas), like a real model's token stream."""
    fake = FakeAnthropic(max_deltas=None).start()
    print(fake.base_url, flush=True)
    try:
        for command in sys.stdin:  # EOF: the bench is done (or died)
            posts = list(fake.requests)
            if command.strip() == "count":
                print(json.dumps([len(posts), sum(r["method"] == "POST" for r in fake.other_requests)]), flush=True)
            elif command.strip() == "log":
                print(json.dumps([{"body": r["body"], "time": r["time"]} for r in posts]), flush=True)
    finally:
        fake.stop()


def words(count: int, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{i}" for i in range(count))


class FakeApi:
    def __init__(self, log_path: Path) -> None:
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-fake-api"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, cwd=REPO)
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().decode().strip()
        if not self.base_url.startswith("http://127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"the fake Anthropic API did not start:\n{log_path.read_text()}")
        self.ps = psutil.Process(self.proc.pid)

    def _ask(self, command: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def api_requests(self) -> tuple[int, int]:
        """Anthropic API requests so far: POSTs to /v1/messages, and the other POSTs (count_tokens)."""
        messages, others = self._ask("count")
        return int(messages), int(others)

    def bodies(self) -> list[dict[str, Any]]:
        """Every /v1/messages request so far: {"body", "time"}."""
        return list(self._ask("log"))

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ── The proxy ──────────────────────────────────────────────────────────────


class Proxy(proxy_harness.Proxy):
    """`python main.py` (or --main) on a free loopback port, started as the tests start it; with an HTTP client."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path, script: Path) -> None:
        super().__init__({**env, "PROXY_HOST": "127.0.0.1"}, log_path, script=script)  # on a free port
        self.name = name
        self.http = httpx.Client(timeout=REQUEST_TIMEOUT, trust_env=False)

    def wait_ready(self, timeout: float = 30) -> Proxy:
        super().wait_ready(timeout)
        return self

    def health(self) -> dict[str, Any]:
        return self.http.get(self.url + "/", timeout=5).json()

    def pool_idle(self) -> int | None:
        """The idle warm processes GET / reports, or None if this proxy does not report a pool."""
        pool = self.health().get("pool")
        return pool.get("idle") if isinstance(pool, dict) else None

    def output(self) -> str:
        return super().output()[-4000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        self.http.close()
        return super().stop(sig, timeout)


class StreamResult:
    def __init__(self) -> None:
        self.ttft: float | None = None  # seconds to the first content
        self.total: float | None = None  # seconds to [DONE] (proxy) or to the exit (CLI)
        self.result: float | None = None  # seconds to the result line (CLI only)
        self.first: float | None = None  # monotonic times of the first and last content chunk
        self.last: float | None = None
        self.chunks = 0
        self.text: list[str] = []
        self.cli: dict[str, int] = {}  # the CLI's own ttft_ms and time_to_request_ms (its result event, or the log)

    def content(self, piece: str) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.last = now
        self.chunks += 1
        self.text.append(piece)

    def rate(self) -> float:
        """Content chunks per second between the first and the last one."""
        if self.first is None or self.last is None or self.last <= self.first:
            return math.nan
        return (self.chunks - 1) / (self.last - self.first)


def stream_proxy(http: httpx.Client, url: str, prompt: str, on_start: Callable[[], None] | None = None) -> StreamResult:
    """One streamed chat completion; times from just before the request is sent."""
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    out = StreamResult()
    start = time.monotonic()
    with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"proxy answered {response.status_code}: {response.text[:500]}")
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                out.total = time.monotonic() - start
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"error in the stream: {chunk['error']}")
            for choice in chunk.get("choices") or []:
                if piece := (choice.get("delta") or {}).get("content"):
                    if out.ttft is None:
                        out.ttft = time.monotonic() - start
                        if on_start is not None:
                            on_start()
                    out.content(piece)
    if out.total is None or out.ttft is None:
        raise RuntimeError("the stream ended without content or [DONE]")
    return out


CLI_FLAGS = ("-p", "--output-format=stream-json", "--verbose", "--include-partial-messages",
             "--permission-mode=bypassPermissions")


class Cli:
    """One `claude -p` process with streamed output, in a fresh empty working directory.

    Plain (what a user runs): `printf %s PROMPT | claude -p ...`, timed from just before the spawn. (The prompt
    goes on stdin rather than in argv, where Linux refuses one word over 128 KiB; measured on CLI 2.1.197 the two
    take the same time.)
    Pre-started (`prestart=True`): `--input-format=stream-json`, started in advance; ask() writes one user message
    and times from there. This is what a warm pool process does, without the proxy: the floor for (c). With
    `last=False` the process stays up for another message.
    """

    def __init__(self, claude: str, env: dict[str, str], cwd: Path, prestart: bool = False) -> None:
        cwd.mkdir(parents=True)
        self.prestart = prestart
        self.stderr = tempfile.TemporaryFile()
        cmd = [claude, *CLI_FLAGS, *(["--input-format=stream-json"] if prestart else [])]
        self.start = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr)
        self.ps = psutil.Process(self.proc.pid)

    def ask(self, prompt: str, last: bool = True) -> StreamResult:
        if self.prestart:
            self.start = time.monotonic()
            line = {"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": prompt}]}}
            data = json.dumps(line).encode() + b"\n"
        else:
            data = prompt.encode()
        # A thread writes, so that a long prompt cannot block against a full stdout pipe.
        feeder = threading.Thread(target=self._write, args=(data, not self.prestart), daemon=True)
        feeder.start()
        out = StreamResult()
        try:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if not line.startswith(b"{"):
                    continue
                event = json.loads(line)
                if event.get("type") == "stream_event":
                    raw = event.get("event") or {}
                    delta = raw.get("delta") or {}
                    is_text = raw.get("type") == "content_block_delta" and delta.get("type") == "text_delta"
                    if is_text and delta.get("text"):
                        if out.ttft is None:
                            out.ttft = time.monotonic() - self.start
                        out.content(delta["text"])
                elif event.get("type") == "result":
                    out.result = time.monotonic() - self.start
                    out.cli = {k: event[k] for k in ("ttft_ms", "time_to_request_ms") if isinstance(event.get(k), int)}
                    if event.get("is_error"):
                        raise RuntimeError(f"claude -p failed: {event.get('result')}")
                    if self.prestart and not last:
                        break
                    if self.prestart:
                        self._close_stdin()  # stream-json input: the CLI exits when stdin ends
            if last:
                self.proc.wait(REQUEST_TIMEOUT)
            out.total = time.monotonic() - self.start if last else out.result
        finally:
            feeder.join(5)
            if last:
                self.stop()
        if (last and self.proc.returncode != 0) or out.ttft is None:
            self.stderr.seek(0)
            stderr = self.stderr.read().decode(errors="replace")
            raise RuntimeError(f"claude -p exited with {self.proc.returncode} (first token: {out.ttft}):\n"
                               f"{stderr[-2000:]}")
        return out

    def _write(self, data: bytes, close: bool) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        if close:
            self._close_stdin()

    def _close_stdin(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_stdin()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ── (d) and (f): what the samples and the request log say ─────────────────


def request_blocks(body: dict[str, Any]) -> list[str]:
    """A Messages request in the order the API caches it: each tool, each system block, each content block of the
    messages; every one as canonical JSON."""
    blocks = [json.dumps(tool, sort_keys=True) for tool in body.get("tools") or []]
    blocks += [json.dumps(block, sort_keys=True) for block in body.get("system") or []]
    for message in body.get("messages") or []:
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        blocks += [json.dumps([message.get("role"), part], sort_keys=True) for part in parts]
    return blocks


def shared_prefix(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """How much of the tools + system prompt two requests share byte for byte, from the start (what a prompt cache
    can reuse), and the bytes up to the last cache breakpoint (cache_control) inside that shared part."""
    a, b = request_blocks(first), request_blocks(second)
    same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    fixed = len(first.get("tools") or []) + len(first.get("system") or [])
    size = sum(len(block) for block in a[:fixed])
    shared = sum(len(block) for block in a[:min(same, fixed)])
    breakpoints = [i for i in range(same) if '"cache_control"' in a[i]]
    cached = sum(len(block) for block in a[:breakpoints[-1] + 1]) if breakpoints else 0
    return {"bytes": size, "identical": shared, "share": shared / size if size else math.nan,
            "cached_bytes": cached, "tools": len(first.get("tools") or [])}


def percentiles(values: list[float]) -> dict[str, float]:
    return {"p50": median(values), "p90": p90(values), "n": len(values)}


def warm_path(c: list[StreamResult], w: list[StreamResult], second_w: list[StreamResult]) -> dict[str, Any]:
    """(f): the proxy's added latency on the warm path and the CLI's time to its API request, in ms."""
    added = [s.ttft * 1000 - s.cli["ttft_ms"] for s in c if s.ttft is not None and "ttft_ms" in s.cli]
    added_w = [s.ttft * 1000 - s.cli["ttft_ms"] for s in w if s.ttft is not None and "ttft_ms" in s.cli]

    def to_request(samples: list[StreamResult]) -> dict[str, float]:
        return percentiles([s.cli["time_to_request_ms"] for s in samples if "time_to_request_ms" in s.cli])

    return {"added_ms": percentiles(added), "w_added_ms": percentiles(added_w), "c_to_request_ms": to_request(c),
            "w_to_request_ms": to_request(w), "w_second_to_request_ms": to_request(second_w)}


# ── The three parts ────────────────────────────────────────────────────────


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.claude = find_cli(args.claude)
        self.version = cli_version(self.claude)
        self.fake: FakeApi | None = None
        self.proxies: list[Proxy] = []
        self.env: dict[str, str] = {}
        self.cli_runs = 0
        self.clis: list[Cli] = []
        self.results: dict[str, Any] = {}

    def start(self) -> None:
        home = self.root / "home"
        home.mkdir()
        (self.root / "runs").mkdir()
        self.fake = FakeApi(self.root / "fake-api.log")
        self.env = cli_environment(str(home), self.fake.base_url)

    def pool_off(self) -> Proxy:
        """The proxy without a pool (latency (b), throughput, memory), started on first use."""
        return next((p for p in self.proxies if p.name == "pool-off"), None) or self.proxy("pool-off", 0)

    def proxy(self, name: str, pool_size: int) -> Proxy:
        env = {**self.env, "CLAUDE_BIN": self.claude, "CLAUDE_POOL_SIZE": str(pool_size),
               "CLAUDE_MAX_CONCURRENCY": str(max(4, self.args.streams)), "CLAUDE_MAX_QUEUE": "16",
               "PROXY_LOG_LEVEL": "info", "TMPDIR": str(self.root / "runs")}  # info: a line per request
        proxy = Proxy(name, env, self.root / f"proxy-{name}.log", Path(self.args.main))
        self.proxies.append(proxy)
        return proxy.wait_ready()

    def cli(self, prestart: bool = False) -> Cli:
        self.cli_runs += 1
        cli = Cli(self.claude, self.env, self.root / "runs" / f"direct-{self.cli_runs}", prestart)
        self.clis.append(cli)
        return cli

    def quiet(self) -> None:
        assert self.fake is not None
        clis = [cli.ps for cli in self.clis if cli.proc.poll() is None]
        wait_quiet([self.fake.ps, *(p.ps for p in self.proxies), *clis])

    def wait_pool(self, proxy: Proxy) -> str:
        """Wait until the pool is full and its processes have finished starting; say how it went."""
        end = time.monotonic() + 30
        idle = proxy.pool_idle()
        if idle is None:
            time.sleep(1.5)
            self.quiet()
            return "no pool state in GET /: waited 1.5 s"
        while idle < self.args.pool_size and time.monotonic() < end:
            time.sleep(0.05)
            idle = proxy.pool_idle() or 0
        self.quiet()
        return f"idle={idle}"

    # 1. latency

    def latency(self) -> None:
        runs = self.args.runs
        cold = self.pool_off()
        warm = self.proxy("pool-warm", self.args.pool_size)
        samples: dict[str, list[StreamResult]] = {key: [] for key in ROWS}
        pool_states: list[str] = []
        first_c = StreamResult()
        second_w: list[StreamResult] = []  # a second message to each (w) process
        windows: dict[str, list[tuple[int, int, int]]] = {key: [] for key in ROWS}  # see counted()
        for i in range(runs + 1):  # round 0 is the warm-up
            label = "warm-up" if i == 0 else f"run {i}/{runs}"
            waiting = self.cli(prestart=True)  # for (w), at the end of the round: started long before
            self.quiet()
            got = {"a": self.counted("a", windows, lambda: self.cli().ask(PROMPT))}
            self.quiet()
            got["b"] = self.counted("b", windows, lambda: stream_proxy(cold.http, cold.url, PROMPT))
            if not i:  # the pool starts processes for a configuration once it is used a second time
                stream_proxy(warm.http, warm.url, PROMPT)
            state = self.wait_pool(warm) if i else "cold, used twice (teaches the pool)"
            got["c"] = self.counted("c", windows, lambda: stream_proxy(warm.http, warm.url, PROMPT))
            self.quiet()
            got["w"] = self.counted("w", windows, lambda cli=waiting: cli.ask(PROMPT, last=False))
            self.quiet()
            again = waiting.ask(PROMPT)
            for key, sample in [*got.items(), ("w", again)]:
                if "".join(sample.text) != EXPECTED:
                    raise RuntimeError(f"({key}) answered {''.join(sample.text)!r}, not {EXPECTED!r}")
            cells = "  ".join(f"({key}) {got[key].ttft:.3f}/{got[key].total:.3f}" for key in ROWS)
            log(f"  {label}: {cells} s  [pool before (c): {state}]")
            if i:
                for key in ROWS:
                    samples[key].append(got[key])
                pool_states.append(state)
                second_w.append(again)
            else:
                first_c = got["c"]
        self.cli_timing_from_log(warm, [first_c, *samples["c"]])
        rows = {}
        for key, items in samples.items():
            ttft = [s.ttft for s in items if s.ttft is not None]
            total = [s.total for s in items if s.total is not None]
            rows[key] = {"ttft": ttft, "total": total, "ttft_median": median(ttft), "ttft_p90": p90(ttft),
                         "total_median": median(total), "total_p90": p90(total),
                         "result": [s.result for s in items]}
        ratios = {}
        for key in ("b", "c"):
            for metric in ("ttft", "total"):
                ratio = rows[key][f"{metric}_median"] / rows["a"][f"{metric}_median"]
                ratios[f"{key}/a {metric}"] = {"ratio": ratio, "target": TARGETS[key], "pass": ratio <= TARGETS[key]}
        self.results["latency"] = {"runs": runs, "pool_size": self.args.pool_size, "rows": rows, "ratios": ratios,
                                   "pool_before_c": pool_states,
                                   "c_first_request": {"ttft": first_c.ttft, "total": first_c.total}}
        per_answer = {key: [cost for _, _, cost in runs_of] for key, runs_of in windows.items()}
        self.results["requests"] = {"per_answer": per_answer, "idle": self.idle_requests(warm)}
        self.results["prefix"] = self.shared_prefixes(windows)
        self.results["warm_path"] = warm_path(samples["c"], samples["w"], second_w)
        warm.stop()
        self.proxies.remove(warm)

    def counted(self, key: str, windows: dict[str, list[tuple[int, int, int]]],
                ask: Callable[[], StreamResult]) -> StreamResult:
        """ask(), noting the fake API's /v1/messages requests it caused (first and last index in its log) and how
        many API requests it cost in all."""
        assert self.fake is not None
        before = self.fake.api_requests()
        result = ask()
        after = self.fake.api_requests()
        windows[key].append((before[0], after[0], sum(after) - sum(before)))
        return result

    def idle_requests(self, warm: Proxy) -> dict[str, Any]:
        """(e): the API requests the warm proxy's idle pool makes over --idle-wait seconds."""
        assert self.fake is not None
        state = self.wait_pool(warm)
        before = self.fake.api_requests()
        time.sleep(self.args.idle_wait)
        return {"requests": sum(self.fake.api_requests()) - sum(before), "seconds": self.args.idle_wait,
                "pool": state, "idle_after": warm.pool_idle()}

    def shared_prefixes(self, windows: dict[str, list[tuple[int, int, int]]]) -> dict[str, Any]:
        """(d): the first request of the first two (b) and (a) runs (round 0 included), compared."""
        assert self.fake is not None
        bodies = [entry["body"] for entry in self.fake.bodies()]
        compared = {}
        for key in ("b", "a"):
            first, second = (bodies[start] for start, end, _ in windows[key][:2] if end > start)
            compared[key] = shared_prefix(first, second)
        return compared

    @staticmethod
    def cli_timing_from_log(proxy: Proxy, samples: list[StreamResult]) -> None:
        """The CLI's own timing of each request, from the proxy's log lines (cli_ttft_ms=...), in order."""
        lines = [line for line in proxy.log_path.read_text(errors="replace").splitlines()
                 if "POST /v1/chat/completions status=200" in line]
        if len(lines) != len(samples):
            log(f"  {len(lines)} log lines for {len(samples)} requests of {proxy.name}: no CLI timing for (c)")
            return
        for line, sample in zip(lines, samples, strict=True):
            sample.cli = {name: int(value) for name, value in re.findall(r"cli_(\w+)=(\d+)", line)}

    # 2. throughput

    def throughput(self) -> None:
        proxy = self.pool_off()
        text = words(self.args.long_words)
        prompt = f"[[reply:{text}]]"
        self.quiet()
        direct = self.cli().ask(prompt)
        self.quiet()
        cpu_before = cpu_seconds(proxy.ps)
        through = stream_proxy(proxy.http, proxy.url, prompt)
        cpu = cpu_seconds(proxy.ps) - cpu_before
        for name, sample in (("claude -p", direct), ("proxy", through)):
            if "".join(sample.text) != text:
                raise RuntimeError(f"the long answer via {name} came back altered ({sample.chunks} chunks)")
        self.results["throughput"] = {
            "words": self.args.long_words, "chunks": through.chunks, "chunks_per_s": through.rate(),
            "seconds": through.total, "proxy_cpu_s": cpu, "proxy_cpu_us_per_chunk": cpu / through.chunks * 1e6,
            "cli_direct_deltas": direct.chunks, "cli_direct_deltas_per_s": direct.rate(),
        }
        log(f"  long answer: {through.chunks} chunks at {through.rate():.0f}/s through the proxy "
            f"({direct.rate():.0f}/s from claude -p), proxy CPU {cpu:.2f} s")

    # 3. memory

    def memory(self) -> None:
        streams = self.args.streams
        proxy = self.pool_off()
        self.quiet()
        rss_idle = proxy.ps.memory_info().rss
        prompt = "[[drip:0.05]][[reply:" + words(200, "m") + "]]"  # 200 deltas, 0.05 s apart: ~10 s per stream
        peak = {"rss": rss_idle, "children_rss": 0, "streaming": 0, "children": 0}
        streaming = 0
        lock = threading.Lock()
        done = threading.Event()
        errors: list[str] = []
        results: list[StreamResult] = []

        def sample() -> None:
            ticks = 0
            while not done.is_set():
                with contextlib.suppress(psutil.Error):
                    peak["rss"] = max(peak["rss"], proxy.ps.memory_info().rss)
                    if ticks % 5 == 0:  # the CLIs (and what they run), less often: many processes to read
                        total = 0
                        for child in proxy.ps.children(recursive=True):
                            with contextlib.suppress(psutil.Error):
                                total += child.memory_info().rss
                        peak["children_rss"] = max(peak["children_rss"], total)
                        peak["children"] = max(peak["children"], len(proxy.ps.children()))
                ticks += 1
                done.wait(0.02)

        def started() -> None:
            nonlocal streaming
            with lock:
                streaming += 1
                peak["streaming"] = max(peak["streaming"], streaming)

        def one() -> None:
            nonlocal streaming
            try:
                with httpx.Client(timeout=REQUEST_TIMEOUT, trust_env=False) as http:
                    result = stream_proxy(http, proxy.url, prompt, on_start=started)
                with lock:
                    streaming -= 1
                    results.append(result)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"{type(exc).__name__}: {exc}")

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.monotonic()
        workers = [threading.Thread(target=one, daemon=True) for _ in range(streams)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(REQUEST_TIMEOUT + 30)
        elapsed = time.monotonic() - start
        done.set()
        sampler.join()
        if errors:
            raise RuntimeError(f"{len(errors)} of {streams} concurrent streams failed: {errors[:3]}")
        self.quiet()
        rss_after = proxy.ps.memory_info().rss
        mib = 1 << 20
        self.results["memory"] = {
            "streams": streams, "max_in_flight": peak["streaming"], "seconds": elapsed,
            "proxy_rss_idle_mib": rss_idle / mib, "proxy_rss_peak_mib": peak["rss"] / mib,
            "proxy_rss_after_mib": rss_after / mib,
            "proxy_rss_per_stream_kib": (peak["rss"] - rss_idle) / max(1, peak["streaming"]) / 1024,
            "cli_processes_peak": peak["children"], "cli_rss_peak_mib": peak["children_rss"] / mib,
        }
        log(f"  {streams} streams: at most {peak['streaming']} streaming at once, proxy RSS "
            f"{rss_idle / mib:.1f} -> peak {peak['rss'] / mib:.1f} MiB")

    # 4. soak

    def soak(self) -> None:
        env = {**self.env, "CLAUDE_BIN": self.claude, "CLAUDE_POOL_SIZE": "2", "CLAUDE_SESSIONS": "1",
               "CLAUDE_MAX_CONCURRENCY": "4", "CLAUDE_MAX_QUEUE": "8", "CLAUDE_SESSION_TTL": "30",
               "CLAUDE_POOL_IDLE_TTL": "20", "CLAUDE_TOOL_WAIT": "30", "CLAUDE_CODE_MAX_RETRIES": "0",
               "PROXY_LOG_LEVEL": "warning",
               "TMPDIR": str(self.root / "runs"), "CLAUDE_STATE_DIR": str(self.root / "state")}
        proxy = Proxy("soak", env, self.root / "proxy-soak.log", Path(self.args.main))
        self.proxies.append(proxy)
        proxy.wait_ready()
        soak = Soak(proxy, self.root, self.args.soak)
        soak.run(self.args.soak_clients, self.args.soak_every)
        self.results["soak"] = soak.results()
        log(f"  {sum(soak.counts.values())} requests, {len(soak.errors)} unexpected errors")

    # clean-up

    def stop(self) -> list[str]:
        """Stop everything; the command lines of processes that were left running (then killed)."""
        for cli in self.clis:
            cli.stop()
        for proxy in self.proxies:
            proxy.stop()
        self.proxies.clear()
        if self.fake is not None:
            self.fake.stop()
        leftovers = list(processes_under(self.root))
        end = time.monotonic() + 10
        while leftovers and time.monotonic() < end:
            time.sleep(0.1)
            leftovers = list(processes_under(self.root))
        names = []
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                names.append(" ".join(process.cmdline())[:200])
                process.kill()
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.status() != psutil.STATUS_ZOMBIE:
                    names.append(" ".join(child.cmdline())[:200])
                    child.kill()
        return names


class Soak:
    """Mixed requests against one proxy until a deadline (bounded: each request has a timeout, the loop an end), and
    samples of what the proxy holds. Loopback only: the proxy, the CLIs and the fake API all run on this machine."""

    KINDS = ("plain", "stream", "conversation", "tools", "bash", "distinct", "error", "abandoned")
    TOOL = {"type": "function", "function": {"name": "get_time", "description": "The time",
                                             "parameters": {"type": "object", "properties": {}}}}

    def __init__(self, proxy: Proxy, root: Path, seconds: float) -> None:
        self.proxy, self.root, self.seconds = proxy, root, seconds
        self.counts: dict[str, int] = dict.fromkeys(self.KINDS, 0)
        self.errors: list[str] = []
        self.samples: list[dict[str, float]] = []
        self.lock = threading.Lock()
        self.end = 0.0

    def run(self, clients: int, every: float) -> None:
        start = time.monotonic()
        self.end = start + self.seconds
        self.sample(start)
        workers = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(clients)]
        for worker in workers:
            worker.start()
        while time.monotonic() < self.end:
            time.sleep(min(every, max(0.0, self.end - time.monotonic())))
            self.sample(start)
        for worker in workers:
            worker.join(REQUEST_TIMEOUT + 30)
        time.sleep(60)  # idle past the session and pool TTLs (30 s, 20 s; checked every 10 s): what expiry leaves
        self.sample(start)

    def sample(self, start: float) -> None:
        ps, mib = self.proxy.ps, 1 << 20
        with contextlib.suppress(psutil.Error):
            children = ps.children(recursive=True)
            conversations = self.root / "state" / "conversations"
            self.samples.append({
                "t": time.monotonic() - start, "rss_mib": ps.memory_info().rss / mib, "open_files": ps.num_fds(),
                "children": len(ps.children()), "descendants": len(children),
                "conversations": len(list(conversations.iterdir())) if conversations.is_dir() else 0,
                "transcripts": len(list((self.root / "home/.claude/projects").glob("*/*.jsonl"))),
                "private_folders": len(list((self.root / "runs").glob("claude-proxy-*"))),
                "health": float(self.proxy.http.get(self.proxy.url + "/", timeout=10).status_code == 200),
            })

    def client(self, number: int) -> None:
        i = 0
        with httpx.Client(timeout=REQUEST_TIMEOUT, trust_env=False) as http:
            while time.monotonic() < self.end:
                kind = self.KINDS[(number + i) % len(self.KINDS)]
                i += 1
                try:
                    getattr(self, kind)(http, f"c{number}-{i}")
                    with self.lock:
                        self.counts[kind] += 1
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    with self.lock:
                        self.errors.append(f"{kind}: {type(exc).__name__}: {str(exc)[:200]}")

    def chat(self, http: httpx.Client, messages: list[dict[str, Any]], expect: int = 200,
             **extra: Any) -> dict[str, Any]:
        response = http.post(self.proxy.url + "/v1/chat/completions",
                             json={"model": MODEL, "messages": messages, **extra})
        if response.status_code != expect:
            raise RuntimeError(f"status {response.status_code}: {response.text[:200]}")
        return response.json()

    def plain(self, http: httpx.Client, tag: str) -> None:
        self.chat(http, [{"role": "user", "content": f"[[reply:{tag}]] hi"}])

    def stream(self, http: httpx.Client, tag: str) -> None:
        if "".join(stream_proxy(http, self.proxy.url, f"[[reply:{tag} streamed]]").text) != f"{tag} streamed":
            raise RuntimeError("the streamed answer came back altered")

    def conversation(self, http: httpx.Client, tag: str) -> None:
        history: list[dict[str, Any]] = []
        for turn in range(3):
            history.append({"role": "user", "content": f"[[reply:{tag}-{turn}]] turn {turn}"})
            answer = self.chat(http, history)["choices"][0]["message"]["content"]
            history.append({"role": "assistant", "content": answer})

    def tools(self, http: httpx.Client, tag: str) -> None:
        messages: list[dict[str, Any]] = [{"role": "user", "content": f"[[tool:get_time]] {tag}"}]
        first = self.chat(http, messages, tools=[self.TOOL])["choices"][0]["message"]
        messages += [first, *({"role": "tool", "tool_call_id": call["id"], "content": "noon"}
                              for call in first.get("tool_calls") or [])]
        if self.chat(http, messages, tools=[self.TOOL])["choices"][0]["message"]["content"] != "Tool said: noon":
            raise RuntimeError("the tool round trip did not end with the tool's result")

    def bash(self, http: httpx.Client, tag: str) -> None:
        self.chat(http, [{"role": "user", "content": f"[[bash:echo {tag}]]"}])

    def distinct(self, http: httpx.Client, tag: str) -> None:
        self.chat(http, [{"role": "system", "content": f"It is {time.time()}."},
                         {"role": "user", "content": f"[[reply:{tag}]]"}])

    def error(self, http: httpx.Client, tag: str) -> None:
        self.chat(http, [{"role": "user", "content": f"[[error:500]] {tag}"}], expect=502)

    def abandoned(self, http: httpx.Client, tag: str) -> None:
        with contextlib.suppress(httpx.TimeoutException):
            http.post(self.proxy.url + "/v1/chat/completions", timeout=1.0, json={
                "model": MODEL, "stream": True,
                "messages": [{"role": "user", "content": f"[[slow:3]][[reply:{tag}]]"}]})

    def results(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "requests": self.counts, "errors": self.errors, "samples": self.samples}


def processes_under(folder: Path) -> Iterator[psutil.Process]:
    """Live processes working in `folder` or naming it on their command line (every CLI and proxy run)."""
    me = os.getpid()
    for process in psutil.process_iter(["cwd", "cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if process.pid == me or process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cwd = process.info.get("cwd") or ""
            if cwd.startswith(str(folder)) or str(folder) in " ".join(process.info.get("cmdline") or []):
                yield process


# ── Report ─────────────────────────────────────────────────────────────────


def busy(meta: dict[str, Any]) -> bool:
    return max(meta["load_before"], meta["load_after"]) > 0.5 * (meta["cpus"] or 1)


def report(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"claude-code-openai-proxy benchmark: {meta['claude_version']}, {meta['cpus']} CPUs, {meta['git']}, "
        "fake Anthropic API on 127.0.0.1",
        f"load average before/after: {meta['load_before']:.2f}/{meta['load_after']:.2f}"
        + ("  (other work on this machine skews the numbers)" if busy(meta) else ""),
        "",
    ]
    if latency := results.get("latency"):
        rows = latency["rows"]
        lines += [
            f"Latency, {latency['runs']} runs each after one warm-up; pool size {latency['pool_size']} for (c):",
            f"  {'':34} {'first token':>18}   {'total':>18}",
            f"  {'':34} {'median':>8} {'p90':>9}   {'median':>8} {'p90':>9}",
        ]
        for key, name in ROWS.items():
            row = rows[key]
            lines.append(f"  {name:34} {row['ttft_median']:7.3f}s {row['ttft_p90']:8.3f}s   "
                         f"{row['total_median']:7.3f}s {row['total_p90']:8.3f}s")
        first = latency["c_first_request"]
        lines += ["  (w) is the floor for (c): a CLI started in advance with --input-format=stream-json, the message "
                  "written to it directly.",
                  f"  (c)'s first request (cold; it teaches the pool, which then fills): first token "
                  f"{first['ttft']:.3f}s, total {first['total']:.3f}s",
                  "", f"  {'ratio of medians':34} {'first token':>18}   {'total':>18}"]
        for key in ("b", "c"):
            cells = []
            for metric in ("ttft", "total"):
                r = latency["ratios"][f"{key}/a {metric}"]
                verdict = "PASS" if r["pass"] else "MISS"
                cells.append(f"{r['ratio']:5.3f} {verdict} <={r['target']:<4}")
            lines.append(f"  {'(' + key + ')/(a)':34} {cells[0]:>18}   {cells[1]:>18}")
        lines.append("")
    lines += report_extras(results)
    if throughput := results.get("throughput"):
        t = throughput
        lines += [
            f"Long streamed answer ({t['words']} words, one delta each), pool off:",
            f"  {t['chunks']} content chunks in {t['seconds']:.2f} s: {t['chunks_per_s']:.0f} chunks/s at the client "
            f"(claude -p alone: {t['cli_direct_deltas_per_s']:.0f} deltas/s)",
            f"  proxy CPU: {t['proxy_cpu_s']:.2f} s = {t['proxy_cpu_us_per_chunk']:.0f} µs per chunk "
            "(its own process, the CLI excluded)",
            "",
        ]
    if memory := results.get("memory"):
        m = memory
        lines += [
            f"Memory, {m['streams']} concurrent streams (at most {m['max_in_flight']} streaming at once, "
            f"{m['seconds']:.1f} s):",
            f"  proxy RSS (its own process): idle {m['proxy_rss_idle_mib']:.1f} MiB, peak "
            f"{m['proxy_rss_peak_mib']:.1f} MiB ({m['proxy_rss_per_stream_kib']:.0f} KiB per stream), after "
            f"{m['proxy_rss_after_mib']:.1f} MiB",
            f"  the Claude Code processes: {m['cli_processes_peak']} at peak, {m['cli_rss_peak_mib']:.0f} MiB RSS "
            "together (with the helper processes they start)",
            "",
        ]
    if soak := results.get("soak"):
        lines += soak_report(soak)
    lines.append("Processes left running: " + (", ".join(results["leftovers"]) or "none"))
    return "\n".join(lines)


def verdict(value: float, target: float) -> str:
    return f"{'PASS' if value <= target else 'MISS'} <={target:g}"


def report_extras(results: dict[str, Any]) -> list[str]:
    """The lines of (d), (e) and (f)."""
    lines = []
    if prefix := results.get("prefix"):
        b, a = prefix["b"], prefix["a"]
        lines += [
            f"(d) Cached prefix of two new conversations: tools ({b['tools']}) + system prompt, {b['bytes']:,} bytes:",
            f"  (b) proxy, each in a folder of its own  {b['share']:7.1%} identical, {b['cached_bytes']:,} bytes up "
            f"to a shared cache breakpoint  {'PASS' if b['share'] == 1 else 'MISS'} =100%",
            f"  (a) claude -p in two folders            {a['share']:7.1%} identical, {a['cached_bytes']:,} bytes up "
            "to a shared cache breakpoint (no --exclude-dynamic-system-prompt-sections)",
            "",
        ]
    if requests := results.get("requests"):
        per_answer = "  ".join(f"({key}) {min(costs)}-{max(costs)}" for key, costs in requests["per_answer"].items())
        exact = all(set(costs) == {1} for costs in requests["per_answer"].values())
        idle = requests["idle"]
        lines += [
            "(e) Anthropic API requests (POST /v1/messages and count_tokens):",
            f"  per plain answer: {per_answer}  {'PASS' if exact else 'MISS'} =1",
            f"  from the idle warm pool ({idle['pool']}) in {idle['seconds']:g} s: {idle['requests']}  "
            f"{'PASS' if idle['requests'] == 0 else 'MISS'} =0",
            "",
        ]
    if warm := results.get("warm_path"):
        added, first = warm["added_ms"], warm["c_to_request_ms"]
        lines += [
            "(f) Warm path, ms (p50 / p90), the CLI's own figures from its result event:",
            f"  proxy-added latency, (c) first token - CLI ttft_ms     {added['p50']:6.1f} / {added['p90']:6.1f}  "
            f"{verdict(added['p50'], ADDED_LATENCY_MS)}",
            f"  CLI time_to_request_ms, (c) first message            {first['p50']:6.1f} / {first['p90']:6.1f}  "
            f"{verdict(first['p50'], FIRST_REQUEST_MS)}",
            f"  (w) alone: first message {warm['w_to_request_ms']['p50']:.1f} / {warm['w_to_request_ms']['p90']:.1f}, "
            f"second message on the same process {warm['w_second_to_request_ms']['p50']:.1f} / "
            f"{warm['w_second_to_request_ms']['p90']:.1f}; first token - ttft_ms {warm['w_added_ms']['p50']:.1f}",
            "",
        ]


def soak_report(soak: dict[str, Any]) -> list[str]:
    samples = soak["samples"]
    columns = ("rss_mib", "open_files", "children", "descendants", "conversations", "transcripts", "private_folders")
    lines = [f"Soak, {soak['seconds']:.0f} s of mixed requests ("
             + ", ".join(f"{kind} {count}" for kind, count in soak["requests"].items()) + "):",
             "  " + f"{'time':>7}" + "".join(f"{name:>16}" for name in columns)]
    for sample in samples:
        label = "idle" if sample is samples[-1] else f"{sample['t']:.0f}s"
        lines.append("  " + f"{label:>7}" + "".join(
            f"{sample[name]:>16.1f}" if name == "rss_mib" else f"{sample[name]:>16.0f}" for name in columns))
    during = samples[1:-1] or samples
    peak = {name: max(s[name] for s in during) for name in columns}
    lines += ["  peak during the run: " + ", ".join(f"{name} {peak[name]:.0f}" for name in columns),
              f"  unexpected errors: {len(soak['errors'])}" + (f" (first: {soak['errors'][0]})" if soak["errors"]
                                                               else ""), ""]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="See the module docstring (or README) for what each part measures.")
    parser.add_argument("--runs", type=int, default=10, help="measured runs of (a), (b) and (c) (default 10)")
    parser.add_argument("--pool-size", type=int, default=2, help="CLAUDE_POOL_SIZE of proxy (c) (default 2)")
    parser.add_argument("--long-words", type=int, default=20000, help="words of the long answer (default 20000)")
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams for memory (default 16)")
    parser.add_argument("--idle-wait", type=float, default=10.0,
                        help="seconds the idle warm pool is watched for API requests, (e) (default 10)")
    parser.add_argument("--skip", action="append", default=[], choices=("latency", "throughput", "memory"),
                        help="leave a part out (repeatable)")
    parser.add_argument("--claude", metavar="PATH", help="the Claude Code CLI (default: $TEST_CLAUDE_BIN, else the pinned one)")
    parser.add_argument("--main", metavar="PATH", default=str(REPO / "main.py"),
                        help="the proxy to run (default: this checkout's main.py; e.g. another branch's copy)")
    parser.add_argument("--soak", type=float, default=0, metavar="SECONDS",
                        help="run only the soak, for this long (e.g. 300); see part 4 of the docstring")
    parser.add_argument("--soak-clients", type=int, default=4, help="client threads of the soak (default 4)")
    parser.add_argument("--soak-every", type=float, default=15, help="seconds between soak samples (default 15)")
    parser.add_argument("--json", metavar="PATH", help="also write every sample and the summary as JSON")
    parser.add_argument("--serve-fake-api", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on SIGTERM as on Ctrl-C
    if args.serve_fake_api:
        serve_fake_api()
        return 0
    if args.runs < 1 or args.pool_size < 1 or args.streams < 1 or args.long_words < 1:
        parser.error("--runs, --pool-size, --streams and --long-words must be at least 1")
    if not 0 <= args.soak <= 3600 or args.soak_clients < 1 or args.soak_every <= 0:
        parser.error("--soak takes 0 to 3600 seconds, --soak-clients at least 1, --soak-every more than 0")

    with tempfile.TemporaryDirectory(prefix="claude-proxy-bench-") as tmp:
        root = Path(tmp).resolve()
        bench = Bench(args, root)
        bench.results["meta"] = {
            "claude": bench.claude, "claude_version": bench.version or "claude (version unknown)",
            "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "main": args.main,
            "git": git_state() if Path(args.main).resolve() == REPO / "main.py" else f"main.py from {args.main}",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_before": os.getloadavg()[0],
        }
        failed: BaseException | None = None
        try:
            bench.start()
            log(f"fake Anthropic API at {bench.fake.base_url if bench.fake else '?'}; CLI {bench.version}")
            parts: list[tuple[str, Callable[[], None]]] = [("soak", bench.soak)] if args.soak else [
                ("latency", bench.latency), ("throughput", bench.throughput), ("memory", bench.memory)]
            for name, part in parts:
                if name in args.skip:
                    continue
                log(f"{name} ...")
                part()
        except BaseException as exc:  # KeyboardInterrupt and SIGTERM too: clean up, then report
            failed = exc
            if isinstance(exc, Exception):
                for proxy in bench.proxies:
                    log(f"--- proxy {proxy.name} log (tail) ---\n{proxy.output()}")
            else:
                log("interrupted: stopping every process the bench started ...")
        finally:
            bench.results["leftovers"] = bench.stop()
            bench.results["meta"]["load_after"] = os.getloadavg()[0]
    if failed is not None:
        if bench.results["leftovers"]:
            log(f"processes left running (killed): {bench.results['leftovers']}")
        raise failed
    print(report(bench.results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(bench.results, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    return 1 if bench.results["leftovers"] else 0


if __name__ == "__main__":
    sys.exit(main())
