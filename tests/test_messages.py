"""The Anthropic Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`, issue 13) end to end.

Every test drives the real Claude Code CLI against the scripted fake Anthropic API (tests/fake_anthropic.py):
- the `anthropic` Python SDK's `messages.create` and `messages.stream`: text, usage with Anthropic's semantics
  (input_tokens is the fresh input only), system as a string and as blocks, base64 and URL images, Claude's thinking
  as thinking blocks, real model ids passed on to Claude Code;
- client tools: `tool_use` blocks with the client's names and `stop_reason: "tool_use"`; the next request's
  `tool_result` blocks continue the same Claude Code run and reach the fake as native tool_result blocks, `is_error`
  preserved (the fake shows an error result as ERROR(<text>));
- `count_tokens`: an estimate that starts no process and sends nothing upstream;
- errors in Anthropic's shape: 400, 401 (the token as x-api-key, as the AI SDK sends it, or as Bearer, as the
  anthropic SDK 2.13 sends its api_key), 404, 429 with retry-after, 529;
- the raw SSE: `event:` matching the data's `type`, every event a standard one (validated against the SDK's
  `RawMessageStreamEvent`), message_start → blocks (start, deltas, stop) → message_delta → message_stop;
- a second, independent client: the Vercel AI SDK's `@ai-sdk/anthropic` (tests/clients/ai_sdk.mjs --provider
  anthropic), text and a tool cycle with execute.
"""

from __future__ import annotations

import base64
import json

import anthropic
import httpx
import pydantic
import pytest
from anthropic.types import RawMessageStreamEvent
from helpers import assert_ai_sdk_weather_cycle, native_tool_results, result_text, run_node, system_prompt_of, tiny_png

ANSWER = "Hello from fake model."
TOOL_TEXT = "I'll run a command."  # what the fake says before its tool_use blocks
USAGE = "[[usage:100,7,50,25]]"  # input 100, output 7, cache read 50, cache write 25
FRESH_INPUT, OUTPUT_TOKENS, CACHE_READ, CACHE_WRITE = 100, 7, 50, 25
WEATHER_CALL = '[[tool:get_weather:{"city":"Paris"}]]'
WEATHER = {"name": "get_weather", "description": "Current weather of a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TIME = {"name": "get_time", "description": "The current time", "input_schema": {"type": "object", "properties": {}}}
STREAM_EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               502: "api_error", 529: "overloaded_error"}


# ── helpers ──


def messages_client(proxy, **kwargs: object) -> anthropic.Anthropic:
    """The anthropic SDK on the proxy. Version 2.13.0 sends its api_key as `Authorization: Bearer` (not x-api-key)
    and `anthropic-version: 2026-10-21`; an explicit api_key keeps ANTHROPIC_* variables out of it."""
    kwargs.setdefault("api_key", proxy.env.get("CLAUDE_PROXY_TOKEN") or "unused")
    return anthropic.Anthropic(base_url=proxy.url, max_retries=0, timeout=120, **kwargs)


def create(client: anthropic.Anthropic, content: object, **kwargs: object) -> anthropic.types.Message:
    kwargs.setdefault("messages", [{"role": "user", "content": content}])
    kwargs.setdefault("model", "claude-code")
    return client.messages.create(max_tokens=1024, **kwargs)


def assert_usage(usage) -> None:
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens,
            usage.cache_creation_input_tokens) == (FRESH_INPUT, OUTPUT_TOKENS, CACHE_READ, CACHE_WRITE)


def blocks_of(message) -> list[tuple]:
    """The content as comparable tuples: (type, text / thinking / (name, input))."""
    shown = []
    for block in message.content:
        if block.type == "text":
            shown.append(("text", block.text))
        elif block.type == "thinking":
            shown.append(("thinking", block.thinking))
        else:
            shown.append((block.type, block.name, block.input))
    return shown


def assistant_turn(message) -> dict:
    """The assistant message to send back, as SDK users do: the response's content blocks as params."""
    return {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in message.content]}


def post_json(proxy, path: str, body: object, **kwargs: object) -> httpx.Response:
    headers = {"anthropic-version": "2023-06-01", "x-api-key": proxy.env.get("CLAUDE_PROXY_TOKEN") or "unused",
               **kwargs.pop("headers", {})}
    return httpx.post(proxy.url + path, json=body, headers=headers, timeout=120, **kwargs)


