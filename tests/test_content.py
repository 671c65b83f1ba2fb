"""Images, and Claude Code's own tool activity shown as reasoning, end to end and as pure functions."""

from __future__ import annotations

import base64
import zlib

import openai
import pytest
from helpers import tiny_png
from test_units import CompletionBuilder

import main


def image_part(data: bytes, media_type: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{base64.b64encode(data).decode()}"}}


def test_tool_summaries_and_outcomes() -> None:
    assert main.tool_summary("Bash", {"command": "ls -la\necho more", "description": "list"}) == "Bash: ls -la"
    assert main.tool_summary("Read", {"file_path": "/etc/hosts"}) == "Read: /etc/hosts"
    assert main.tool_summary("Other", {"n": 1}) == 'Other: {"n": 1}'
    ok = {"type": "tool_result", "tool_use_id": "t", "content": "a\nb\nc", "is_error": False}
    assert main.tool_outcome("Bash", ok) == "exit 0, 3 lines"
    failed = {"content": [{"type": "text", "text": "No such file\nmore"}], "is_error": True}
    assert main.tool_outcome("Read", failed) == "failed: No such file"


def test_activity_is_reasoning_only_when_enabled() -> None:
    events = [
        {"type": "assistant", "parent_tool_use_id": None, "message": {"content": [
            {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}}]}},
        {"type": "user", "parent_tool_use_id": None, "message": {"content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "x\ny", "is_error": False}]}},
    ]
    shown = CompletionBuilder("m", show_activity=True)
    chunks = [c for e in events for c in shown.feed(e)]
    assert [c["choices"][0]["delta"] for c in chunks] == [{"reasoning_content": "\nBash: ls\n"},
                                                          {"reasoning_content": "→ exit 0, 2 lines\n"}]
    hidden = CompletionBuilder("m")
    assert [c for e in events for c in hidden.feed(e)] == []


def test_an_image_reaches_the_api_as_an_image_block(make_proxy, fake_api) -> None:
    png = tiny_png()
    client = make_proxy().client()
    client.chat.completions.create(model="claude-code", messages=[
        {"role": "user", "content": [{"type": "text", "text": "What is in"}, image_part(png),
                                     {"type": "text", "text": "?"}]}])
    blocks = fake_api.main_requests()[0]["messages"][0]["content"]
    images = [b for b in blocks if b["type"] == "image"]
    assert [(i["source"]["media_type"], base64.b64decode(i["source"]["data"])) for i in images] == [
        ("image/png", png)]
    assert any(b["type"] == "text" and b["text"] == "What is in[image]?" for b in blocks)


@pytest.mark.parametrize("part,message", [
    (image_part(b"GIF89a", "image/bmp"), "Unsupported image type"),
    ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, "CLAUDE_FETCH_IMAGES"),
    (image_part(b"x" * 3000), "CLAUDE_MAX_IMAGE_BYTES"),
])
def test_bad_or_unfetched_images_are_400(make_fake_proxy, fake_claude_log, part: dict, message: str) -> None:
    client = make_fake_proxy(claude_max_image_bytes=2000).client()
    with pytest.raises(openai.BadRequestError, match=message) as raised:
        client.chat.completions.create(model="claude-code", messages=[{"role": "user", "content": [part]}])
    assert raised.value.param == "messages[0].content[0]"
    assert not fake_claude_log.exists()


def test_tool_activity_streams_as_reasoning_content(make_proxy) -> None:
    client = make_proxy(claude_show_tool_activity=1).client()
    chunks = list(client.chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "[[bash:printf 'a\\nb\\nc\\n']]"}], stream=True))
    reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Bash: printf 'a\\nb\\nc\\n'" in reasoning and "→ exit 0, 3 lines" in reasoning
    assert content.startswith("I'll run a command.") and "Bash:" not in content


def test_tool_activity_is_off_by_default(make_proxy) -> None:
    completion = make_proxy().client().chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "[[bash:echo hi]]"}])
    assert completion.choices[0].message.model_extra.get("reasoning_content") is None


def test_image_urls_are_fetched_only_when_allowed(make_proxy, fake_api, tmp_path) -> None:
    import functools
    import http.server
    import threading

    (tmp_path / "cat.png").write_bytes(tiny_png())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/cat.png"
    try:
        client = make_proxy(claude_fetch_images=1, claude_fetch_allowed_networks="127.0.0.0/8").client()
        client.chat.completions.create(model="claude-code", messages=[
            {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image_url", "image_url": {"url": url}}]}])
    finally:
        server.shutdown()
    [image] = [b for b in fake_api.main_requests()[0]["messages"][0]["content"] if b["type"] == "image"]
    assert image["source"]["media_type"] == "image/png"
    assert base64.b64decode(image["source"]["data"]) == tiny_png()


def test_long_silence_gets_keepalive_chunks(make_proxy) -> None:
    client = make_proxy(claude_keepalive=0.5).client()
    chunks = list(client.chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "[[bash:sleep 3]]"}], stream=True))
    empty = [c for c in chunks if c.choices and c.choices[0].delta.content is None
             and c.choices[0].delta.role is None and c.choices[0].finish_reason is None]
    assert len(empty) >= 3
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("I'll run a command.")


# ── fetching image URLs: public addresses only, bounded in time and size, one answer for every failure ──


class ImageServer:
    """A local HTTP server whose paths answer as `routes` says: path -> (status, headers, body) or a callable
    writing the response itself. `hits` lists the paths asked for."""

    def __init__(self, routes: dict, host: str = "127.0.0.1") -> None:
        import http.server
        import threading

        self.hits: list[str] = []
        server_self = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server_self.hits.append(self.path)
                route = routes.get(self.path, (404, {}, b"no"))
                if callable(route):
                    route(self)
                    return
                status, headers, body = route
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


