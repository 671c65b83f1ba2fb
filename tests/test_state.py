"""The state directory under faults: a corrupt session map, a planted link, a directory that cannot be written."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import httpx
import pytest

import main
from proxy_fixtures import fake_claude_calls
from proxy_harness import wait_until

CHAT = "/v1/chat/completions"
HELLO = {"model": "claude-code", "messages": [{"role": "user", "content": "hello"}]}
GOOD = {"session_id": "s-good", "cwd": "/tmp/conversation", "owned": True, "updated": 1000.0}


def store(path: Path) -> main.SessionStore:
    return main.SessionStore(path, max_live=2, ttl=100)


# ── the session map's file ──


@pytest.mark.parametrize("text", ["[]", "null", "5", '"text"', "{not json", ""])
def test_a_session_file_that_is_not_a_map_is_set_aside(tmp_path: Path, caplog, text: str) -> None:
    path = tmp_path / "sessions.json"
    path.write_text(text)
    with caplog.at_level(logging.WARNING, "claude_proxy"):
        assert store(path).sessions == {}
    [aside] = tmp_path.glob("sessions.json.bad-*")
    assert aside.read_text() == text and not path.exists()
    assert "moved to" in caplog.text


def test_invalid_entries_are_dropped_and_the_others_kept(tmp_path: Path, caplog) -> None:
    path = tmp_path / "sessions.json"
    path.write_text(json.dumps({
        "good": GOOD, "extra-field": {**GOOD, "session_id": "s-extra", "future": 1},
        "text-time": {**GOOD, "updated": "yesterday"}, "bool-time": {**GOOD, "updated": True},
        "missing": {"session_id": "s"}, "number": 5, "owned-text": {**GOOD, "owned": "yes"},
        "id-number": {**GOOD, "session_id": 7},
    }))
    with caplog.at_level(logging.WARNING, "claude_proxy"):
        sessions = store(path)
    assert {key: s.session_id for key, s in sessions.sessions.items()} == {"good": "s-good", "extra-field": "s-extra"}
    assert "dropped 6 invalid entries" in caplog.text
    processes, files = sessions.expire(idle_ttl=10**9)  # expiry works
    assert (processes, [f.session_id for f in files]) == ([], ["s-good", "s-extra"])
    assert json.loads(path.read_text()) == {}


def test_a_non_finite_time_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    path.write_text('{"nan": {"session_id": "s", "cwd": "/c", "owned": false, "updated": NaN}, "ok": %s}'
                    % json.dumps(GOOD))
    assert list(store(path).sessions) == ["ok"]
    assert not math.isnan(store(path).sessions["ok"].updated)


def test_a_planted_link_is_never_written_through(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    path = tmp_path / "state" / "sessions.json"
    path.parent.mkdir()
    (path.parent / "sessions.tmp").symlink_to(precious)  # the old fixed temporary name
    sessions = store(path)
    sessions.keep("k", main.Session("s", "/c", False, 1.0))
    assert precious.read_text() == "keep me"
    assert not path.is_symlink() and json.loads(path.read_text())["k"]["session_id"] == "s"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    path.unlink()
    path.symlink_to(precious)  # the map itself a link: replaced, its target untouched
    sessions.keep("k2", main.Session("s2", "/c", False, 2.0))
    assert precious.read_text() == "keep me" and not path.is_symlink()
    assert sorted(p.name for p in path.parent.iterdir()) == ["sessions.json", "sessions.tmp"]


def test_write_private_leaves_no_temporary_file_on_failure(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        main.write_private(tmp_path / "missing-folder" / "file", "x")
    target = tmp_path / "file"
    main.write_private(target, "one")
    main.write_private(target, "two")
    assert target.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["file"]


def test_an_unwritable_state_directory_is_noted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")  # even root cannot make a folder inside a file
    sessions = store(blocker / "sessions.json")
    sessions.keep("k", main.Session("s", "/c", False, 1.0))
    assert not sessions.state.usable and "cannot write" in str(sessions.state.error)
    blocker.unlink()
    assert sessions.state.check() and sessions.state.usable


# ── through a live server ──


def test_a_corrupt_session_file_does_not_stop_the_proxy(make_fake_proxy, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "sessions.json").write_text("[]")
    proxy = make_fake_proxy(claude_sessions=1, claude_state_dir=state)
    assert proxy.client().chat.completions.create(**HELLO).choices[0].message.content == "fake reply"
    assert list(state.glob("sessions.json.bad-*")) and "moved to" in proxy.output()


def test_an_unwritable_state_directory_degrades_to_session_less_runs(make_fake_proxy, fake_claude_log,
                                                                     tmp_path: Path) -> None:
    blocker = tmp_path / "state-is-a-file"
    blocker.write_text("")
    proxy = make_fake_proxy(claude_sessions=1, claude_state_dir=blocker / "state")
    health = httpx.get(proxy.url + "/").json()
    assert health["status"] == "degraded" and health["state"]["usable"] is False
    assert "cannot write" in health["state"]["error"]
    for _ in range(3):
        response = httpx.post(proxy.url + CHAT, json=HELLO, timeout=30)
        assert response.status_code == 200, response.text
    assert all("--no-session-persistence" in call["argv"] for call in fake_claude_calls(fake_claude_log))
    assert wait_until(lambda: os.listdir(tmp_path / "runs") == [], timeout=5), "a folder left per request"
    assert "Traceback" not in proxy.output()


def test_the_real_cli_runs_session_less_when_the_state_directory_fails(make_proxy, tmp_path: Path) -> None:
    blocker = tmp_path / "state-is-a-file"
    blocker.write_text("")
    proxy = make_proxy(claude_sessions=1, claude_state_dir=blocker / "state")
    history = [{"role": "user", "content": "[[reply:ALPHA]] hi"}]
    first = proxy.client().chat.completions.create(model="claude-code", messages=history)
    assert first.choices[0].message.content == "ALPHA"
    history += [{"role": "assistant", "content": "ALPHA"}, {"role": "user", "content": "[[reply:BETA]] next"}]
    assert proxy.client().chat.completions.create(model="claude-code", messages=history).choices[0].message.content \
        == "BETA"
    assert httpx.get(proxy.url + "/").json()["state"]["usable"] is False
    assert wait_until(lambda: not list((tmp_path / "runs").glob("claude-proxy-*")), timeout=10)
