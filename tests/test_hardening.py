"""Hostile input and hostile clients: text the CLI cannot carry, abandoned and oversized requests, slow connections.

Through a live server with tests/fake_claude.py as the CLI (raw sockets on loopback where an HTTP client would be too
polite), and end to end where the real Claude Code CLI is what must not start.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from proxy_fixtures import fake_claude_calls
from proxy_harness import wait_until

CHAT = "/v1/chat/completions"
JSON = {"content-type": "application/json"}


def chat_body(*messages: dict) -> bytes:
    return json.dumps({"model": "claude-code", "messages": list(messages)}).encode()


# ── text Claude Code cannot receive ──

# JSON text as clients send it: escapes (\u0000, \ud800) or raw UTF-8 bytes of a surrogate.
UNSENDABLE_BODIES = {
    "NUL in a user message": b'{"model": "claude-code", "messages": [{"role": "user", "content": "a\\u0000b"}]}',
    "NUL in a system prompt (argv)": b'{"model": "claude-code", "messages": [{"role": "system", "content": "s\\u0000"},'
                                     b' {"role": "user", "content": "hi"}]}',
    "lone high surrogate": b'{"model": "claude-code", "messages": [{"role": "user", "content": "x\\ud800y"}]}',
    "lone low surrogate in a system prompt": b'{"model": "claude-code", "messages": [{"role": "system", "content": '
                                             b'"\\udfff"}, {"role": "user", "content": "hi"}]}',
    "surrogate as raw UTF-8 bytes": b'{"model": "claude-code", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
}


@pytest.mark.parametrize("body", UNSENDABLE_BODIES.values(), ids=UNSENDABLE_BODIES.keys())
def test_nul_and_lone_surrogates_are_400_and_leave_nothing(make_fake_proxy, fake_claude_log, tmp_path: Path,
                                                           body: bytes) -> None:
    proxy = make_fake_proxy()
    response = httpx.post(proxy.url + CHAT, content=body, headers=JSON, timeout=30)
    assert response.status_code == 400, response.text
    assert "NUL" in response.json()["error"]["message"]
    assert fake_claude_calls(fake_claude_log) == []
    assert list((tmp_path / "runs").iterdir()) == []


def test_unsendable_text_is_refused_on_every_door(make_fake_proxy, fake_claude_log) -> None:
    proxy = make_fake_proxy()
    bodies = [b'{"model": "claude-code", "input": "hi", "instructions": "\\u0000"}',
              b'{"model": "claude-code", "input": "hi", "metadata": {"k": "\\udc00"}}']  # metadata is echoed back
    for body in bodies:
        response = httpx.post(proxy.url + "/v1/responses", content=body, headers=JSON, timeout=30)
        assert response.status_code == 400, response.text
    assert fake_claude_calls(fake_claude_log) == []


def test_surrogate_pairs_and_escaped_backslashes_are_ordinary_text(make_fake_proxy, fake_claude_log) -> None:
    proxy = make_fake_proxy()
    for text in ("emoji \ud83d\ude00", "a literal \\u0000 and \\ud800 in code"):
        body = json.dumps({"model": "claude-code", "messages": [{"role": "user", "content": text}]}).encode()
        response = httpx.post(proxy.url + CHAT, content=body, headers=JSON, timeout=30)
        assert response.status_code == 200, response.text
    sent = [json.loads(call["stdin"])["message"]["content"][0]["text"] for call in fake_claude_calls(fake_claude_log)]
    assert sent == ["emoji 😀", "a literal \\u0000 and \\ud800 in code"]


def test_a_nul_in_the_system_prompt_never_reaches_the_real_cli(make_proxy, fake_api, tmp_path: Path) -> None:
    proxy = make_proxy()
    body = UNSENDABLE_BODIES["NUL in a system prompt (argv)"]
    response = httpx.post(proxy.url + CHAT, content=body, headers=JSON, timeout=60)
    assert response.status_code == 400, response.text
    assert fake_api.main_requests() == [] and list((tmp_path / "runs").iterdir()) == []
    assert "Traceback" not in proxy.output()
