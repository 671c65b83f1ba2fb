"""Images, and Claude Code's own tool activity shown as reasoning, end to end and as pure functions."""

from __future__ import annotations

import base64

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
        client = make_proxy(claude_fetch_images=1).client()
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