def anthropic_error(response: httpx.Response, status: int) -> dict:
    """The Anthropic error body of a response: {"type": "error", "error": {"type", "message"}, "request_id"?}."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body) <= {"type", "error", "request_id"}, body
    assert set(body["error"]) == {"type", "message"} and body["error"]["message"], body
    assert body["error"]["type"] == ERROR_TYPES[status]
    return body["error"]


# ── the anthropic SDK: text, usage, system, images, thinking ──


def test_create_answers_with_text_and_usage(make_proxy, fake_api) -> None:
    message = create(messages_client(make_proxy()), f"{USAGE} hi")
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", "claude-code")
    assert blocks_of(message) == [("text", ANSWER)]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert_usage(message.usage)  # input_tokens is the fresh input only, as Anthropic counts it
    [request] = fake_api.main_requests()
    assert request["messages"][0]["content"][-1]["text"] == f"{USAGE} hi"


def test_stream_streams_text_and_usage(make_proxy) -> None:
    client = messages_client(make_proxy())
    with client.messages.stream(model="claude-code", max_tokens=1024,
                                messages=[{"role": "user", "content": f"{USAGE} hi"}]) as stream:
        deltas = list(stream.text_stream)
        message = stream.get_final_message()
    assert len(deltas) >= 2 and "".join(deltas) == ANSWER  # really streamed, in pieces
    assert message.id.startswith("msg_") and message.model == "claude-code"
    assert blocks_of(message) == [("text", ANSWER)]
    assert message.stop_reason == "end_turn"
    assert_usage(message.usage)


@pytest.mark.parametrize("system", [
    pytest.param("You are an Anthropic client.", id="string"),
    pytest.param([{"type": "text", "text": "First rule."},
                  {"type": "text", "text": "You are an Anthropic client.", "cache_control": {"type": "ephemeral"}}],
                 id="blocks"),
])
def test_system_reaches_the_system_prompt(make_proxy, fake_api, system: object) -> None:
    message = create(messages_client(make_proxy()), "[[reply:OK]] hi", system=system)
    assert blocks_of(message) == [("text", "OK")]
    prompt = system_prompt_of(fake_api)
    assert prompt.endswith("You are an Anthropic client.")  # append mode: after Claude Code's own
    if isinstance(system, list):
        assert prompt.index("First rule.") < prompt.index("You are an Anthropic client.")


def test_a_real_model_id_is_passed_to_claude_code(make_proxy, fake_api) -> None:
    message = create(messages_client(make_proxy()), "hi", model="claude-opus-4-8")
    assert message.model == "claude-opus-4-8" and blocks_of(message) == [("text", ANSWER)]
    assert fake_api.main_requests()[0]["model"] == "claude-opus-4-8"


def test_a_base64_image_reaches_claude_as_an_image_block(make_proxy, fake_api) -> None:
    png = tiny_png()
    create(messages_client(make_proxy()), [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(png).decode()}},
    ])
    blocks = [b for m in fake_api.main_requests()[0]["messages"] if m["role"] == "user" for b in m["content"]]
    images = [b for b in blocks if b["type"] == "image"]
    assert [(i["source"]["type"], i["source"]["media_type"], base64.b64decode(i["source"]["data"]))
            for i in images] == [("base64", "image/png", png)]
    assert any(b["type"] == "text" and "What is in this image?" in b["text"] for b in blocks)


def test_an_image_url_is_refused_unless_fetching_is_enabled(make_proxy, fake_api) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        create(messages_client(make_proxy()), [
            {"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}])
    assert raised.value.body["error"]["type"] == "invalid_request_error"
    assert "CLAUDE_FETCH_IMAGES" in raised.value.body["error"]["message"]
    assert fake_api.main_requests() == []


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
def test_thinking_becomes_thinking_blocks(make_proxy, streamed: bool) -> None:
    client = messages_client(make_proxy())
    request = {"model": "claude-code", "max_tokens": 4096, "thinking": {"type": "enabled", "budget_tokens": 1024},
               "messages": [{"role": "user", "content": "[[think]] hi"}]}
    if streamed:
        with client.messages.stream(**request) as stream:
            events = list(stream)
            message = stream.get_final_message()
        thinking = "".join(e.delta.thinking for e in events
                           if e.type == "content_block_delta" and e.delta.type == "thinking_delta")
        assert thinking == "Let me think."
        assert any(e.type == "content_block_delta" and e.delta.type == "signature_delta" for e in events)
    else:
        message = client.messages.create(**request)
    assert blocks_of(message) == [("thinking", "Let me think."), ("text", ANSWER)]
    assert isinstance(message.content[0].signature, str) and message.content[0].signature


# ── client tools through the native bridge ──


def test_tool_round_trip_with_an_error_result(make_proxy, fake_api) -> None:
    client = messages_client(make_proxy())
    conversation = [{"role": "user", "content": f"{WEATHER_CALL} [[tool:get_time]]"}]
    first = create(client, None, messages=conversation, tools=[WEATHER, TIME])
    assert first.stop_reason == "tool_use"
    assert blocks_of(first) == [("text", TOOL_TEXT), ("tool_use", "get_weather", {"city": "Paris"}),
                                ("tool_use", "get_time", {})]  # the client's names, no mcp__ prefix
    weather, time_ = first.content[1:]
    assert weather.id.startswith("toolu_") and time_.id.startswith("toolu_") and weather.id != time_.id
    assert sorted(t["name"] for t in fake_api.main_requests()[0]["tools"] if t["name"].startswith("mcp__")) == [
        "mcp__tools__get_time", "mcp__tools__get_weather"]

    conversation += [assistant_turn(first), {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": weather.id, "content": [{"type": "text", "text": "21C sunny"}]},
        {"type": "tool_result", "tool_use_id": time_.id, "content": "clock broken", "is_error": True}]}]
    second = create(client, None, messages=conversation, tools=[WEATHER, TIME])
    assert blocks_of(second) == [("text", "Tool said: 21C sunny | ERROR(clock broken)")]
    assert second.stop_reason == "end_turn"

    results = {b["tool_use_id"]: b for b in native_tool_results(fake_api)}
    assert (result_text(results[weather.id]), bool(results[weather.id].get("is_error"))) == ("21C sunny", False)
    assert (result_text(results[time_.id]), results[time_.id].get("is_error")) == ("clock broken", True)


def test_tool_round_trip_streamed(make_proxy, fake_api) -> None:
    client = messages_client(make_proxy())
    conversation = [{"role": "user", "content": "[[tool:get_time]]"}]
    with client.messages.stream(model="claude-code", max_tokens=1024, messages=conversation, tools=[TIME]) as stream:
        events = list(stream)
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    assert blocks_of(first) == [("text", TOOL_TEXT), ("tool_use", "get_time", {})]
    [start] = [e for e in events if e.type == "content_block_start" and e.content_block.type == "tool_use"]
    assert start.content_block.name == "get_time" and start.content_block.id == first.content[1].id

    conversation += [assistant_turn(first), {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": first.content[1].id, "content": "noon"}]}]
    with client.messages.stream(model="claude-code", max_tokens=1024, messages=conversation, tools=[TIME]) as stream:
        deltas = list(stream.text_stream)
        second = stream.get_final_message()
    assert "".join(deltas) == "Tool said: noon" and len(deltas) >= 2
    assert second.stop_reason == "end_turn"
    [result] = native_tool_results(fake_api)
    assert result["tool_use_id"] == first.content[1].id and result_text(result) == "noon"
    assert not result.get("is_error")


def test_tool_choice_none_offers_no_tools(make_proxy, fake_api) -> None:
    message = create(messages_client(make_proxy()), "[[tool:get_time]]", tools=[TIME], tool_choice={"type": "none"})
    assert blocks_of(message) == [("text", "NO TOOL get_time")] and message.stop_reason == "end_turn"
    assert not any(t["name"].startswith("mcp__") for t in fake_api.main_requests()[0].get("tools", []))


def test_server_tools_are_ignored(make_proxy, fake_api) -> None:
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
             {"type": "bash_20250124", "name": "bash"}, {**TIME, "type": "custom"}]
    message = create(messages_client(make_proxy()), "[[tool:get_time]]", tools=tools)
    assert blocks_of(message)[-1] == ("tool_use", "get_time", {})
    assert [t["name"] for t in fake_api.main_requests()[0]["tools"] if t["name"].startswith("mcp__")] == [
        "mcp__tools__get_time"]


# ── count_tokens ──


def test_count_tokens_is_a_local_estimate(make_proxy, fake_api) -> None:
    proxy = make_proxy()
    client = messages_client(proxy)
    small = client.messages.count_tokens(model="claude-code", messages=[{"role": "user", "content": "hi"}])
    big = client.messages.count_tokens(
        model="claude-code", system="You are a counting client.", tools=[WEATHER, TIME],
        messages=[{"role": "user", "content": "word " * 2000}, {"role": "assistant", "content": "ok"},
                  {"role": "user", "content": [{"type": "text", "text": "more"}]}])
    assert isinstance(small.input_tokens, int) and small.input_tokens > 0
    assert big.input_tokens > small.input_tokens + 1000  # ~2000 words counted, not a constant
    for _ in range(20):  # clients call it often: each call stays local
        assert client.messages.count_tokens(model="claude-code", messages=[
            {"role": "user", "content": "hi"}]).input_tokens == small.input_tokens
    assert proxy.children() == [], "count_tokens started a process"
    assert fake_api.requests == [] and fake_api.other_requests == [], "count_tokens went upstream"


def test_count_tokens_errors_in_the_anthropic_shape(make_proxy) -> None:
    proxy = make_proxy(claude_proxy_token="count-secret")
    anthropic_error(post_json(proxy, "/v1/messages/count_tokens",
                              {"model": "claude-code", "messages": [{"role": "user", "content": "hi"}]},
                              headers={"x-api-key": "wrong"}), 401)
    anthropic_error(post_json(proxy, "/v1/messages/count_tokens", {"model": "claude-code", "messages": "hi"}), 400)
    assert proxy.children() == []


# ── errors ──


def test_a_token_is_required_when_set(make_proxy, fake_api) -> None:
    proxy = make_proxy(claude_proxy_token="messages-secret")
    with pytest.raises(anthropic.AuthenticationError) as raised:
        create(messages_client(proxy, api_key="wrong"), "hi")
    assert raised.value.status_code == 401 and raised.value.body["error"]["type"] == "authentication_error"
    body = {"model": "claude-code", "max_tokens": 10, "messages": [{"role": "user", "content": "[[reply:key]] hi"}]}
    for headers in ({}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}):
        anthropic_error(httpx.post(proxy.url + "/v1/messages", json=body, timeout=30,
                                   headers={"anthropic-version": "2023-06-01", **headers}), 401)
    assert fake_api.main_requests() == []
    assert blocks_of(create(messages_client(proxy), "hi")) == [("text", ANSWER)]  # the SDK: Authorization: Bearer
    by_key = httpx.post(proxy.url + "/v1/messages", json=body, timeout=120,
                        headers={"anthropic-version": "2023-06-01", "x-api-key": "messages-secret"})
    assert by_key.status_code == 200, by_key.text
    assert [(b["type"], b["text"]) for b in by_key.json()["content"]] == [("text", "key")]


def test_an_unknown_model_is_a_404(make_proxy, fake_api) -> None:
    with pytest.raises(anthropic.NotFoundError) as raised:
        create(messages_client(make_proxy()), "hi", model="gpt-4o")
    assert raised.value.body["type"] == "error" and raised.value.body["error"]["type"] == "not_found_error"
    assert "gpt-4o" in raised.value.body["error"]["message"]
    assert fake_api.main_requests() == []


@pytest.mark.parametrize("body", [
    pytest.param({"model": "claude-code", "max_tokens": 10, "messages": "hi"}, id="messages-not-a-list"),
    pytest.param({"model": "claude-code", "max_tokens": 10}, id="no-messages"),
    pytest.param({"model": "claude-code", "max_tokens": 10, "messages": []}, id="no-user-message"),
    pytest.param({"model": "claude-code", "max_tokens": 10, "messages": [{"role": "user", "content": 42}]},
                 id="bad-content"),
    pytest.param({"model": "claude-code", "max_tokens": 10, "system": 5,
                  "messages": [{"role": "user", "content": "hi"}]}, id="bad-system"),
    pytest.param([{"role": "user", "content": "hi"}], id="not-an-object"),
])
def test_bad_bodies_are_400_invalid_request_error(make_proxy, fake_api, body: object) -> None:
    anthropic_error(post_json(make_proxy(), "/v1/messages", body), 400)
    assert fake_api.main_requests() == []


def test_invalid_json_is_a_400(make_proxy) -> None:
    response = httpx.post(make_proxy().url + "/v1/messages", content=b'{"model": "claude-code", "messages": [',
                          headers={"content-type": "application/json"}, timeout=30)
    anthropic_error(response, 400)


def test_an_upstream_rate_limit_is_a_429_with_retry_after(make_proxy) -> None:
    with pytest.raises(anthropic.RateLimitError) as raised:
        create(messages_client(make_proxy()), "[[error:429]] hi")
    assert raised.value.status_code == 429
    assert raised.value.body["type"] == "error" and raised.value.body["error"]["type"] == "rate_limit_error"
    assert int(raised.value.response.headers["retry-after"]) >= 0


def test_an_upstream_overload_is_a_529(make_proxy) -> None:
    with pytest.raises(anthropic.APIStatusError) as raised:
        create(messages_client(make_proxy()), "[[error:529]] hi")
    assert raised.value.status_code == 529
    assert raised.value.body["error"]["type"] == "overloaded_error"


def test_an_upstream_rate_limit_while_streaming(make_proxy) -> None:
    """A 429 before the headers, or an `event: error` once the stream started: the SDK raises either way."""
    client = messages_client(make_proxy())
    with pytest.raises(anthropic.APIStatusError) as raised:
        with client.messages.stream(model="claude-code", max_tokens=1024,
                                    messages=[{"role": "user", "content": "[[error:429]] hi"}]) as stream:
            list(stream)
    assert raised.value.body["type"] == "error" and raised.value.body["error"]["type"] == "rate_limit_error"


# ── the raw event stream ──


def sse_events(response: httpx.Response) -> list[dict]:
    """The data of each SSE frame, checking that its `event:` line names the data's type; pings dropped."""
    events = []
    for raw in response.text.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in raw.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        [event] = [line[len("event:"):].strip() for line in lines if line.startswith("event:")]
        data = json.loads("\n".join(line[len("data:"):].lstrip() for line in lines if line.startswith("data:")))
        assert data["type"] == event, (event, data)
        if event != "ping":
            STREAM_EVENT.validate_python(data)  # a standard event with all its required fields
            events.append(data)
    return events


