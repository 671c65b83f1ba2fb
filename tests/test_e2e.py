"""End to end: the proxy drives the real Claude Code CLI, which talks to the scripted fake Anthropic API."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import httpx
import openai
import pytest

from proxy_harness import processes_matching, wait_until

CHAT = "/v1/chat/completions"


def ask(proxy, content: str, **kwargs):
    messages = kwargs.pop("messages", None) or [{"role": "user", "content": content}]
    return proxy.client().chat.completions.create(model=kwargs.pop("model", "claude-code"), messages=messages,
                                                  **kwargs)


def user_texts(request: dict) -> list[str]:
    """Every text block the API request carries in user messages (skipping the CLI's reminders)."""
    texts = []
    for message in request["messages"]:
        if message["role"] == "user" and isinstance(message["content"], list):
            texts += [b["text"] for b in message["content"] if b.get("type") == "text"
                      and not b["text"].startswith("<system-reminder>")]
    return texts


# ── answers ──


def test_plain_answer_with_usage(make_proxy, fake_api) -> None:
    completion = ask(make_proxy(), "[[usage:100,7,50,25]] hi")
    assert completion.choices[0].message.content == "Hello from fake model."
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (175, 7, 182)
    assert usage.prompt_tokens_details.cached_tokens == 50
    assert usage.model_extra["total_cost_usd"] > 0
    assert fake_api.unexpected == []


def test_streamed_answer_arrives_token_by_token(make_proxy) -> None:
    stream = ask(make_proxy(), "[[reply:one two three four]]", stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == "one two three four" and len(deltas) >= 2
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert len({(c.id, c.created, c.model) for c in chunks}) == 1


def test_stream_helper_of_the_sdk(make_proxy) -> None:
    client = make_proxy().client()
    with client.chat.completions.stream(model="claude-code", messages=[{"role": "user", "content": "hi"}]) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Hello from fake model."


@pytest.mark.parametrize("mode", ["append", "replace", "inline"])
def test_system_prompt_reaches_the_api(make_proxy, fake_api, mode: str) -> None:
    proxy = make_proxy(claude_system_prompt_mode=mode)
    ask(proxy, "", messages=[{"role": "system", "content": "You are PROXY-SYSTEM."},
                             {"role": "user", "content": "hi"}])
    [request] = fake_api.main_requests()
    system = [block["text"] for block in request["system"]]
    if mode == "append":
        assert system[-1].endswith("\n\nYou are PROXY-SYSTEM.") and "Claude Code" in system[1]
    elif mode == "replace":
        assert system[-1] == "You are PROXY-SYSTEM."
    else:
        assert not any("PROXY-SYSTEM" in text for text in system)
        assert user_texts(request) == ["<instructions>\nYou are PROXY-SYSTEM.\n</instructions>\n\nhi"]


@pytest.mark.parametrize("mode", ["append", "replace"])
def test_a_system_prompt_beyond_the_argv_limit_reaches_the_api(make_proxy, fake_api, mode: str) -> None:
    system = "".join(f"rule {i:06d}. " for i in range(150_000 // 13)) + "--last-rule"
    ask(make_proxy(claude_system_prompt_mode=mode), "", messages=[{"role": "system", "content": system},
                                                                  {"role": "user", "content": "hi"}])
    [request] = fake_api.main_requests()
    assert request["system"][-1]["text"].endswith(system)


def test_history_reaches_the_api(make_proxy, fake_api) -> None:
    ask(make_proxy(), "", messages=[{"role": "user", "content": "My name is Ada."},
                                    {"role": "assistant", "content": "Hello Ada."},
                                    {"role": "user", "content": "What is my name?"}])
    [prompt] = user_texts(fake_api.main_requests()[0])
    assert "<user>\nMy name is Ada.\n</user>" in prompt and "<assistant>\nHello Ada.\n</assistant>" in prompt
    assert prompt.endswith("\n\nWhat is my name?")


def test_claude_code_really_runs_its_bash_tool(make_proxy, tmp_path) -> None:
    stream = ask(make_proxy(), "[[bash:echo $((6*7)) > answer.txt; cat answer.txt]]", stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "I'll run a command.\n\nTool said: 42"


def test_a_300_kib_prompt_arrives_unchanged(make_proxy, fake_api) -> None:
    prompt = "[[echo]]" + "".join(f"{i:07d}|" for i in range(300 * 1024 // 8)) + "THE-END"
    answer = ask(make_proxy(), prompt).choices[0].message.content
    assert answer == f"len={len(prompt)} tail={prompt[-20:]}"
    assert prompt in user_texts(fake_api.main_requests()[0])


def test_a_flag_like_prompt_reaches_the_model(make_proxy, fake_api) -> None:
    assert ask(make_proxy(), "--help").choices[0].message.content == "Hello from fake model."
    assert user_texts(fake_api.main_requests()[0]) == ["--help"]


def test_thinking_streams_as_reasoning_content(make_proxy) -> None:
    chunks = list(ask(make_proxy(), "[[think]] hi", stream=True))
    reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning == "Let me think." and content == "Hello from fake model."


@pytest.mark.parametrize("model,wire", [("sonnet", "claude-sonnet-"),
                                        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929")])
def test_model_choice_reaches_the_api(make_proxy, fake_api, model: str, wire: str) -> None:
    # The CLI resolves an alias to its current model (claude-sonnet-5 on CLI 2.1.197, claude-sonnet-5-5 on 2.1.331),
    # one that GET /v1/models lists.
    proxy = make_proxy()
    completion = ask(proxy, "hi", model=model)
    assert completion.model == model
    sent = fake_api.main_requests()[0]["model"]
    assert sent.startswith(wire)
    if model == "sonnet":
        assert sent in [m.id for m in proxy.client().models.list()]


def test_models_are_what_the_cli_offers(make_proxy, fake_api) -> None:
    proxy = make_proxy()
    client = proxy.client(_strict_response_validation=True)
    ids = [m.id for m in client.models.list()]
    assert ids[:4] == ["claude-code", "opus", "sonnet", "haiku"] and len(ids) == len(set(ids))
    offered = ids[4:]
    assert any(i.startswith("claude-sonnet-") for i in offered) and any(i.startswith("claude-haiku-") for i in offered)
    assert all(client.models.retrieve(i).id == i for i in offered)
    assert [m.id for m in client.models.list()] == ids
    assert fake_api.requests == [], "asking the CLI for its models costs no API request"
    assert wait_until(lambda: not proxy.children(), timeout=5), "the CLI asked is stopped"


def test_a_model_the_api_refuses_is_404_model_not_found(make_proxy, fake_api) -> None:
    fake_api.unknown_models.add("claude-nonexistent-9")
    with pytest.raises(openai.NotFoundError) as raised:
        ask(make_proxy(), "hi", model="claude-nonexistent-9")
    assert raised.value.code == "model_not_found" and "claude-nonexistent-9" in raised.value.message
    with pytest.raises(openai.NotFoundError) as raised:
        ask(make_proxy(), "hi", model="gpt-4o")  # refused by the proxy itself: never reaches the CLI
    assert raised.value.code == "model_not_found"


def test_a_plain_answer_costs_one_api_request(make_proxy, fake_api) -> None:
    assert ask(make_proxy(), "hi").choices[0].message.content == "Hello from fake model."
    assert len(fake_api.requests) == 1
    # Nothing else but the preflight HEAD of CLI 2.1.197 (no token counting, no title, no warm-up request).
    assert {(r["method"], r["path"]) for r in fake_api.other_requests} <= {("HEAD", "/")}


def cached_prefix(body: dict) -> str:
    """What the API caches ahead of the messages: the tools, then the system prompt."""
    return json.dumps([body.get("tools"), body.get("system")], sort_keys=True)


def test_new_conversations_in_different_folders_share_the_tools_and_system_prompt(make_proxy, fake_api) -> None:
    proxy = make_proxy(claude_sessions=1)
    for _ in range(2):
        ask(proxy, "Summarize our chat in five words.")
    first, second = fake_api.main_requests()
    assert cached_prefix(first) == cached_prefix(second)
    # Each ran in a folder of its own: the per-machine sections, with its path, are in the first user message.
    folders = [re.search(r"Primary working directory: ([^\s\\]+)", json.dumps(body["messages"]))
               for body in (first, second)]
    assert folders[0] and folders[1] and folders[0][1] != folders[1][1]
    assert not any(folder[1] in cached_prefix(body) for folder, body in zip(folders, (first, second)))


def test_max_turns_finishes_with_length(make_proxy) -> None:
    completion = ask(make_proxy(claude_max_turns=1), "[[loop]]")
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "I'll run a command."


def test_max_tokens_finishes_with_length(make_proxy) -> None:
    completion = ask(make_proxy(), "[[maxtokens]] [[reply:cut short]]")
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content.startswith("cut short")


# ── failures ──


def test_api_failure_becomes_an_openai_error(make_proxy) -> None:
    with pytest.raises(openai.InternalServerError) as raised:
        ask(make_proxy(), "[[error:400]]")
    assert raised.value.status_code == 502 and "fake 400 error" in raised.value.message
    assert raised.value.response.headers["x-should-retry"] == "false"


def test_bad_credentials_fail_fast_with_a_fix(make_proxy, fake_api) -> None:
    proxy = make_proxy(claude_code_max_retries=10)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as raised:
        ask(proxy, "[[error:401]]")
    assert time.monotonic() - started < 30  # the CLI alone retries for about three minutes
    assert raised.value.status_code == 502 and raised.value.code == "claude_not_authenticated"
    assert "setup-token" in raised.value.message
    assert len(fake_api.main_requests()) == 1


@pytest.mark.parametrize("status,error_class,http", [(429, openai.RateLimitError, 429),
                                                    (529, openai.InternalServerError, 503)])
def test_rate_limits_and_overload_map_to_retryable_statuses(make_proxy, status, error_class, http) -> None:
    with pytest.raises(error_class) as raised:
        ask(make_proxy(claude_code_max_retries=1), f"[[error:{status}]]")
    assert raised.value.status_code == http
    assert raised.value.response.headers["x-should-retry"] == "true"
    assert int(raised.value.response.headers["retry-after"]) >= 1


def test_timeout_during_a_stream_is_reported_in_stream(make_proxy) -> None:
    proxy = make_proxy(claude_timeout=8)
    with httpx.stream("POST", proxy.url + CHAT, timeout=30, json={
        "model": "claude-code", "stream": True,
        "messages": [{"role": "user", "content": "[[drip:2]] [[reply:a b c d e f g h]]"}],
    }) as response:
        payloads = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    assert json.loads(payloads[-2])["error"]["code"] == "timeout"
    assert any(json.loads(p).get("choices", [{}])[0].get("delta", {}).get("content") for p in payloads[1:-2])


def test_running_as_root_needs_is_sandbox(make_proxy) -> None:
    proxy = make_proxy(is_sandbox=None)
    if os.geteuid() != 0:
        assert ask(proxy, "hi").choices[0].message.content == "Hello from fake model."
        return
    with pytest.raises(openai.InternalServerError) as raised:
        ask(proxy, "hi")
    assert "IS_SANDBOX=1" in raised.value.message and "root" in raised.value.message


def test_child_environment_is_cleaned(make_proxy) -> None:
    proxy = make_proxy(claudecode="1", claude_proxy_token="tok-abcdef", claude_code_max_retries=2)
    proxy.env["CLAUDE_PROXY_TOKEN"] = "tok-abcdef"
    response = _stream_until_sleep_runs(proxy, 414)
    [cli] = proxy.ps.children()
    env = cli.environ()
    response.close()
    assert "CLAUDECODE" not in env and "CLAUDE_PROXY_TOKEN" not in env
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1" and env["CLAUDE_CODE_MAX_RETRIES"] == "2"


def test_stream_json_lines_beyond_64_kib_pass_through(make_proxy) -> None:
    # The CLI writes the whole 300 KB text block as one `assistant` line, and the big tool output in a `user` line.
    text = "".join(f"{i:06d} " for i in range(300_000 // 7))
    content = ask(make_proxy(), f"[[reply:{text}]]").choices[0].message.content
    assert content == text
    tool = ask(make_proxy(), "[[bash:head -c 300000 /dev/zero | tr '\\0' a]]").choices[0].message.content
    assert tool.startswith("I'll run a command.\n\nTool said: ") and "a" * 1000 in tool


def test_runs_get_a_temporary_directory_removed_afterwards(make_proxy, tmp_path) -> None:
    content = ask(make_proxy(), "[[bash:pwd]]").choices[0].message.content
    workdir = content.rsplit("Tool said: ", 1)[1].strip()
    assert os.path.basename(workdir).startswith("claude-proxy-")
    assert wait_until(lambda: not os.path.exists(workdir))


def test_configured_working_directory_is_used_and_kept(make_proxy, tmp_path) -> None:
    workdir = tmp_path / "project"
    workdir.mkdir()
    content = ask(make_proxy(claude_cwd=workdir), "[[bash:pwd && touch made-here]]").choices[0].message.content
    assert content.endswith(f"Tool said: {workdir}")
    assert (workdir / "made-here").exists()


# ── process lifecycle ──


def long_command(seconds: int) -> str:
    """A Bash command that runs for `seconds`; its command line contains `sleep(seconds)` (CLI 2.1.331 refuses a
    standalone `sleep N`)."""
    return f'python3 -c "import time; time.sleep({seconds})"'


def _stream_until_sleep_runs(proxy, seconds: int):
    token = proxy.env.get("CLAUDE_PROXY_TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    client = httpx.Client(timeout=60, headers=headers)
    request = client.build_request("POST", proxy.url + CHAT, json={
        "model": "claude-code", "stream": True,
        "messages": [{"role": "user", "content": f"[[bash:{long_command(seconds)}]]"}],
    })
    response = client.send(request, stream=True)
    assert response.status_code == 200
    assert wait_until(lambda: processes_matching(f"sleep({seconds})"), timeout=20)
    return response


def test_client_disconnect_stops_the_cli_and_its_tools(make_proxy) -> None:
    proxy = make_proxy()
    response = _stream_until_sleep_runs(proxy, 417)
    assert proxy.children()
    response.close()
    assert wait_until(lambda: not processes_matching("sleep(417)") and not proxy.children(), timeout=5)


def test_client_disconnect_stops_a_non_streamed_run(make_proxy) -> None:
    proxy = make_proxy()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(proxy.url + CHAT, timeout=httpx.Timeout(30, read=4), json={
            "model": "claude-code", "messages": [{"role": "user", "content": f"[[bash:{long_command(416)}]]"}]})
    assert wait_until(lambda: not processes_matching("sleep(416)") and not proxy.children(), timeout=5)


def test_timeout_stops_the_cli_and_its_tools(make_proxy) -> None:
    proxy = make_proxy(claude_timeout=4)
    response = httpx.post(proxy.url + CHAT, timeout=30, json={
        "model": "claude-code", "messages": [{"role": "user", "content": f"[[bash:{long_command(418)}]]"}]})
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    assert wait_until(lambda: not processes_matching("sleep(418)") and not proxy.children(), timeout=5)


def test_overload_is_429(make_proxy) -> None:
    proxy = make_proxy(claude_max_concurrency=1, claude_max_queue=0)
    response = _stream_until_sleep_runs(proxy, 415)
    with pytest.raises(openai.RateLimitError) as raised:
        ask(proxy, "hi")
    assert raised.value.code == "rate_limit_exceeded"
    response.close()


def test_sigterm_stops_runs_and_exits_cleanly(make_proxy) -> None:
    proxy = make_proxy()
    response = _stream_until_sleep_runs(proxy, 419)
    started = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    rest = list(response.iter_lines())
    # uvicorn re-raises the signal it handled once shutdown is complete, so the exit status is "killed by SIGTERM"
    assert proxy.proc.wait(10) in (0, -signal.SIGTERM) and time.monotonic() - started < 10
    assert "Application shutdown complete" in proxy.output()
    assert "data: [DONE]" in rest and any("shutting down" in line for line in rest)
    assert wait_until(lambda: not processes_matching("sleep(419)"), timeout=5)
