"""Nothing left running: a CLI killed in the middle of a tool, a proxy killed with SIGKILL, then restarted.

The Bash tool runs its commands in sessions of their own (setsid): once their CLI is gone they are re-parented, out
of reach of process groups. Every process the proxy starts carries a mark in its environment, which they inherit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator

import httpx
import psutil

from proxy_harness import Proxy, processes_matching, wait_until

CHAT = "/v1/chat/completions"


def stream_in_background(proxy, content: str) -> httpx.Client:
    """Start a streamed request and leave it running (the caller closes the returned client)."""
    client = httpx.Client(timeout=60)
    request = client.build_request("POST", proxy.url + CHAT, json={
        "model": "claude-code", "stream": True, "messages": [{"role": "user", "content": content}]})
    client.send(request, stream=True)
    return client


def cli_of(proxy) -> psutil.Process:
    [cli] = [p for p in proxy.children() if "-p" in p.cmdline() and p.status() != psutil.STATUS_ZOMBIE]
    return cli


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ── with tests/fake_claude.py (mode "tool": a child in a session of its own, like the Bash tool's commands) ──


@contextlib.contextmanager
def a_tool_running(make_fake_proxy, content: str = "hi") -> Iterator[tuple[Proxy, psutil.Process]]:
    """A fake-CLI proxy with a streamed run whose tool process is running; the request is left open meanwhile."""
    tag = f"tool-{uuid.uuid4().hex}"
    proxy = make_fake_proxy(fake_claude_mode="tool", fake_claude_tag=tag, claude_prime_window=0.2, claude_timeout=60)
    client = stream_in_background(proxy, content)
    try:
        assert wait_until(lambda: processes_matching(tag), timeout=10)
        [tool] = processes_matching(tag)
        yield proxy, tool
    finally:
        client.close()


def test_a_cli_killed_mid_tool_leaves_no_tool_process(make_fake_proxy) -> None:
    with a_tool_running(make_fake_proxy) as (proxy, tool):
        os.kill(cli_of(proxy).pid, signal.SIGKILL)
        assert wait_until(lambda: not alive(tool), timeout=10), "the tool's process outlived its CLI"
    assert "ended on its own" in proxy.output()


def test_a_restart_ends_what_a_killed_proxy_left_running(make_fake_proxy) -> None:
    with a_tool_running(make_fake_proxy) as (first, tool):
        cli = cli_of(first)
        first.stop(signal.SIGKILL)
    assert alive(cli) and alive(tool), "SIGKILL cannot be caught: the children are still there"
    make_fake_proxy()
    assert wait_until(lambda: not alive(cli) and not alive(tool), timeout=10)


def test_starting_a_proxy_never_touches_a_live_proxys_processes(make_fake_proxy) -> None:
    with a_tool_running(make_fake_proxy) as (_, tool):
        make_fake_proxy()
        assert not wait_until(lambda: not alive(tool), timeout=2)
    assert wait_until(lambda: not alive(tool), timeout=10), "the live proxy still stops its own run"


# ── with the real Claude Code CLI and its Bash tool ──


def long_command(tag: str) -> str:
    return f'[[bash:python3 -c "import time; time.sleep(300)" {tag}]] wait'


def test_kill_9_of_the_real_cli_mid_bash_leaves_nothing(make_proxy) -> None:
    tag = f"bash-{uuid.uuid4().hex}"
    proxy = make_proxy()
    client = stream_in_background(proxy, long_command(tag))
    try:
        assert wait_until(lambda: processes_matching(tag), timeout=30)
        tool_tree = processes_matching(tag)
        cli = cli_of(proxy)
        assert any(p.pid == cli.pid for t in tool_tree for p in t.parents())
        os.kill(cli.pid, signal.SIGKILL)
        assert wait_until(lambda: not any(alive(p) for p in tool_tree), timeout=10)
    finally:
        client.close()
    answer = proxy.client().chat.completions.create(model="claude-code", messages=[
        {"role": "user", "content": "[[reply:still here]] hi"}])
    assert answer.choices[0].message.content == "still here"


def test_sigkill_of_the_proxy_then_a_restart_leaves_nothing_running(make_proxy) -> None:
    tag = f"bash-{uuid.uuid4().hex}"
    first = make_proxy()
    client = stream_in_background(first, long_command(tag))
    try:
        assert wait_until(lambda: processes_matching(tag), timeout=30)
        left = [cli_of(first), *processes_matching(tag)]
        first.stop(signal.SIGKILL)
    finally:
        client.close()
    assert all(alive(p) for p in left)
    second = make_proxy()
    assert wait_until(lambda: not any(alive(p) for p in left), timeout=10)
    assert "left running by a proxy that was killed" in second.output()