def stream_raw(proxy, content: str, **body: object) -> list[dict]:
    response = post_json(proxy, "/v1/messages", {"model": "claude-code", "max_tokens": 1024, "stream": True,
                                                 "messages": [{"role": "user", "content": content}], **body})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in response.text
    return sse_events(response)


def check_block_events(events: list[dict]) -> list[tuple[dict, list[dict]]]:
    """The content blocks as (content_block_start's block, its deltas): each block is start, deltas, stop, at
    consecutive indexes from 0, never interleaved."""
    blocks = []
    while events:
        start = events[0]
        assert start["type"] == "content_block_start" and start["index"] == len(blocks), start
        stop = next(i for i, e in enumerate(events) if e["type"] == "content_block_stop")
        deltas = events[1:stop]
        assert all(e["type"] == "content_block_delta" and e["index"] == start["index"] for e in deltas), deltas
        assert events[stop]["index"] == start["index"]
        blocks.append((start["content_block"], [e["delta"] for e in deltas]))
        events = events[stop + 1:]
    return blocks


def check_message_events(events: list[dict], stop_reason: str) -> tuple[dict, list[tuple[dict, list[dict]]]]:
    types = [e["type"] for e in events]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"], types
    message = events[0]["message"]
    assert message["id"].startswith("msg_") and (message["type"], message["role"]) == ("message", "assistant")
    assert message["content"] == [] and message["stop_reason"] is None and message["model"] == "claude-code"
    delta = events[-2]
    assert delta["delta"]["stop_reason"] == stop_reason and delta["delta"].get("stop_sequence") is None
    usage = {**message["usage"], **{k: v for k, v in delta["usage"].items() if v is not None}}
    return usage, check_block_events(events[1:-2])


