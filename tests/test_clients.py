"""Real clients against the proxy, end to end through the real Claude Code CLI and the fake Anthropic API.

The issue's "done when": the OpenAI Python SDK (strict response validation), LangChain's ChatOpenAI, the OpenAI Node
SDK and OpenClaw's openai-completions provider get correct streamed and non-streamed answers with usage. The Node
clients run as scripts in tests/clients/ with the pinned packages ./tests/run.sh installs into tests/.cli.
OpenClaw also runs its agent's tool cycle (toolUse, toolResult, answer) against the native tool calling.
"""

from __future__ import annotations

import json

import openai
import pytest
from helpers import run_node, system_prompt_of
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

ANSWER = "Hello from fake model."
USAGE = "[[usage:100,7,50,25]]"  # input 100, output 7, cache read 50, cache write 25
PROMPT_TOKENS, COMPLETION_TOKENS, CACHED, WRITTEN = 175, 7, 50, 25  # prompt = input + cache read + cache write


def assert_openai_usage(usage: dict) -> None:
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        PROMPT_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS + COMPLETION_TOKENS)
    assert usage["prompt_tokens_details"]["cached_tokens"] == CACHED


# ── OpenAI Node SDK ──


def test_openai_node_sdk_non_streamed_and_streamed_with_usage(make_proxy) -> None:
    proxy = make_proxy(claude_proxy_token="node-secret")
    result = run_node("openai_node.mjs", proxy.url + "/v1", f"{USAGE} hi", api_key="node-secret")
    assert result["sdk_version"] == "7.57.0"

    answer = result["non_stream"]
    assert answer["type"] == "object" and answer["object"] == "chat.completion"  # parsed as JSON, not a string
    assert (answer["role"], answer["text"], answer["finish_reason"]) == ("assistant", ANSWER, "stop")
    assert answer["id"].startswith("chatcmpl-") and answer["model"] == "claude-code"
    assert_openai_usage(answer["usage"])

    stream = result["stream"]
    assert stream["objects"] == ["chat.completion.chunk"] and len(stream["ids"]) == 1
    assert stream["first_role"] == "assistant"
    assert stream["text"] == ANSWER and len(stream["deltas"]) >= 2  # really streamed, in pieces
    assert stream["finish_reasons"] == ["stop"]
    assert stream["usage_chunks"] == 1 and stream["last_choices"] == []  # the usage chunk comes last, no choices
    assert_openai_usage(stream["usage"])


# ── OpenClaw (@openclaw/ai, openai-completions) ──


@pytest.mark.parametrize("host,extra", [pytest.param("openclaw", {}, id="app-host"),
                                        pytest.param("inert", {"store": False}, id="library-host")])
def test_openclaw_agent_turn_with_system_prompt(make_proxy, fake_api, host: str, extra: dict) -> None:
    proxy = make_proxy()
    result = run_node("openclaw.mjs", "turn", proxy.url + "/v1", f"{USAGE} hi", "--system", "You are OpenClaw.",
                      "--host", host)
    assert result["openclaw_ai_version"] == "2026.9.6"
    assert result["request"] == {  # the body OpenClaw sent; with the app's host policy that of contract doc §1.3
        "model": "claude-code",
        "messages": [{"role": "system", "content": "You are OpenClaw."}, {"role": "user", "content": f"{USAGE} hi"}],
        "stream": True, "stream_options": {"include_usage": True}, "max_completion_tokens": 4096, **extra}

    message = result["message"]
    assert message["errorMessage"] is None, message["errorMessage"]
    assert message["stopReason"] == "stop"
    assert [block["type"] for block in message["content"]] == ["text"]
    assert message["content"][0]["text"] == ANSWER
    assert result["events"][0] == "start" and result["events"][-1] == "done"
    assert result["events"].count("text_delta") >= 2
    assert message["responseId"].startswith("chatcmpl-")

    usage = message["usage"]  # OpenClaw's split: input excludes the cache reads and writes
    assert (usage["input"], usage["output"], usage["cacheRead"], usage["cacheWrite"]) == (
        PROMPT_TOKENS - CACHED - WRITTEN, COMPLETION_TOKENS, CACHED, WRITTEN)
    assert usage["totalTokens"] == PROMPT_TOKENS + COMPLETION_TOKENS

    assert system_prompt_of(fake_api).endswith("You are OpenClaw.")


