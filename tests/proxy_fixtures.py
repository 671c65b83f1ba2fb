"""Fixtures that start the proxy as a real server: against the real Claude Code CLI, or the fake_claude.py stand-in."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from proxy_harness import FAKE_CLAUDE, Proxy, wait_until

ProxyFactory = Callable[..., Proxy]


def _processes_under(folder: Path) -> list[psutil.Process]:
    """Live processes whose working directory is inside `folder` (where the proxy's runs live)."""
    found = []
    for process in psutil.process_iter(["cwd", "status"]):
        cwd = process.info.get("cwd") or ""
        if cwd.startswith(str(folder)) and process.info.get("status") != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def _factory(tmp_path: Path, base_env: dict[str, str]) -> tuple[ProxyFactory, list[Proxy]]:
    proxies: list[Proxy] = []
    runs = tmp_path / "runs"
    runs.mkdir(exist_ok=True)

    def start(*args: str, wait: bool = True, **settings: object) -> Proxy:
        env = {**base_env, "TMPDIR": str(runs)}
        for key, value in settings.items():
            if value is None:
                env.pop(key.upper(), None)
            else:
                env[key.upper()] = str(value)
        proxy = Proxy(env, tmp_path / f"proxy-{len(proxies)}.log", args)
        proxies.append(proxy)
        return proxy.wait_ready() if wait else proxy

    return start, proxies


def _stop_all(proxies: list[Proxy], runs: Path) -> None:
    for proxy in proxies:
        proxy.stop()
    leftovers = []
    if not wait_until(lambda: not _processes_under(runs), timeout=5):
        leftovers = [" ".join(p.cmdline()) for p in _processes_under(runs)]
        for process in _processes_under(runs):
            process.kill()
    assert not leftovers, f"processes left running after the proxy stopped: {leftovers}"


@pytest.fixture
def make_proxy(tmp_path: Path, cli_env: dict[str, str], claude_bin: str) -> Iterator[ProxyFactory]:
    """Start proxies that drive the real Claude Code CLI against the fake Anthropic API (fake_api).

    The warm pool and kept sessions are off unless a test turns them on (claude_pool_size=…, claude_sessions=1),
    so process counts are predictable."""
    base = {**cli_env, "CLAUDE_BIN": claude_bin, "CLAUDE_CODE_MAX_RETRIES": "0", "CLAUDE_POOL_SIZE": "0",
            "CLAUDE_SESSIONS": "0"}
    start, proxies = _factory(tmp_path, base)
    yield start
    _stop_all(proxies, tmp_path / "runs")


@pytest.fixture
def fake_claude_log(tmp_path: Path) -> Path:
    return tmp_path / "fake-claude.jsonl"


@pytest.fixture
def make_fake_proxy(tmp_path: Path, fake_claude_log: Path) -> Iterator[ProxyFactory]:
    """Start proxies whose CLI is tests/fake_claude.py (FAKE_CLAUDE_MODE etc. as settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
    env.update(CLAUDE_BIN=FAKE_CLAUDE, FAKE_CLAUDE_LOG=str(fake_claude_log), CLAUDE_POOL_SIZE="0", CLAUDE_SESSIONS="0",
               CLAUDE_STATE_DIR=str(tmp_path / "state"))  # not the developer's own state directory
    start, proxies = _factory(tmp_path, env)
    yield start
    _stop_all(proxies, tmp_path / "runs")


def fake_claude_calls(log: Path) -> list[dict]:
    """What fake_claude.py recorded of each invocation: argv, stdin, env, pid."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]