def test_raw_stream_of_a_text_answer(make_proxy) -> None:
    usage, [(block, deltas)] = check_message_events(stream_raw(make_proxy(), f"{USAGE} hi"), "end_turn")
    assert (block["type"], block["text"]) == ("text", "")
    assert {d["type"] for d in deltas} == {"text_delta"} and len(deltas) >= 2
    assert "".join(d["text"] for d in deltas) == ANSWER
    assert (usage["input_tokens"], usage["output_tokens"], usage["cache_read_input_tokens"],
            usage["cache_creation_input_tokens"]) == (FRESH_INPUT, OUTPUT_TOKENS, CACHE_READ, CACHE_WRITE)


def test_raw_stream_with_thinking(make_proxy) -> None:
    _, blocks = check_message_events(stream_raw(make_proxy(), "[[think]] hi"), "end_turn")
    [(thinking, thinking_deltas), (text, text_deltas)] = blocks
    assert thinking["type"] == "thinking" and text["type"] == "text"
    assert "".join(d["thinking"] for d in thinking_deltas if d["type"] == "thinking_delta") == "Let me think."
    assert [d["type"] for d in thinking_deltas][-1] == "signature_delta" and thinking_deltas[-1]["signature"]
    assert "".join(d["text"] for d in text_deltas) == ANSWER