def test_openclaw_shows_claude_thinking_as_thinking_for_a_reasoning_model(make_proxy) -> None:
    proxy = make_proxy()
    result = run_node("openclaw.mjs", "turn", proxy.url + "/v1", "[[think]] hi", "--reasoning", "--system", "Be brief.")
    assert "reasoning_effort" not in result["request"]  # and the system prompt keeps the system role (no developer)
    assert result["request"]["messages"][0] == {"role": "system", "content": "Be brief."}
    message = result["message"]
    assert message["errorMessage"] is None and message["stopReason"] == "stop"
    assert [(block["type"], block.get("thinking", block.get("text"))) for block in message["content"]] == [
        ("thinking", "Let me think."), ("text", ANSWER)]


def test_openclaw_drops_thinking_for_a_model_without_reasoning(make_proxy) -> None:
    proxy = make_proxy()
    result = run_node("openclaw.mjs", "turn", proxy.url + "/v1", "[[think]] hi")
    message = result["message"]
    assert message["errorMessage"] is None and message["stopReason"] == "stop"
    assert message["content"] == [{"type": "text", "text": ANSWER}]  # never merged into the text


def test_openclaw_onboarding_connection_test(make_proxy, fake_api) -> None:
    proxy = make_proxy(claude_proxy_token="onboard-secret")
    result = run_node("openclaw.mjs", "probe", proxy.url + "/v1", api_key="onboard-secret")
    assert result["ok"] is True and result["status"] == 200
    assert result["content_type"].startswith("application/json")
    assert result["body"]["choices"][0]["message"]["content"] == ANSWER
    assert result["body"]["choices"][0]["finish_reason"] == "stop"
    assert result["body"]["usage"]["completion_tokens"] == 5  # the fake's default usage: 12 in, 5 out
    assert len(fake_api.main_requests()) == 1


WEATHER_CALL = '[[tool:get_weather:{"city":"Paris"}]]'


def tool_cycle(proxy, prompt: str, *args: str) -> list[dict]:
    """OpenClaw's agent tool cycle (openclaw.mjs tools): every turn's request, events and message."""
    result = run_node("openclaw.mjs", "tools", proxy.url + "/v1", prompt, *args)
    assert result["openclaw_ai_version"] == "2026.9.6"
    return result["turns"]


def tool_calls_of(message: dict) -> list[dict]:
    return [block for block in message["content"] if block["type"] == "toolCall"]


def tool_results_reaching_the_model(fake_api) -> list[dict]:
    """The continuation as Claude Code sent it: the blocks of the second main request's last (user) message."""
    requests = fake_api.main_requests()
    assert len(requests) == 2, "the tool results must continue the same Claude Code run, not start a new one"
    *_, asked, last = requests[1]["messages"]
    assert last["role"] == "user" and asked["role"] == "assistant"
    # The run's own tool_use turn precedes the results (a fresh run would carry the history as text instead).
    assert sorted(b["id"] for b in asked["content"] if b["type"] == "tool_use") == sorted(
        b.get("tool_use_id") for b in last["content"])
    return last["content"]


@pytest.mark.parametrize("host", ["openclaw", "inert"], ids=["app-host", "library-host"])
def test_openclaw_agent_tool_cycle(make_proxy, fake_api, host: str) -> None:
    proxy = make_proxy()
    first, second, *more = tool_cycle(proxy, WEATHER_CALL, "--system", "You are OpenClaw.", "--host", host)
    assert not more

    sent = first["request"]
    assert sorted(tool["function"]["name"] for tool in sent["tools"]) == ["get_time", "get_weather"]
    assert sent["messages"][0] == {"role": "system", "content": "You are OpenClaw."}
    assert sent.get("tool_choice") == ("auto" if host == "openclaw" else None)  # the app's proxy-like endpoints
    message = first["message"]
    assert message["errorMessage"] is None, message["errorMessage"]
    assert message["stopReason"] == "toolUse"
    [call] = tool_calls_of(message)
    assert (call["name"], call["arguments"]) == ("get_weather", {"city": "Paris"})
    assert call["id"]
    assert "toolcall_start" in first["events"] and "toolcall_end" in first["events"]
    assert sorted(t["name"] for t in fake_api.main_requests()[0]["tools"] if t["name"].startswith("mcp__")) == [
        "mcp__tools__get_time", "mcp__tools__get_weather"]

    # OpenClaw's follow-up: the history with its assistant toolCall message and the toolResult as a tool message.
    follow_up = second["request"]["messages"]
    assert follow_up[:2] == sent["messages"]
    assert follow_up[2]["role"] == "assistant"
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in follow_up[2]["tool_calls"]] == [(call["id"], "get_weather", {"city": "Paris"})]
    assert follow_up[3:] == [{"role": "tool", "content": "21C sunny", "tool_call_id": call["id"]}]

    answer = second["message"]
    assert answer["errorMessage"] is None, answer["errorMessage"]
    assert answer["stopReason"] == "stop"
    assert answer["content"] == [{"type": "text", "text": "Tool said: 21C sunny"}]

    [result_block] = tool_results_reaching_the_model(fake_api)  # a native tool_result, not the result as text
    assert result_block["type"] == "tool_result" and result_block["tool_use_id"] == call["id"]
    assert result_block["content"] == [{"type": "text", "text": "21C sunny"}]
    assert not result_block.get("is_error")
    assert fake_api.main_requests()[0]["system"][-1]["text"].endswith("You are OpenClaw.")


