"""Conversations that continue: the next turn resumes the same Claude Code session instead of a flattened replay."""

from __future__ import annotations

import json

from helpers import cli_processes, turn_texts
from proxy_harness import processes_matching, wait_until


def chat(proxy, messages: list[dict], **kwargs) -> str:
    completion = proxy.client().chat.completions.create(model="claude-code", messages=messages, **kwargs)
    return completion.choices[0].message.content


def stream_chat(proxy, messages: list[dict]) -> str:
    stream = proxy.client().chat.completions.create(model="claude-code", messages=messages, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_turn_two_continues_the_live_session(make_proxy, fake_api) -> None:
    proxy = make_proxy(claude_sessions=1)
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "[[reply:ALPHA]] hi"}]
    first = chat(proxy, history)
    [kept] = cli_processes(proxy)
    history += [{"role": "assistant", "content": first}, {"role": "user", "content": "[[reply:BETA]] again"}]
    assert stream_chat(proxy, history) == "BETA"
    second = fake_api.main_requests()[-1]
    assert turn_texts(second) == [("user", "[[reply:ALPHA]] hi"), ("assistant", "ALPHA"),
                                  ("user", "[[reply:BETA]] again")]
    assert kept in cli_processes(proxy), "the same process answered"
    history += [{"role": "assistant", "content": "BETA"}, {"role": "user", "content": "[[reply:GAMMA]] third"}]
    assert chat(proxy, history) == "GAMMA"
    assert [role for role, _ in turn_texts(fake_api.main_requests()[-1])] == ["user", "assistant"] * 2 + ["user"]


def test_a_conversation_resumes_after_a_restart(make_proxy, fake_api) -> None:
    first_proxy = make_proxy(claude_sessions=1)
    history = [{"role": "user", "content": "[[reply:ALPHA]] remember this"}]
    reply = chat(first_proxy, history)
    first_proxy.stop()
    assert wait_until(lambda: not first_proxy.children(), timeout=5)
    second_proxy = make_proxy(claude_sessions=1)
    history += [{"role": "assistant", "content": reply}, {"role": "user", "content": "[[reply:BETA]] and now?"}]
    assert chat(second_proxy, history) == "BETA"
    assert turn_texts(fake_api.main_requests()[-1]) == [
        ("user", "[[reply:ALPHA]] remember this"), ("assistant", "ALPHA"), ("user", "[[reply:BETA]] and now?")]


def test_a_conversation_whose_transcript_is_gone_starts_fresh(make_proxy, fake_api, tmp_path) -> None:
    first_proxy = make_proxy(claude_sessions=1)
    history = [{"role": "user", "content": "[[reply:ALPHA]] hi"}]
    history.append({"role": "assistant", "content": chat(first_proxy, history)})
    first_proxy.stop()
    [transcript] = (tmp_path / "home/.claude/projects").glob("*/*.jsonl")
    transcript.unlink()
    history.append({"role": "user", "content": "[[reply:BETA]] next"})
    assert chat(make_proxy(claude_sessions=1), history) == "BETA"
    [(role, text)] = turn_texts(fake_api.main_requests()[-1])
    assert text.startswith("<conversation>")


def test_a_diverged_history_starts_fresh(make_proxy, fake_api) -> None:
    proxy = make_proxy(claude_sessions=1)
    history = [{"role": "user", "content": "[[reply:ALPHA]] hi"}]
    chat(proxy, history)
    edited = [{"role": "user", "content": "[[reply:ALPHA]] hi"}, {"role": "assistant", "content": "ALPHA (edited)"},
              {"role": "user", "content": "[[reply:BETA]] next"}]
    assert chat(proxy, edited) == "BETA"
    [(role, text)] = turn_texts(fake_api.main_requests()[-1])
    assert role == "user" and text.startswith("<conversation>") and "ALPHA (edited)" in text


def test_concurrent_conversations_do_not_cross(make_proxy, fake_api) -> None:
    proxy = make_proxy(claude_sessions=1)
    one = [{"role": "user", "content": "[[reply:ONE]] first conversation"}]
    two = [{"role": "user", "content": "[[reply:TWO]] second conversation"}]
    one.append({"role": "assistant", "content": chat(proxy, one)})
    two.append({"role": "assistant", "content": chat(proxy, two)})
    one.append({"role": "user", "content": "[[reply:ONE-B]] more"})
    two.append({"role": "user", "content": "[[reply:TWO-B]] more"})
    assert (chat(proxy, two), chat(proxy, one)) == ("TWO-B", "ONE-B")
    last_two, last_one = fake_api.main_requests()[-2:]
    assert turn_texts(last_two)[0] == ("user", "[[reply:TWO]] second conversation")
    assert turn_texts(last_one)[0] == ("user", "[[reply:ONE]] first conversation")


