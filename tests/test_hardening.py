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


# ── requests that leave, and requests refused before their body is read ──


def health(proxy) -> dict:
    return httpx.get(proxy.url + "/").json()


def test_queued_requests_whose_client_left_never_run(make_fake_proxy, fake_claude_log) -> None:
    proxy = make_fake_proxy(fake_claude_mode="hang", claude_max_concurrency=1, claude_max_queue=4, claude_timeout=60,
                            claude_prime_window=0.2)
    hello = json.loads(chat_body({"role": "user", "content": "hi"}))
    with httpx.stream("POST", proxy.url + CHAT, json={**hello, "stream": True}, timeout=30) as busy:
        assert busy.status_code == 200
        for stream in (False, False, True):  # each waits in line, then its client gives up
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(proxy.url + CHAT, json={**hello, "stream": stream}, timeout=0.5)
        assert wait_until(lambda: health(proxy)["runs"]["queued"] == 0, timeout=5), "the abandoned ones left the line"
        assert health(proxy)["runs"]["running"] == 1
    assert wait_until(lambda: health(proxy)["runs"]["running"] == 0, timeout=10)
    assert not wait_until(lambda: len(fake_claude_calls(fake_claude_log)) > 1, timeout=1.5), "an abandoned one ran"
    assert "status=499" in proxy.output() and "Traceback" not in proxy.output()


def raw_request(proxy, head: str, body: bytes = b"", wait: float = 5) -> bytes:
    """Send a request's head (and maybe part of its body) on a raw socket; what the server answers within `wait`."""
    import socket

    with socket.create_connection(("127.0.0.1", proxy.port), timeout=wait) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
                answer += chunk
        except TimeoutError:
            pass
        return answer


def test_a_full_queue_refuses_before_reading_the_body(make_fake_proxy, fake_claude_log) -> None:
    proxy = make_fake_proxy(fake_claude_mode="hang", claude_max_concurrency=1, claude_max_queue=0, claude_timeout=60,
                            claude_prime_window=0.2, proxy_max_body_bytes=64 << 20)
    big_head = (f"POST {CHAT} HTTP/1.1\nHost: 127.0.0.1:{proxy.port}\nContent-Type: application/json\n"
                f"Content-Length: {30 << 20}\n")
    hello = json.loads(chat_body({"role": "user", "content": "hi"}))
    with httpx.stream("POST", proxy.url + CHAT, json={**hello, "stream": True}, timeout=30) as busy:
        assert busy.status_code == 200
        answer = raw_request(proxy, big_head)  # 30 MiB announced, not one byte sent
        assert answer.startswith(b"HTTP/1.1 429"), answer
        assert b"retry-after" in answer.lower()
    assert len(fake_claude_calls(fake_claude_log)) == 1


def test_an_announced_oversized_body_is_refused_before_it_is_read(make_fake_proxy, fake_claude_log) -> None:
    proxy = make_fake_proxy(proxy_max_body_bytes=1 << 20)
    head = (f"POST {CHAT} HTTP/1.1\nHost: 127.0.0.1:{proxy.port}\nContent-Type: application/json\n"
            f"Content-Length: {30 << 20}\n")
    assert raw_request(proxy, head).startswith(b"HTTP/1.1 413")
    assert fake_claude_calls(fake_claude_log) == []


def test_an_abandoned_queued_request_never_runs_its_command(make_proxy, fake_api, tmp_path: Path) -> None:
    proxy = make_proxy(claude_max_concurrency=1, claude_max_queue=2)
    marker = tmp_path / "ran"
    slow = {"model": "claude-code", "stream": True, "messages": [
        {"role": "user", "content": '[[bash:python3 -c "import time; time.sleep(3)"]] wait'}]}
    with httpx.stream("POST", proxy.url + CHAT, json=slow, timeout=60) as busy:
        assert busy.status_code == 200
        abandoned = chat_body({"role": "user", "content": f"[[bash:touch {marker}]] go"})
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(proxy.url + CHAT, content=abandoned, headers=JSON, timeout=1)
        busy.read()
    assert proxy.client().chat.completions.create(model="claude-code", messages=[
        {"role": "user", "content": "[[reply:after]] hi"}]).choices[0].message.content == "after"
    assert not marker.exists() and len(fake_api.main_requests()) == 3  # slow: tool call + result; then "after"


