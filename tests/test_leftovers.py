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
from pathlib import Path

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
    clis = []
    for process in proxy.children():
        with contextlib.suppress(psutil.Error):  # a zombie (the probe's `claude --version`) has no command line
            if process.status() != psutil.STATUS_ZOMBIE and "-p" in process.cmdline():
                clis.append(process)
    [cli] = clis
    return cli


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ── with tests/fake_claude.py (mode "tool": a child in a session of its own, like the Bash tool's commands) ──


@contextlib.contextmanager
def a_tool_running(proxy: Proxy, content: str, tag: str) -> Iterator[list[psutil.Process]]:
    """A streamed run whose tool processes (`tag` in their command lines) are running; the request stays open."""
    client = stream_in_background(proxy, content)
    try:
        assert wait_until(lambda: processes_matching(tag), timeout=30)
        yield processes_matching(tag)
    finally:
        client.close()


def fake_tool_proxy(make_fake_proxy) -> tuple[Proxy, str]:
    tag = f"tool-{uuid.uuid4().hex}"
    return make_fake_proxy(fake_claude_mode="tool", fake_claude_tag=tag, claude_prime_window=0.2,
                           claude_timeout=60), tag


def test_a_cli_killed_mid_tool_leaves_no_tool_process(make_fake_proxy) -> None:
    proxy, tag = fake_tool_proxy(make_fake_proxy)
    with a_tool_running(proxy, "hi", tag) as [tool]:
        os.kill(cli_of(proxy).pid, signal.SIGKILL)
        assert wait_until(lambda: not alive(tool), timeout=10), "the tool's process outlived its CLI"
    assert "ended on its own" in proxy.output()


def test_a_restart_ends_what_a_killed_proxy_left_running(make_fake_proxy) -> None:
    first, tag = fake_tool_proxy(make_fake_proxy)
    with a_tool_running(first, "hi", tag) as [tool]:
        cli = cli_of(first)
        first.stop(signal.SIGKILL)
    assert alive(cli) and alive(tool), "SIGKILL cannot be caught: the children are still there"
    make_fake_proxy()
    assert wait_until(lambda: not alive(cli) and not alive(tool), timeout=10)


def test_starting_a_proxy_never_touches_a_live_proxys_processes(make_fake_proxy) -> None:
    running, tag = fake_tool_proxy(make_fake_proxy)
    with a_tool_running(running, "hi", tag) as [tool]:
        make_fake_proxy()
        assert not wait_until(lambda: not alive(tool), timeout=2)
    assert wait_until(lambda: not alive(tool), timeout=10), "the live proxy still stops its own run"


# ── with the real Claude Code CLI and its Bash tool ──


def long_command(tag: str) -> str:
    return f'[[bash:python3 -c "import time; time.sleep(300)" {tag}]] wait'


def test_kill_9_of_the_real_cli_mid_bash_leaves_nothing(make_proxy) -> None:
    tag = f"bash-{uuid.uuid4().hex}"
    proxy = make_proxy()
    with a_tool_running(proxy, long_command(tag), tag) as tool_tree:
        cli = cli_of(proxy)
        assert any(p.pid == cli.pid for t in tool_tree for p in t.parents())
        os.kill(cli.pid, signal.SIGKILL)
        assert wait_until(lambda: not any(alive(p) for p in tool_tree), timeout=10)
    answer = proxy.client().chat.completions.create(model="claude-code", messages=[
        {"role": "user", "content": "[[reply:still here]] hi"}])
    assert answer.choices[0].message.content == "still here"


def test_sigkill_of_the_proxy_then_a_restart_leaves_nothing_running(make_proxy) -> None:
    tag = f"bash-{uuid.uuid4().hex}"
    first = make_proxy()
    with a_tool_running(first, long_command(tag), tag) as tool_tree:
        left = [cli_of(first), *tool_tree]
        first.stop(signal.SIGKILL)
    assert all(alive(p) for p in left)
    second = make_proxy()
    assert wait_until(lambda: not any(alive(p) for p in left), timeout=10)
    assert "left running by a proxy that was killed" in second.output()


# ── nothing left on disk: conversation folders, Claude Code's transcripts, private folders ──


def transcripts_of(projects: Path, folder: Path) -> Path:
    import main

    return projects / main.cli_project_name(os.path.realpath(folder))


def test_cli_project_names_follow_the_cli() -> None:
    import main

    assert main.cli_project_name("/tmp/a.b_c d/é") == "-tmp-a-b-c-d--"
    assert main.cli_project_name("/x/😀") == "-x---"  # one character, two UTF-16 units
    long = "/" + "a" * 250
    assert main.cli_project_name(long) == "-" + "a" * 199 + "-" + "feo44x"


def test_a_restart_removes_what_a_crash_left_on_disk(make_fake_proxy, tmp_path: Path) -> None:
    import json
    import time

    import main

    state, projects, runs = tmp_path / "state", tmp_path / "config" / "projects", tmp_path / "runs"
    conversations = state / "conversations"
    dead = f"{os.getpid()}-1.00"  # this pid with another start time: a proxy gone, its pid reused since
    live = main.Owner.this().tag
    folders = {name: conversations / name for name in (f"{dead}-left", f"{live}-inuse", "0123abcd", f"{dead}-known")}
    for folder in folders.values():
        folder.mkdir(parents=True)
        transcripts_of(projects, folder).mkdir(parents=True)
        (transcripts_of(projects, folder) / "s.jsonl").write_text("{}")
    vanished = transcripts_of(projects, conversations / f"{dead}-vanished")
    vanished.mkdir()
    (projects / "-home-someone-project").mkdir()
    (state / "sessions.json").write_text(json.dumps({"k": {"session_id": "s", "cwd": str(folders[f"{dead}-known"]),
                                                          "owned": True, "updated": time.time()}}))
    workdirs = {name: runs / f"claude-proxy-{name}" for name in (f"{dead}-abc123", f"{live}-def456", "old_format")}
    for folder in workdirs.values():
        folder.mkdir(parents=True)
    proxy = make_fake_proxy(claude_sessions=1, claude_state_dir=state, claude_config_dir=tmp_path / "config")
    assert sorted(p.name for p in conversations.iterdir()) == sorted([f"{live}-inuse", f"{dead}-known"])
    assert sorted(p.name for p in projects.iterdir()) == sorted(
        ["-home-someone-project", *(transcripts_of(projects, conversations / n).name
                                    for n in (f"{live}-inuse", f"{dead}-known"))])
    assert sorted(p.name for p in runs.iterdir()) == [f"claude-proxy-{live}-def456", "claude-proxy-old_format"]
    assert "removed 4 folders left by a proxy" in proxy.output()


def test_an_expired_conversation_leaves_nothing_on_disk(make_proxy, tmp_path: Path) -> None:
    state = tmp_path / ("a-long-state-directory-name-" * 8)  # the CLI shortens long folder names its own way
    proxy = make_proxy(claude_sessions=1, claude_state_dir=state, claude_session_ttl=5, claude_pool_idle_ttl=1)
    projects = tmp_path / "home/.claude/projects"
    proxy.client().chat.completions.create(model="claude-code", messages=[{"role": "user", "content": "[[reply:A]] hi"}])
    [folder] = (state / "conversations").iterdir()
    assert len(transcripts_of(projects, folder).name) > 200
    assert wait_until(lambda: list(transcripts_of(projects, folder).glob("*.jsonl")), timeout=5)  # written lazily
    assert wait_until(lambda: not list((state / "conversations").iterdir()) and not list(projects.iterdir()),
                      timeout=15)


def test_a_run_not_kept_leaves_nothing_on_disk(make_proxy, tmp_path: Path) -> None:
    import openai
    import pytest

    state = tmp_path / "state"
    proxy = make_proxy(claude_sessions=1, claude_state_dir=state)
    with pytest.raises(openai.APIError):
        proxy.client().chat.completions.create(model="claude-code", messages=[
            {"role": "user", "content": "[[error:500]] fail"}])
    projects = tmp_path / "home/.claude/projects"
    assert wait_until(lambda: not list((state / "conversations").iterdir()) and not list(projects.glob("*")),
                      timeout=10)


def test_a_configured_folder_keeps_everything_but_the_expired_transcript(make_proxy, tmp_path: Path) -> None:
    project = tmp_path / "my-project"
    project.mkdir()
    proxy = make_proxy(claude_sessions=1, claude_cwd=project, claude_session_ttl=5, claude_pool_idle_ttl=1)
    transcripts = transcripts_of(tmp_path / "home/.claude/projects", project)
    transcripts.mkdir(parents=True)
    (transcripts / "mine.jsonl").write_text("{}")
    proxy.client().chat.completions.create(model="claude-code", messages=[{"role": "user", "content": "[[reply:A]] hi"}])
    assert wait_until(lambda: len(list(transcripts.glob("*.jsonl"))) == 2, timeout=5)
    assert wait_until(lambda: [p.name for p in transcripts.glob("*.jsonl")] == ["mine.jsonl"], timeout=15)
    assert project.is_dir()