def test_live_sessions_are_bounded_and_the_map_is_saved(make_proxy, tmp_path) -> None:
    proxy = make_proxy(claude_sessions=1, claude_max_live_sessions=1)
    chat(proxy, [{"role": "user", "content": "[[reply:A]] one"}])
    chat(proxy, [{"role": "user", "content": "[[reply:B]] two"}])
    assert wait_until(lambda: len(cli_processes(proxy)) == 1, timeout=10)
    saved = json.loads((tmp_path / "home/.local/state/claude-code-openai-proxy/sessions.json").read_text())
    assert len(saved) == 2 and all(entry["session_id"] for entry in saved.values())


def test_sessions_off_flattens_every_turn(make_proxy, fake_api) -> None:
    proxy = make_proxy(claude_sessions=0)
    history = [{"role": "user", "content": "[[reply:ALPHA]] hi"}]
    history += [{"role": "assistant", "content": chat(proxy, history)}, {"role": "user", "content": "again"}]
    chat(proxy, history)
    [(role, text)] = turn_texts(fake_api.main_requests()[-1])
    assert text.startswith("<conversation>")
    assert wait_until(lambda: not proxy.children(), timeout=5)


def test_the_session_store_is_bounded(tmp_path, monkeypatch) -> None:
    import main

    monkeypatch.setattr(main, "MAX_SESSIONS", 3)
    store = main.SessionStore(tmp_path / "sessions.json", max_live=2, ttl=100)
    processes = [object() for _ in range(4)]
    removed = [store.keep(f"k{i}", main.Session(f"s{i}", f"/d{i}", True, 1000.0 + i, processes[i]))
               for i in range(4)]
    assert removed[0] == ([], []) and removed[1] == ([], [])
    assert removed[2] == ([processes[0]], [])
    assert removed[3] == ([processes[1]], [main.Footprint("/d0", True, "s0")])
    assert sorted(store.sessions) == ["k1", "k2", "k3"]
    reloaded = main.SessionStore(tmp_path / "sessions.json", max_live=2, ttl=100)
    assert {k: s.session_id for k, s in reloaded.sessions.items()} == {"k1": "s1", "k2": "s2", "k3": "s3"}
    assert all(s.process is None for s in reloaded.sessions.values())
    assert oct((tmp_path / "sessions.json").stat().st_mode & 0o777) == "0o600"
    no_live = main.SessionStore(tmp_path / "other.json", max_live=0, ttl=100)
    assert no_live.keep("k", main.Session("s", "/d", False, 1.0, processes[0])) == ([processes[0]], [])
    processes_gone, files_gone = store.expire(idle_ttl=10**9)
    assert (processes_gone, [f.folder for f in files_gone]) == ([processes[2], processes[3]], ["/d1", "/d2", "/d3"])
    assert store.sessions == {}


def test_a_continuation_refused_for_overload_can_be_retried(make_proxy, fake_api) -> None:
    import httpx
    import openai
    import pytest

    proxy = make_proxy(claude_sessions=1, claude_max_concurrency=1, claude_max_queue=0)
    history = [{"role": "user", "content": "[[reply:ALPHA]] hi"}]
    history += [{"role": "assistant", "content": chat(proxy, history)},
                {"role": "user", "content": "[[reply:BETA]] next"}]
    [kept] = cli_processes(proxy)
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", timeout=60, json={
            "model": "claude-code", "stream": True,
            "messages": [{"role": "user", "content": "[[bash:sleep 4.5]] other"}]}) as busy:
        assert busy.status_code == 200
        assert wait_until(lambda: processes_matching("sleep 4.5"), timeout=20)
        with pytest.raises(openai.RateLimitError):
            chat(proxy, history)
        busy.read()
    assert chat(proxy, history) == "BETA"
    assert kept in cli_processes(proxy)
    assert [role for role, _ in turn_texts(fake_api.main_requests()[-1])] == ["user", "assistant", "user"]


def test_a_key_known_again_replaces_its_session_and_retires_the_old_one(tmp_path) -> None:
    import main

    store = main.SessionStore(tmp_path / "sessions.json", max_live=4, ttl=100)
    first, second = object(), object()
    assert store.keep("same", main.Session("s1", "/d1", True, 1.0, first)) == ([], [])
    assert store.keep("same", main.Session("s2", "/d2", True, 2.0, second)) == ([first], [main.Footprint("/d1", True,
                                                                                                       "s1")])
    assert store.sessions["same"].session_id == "s2"


def test_identical_conversations_never_exceed_the_live_limit(make_proxy, tmp_path) -> None:
    """Health checks and title prompts repeat the same messages; each answer replaces the last, nothing leaks."""
    proxy = make_proxy(claude_sessions=1, claude_max_live_sessions=2)
    for _ in range(5):
        assert chat(proxy, [{"role": "user", "content": "[[reply:OK]] reply OK"}]) == "OK"
        assert len(cli_processes(proxy)) <= 2
    assert wait_until(lambda: len(cli_processes(proxy)) == 1, timeout=10)
    state = tmp_path / "home/.local/state/claude-code-openai-proxy"
    assert len(json.loads((state / "sessions.json").read_text())) == 1
    assert wait_until(lambda: len(list((state / "conversations").iterdir())) == 1, timeout=10)