def test_raw_stream_of_a_tool_call(make_proxy) -> None:
    _, blocks = check_message_events(stream_raw(make_proxy(), WEATHER_CALL, tools=[WEATHER]), "tool_use")
    [(text, text_deltas), (tool_use, input_deltas)] = blocks
    assert "".join(d["text"] for d in text_deltas) == TOOL_TEXT
    assert (tool_use["type"], tool_use["name"], tool_use["input"]) == ("tool_use", "get_weather", {})
    assert tool_use["id"].startswith("toolu_")
    assert {d["type"] for d in input_deltas} == {"input_json_delta"}
    assert json.loads("".join(d["partial_json"] for d in input_deltas)) == {"city": "Paris"}


# ── the Vercel AI SDK's Anthropic provider ──


def assert_ai_sdk_usage(usage: dict) -> None:
    assert (usage["inputTokens"], usage["outputTokens"], usage["totalTokens"]) == (
        FRESH_INPUT + CACHE_READ + CACHE_WRITE, OUTPUT_TOKENS, FRESH_INPUT + CACHE_READ + CACHE_WRITE + OUTPUT_TOKENS)
    details = usage["inputTokenDetails"]
    assert (details["noCacheTokens"], details["cacheReadTokens"], details["cacheWriteTokens"]) == (
        FRESH_INPUT, CACHE_READ, CACHE_WRITE)