# ── slow and numerous connections (raw sockets on loopback; a bounded number, each closed by the end) ──


def slow_sockets(proxy, count: int, sent: bytes) -> list:
    import socket

    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        sock.sendall(sent)
        sockets.append(sock)
    return sockets


def closed_within(sock, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (whatever it sent first)."""
    import socket
    import time

    end = time.monotonic() + seconds
    try:
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                return True
    except (TimeoutError, socket.timeout):
        return False
    except OSError:
        return True  # reset
    return False


def test_slow_clients_are_cut_off_and_the_connections_capped(make_fake_proxy) -> None:
    proxy = make_fake_proxy(proxy_read_timeout=1, proxy_max_connections=10)
    head = f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n".encode()  # and never the blank line
    slow_head = slow_sockets(proxy, 6, head)
    slow_body = slow_sockets(proxy, 2, head + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    late = slow_sockets(proxy, 5, head)  # 13 open: the last 3 are over the cap
    try:
        assert sum(closed_within(sock, 0.5) for sock in late) >= 3, "connections over the cap are closed at once"
        assert all(closed_within(sock, 4) for sock in slow_head + slow_body + late)
        response = httpx.post(proxy.url + CHAT, content=chat_body({"role": "user", "content": "hi"}), headers=JSON,
                              timeout=30)
        assert response.status_code == 200
    finally:
        for sock in slow_head + slow_body + late:
            sock.close()
    assert "Traceback" not in proxy.output()


def test_a_slow_next_request_on_a_kept_alive_connection_is_cut_off(make_fake_proxy) -> None:
    proxy = make_fake_proxy(proxy_read_timeout=1)
    [sock] = slow_sockets(proxy, 1, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n\r\n".encode())
    try:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        for _ in range(3):  # a byte at a time, each before the 5 s keep-alive timeout, never a whole request
            sock.sendall(b"G")
            closed = closed_within(sock, 0.6)
            if closed:
                break
        assert closed or closed_within(sock, 2)
    finally:
        sock.close()


def test_a_flood_of_bad_connections_is_logged_a_few_times(make_fake_proxy) -> None:
    proxy = make_fake_proxy(proxy_max_connections=20)
    for sock in slow_sockets(proxy, 60, b"NOT HTTP AT ALL\r\n\r\n"):
        closed_within(sock, 2)
        sock.close()
    many = slow_sockets(proxy, 40, b"")
    for sock in many:
        sock.close()
    assert wait_until(lambda: "Invalid HTTP request" in proxy.output(), timeout=5)
    lines = proxy.output().splitlines()
    assert sum("Invalid HTTP request" in line for line in lines) <= 2, "\n".join(lines[-20:])
    assert 1 <= sum("PROXY_MAX_CONNECTIONS" in line for line in lines) <= 2


def test_slow_connections_do_not_keep_a_real_run_out(make_proxy) -> None:
    proxy = make_proxy(proxy_read_timeout=1, proxy_max_connections=6)
    held = slow_sockets(proxy, 6, f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n".encode())
    try:
        assert all(closed_within(sock, 4) for sock in held)
        answer = proxy.client().chat.completions.create(model="claude-code", messages=[
            {"role": "user", "content": "[[reply:through]] hi"}])
        assert answer.choices[0].message.content == "through"
    finally:
        for sock in held:
            sock.close()


def test_the_open_file_limit_is_raised_for_the_connection_cap() -> None:
    import subprocess
    import sys

    script = ("import resource, main; soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
              "resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard)); main.allow_open_files(768); "
              "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    from proxy_harness import REPO

    raised = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    assert int(raised.stdout) == 768
