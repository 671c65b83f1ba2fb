"""The fake Anthropic API's directives, proven with the real Claude Code CLI (and with httpx where the CLI can't)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from fake_anthropic import (DEFAULT_TEXT, FakeAnthropic, cli_environment, latest_user_text, lists_unified_windows,
                            run_cli, unified_headers)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def text_deltas(events) -> list[str]:
    return [e["delta"]["text"] for e in events.stream_events("content_block_delta")
            if e["delta"]["type"] == "text_delta"]


def user_body(text: str, *, tools: list[dict] | None = None, stream: bool = True, extra: list | None = None) -> dict:
    body = {"model": "claude-test", "max_tokens": 100, "stream": stream,
            "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}, *(extra or [])]}
    if tools is not None:
        body["tools"] = tools
    return body


def post_sse(fake: FakeAnthropic, body: dict) -> list[tuple[str, dict]]:
    """POST a streaming request; return (event name, data) pairs, checking each data's type matches its event."""
    with httpx.stream("POST", fake.base_url + "/v1/messages?beta=true", json=body, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = []
    for chunk in raw.split("\n\n"):
        if not chunk.strip():
            continue
        name_line, data_line = chunk.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        data = json.loads(data_line[len("data: "):])
        assert data["type"] == name_line[len("event: "):]
        events.append((name_line[len("event: "):], data))
    return events


def assemble(events: list[tuple[str, dict]]) -> tuple[list[dict], str]:
    """The content blocks and stop_reason a client would build from the SSE events."""
    blocks: list[dict] = []
    partial: dict[int, str] = {}
    stop_reason = ""
    for name, data in events:
        if name == "content_block_start":
            assert data["index"] == len(blocks)
            blocks.append(dict(data["content_block"]))
        elif name == "content_block_delta":
            delta, block = data["delta"], blocks[data["index"]]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "input_json_delta":
                partial[data["index"]] = partial.get(data["index"], "") + delta["partial_json"]
        elif name == "content_block_stop" and data["index"] in partial:
            blocks[data["index"]]["input"] = json.loads(partial[data["index"]])
        elif name == "message_delta":
            stop_reason = data["delta"]["stop_reason"]
    return blocks, stop_reason


# ------------------------------------------------------------------------------------------------------------
# With the real CLI


def test_plain_text_streams_as_several_deltas(claude_bin, cli_env, fake_api, workdir):
    events = run_cli(claude_bin, cli_env, "hi", cwd=workdir)
    result = events.result()
    assert events.returncode == 0, events.stderr
    assert result["subtype"] == "success" and result["is_error"] is False
    assert result["result"] == DEFAULT_TEXT
    deltas = text_deltas(events)
    assert len(deltas) >= 3 and "".join(deltas) == DEFAULT_TEXT
    usage = result["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (12, 5)
    assert (usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]) == (0, 0)
    starts = events.stream_events("message_start")
    assert starts[0]["message"]["model"] == fake_api.requests[0]["body"]["model"]
    assert [r["path"] for r in fake_api.requests] == ["/v1/messages?beta=true"]
    assert fake_api.requests[0]["headers"]["x-api-key"] == "test-key"
    assert len(fake_api.main_requests()) == 1
    # CLI 2.1.197 sends a preflight HEAD of the base URL at startup; 2.1.331 sends none.
    assert {(r["method"], r["path"]) for r in fake_api.other_requests} <= {("HEAD", "/")}
    assert fake_api.unexpected == []


def test_reply(claude_bin, cli_env, fake_api, workdir):
    events = run_cli(claude_bin, cli_env, "Please answer [[reply:Exactly this, nothing else.]] thanks", cwd=workdir)
    assert events.result()["result"] == "Exactly this, nothing else."
    assert len(text_deltas(events)) >= 2


def test_bash_cycle_runs_the_command(claude_bin, cli_env, fake_api, workdir):
    marker = uuid.uuid4().hex[:10]
    events = run_cli(claude_bin, cli_env, f"[[bash:echo proxy-e2e-$((6*7))-{marker}]]", cwd=workdir)
    result = events.result()
    assert result["is_error"] is False
    assert result["result"] == f"Tool said: proxy-e2e-42-{marker}"  # the shell, not the fake, computed 42
    tool_uses = [b for e in events if e["type"] == "assistant" for b in e["message"]["content"]
                 if b["type"] == "tool_use"]
    assert [(t["name"], t["input"]["command"]) for t in tool_uses] == [("Bash", f"echo proxy-e2e-$((6*7))-{marker}")]
    bodies = fake_api.main_requests()
    assert len(bodies) == 2
    assert bodies[1]["messages"][-1]["content"][0]["type"] == "tool_result"
    assert fake_api.unexpected == []


def test_parallel_tools_and_error_marking(claude_bin, cli_env, fake_api, workdir):
    (workdir / "f.txt").write_text("file-content-xyz\n")
    prompt = (f'[[tool:Read:{{"file_path": "{workdir / "f.txt"}"}}]] [[tool:Read:{{"file_path": "{workdir / "nope"}"}}]]'
              " [[bash:echo $((6*7))]]")
    result = run_cli(claude_bin, cli_env, prompt, cwd=workdir).result()
    text = result["result"]
    assert text.startswith("Tool said: ") and "file-content-xyz" in text
    parts = text[len("Tool said: "):].split(" | ")
    assert len(parts) == 3 and "file-content-xyz" in parts[0]
    assert parts[1].startswith("ERROR(") and parts[2] == "42"
    first = fake_api.main_requests()[0]
    assert first["tools"] and len(fake_api.main_requests()) == 2


def test_error_400(claude_bin, cli_env, fake_api, workdir):
    events = run_cli(claude_bin, cli_env, "[[error:400]]", cwd=workdir)
    result = events.result()
    assert events.returncode == 1
    assert result["is_error"] is True and result["api_error_status"] == 400
    assert "fake 400 error" in result["result"]
    # 2.1.197 does not retry a 400; 2.1.331 sends the same request again without one optional beta at a time.
    prompts = [latest_user_text(r["body"]["messages"]) for r in fake_api.requests]
    assert 1 <= len(prompts) <= 6 and set(prompts) == {"[[error:400]]"}


def test_error_404_and_the_non_streaming_fallback_count_as_main_requests(claude_bin, cli_env, fake_api, workdir):
    result = run_cli(claude_bin, cli_env, "[[error:404]]", cwd=workdir).result()
    assert result["is_error"] is True and result["api_error_status"] == 404
    assert [bool(r["body"].get("stream")) for r in fake_api.requests] == [True, False]  # 2.1.331: False, not absent
    assert len(fake_api.main_requests()) == 2


def test_think(claude_bin, cli_env, fake_api, workdir):
    events = run_cli(claude_bin, cli_env, "[[think]]", cwd=workdir)
    deltas = [e["delta"] for e in events.stream_events("content_block_delta")]
    thinking = [d["thinking"] for d in deltas if d["type"] == "thinking_delta"]
    assert len(thinking) >= 2 and "".join(thinking) == "Let me think."
    assert any(d["type"] == "signature_delta" for d in deltas)
    assert events.result()["result"] == DEFAULT_TEXT


def test_usage(claude_bin, cli_env, fake_api, workdir):
    events = run_cli(claude_bin, cli_env, "[[usage:100,7,30,40]]", cwd=workdir)
    usage = events.result()["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (100, 7)
    assert (usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]) == (30, 40)
    start = events.stream_events("message_start")[0]["message"]["usage"]
    assert start["output_tokens"] == 1 and start["input_tokens"] == 100
    assert events.stream_events("message_delta")[0]["usage"]["output_tokens"] == 7


def test_maxtokens_every_turn_is_an_error_after_the_cli_recovery_attempts(claude_bin, cli_env, fake_api, workdir):
    events = run_cli(claude_bin, cli_env, "[[maxtokens]]", cwd=workdir)
    stops = [e["delta"]["stop_reason"] for e in events.stream_events("message_delta")]
    assert stops and set(stops) == {"max_tokens"}
    result = events.result()
    assert result["is_error"] is True and "output token maximum" in result["result"]
    # The CLI asks the model to resume ("Output token limit hit. ...") 3 times before giving up.
    assert len(fake_api.main_requests()) == len(stops) == 4


def test_maxtokens_once_lets_the_cli_resume(claude_bin, cli_env, fake_api, workdir):
    events = run_cli(claude_bin, cli_env, "[[maxtokens:once]]", cwd=workdir)
    stops = [e["delta"]["stop_reason"] for e in events.stream_events("message_delta")]
    assert stops == ["max_tokens", "end_turn"]
    result = events.result()
    assert result["is_error"] is False and result["result"] == DEFAULT_TEXT


def test_echo_of_a_300_kib_prompt(claude_bin, cli_env, fake_api, workdir):
    filler = "".join(chr(0x20 + (i * 7919) % 0x5F) for i in range(300 * 1024)) + "\n\tüñí€\n"
    prompt = "[[echo]]" + filler + "TAIL-MARKER-0123456789"
    result = run_cli(claude_bin, cli_env, prompt, cwd=workdir).result()
    assert result["result"] == f"len={len(prompt)} tail={prompt[-20:]}"


def test_loop_hits_max_turns(claude_bin, cli_env, fake_api, workdir):
    events = run_cli(claude_bin, cli_env, "[[loop]]", "--max-turns=1", cwd=workdir)
    result = events.result()
    assert result["subtype"] == "error_max_turns" and result["is_error"] is True
    assert len(fake_api.main_requests()) == 1


def rate_limit_events(events) -> list[dict]:
    return [e["rate_limit_info"] for e in events if e.get("type") == "rate_limit_event"]


@pytest.fixture
def subscription_env(tmp_path: Path, fake_api: FakeAnthropic) -> dict[str, str]:
    home = tmp_path / "subscription-home"
    home.mkdir()
    return cli_environment(str(home), fake_api.base_url, subscription=True)


def test_plan_limit_headers_become_rate_limit_events_with_a_subscription(claude_bin, claude_version, subscription_env,
                                                                        fake_api, workdir):
    reset, weekly = int(time.time()) + 3600, int(time.time()) + 3 * 86400
    fake_api.rate_limit = unified_headers("allowed", reset=reset, windows={
        "5h": {"utilization": 0.91, "reset": reset, "surpassed-threshold": 0.9},
        "7d": {"utilization": 0.42, "reset": weekly}})
    events = run_cli(claude_bin, subscription_env, "hi", cwd=workdir)
    assert events.result()["is_error"] is False
    [info] = rate_limit_events(events)
    # CLI 2.1.331 adds every window the headers carry (unifiedWindows); 2.1.197 reports only the first one.
    windows = {"five_hour": {"utilization": 0.91, "resetsAt": reset, "surpassedThreshold": 0.9},
               "seven_day": {"utilization": 0.42, "resetsAt": weekly}}
    assert info.pop("unifiedWindows", None) == (windows if lists_unified_windows(claude_version) else None)
    assert info == {"status": "allowed_warning", "resetsAt": reset, "rateLimitType": "five_hour", "utilization": 0.91,
                    "isUsingOverage": False, "surpassedThreshold": 0.9}
    assert fake_api.requests[0]["headers"]["authorization"] == "Bearer test-oauth-token"

    fake_api.rate_limit = unified_headers("allowed", reset=reset, windows={"5h": {"utilization": 0.2, "reset": reset}})
    [info] = rate_limit_events(run_cli(claude_bin, subscription_env, "hi", cwd=workdir))
    windows = {"five_hour": {"utilization": 0.2, "resetsAt": reset}}
    assert info.pop("unifiedWindows", None) == (windows if lists_unified_windows(claude_version) else None)
    assert info == {"status": "allowed", "resetsAt": reset, "rateLimitType": "five_hour", "isUsingOverage": False}


def test_a_rejected_plan_limit_is_a_429_result(claude_bin, subscription_env, fake_api, workdir):
    reset = int(time.time()) + 600
    fake_api.rate_limit = unified_headers("rejected", claim="seven_day", reset=reset)
    events = run_cli(claude_bin, subscription_env, "hi", cwd=workdir)
    assert [e["type"] for e in events if e["type"] != "system"][:1] == ["rate_limit_event"]
    assert rate_limit_events(events) == [{"status": "rejected", "resetsAt": reset, "rateLimitType": "seven_day",
                                          "isUsingOverage": False}]
    result = events.result()
    assert result["is_error"] is True and result["api_error_status"] == 429
    assert result["result"].startswith("You've hit your weekly limit")
    assert len(fake_api.requests) == 1


def test_an_api_key_login_reports_no_plan_limits(claude_bin, cli_env, fake_api, workdir):
    fake_api.rate_limit = unified_headers("allowed_warning", windows={"5h": {"utilization": 0.95,
                                                                           "surpassed-threshold": 0.9}})
    assert rate_limit_events(run_cli(claude_bin, cli_env, "hi", cwd=workdir)) == []


def test_plan_limit_headers_on_every_answer(fake_api):
    fake_api.rate_limit = unified_headers("allowed", reset=1800000000, windows={"7d": {"utilization": 0.5}})
    for stream in (True, False):
        response = httpx.post(fake_api.base_url + "/v1/messages", json=user_body("hi", stream=stream))
        assert response.status_code == 200
        assert response.headers["anthropic-ratelimit-unified-status"] == "allowed"
        assert response.headers["anthropic-ratelimit-unified-reset"] == "1800000000"
        assert response.headers["anthropic-ratelimit-unified-7d-utilization"] == "0.5"
    fake_api.rate_limit = unified_headers("rejected")
    response = httpx.post(fake_api.base_url + "/v1/messages", json=user_body("hi"))
    assert response.status_code == 429 and response.json()["error"]["type"] == "rate_limit_error"
    assert response.headers["anthropic-ratelimit-unified-status"] == "rejected"


def test_title_request_is_a_side_request(claude_bin, claude_version, cli_env, fake_api, workdir):
    del cli_env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"]  # re-enables the title request (prompt >= 10 chars)
    result = run_cli(claude_bin, cli_env, "A prompt long enough for a title [[reply:ok!]]", cwd=workdir).result()
    assert result["result"] == "ok!"
    main = fake_api.main_requests()
    assert len(main) == 1 and main[0]["tools"]
    side = [r["body"] for r in fake_api.requests if r["body"] not in main]
    assert all(body.get("output_config", {}).get("format") and not body.get("tools") for body in side)
    # 2.1.197 asks for a session title; 2.1.331 sent none here.
    assert len(side) == (1 if claude_version.startswith("2.1.197 ") else 0)


def test_several_cli_processes_at_once(claude_bin, cli_env, fake_api, workdir):
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = run_cli(claude_bin, cli_env, f"[[drip:0.02]][[reply:answer {i} done]]", cwd=workdir).result()["result"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert results == {i: f"answer {i} done" for i in range(3)}
    assert len(fake_api.requests) == 3 and fake_api.unexpected == []


# ------------------------------------------------------------------------------------------------------------
# Directly over HTTP


TOOLS = [{"name": "Bash", "input_schema": {}}, {"name": "mcp__srv__lookup", "input_schema": {}}]


def test_tool_directive_parallel_tool_use_and_results(fake_api):
    prompt = '[[tool:lookup:{"q": [1, 2], "s": "x"}]] and [[tool:Bash:{"command": "ls"}]]'
    events = post_sse(fake_api, user_body(prompt, tools=TOOLS))
    assert [name for name, _ in events][0] == "message_start" and events[-1][0] == "message_stop"
    assert events[0][1]["message"]["model"] == "claude-test" and events[0][1]["message"]["content"] == []
    blocks, stop_reason = assemble(events)
    assert stop_reason == "tool_use"
    assert blocks[0]["type"] == "text"
    tool_uses = blocks[1:]
    assert [(b["name"], b["input"]) for b in tool_uses] == [("mcp__srv__lookup", {"q": [1, 2], "s": "x"}),
                                                          ("Bash", {"command": "ls"})]
    assert len({b["id"] for b in tool_uses}) == 2
    assert all(sum(1 for n, d in events if n == "content_block_delta" and d["index"] == i) >= 2
               for i in (1, 2))

    # Results come back in completion order; the answer follows the tool_use order.
    results = [
        {"type": "tool_result", "tool_use_id": tool_uses[1]["id"], "content": "boom", "is_error": True},
        {"type": "tool_result", "tool_use_id": tool_uses[0]["id"],
         "content": [{"type": "text", "text": "found it"}]},
    ]
    follow_up = user_body(prompt, tools=TOOLS, extra=[
        {"role": "assistant", "content": blocks},
        {"role": "user", "content": [*results, {"type": "text", "text": "<system-reminder>x</system-reminder>"}]},
    ])
    blocks, stop_reason = assemble(post_sse(fake_api, follow_up))
    assert (blocks, stop_reason) == ([{"type": "text", "text": "Tool said: found it | ERROR(boom)"}], "end_turn")

    response = httpx.post(fake_api.base_url + "/v1/messages", json=dict(follow_up, stream=False))
    assert response.status_code == 200
    message = response.json()
    assert message["content"] == [{"type": "text", "text": "Tool said: found it | ERROR(boom)"}]
    assert message["stop_reason"] == "end_turn" and message["usage"]["output_tokens"] == 5


def test_long_answers_are_capped_at_64_deltas_unless_max_deltas_is_none(fake_api):
    text = " ".join(f"w{i}" for i in range(200))

    def deltas(fake: FakeAnthropic) -> list[str]:
        return [d["delta"]["text"] for name, d in post_sse(fake, user_body(f"[[reply:{text}]]"))
                if name == "content_block_delta"]

    capped = deltas(fake_api)
    assert len(capped) == 64 and "".join(capped) == text
    with FakeAnthropic(max_deltas=None) as uncapped:  # bench/bench.py: one delta per word
        per_word = deltas(uncapped)
    assert len(per_word) == 200 and "".join(per_word) == text


def test_tool_directive_missing_tool(fake_api):
    blocks, stop_reason = assemble(post_sse(fake_api, user_body("[[tool:nope]]", tools=TOOLS)))
    assert (blocks, stop_reason) == ([{"type": "text", "text": "NO TOOL nope"}], "end_turn")


def test_non_streaming_tool_use(fake_api):
    response = httpx.post(fake_api.base_url + "/v1/messages", json=user_body("[[bash:true]]", tools=TOOLS, stream=False))
    message = response.json()
    assert message["type"] == "message" and message["stop_reason"] == "tool_use"
    assert message["content"][1]["input"] == {"command": "true", "description": "run command"}


@pytest.mark.parametrize("status, kind", [(400, "invalid_request_error"), (401, "authentication_error"),
                                          (429, "rate_limit_error"), (500, "api_error"), (529, "overloaded_error")])
@pytest.mark.parametrize("stream", [True, False])
def test_error_responses(fake_api, status, kind, stream):
    response = httpx.post(fake_api.base_url + "/v1/messages", json=user_body(f"[[error:{status}]]", stream=stream))
    assert response.status_code == status
    assert response.json() == {"type": "error", "error": {"type": kind, "message": f"fake {status} error"},
                               "request_id": "req_fake"}
    assert (response.headers.get("retry-after") == "0") == (status in (429, 529))


def test_slow_and_drip_timing(fake_api):
    body = user_body("[[slow:0.4]][[drip:0.1]][[reply:one two three]]")
    arrivals = []
    started = time.monotonic()
    with httpx.stream("POST", fake_api.base_url + "/v1/messages", json=body, timeout=10) as response:
        assert time.monotonic() - started < 0.3  # headers come at once
        for line in response.iter_lines():
            if line.startswith("event: "):
                arrivals.append((line[len("event: "):], time.monotonic() - started))
    assert arrivals[0][0] == "message_start" and arrivals[0][1] >= 0.4
    delta_times = [t for name, t in arrivals if name == "content_block_delta"]
    assert len(delta_times) == 3
    assert all(b - a >= 0.09 for a, b in zip(delta_times, delta_times[1:]))


def test_client_hanging_up_is_recorded_and_stop_is_prompt(fake_api):
    with httpx.stream("POST", fake_api.base_url + "/v1/messages", json=user_body("[[slow:30]]"), timeout=10):
        pass  # leaves before message_start
    deadline = time.monotonic() + 5
    while not fake_api.requests[0].get("aborted") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake_api.requests[0].get("aborted") is True

    def hang() -> None:
        try:
            httpx.post(fake_api.base_url + "/v1/messages", json=user_body("[[slow:30]]"), timeout=10)
        except httpx.HTTPError:
            pass

    thread = threading.Thread(target=hang, daemon=True)
    thread.start()
    while len(fake_api.requests) < 2:
        time.sleep(0.02)
    started = time.monotonic()
    fake_api.stop()
    assert time.monotonic() - started < 2
    thread.join(5)
    assert not thread.is_alive()


def test_paths(fake_api):
    base = fake_api.base_url
    assert httpx.head(base + "/").status_code == 200
    assert httpx.get(base + "/").status_code == 200
    assert fake_api.unexpected == []
    prefixed = fake_api.url_with_prefix("/s/case1")
    assert httpx.head(prefixed).status_code == 200
    assert assemble(post_sse_to(prefixed + "/v1/messages?beta=true", user_body("hi")))[0][0]["text"] == DEFAULT_TEXT
    assert fake_api.requests[-1]["path"] == "/s/case1/v1/messages?beta=true"
    counted = httpx.post(base + "/v1/messages/count_tokens?beta=true", json=user_body("hi"))
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0
    assert fake_api.unexpected == []
    missing = httpx.post(base + "/v1/complete", json={})
    assert missing.status_code == 404 and missing.json()["type"] == "error"
    assert httpx.get(base + "/nope").status_code == 404
    assert fake_api.unexpected == ["POST /v1/complete", "GET /nope"]
    assert httpx.post(base + "/v1/messages", json=user_body("[[error:abc]]")).status_code == 400
    assert fake_api.unexpected[-1].startswith("bad directive")
    fake_api.clear()
    assert fake_api.requests == [] and fake_api.unexpected == [] and fake_api.other_requests == []


def post_sse_to(url: str, body: dict) -> list[tuple[str, dict]]:
    response = httpx.post(url, json=body)
    assert response.status_code == 200
    return [(c.split("\n")[0][len("event: "):], json.loads(c.split("\n")[1][len("data: "):]))
            for c in response.text.split("\n\n") if c.strip()]


def test_latest_user_text_skips_reminders_tool_results_and_system_messages():
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "<system-reminder>\n[[error:500]]\n</system-reminder>"},
                                     {"type": "text", "text": "real [[reply:A]]"}]},
        {"role": "system", "content": "Available agent types [[reply:B]]"},
        {"role": "assistant", "content": [{"type": "text", "text": "ok [[reply:C]]"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "[[reply:D]]"},
                                     {"type": "text", "text": "<system-reminder>late</system-reminder>"}]},
    ]
    assert latest_user_text(messages) == "real [[reply:A]]"
    assert latest_user_text([*messages, {"role": "user", "content": "newer"}]) == "newer"