PNG = {"Content-Type": "image/png"}


def fetch(url: str, allowed: str = "127.0.0.0/8", deadline: float = 20, max_bytes: int = 1 << 20) -> dict:
    import asyncio
    import time

    settings = main.Settings(fetch_images=True, fetch_allowed_networks=allowed, max_image_bytes=max_bytes)
    where = "messages[0].content[0]"
    return asyncio.run(asyncio.wait_for(main.fetch_image(url, where, settings, time.monotonic() + deadline), 30))


def refusal(url: str, **kwargs) -> str:
    with pytest.raises(main.InvalidRequest) as raised:
        fetch(url, **kwargs)
    assert raised.value.param == "messages[0].content[0]"
    return raised.value.message


def test_private_addresses_are_refused_unless_allowed() -> None:
    server = ImageServer({"/cat.png": (200, PNG, tiny_png())})
    try:
        port = server.server.server_port
        assert fetch(server.url + "/cat.png")["source"]["media_type"] == "image/png"  # allowed: 127.0.0.0/8
        assert server.hits == ["/cat.png"]
        for url in (server.url + "/cat.png", f"http://localhost:{port}/cat.png", f"http://[::ffff:127.0.0.1]:{port}/",
                    "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x.png", "http://[::1]/x.png"):
            assert "public" in refusal(url, allowed="")
        assert server.hits == ["/cat.png"], "nothing private was asked for"
    finally:
        server.close()


def test_each_redirect_is_checked() -> None:
    other = ImageServer({"/cat.png": (200, PNG, tiny_png())}, host="127.0.0.2")
    server = ImageServer({
        "/to-other": (302, {"Location": other.url + "/cat.png"}, b""),
        "/relative": (301, {"Location": "/cat.png"}, b""),
        "/cat.png": (200, PNG, tiny_png()),
        "/loop": (302, {"Location": "/loop"}, b""),
        "/to-file": (302, {"Location": "file:///etc/passwd"}, b""),
    })
    try:
        assert fetch(server.url + "/relative", allowed="127.0.0.1/32")["type"] == "image"
        refusal(server.url + "/to-other", allowed="127.0.0.1/32")
        assert other.hits == [], "the hop to a refused address was never made"
        assert fetch(server.url + "/to-other", allowed="127.0.0.0/8")["type"] == "image"
        assert other.hits == ["/cat.png"]
        refusal(server.url + "/loop")
        assert server.hits.count("/loop") == 6  # IMAGE_REDIRECTS hops, then it gives up
        refusal(server.url + "/to-file")
    finally:
        server.close()
        other.close()


def test_a_compressed_bomb_is_cut_off_while_it_streams() -> None:
    import tracemalloc

    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(packer.compress(bytes(1 << 20)) for _ in range(256)) + packer.flush()  # 256 MiB of zeros
    server = ImageServer({"/bomb.png": (200, {**PNG, "Content-Encoding": "gzip"}, bomb),
                          "/small.png": (200, {**PNG, "Content-Encoding": "gzip"}, zlib.compress(tiny_png(), wbits=31))})
    try:
        assert base64.b64decode(fetch(server.url + "/small.png")["source"]["data"]) == tiny_png()
        tracemalloc.start()
        message = refusal(server.url + "/bomb.png")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 8 << 20, f"{peak >> 20} MiB were held for a 1 MiB limit"
        assert "at most 1048576 bytes" in message
    finally:
        server.close()


def test_a_slow_server_cannot_hold_a_request_past_its_deadline() -> None:
    import time

    def drip(handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.end_headers()
        try:
            for _ in range(100):
                handler.wfile.write(b"x")
                handler.wfile.flush()
                time.sleep(0.3)
        except OSError:
            pass

    server = ImageServer({"/slow.png": drip})
    try:
        began = time.monotonic()
        refusal(server.url + "/slow.png", deadline=1.5)
        assert time.monotonic() - began < 5
    finally:
        server.close()


def test_every_fetch_failure_reads_the_same() -> None:
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
    server = ImageServer({"/page": (200, {"Content-Type": "text/html"}, b"<html>"), "/big.png": (200, PNG, bytes(3000)),
                          "/gone.png": (404, {}, b"no"), "/brotli.png": (200, {**PNG, "Content-Encoding": "br"}, b"x")})
    try:
        messages = {refusal(f"http://127.0.0.1:{closed_port}/x.png"), refusal("http://no-such-host.invalid/x.png"),
                    refusal(server.url + "/page"), refusal(server.url + "/big.png", max_bytes=2000),
                    refusal(server.url + "/gone.png"), refusal(server.url + "/brotli.png"),
                    refusal(server.url + "/cat.png", allowed="")}
        assert len({m.replace("2000", "1048576") for m in messages}) == 1, messages
    finally:
        server.close()


def test_a_private_image_url_is_refused_before_the_real_cli_starts(make_proxy, fake_api) -> None:
    server = ImageServer({"/cat.png": (200, PNG, tiny_png())})
    try:
        client = make_proxy(claude_fetch_images=1).client()
        with pytest.raises(openai.BadRequestError, match="public"):
            client.chat.completions.create(model="claude-code", messages=[{"role": "user", "content": [
                {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": server.url + "/cat.png"}}]}])
        assert server.hits == [] and fake_api.main_requests() == []
    finally:
        server.close()