@pytest.mark.parametrize("mode", ["generate", "stream"])
def test_ai_sdk_anthropic_text(make_proxy, fake_api, mode: str) -> None:
    proxy = make_proxy(claude_proxy_token="ai-sdk-secret")
    result = run_node("ai_sdk.mjs", "--provider", "anthropic", mode, proxy.url + "/v1", f"{USAGE} hi", "--system",
                      "You are the AI SDK.", api_key="ai-sdk-secret")
    assert (result["ai_version"], result["provider_version"]) == ("7.0.173", "4.0.105")
    assert "errors" not in result, result.get("errors")
    [request] = result["requests"]
    assert request["url"] == proxy.url + "/v1/messages"
    assert request["headers"]["x-api-key"] == "ai-sdk-secret" and request["headers"]["anthropic-version"]
    assert request["body"]["max_tokens"] >= 64000  # its default for an unknown model; accepted
    assert (result["text"], result["finish_reason"]) == (ANSWER, "stop")
    assert result["response_id"].startswith("msg_")
    assert_ai_sdk_usage(result["usage"])
    if mode == "stream":
        assert len(result["deltas"]) >= 2 and "".join(result["deltas"]) == ANSWER
    assert system_prompt_of(fake_api).endswith("You are the AI SDK.")


@pytest.mark.parametrize("streamed", [False, True], ids=["generateText", "streamText"])
def test_ai_sdk_anthropic_tool_cycle(make_proxy, fake_api, streamed: bool) -> None:
    args = ["--stream"] if streamed else []
    result = run_node("ai_sdk.mjs", "--provider", "anthropic", "tools", make_proxy().url + "/v1", WEATHER_CALL, *args)
    call = assert_ai_sdk_weather_cycle(result)

    sent = result["requests"][0]["body"]["tools"]
    assert [t["name"] for t in sent] == ["get_weather"]
    if streamed:
        assert sent[0]["eager_input_streaming"] is True  # a tool field the proxy must accept
    follow_up = result["requests"][1]["body"]["messages"]
    assert [m["role"] for m in follow_up] == ["user", "assistant", "user"]
    assert follow_up[2]["content"] == [{"type": "tool_result", "tool_use_id": call["id"], "content": "21C sunny"}]
    [block] = native_tool_results(fake_api)
    assert block["tool_use_id"] == call["id"] and result_text(block) == "21C sunny"
