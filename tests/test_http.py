"""The HTTP surface through a live server and the official openai client, with tests/fake_claude.py as the CLI."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from proxy_fixtures import fake_claude_calls
from proxy_harness import wait_until

CHAT = "/v1/chat/completions"
HELLO = {"model": "claude-code", "messages": [{"role": "user", "content": "hello"}]}


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code:
        assert error["code"] == code
    return error


def test_health_reports_the_cli_and_its_version(make_fake_proxy) -> None:
    proxy = make_fake_proxy()
    health = httpx.get(proxy.url + "/").json()
    assert health["status"] == "ok"
    assert health["claude"]["found"] is True and health["claude"]["version"] == "2.1.197 (Claude Code)"


def test_models_are_listed_and_fetchable(make_fake_proxy, fake_claude_log) -> None:
    # fake_claude.py does not understand the initialize control request (it takes it for a prompt): the CLI offers
    # nothing, the usual aliases are listed, and the CLI is asked once only.
    client = make_fake_proxy().client(_strict_response_validation=True)
    ids = [m.id for m in client.models.list()]
    assert ids == ["claude-code", "opus", "sonnet", "haiku"]
    assert client.models.retrieve("sonnet").id == "sonnet"
    assert client.models.retrieve("claude-sonnet-4-5-20250929").id == "claude-sonnet-4-5-20250929"
    for unknown in ("gpt-4o", "fable"):
        with pytest.raises(openai.NotFoundError) as raised:
            client.models.retrieve(unknown)
        assert raised.value.code == "model_not_found"
    [asked] = fake_claude_calls(fake_claude_log)
    assert json.loads(asked["stdin"]) == {"type": "control_request", "request_id": "models",
                                          "request": {"subtype": "initialize"}}


@pytest.mark.parametrize("flags,expected", [("--exclude-dynamic-system-prompt-sections --tools", True), ("", False)])
def test_dynamic_system_prompt_sections_are_excluded_when_the_cli_knows_how(make_fake_proxy, fake_claude_log,
                                                                            flags: str, expected: bool) -> None:
    make_fake_proxy(fake_claude_flags=flags).client().chat.completions.create(model="claude-code", messages=[
        {"role": "user", "content": "hi"}])
    [call] = fake_claude_calls(fake_claude_log)
    assert ("--exclude-dynamic-system-prompt-sections" in call["argv"]) is expected


def test_completion_with_usage_passes_strict_sdk_validation(make_fake_proxy, fake_claude_log) -> None:
    client = make_fake_proxy().client(_strict_response_validation=True)
    completion = client.chat.completions.create(model="claude-code", messages=[{"role": "user", "content": "--help"}])
    assert completion.choices[0].message.content == "fake reply"
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (6, 4)
    assert completion.usage.prompt_tokens_details.cached_tokens == 2
    assert completion.usage.model_extra["total_cost_usd"] == 0.001
    [call] = fake_claude_calls(fake_claude_log)
    assert json.loads(call["stdin"])["message"]["content"][0]["text"] == "--help"
    assert not any("--help" == a for a in call["argv"])


def test_stream_passes_strict_sdk_validation(make_fake_proxy) -> None:
    client = make_fake_proxy(fake_claude_text="one two three").client(_strict_response_validation=True)
    stream = client.chat.completions.create(model="claude-code", messages=[{"role": "user", "content": "hi"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 10
    assert len({(c.id, c.created) for c in chunks}) == 1


def test_raw_stream_framing(make_fake_proxy) -> None:
    proxy = make_fake_proxy()
    with httpx.stream("POST", proxy.url + "/chat/completions", json={**HELLO, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        body = response.read().decode()
    frames = body.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    assert all(f.startswith("data: ") for f in frames[:-1]) and "event:" not in body
    assert not any('"usage"' in f for f in frames[:-2])


def test_ignored_hints_are_accepted(make_fake_proxy) -> None:
    proxy = make_fake_proxy()
    body = {**HELLO, "temperature": 0.2, "top_p": 1, "seed": 7, "user": "u", "store": False, "metadata": {"a": "b"},
            "max_tokens": 16, "max_completion_tokens": 16, "reasoning_effort": "low", "parallel_tool_calls": True,
            "prompt_cache_key": "k", "stream_options": {"include_usage": True}, "brand_new_field": [1]}
    response = httpx.post(proxy.url + CHAT, json=body, timeout=30)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "fake reply"


@pytest.mark.parametrize("body,status,code,param", [
    (b"{not json", 400, "invalid_value", None),
    (b"[1, 2]", 400, "invalid_value", None),
    (json.dumps({"model": "claude-code"}).encode(), 400, "invalid_value", "messages"),
    (json.dumps({**HELLO, "messages": []}).encode(), 400, "invalid_value", "messages"),
    (json.dumps({**HELLO, "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, None, None),
    (json.dumps({**HELLO, "messages": [{"role": "user", "content": 5}]}).encode(), 400, None, None),
    (json.dumps({**HELLO, "messages": [{"role": "system", "content": "x"}]}).encode(), 400, None, "messages"),
    (json.dumps({**HELLO, "n": 3}).encode(), 400, "unsupported_value", "n"),
    (json.dumps({**HELLO, "logprobs": True}).encode(), 400, "unsupported_parameter", "logprobs"),
    (json.dumps({**HELLO, "stream": "often"}).encode(), 400, None, "stream"),
    (json.dumps({**HELLO, "model": "gpt-4o"}).encode(), 404, "model_not_found", "model"),
    (json.dumps({**HELLO, "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}).encode(),
     400, None, "messages[0].content[0]"),
])
def test_bad_requests_get_openai_errors_and_never_start_the_cli(make_fake_proxy, fake_claude_log, body, status,
                                                                code, param) -> None:
    proxy = make_fake_proxy()
    response = httpx.post(proxy.url + CHAT, content=body, headers={"content-type": "application/json"})
    error = assert_error(response, status, code)
    if param:
        assert error["param"] == param
    assert fake_claude_calls(fake_claude_log) == []


def test_wrong_content_type_and_oversized_bodies(make_fake_proxy, fake_claude_log) -> None:
    proxy = make_fake_proxy(proxy_max_body_bytes=2000)
    assert_error(httpx.post(proxy.url + CHAT, content=b"model=x", headers={"content-type": "text/plain"}), 415)
    big = {**HELLO, "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_error(httpx.post(proxy.url + CHAT, json=big), 413, "request_too_large")
    assert fake_claude_calls(fake_claude_log) == []


def test_unknown_routes_and_methods_use_the_envelope(make_fake_proxy) -> None:
    proxy = make_fake_proxy()
    assert_error(httpx.get(proxy.url + "/v1/nothing"), 404)
    assert_error(httpx.get(proxy.url + CHAT), 405)


def test_token_is_required_when_configured(make_fake_proxy) -> None:
    proxy = make_fake_proxy(claude_proxy_token="tok-123456")
    assert_error(httpx.post(proxy.url + CHAT, json=HELLO), 401, "invalid_api_key")
    assert_error(httpx.post(proxy.url + CHAT, json=HELLO, headers={"authorization": "Bearer nope"}), 401)
    assert_error(httpx.get(proxy.url + "/v1/models"), 401)
    assert httpx.get(proxy.url + "/").status_code == 200
    assert httpx.post(proxy.url + CHAT, json=HELLO, headers={"x-api-key": "tok-123456"}, timeout=30).status_code == 200
    assert proxy.client().chat.completions.create(**HELLO).choices[0].message.content == "fake reply"
    with pytest.raises(openai.AuthenticationError):
        proxy.client(api_key="wrong").models.list()
    assert "tok-123456" not in proxy.output()


def test_missing_cli_is_503_naming_claude_bin(make_fake_proxy) -> None:
    proxy = make_fake_proxy(claude_bin="/nonexistent/claude")
    assert httpx.get(proxy.url + "/").json()["claude"]["found"] is False
    error = assert_error(httpx.post(proxy.url + CHAT, json=HELLO), 503, "claude_not_found")
    assert "CLAUDE_BIN" in error["message"] and "claude" in error["message"]
    models = httpx.get(proxy.url + "/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["claude-code", "opus", "sonnet", "haiku"]


def test_cli_failure_is_502_with_its_stderr_and_no_retry(make_fake_proxy) -> None:
    proxy = make_fake_proxy(fake_claude_mode="exit", fake_claude_stderr="boom: config broken")
    response = httpx.post(proxy.url + CHAT, json=HELLO, timeout=30)
    error = assert_error(response, 502, "claude_failed")
    assert "boom: config broken" in error["message"] and "code 1" in error["message"]
    assert response.headers["x-should-retry"] == "false"


def test_lines_beyond_asyncio_default_limit_are_read_and_the_cap_is_clear(make_fake_proxy) -> None:
    big = make_fake_proxy(fake_claude_mode="huge", fake_claude_bytes=3_000_000)
    content = big.client().chat.completions.create(**HELLO).choices[0].message.content
    assert content == "x" * 3_000_000
    capped = make_fake_proxy(fake_claude_mode="huge", fake_claude_bytes=3_000_000, claude_max_line_bytes=100_000)
    error = assert_error(httpx.post(capped.url + CHAT, json=HELLO, timeout=30), 502)
    assert "CLAUDE_MAX_LINE_BYTES" in error["message"]


def test_non_json_lines_from_the_cli_are_skipped(make_fake_proxy) -> None:
    proxy = make_fake_proxy(fake_claude_mode="garbage")
    assert proxy.client().chat.completions.create(**HELLO).choices[0].message.content == "fake reply"


@pytest.mark.parametrize("status,error_class,http", [(429, openai.RateLimitError, 429),
                                                    (529, openai.InternalServerError, 503),
                                                    (500, openai.InternalServerError, 502)])
def test_api_errors_reported_by_the_cli_map_to_statuses(make_fake_proxy, status, error_class, http) -> None:
    proxy = make_fake_proxy(fake_claude_mode="error_result", fake_claude_status=status)
    with pytest.raises(error_class) as raised:
        proxy.client().chat.completions.create(**HELLO)
    assert raised.value.status_code == http
    assert f"API Error: {status}" in raised.value.message
    assert raised.value.response.headers["x-should-retry"] == "true"
    if http in (429, 503):
        assert int(raised.value.response.headers["retry-after"]) >= 1


def test_timeout_is_504_and_the_cli_is_stopped(make_fake_proxy, fake_claude_log) -> None:
    proxy = make_fake_proxy(fake_claude_mode="hang", claude_timeout=1.5)
    error = assert_error(httpx.post(proxy.url + CHAT, json=HELLO, timeout=30), 504, "timeout")
    assert "CLAUDE_TIMEOUT" in error["message"]
    assert wait_until(lambda: not proxy.children(), timeout=5)


def test_silence_gets_keepalive_chunks_then_an_in_stream_timeout(make_fake_proxy) -> None:
    proxy = make_fake_proxy(fake_claude_mode="hang", claude_timeout=2, claude_keepalive=0.3, claude_prime_window=0.3)
    with httpx.stream("POST", proxy.url + CHAT, json={**HELLO, "stream": True}, timeout=30) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    keepalives = [p for p in payloads if "choices" in p and p["choices"][0]["delta"] == {}
                  and p["choices"][0]["finish_reason"] is None]
    assert len(keepalives) >= 3
    assert payloads[-1]["error"]["code"] == "timeout"
    with pytest.raises(openai.APIError, match="CLAUDE_TIMEOUT"):
        list(proxy.client().chat.completions.create(**HELLO, stream=True))


def test_overload_is_429_with_retry_after(make_fake_proxy) -> None:
    proxy = make_fake_proxy(fake_claude_mode="hang", claude_max_concurrency=1, claude_max_queue=0,
                            claude_timeout=30, claude_prime_window=0.1)
    with httpx.stream("POST", proxy.url + CHAT, json={**HELLO, "stream": True}, timeout=30) as first:
        assert first.status_code == 200
        response = httpx.post(proxy.url + CHAT, json=HELLO, timeout=30)
        assert_error(response, 429, "rate_limit_exceeded")
        assert int(response.headers["retry-after"]) >= 1


def test_queued_requests_wait_for_a_slot(make_fake_proxy) -> None:
    proxy = make_fake_proxy(claude_max_concurrency=1, claude_max_queue=4)
    client = proxy.client()
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: client.chat.completions.create(**HELLO).choices[0].message.content,
                                range(4)))
    assert answers == ["fake reply"] * 4


def test_each_request_is_logged_once_without_prompt_text(make_fake_proxy) -> None:
    proxy = make_fake_proxy()
    proxy.client().chat.completions.create(model="claude-code",
                                           messages=[{"role": "user", "content": "secret-prompt-words"}])
    assert wait_until(lambda: "POST /v1/chat/completions status=200" in proxy.output())
    lines = [line for line in proxy.output().splitlines() if "model=claude-code" in line]
    assert len(lines) == 1 and "stream=False" in lines[0] and "input_tokens=6" in lines[0]
    assert "secret-prompt-words" not in proxy.output()


def test_a_token_file_keeps_the_token_out_of_ps(make_fake_proxy, fake_claude_log, tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-from-a-file\n")
    proxy = make_fake_proxy(claude_proxy_token_file=token_file)
    assert_error(httpx.post(proxy.url + CHAT, json=HELLO), 401)
    headers = {"authorization": "Bearer tok-from-a-file"}
    assert httpx.post(proxy.url + CHAT, json=HELLO, headers=headers, timeout=30).status_code == 200
    assert "tok-from-a-file" not in " ".join(proxy.ps.cmdline())
    [call] = fake_claude_calls(fake_claude_log)
    assert not any(name.startswith("CLAUDE_PROXY_TOKEN") for name in call["env"])
    flagged = make_fake_proxy("--token", "tok-on-argv")
    assert "tok-on-argv" in " ".join(flagged.ps.cmdline()) and "can be read by every user" in flagged.output()
    assert "can be read by every user" not in proxy.output()


def test_token_file_errors_stop_the_start(tmp_path) -> None:
    import main

    empty = tmp_path / "empty"
    empty.write_text("\n")
    for argv, environ in ((["--token-file", str(tmp_path / "missing")], {}), (["--token-file", str(empty)], {}),
                          (["--token-file", str(empty)], {"CLAUDE_PROXY_TOKEN": "x"})):
        with pytest.raises(SystemExit):
            main.load_settings(argv, environ)
    (tmp_path / "good").write_text("  secret  \nsecond line\n")
    assert main.load_settings([], {"CLAUDE_PROXY_TOKEN_FILE": str(tmp_path / "good")}).token == "secret"