def test_openclaw_agent_parallel_tool_calls(make_proxy, fake_api) -> None:
    proxy = make_proxy()
    first, second = tool_cycle(proxy, f"{WEATHER_CALL} [[tool:get_time]]", "--result", "get_weather=rain")
    message = first["message"]
    assert message["errorMessage"] is None, message["errorMessage"]
    assert message["stopReason"] == "toolUse"
    calls = tool_calls_of(message)
    assert [(c["name"], c["arguments"]) for c in calls] == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert len({c["id"] for c in calls}) == 2

    assert [(m["role"], m.get("tool_call_id"), m.get("content")) for m in second["request"]["messages"][-2:]] == [
        ("tool", calls[0]["id"], "rain"), ("tool", calls[1]["id"], "noon")]
    answer = second["message"]
    assert answer["errorMessage"] is None, answer["errorMessage"]
    assert (answer["stopReason"], answer["content"]) == ("stop", [{"type": "text", "text": "Tool said: rain | noon"}])

    blocks = tool_results_reaching_the_model(fake_api)  # in completion order, which the bridge does not fix
    assert [b["type"] for b in blocks] == ["tool_result", "tool_result"]
    assert {b["tool_use_id"]: b["content"] for b in blocks} == {
        calls[0]["id"]: [{"type": "text", "text": "rain"}], calls[1]["id"]: [{"type": "text", "text": "noon"}]}


# ── LangChain ChatOpenAI ──


def chat_model(proxy, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(base_url=proxy.url + "/v1", api_key="unused", model="claude-code", max_retries=0, timeout=60,
                      **kwargs)


def assert_langchain_usage(usage_metadata: dict) -> None:
    assert usage_metadata["input_tokens"] == PROMPT_TOKENS
    assert usage_metadata["output_tokens"] == COMPLETION_TOKENS
    assert usage_metadata["total_tokens"] == PROMPT_TOKENS + COMPLETION_TOKENS
    assert usage_metadata["input_token_details"] == {"cache_read": CACHED, "cache_creation": WRITTEN}


def test_langchain_invoke(make_proxy, fake_api) -> None:
    message = chat_model(make_proxy()).invoke([SystemMessage("You are LangChain."), HumanMessage(f"{USAGE} hi")])
    assert message.content == ANSWER
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.response_metadata["model_name"] == "claude-code"
    assert_langchain_usage(message.usage_metadata)
    assert system_prompt_of(fake_api).endswith("You are LangChain.")


def test_langchain_stream_with_usage(make_proxy) -> None:
    chunks = list(chat_model(make_proxy(), stream_usage=True).stream(f"{USAGE} hi"))
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    assert len([chunk for chunk in chunks if chunk.content]) >= 2
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.content == ANSWER
    assert merged.response_metadata["finish_reason"] == "stop"
    assert len([chunk for chunk in chunks if chunk.usage_metadata]) == 1
    assert_langchain_usage(merged.usage_metadata)


# ── OpenAI Python SDK, strict response validation ──


def strict_client(proxy) -> openai.OpenAI:
    return proxy.client(_strict_response_validation=True)


def test_openai_python_strict_streamed_answer_with_usage(make_proxy) -> None:
    stream = strict_client(make_proxy()).chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": f"{USAGE} hi"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == []
    assert_openai_usage(chunks[-1].usage.model_dump())


def test_openai_python_strict_non_streamed_answer_with_usage(make_proxy) -> None:
    completion = strict_client(make_proxy()).chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": f"{USAGE} hi"}])
    assert completion.choices[0].message.content == ANSWER and completion.choices[0].finish_reason == "stop"
    assert_openai_usage(completion.usage.model_dump())


def test_openai_python_strict_thinking_answer(make_proxy) -> None:
    client = strict_client(make_proxy())
    chunks = list(client.chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "[[think]] hi"}], stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.model_extra.get("reasoning_content") or "" for d in deltas) == "Let me think."
    assert "".join(d.content or "" for d in deltas) == ANSWER

    completion = client.chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "[[think]] hi"}])
    message = completion.choices[0].message
    assert message.content == ANSWER and message.model_extra["reasoning_content"] == "Let me think."
