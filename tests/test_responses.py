"""The OpenAI Responses API (`POST /v1/responses`, issue 12) end to end with real clients.

Every test drives the real Claude Code CLI against the scripted fake Anthropic API (tests/fake_anthropic.py):
- openai-python's `responses.create` (strict response validation) and `responses.stream` (whose accumulator checks
  item identities and order): text, usage, instructions reaching the system prompt, reasoning from Claude's thinking,
  function-call round trips whose output reaches the fake as a native `tool_result`, `previous_response_id` (a known
  id resumes the Claude Code session and sends only the new input; an unknown one is a 400), errors in the OpenAI
  shape;
- the raw SSE: every frame a standard event (validated against openai-python's `ResponseStreamEvent`) with `type`
  matching its `event:` line and a strictly increasing `sequence_number`, the exact order per output item, lifecycle
  events wrapping `response`, `response.completed` last and no `[DONE]`;
- hosted and unknown tool types (`web_search`, `custom`, `local_shell`, `namespace`) are ignored, never a 400;
- Cursor's shape: a body with `input` and no `messages` posted to /v1/chat/completions gets a Chat Completions
  answer, streamed or not;
- the Vercel AI SDK's default provider (`openai(id)` is the Responses model; tests/clients/ai_sdk.mjs),
  the OpenAI Agents SDK's default Responses model, and the Codex CLI (`codex exec`, also a round trip through one
  of Codex's own tools, which Codex runs).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import typing
from pathlib import Path

import httpx
import openai
import pytest
from helpers import (
    assert_ai_sdk_weather_cycle,
    cli_processes,
    native_tool_results,
    result_text,
    run_node,
    system_prompt_of,
    turn_texts,
)
from openai.types.responses import Response, ResponseStreamEvent
from proxy_harness import CODEX_BIN, codex_environment

ANSWER = "Hello from fake model."
TOOL_TEXT = "I'll run a command."  # what the fake says before its tool_use blocks
USAGE = "[[usage:100,7,50,25]]"  # input 100, output 7, cache read 50, cache write 25
INPUT_TOKENS, CACHED, WRITTEN, OUTPUT_TOKENS = 175, 50, 25, 7  # input_tokens = input + cache read + cache write
WEATHER_CALL = '[[tool:get_weather:{"city":"Paris"}]]'
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}
TIME = {"type": "function", "name": "get_time", "description": "The current time",
        "parameters": {"type": "object", "properties": {}}}


def _event_models() -> dict[str, type]:
    """openai-python's model of each standard stream event, by its type."""
    union = typing.get_args(ResponseStreamEvent)[0]  # Annotated[Union[...], discriminator]
    return {typing.get_args(model.model_fields["type"].annotation)[0]: model for model in typing.get_args(union)}


EVENT_MODELS = _event_models()


# ── helpers ──


def strict_client(proxy) -> openai.OpenAI:
    return proxy.client(_strict_response_validation=True)


def create(client: openai.OpenAI, input: object, **kwargs: object) -> Response:
    return client.responses.create(model="claude-code", input=input, **kwargs)


def assert_usage(usage) -> None:
    assert (usage.input_tokens, usage.input_tokens_details.cached_tokens, usage.input_tokens_details.cache_write_tokens,
            usage.output_tokens, usage.total_tokens) == (
        INPUT_TOKENS, CACHED, WRITTEN, OUTPUT_TOKENS, INPUT_TOKENS + OUTPUT_TOKENS)


def assert_message(item, text: str) -> None:
    assert (item.type, item.role, item.status) == ("message", "assistant", "completed")
    assert item.id.startswith("msg_")
    assert [(part.type, part.text, part.annotations) for part in item.content] == [("output_text", text, [])]


def function_calls(response: Response) -> list:
    return [item for item in response.output if item.type == "function_call"]


def sse_frames(response: httpx.Response) -> list[tuple[str | None, str]]:
    """The SSE frames of a streamed body as (event name, data text); comment-only frames (keep-alives) dropped."""
    frames = []
    for raw in response.text.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in raw.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        event = next((line[len("event:"):].strip() for line in lines if line.startswith("event:")), None)
        data = "\n".join(line[len("data:"):].lstrip() for line in lines if line.startswith("data:"))
        frames.append((event, data))
    return frames


def post_json(proxy, path: str, body: dict, **kwargs: object) -> httpx.Response:
    return httpx.post(proxy.url + path, json=body, timeout=120, **kwargs)


def stream_events(proxy, body: dict) -> list[dict]:
    """POST a streamed /v1/responses body; check each frame's framing and return the events' data in order."""
    response = post_json(proxy, "/v1/responses", {"model": "claude-code", "stream": True, **body})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = sse_frames(response)
    assert frames and all(data != "[DONE]" for _, data in frames), "the Responses stream has no [DONE]"
    events = []
    for event, data in frames:
        payload = json.loads(data)
        assert isinstance(payload, dict) and "type" in payload, data
        assert event == payload["type"], f"event: {event} but data type {payload['type']}"
        assert payload["type"] in EVENT_MODELS, f"non-standard event type {payload['type']}"
        EVENT_MODELS[payload["type"]].model_validate(payload)  # with all its required fields
        events.append(payload)
    numbers = [e["sequence_number"] for e in events]
    assert all(isinstance(n, int) for n in numbers) and numbers == sorted(set(numbers)), numbers
    return events


def squeeze(types: list[str]) -> list[str]:
    """Event types with runs of the same delta event collapsed into one."""
    return [t for i, t in enumerate(types) if not (t.endswith(".delta") and i and types[i - 1] == t)]


ITEM_EVENTS = {
    "message": ["response.output_item.added", "response.content_part.added", "response.output_text.delta",
                "response.output_text.done", "response.content_part.done", "response.output_item.done"],
    "function_call": ["response.output_item.added", "response.function_call_arguments.delta",
                      "response.function_call_arguments.done", "response.output_item.done"],
    "reasoning": ["response.output_item.added", "response.reasoning_summary_part.added",
                  "response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
                  "response.reasoning_summary_part.done", "response.output_item.done"],
}


def check_stream(events: list[dict]) -> tuple[dict, list[dict]]:
    """Check the whole event order of a successful stream; return the completed response and the done items."""
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"], types
    assert types[-1] == "response.completed", types
    lifecycle = [e for e in events if e["type"] in ("response.created", "response.in_progress", "response.completed")]
    assert len(lifecycle) == 3
    assert all(e["response"]["object"] == "response" for e in lifecycle)
    assert len({e["response"]["id"] for e in lifecycle}) == 1 and lifecycle[0]["response"]["id"].startswith("resp_")
    assert [e["response"]["status"] for e in lifecycle] == ["in_progress", "in_progress", "completed"]
    items_events = events[2:-1]
    done_items = []
    index = 0
    while items_events:
        added = items_events[0]
        assert added["type"] == "response.output_item.added" and added["output_index"] == index, added
        kind = added["item"]["type"]
        end = next(i for i, e in enumerate(items_events) if e["type"] == "response.output_item.done")
        mine, items_events = items_events[:end + 1], items_events[end + 1:]
        assert squeeze([e["type"] for e in mine]) == ITEM_EVENTS[kind], [e["type"] for e in mine]
        assert all(e["output_index"] == index for e in mine)
        item = mine[-1]["item"]
        assert item["type"] == kind and item["id"] == added["item"]["id"]
        assert item.get("status", "completed") == "completed"
        assert all(e.get("item_id", item["id"]) == item["id"] for e in mine)
        if kind == "message":
            text = "".join(e["delta"] for e in mine if e["type"] == "response.output_text.delta")
            [text_done] = [e for e in mine if e["type"] == "response.output_text.done"]
            [part_done] = [e for e in mine if e["type"] == "response.content_part.done"]
            assert text_done["text"] == part_done["part"]["text"] == text
            assert [(p["type"], p["text"], p["annotations"]) for p in item["content"]] == [("output_text", text, [])]
        elif kind == "function_call":
            arguments = "".join(e["delta"] for e in mine if e["type"] == "response.function_call_arguments.delta")
            [args_done] = [e for e in mine if e["type"] == "response.function_call_arguments.done"]
            assert args_done["arguments"] == item["arguments"] == arguments
        else:
            summary = "".join(e["delta"] for e in mine if e["type"] == "response.reasoning_summary_text.delta")
            [summary_done] = [e for e in mine if e["type"] == "response.reasoning_summary_text.done"]
            assert summary_done["text"] == summary
            assert item["summary"] == [{"type": "summary_text", "text": summary}]
        done_items.append(item)
        index += 1
    completed = lifecycle[-1]["response"]
    assert completed["output"] == done_items, "response.completed carries the complete output items"
    Response.model_validate(completed)
    return completed, done_items


# ── openai-python: text, usage, instructions, reasoning ──


def test_create_answers_with_text_and_usage(make_proxy, fake_api) -> None:
    response = create(strict_client(make_proxy()), f"{USAGE} hi")
    assert response.id.startswith("resp_") and response.object == "response"
    assert (response.status, response.model, response.error, response.incomplete_details) == (
        "completed", "claude-code", None, None)
    [item] = response.output
    assert_message(item, ANSWER)
    assert response.output_text == ANSWER
    assert_usage(response.usage)
    [request] = fake_api.main_requests()
    assert turn_texts(request) == [("user", f"{USAGE} hi")]


def test_stream_helper_streams_text_and_usage(make_proxy) -> None:
    client = strict_client(make_proxy())
    with client.responses.stream(model="claude-code", input=[{"role": "user", "content": f"{USAGE} hi"}]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) >= 2 and "".join(deltas) == ANSWER  # really streamed, in pieces
    assert final.id == events[0].response.id and final.id.startswith("resp_")
    assert final.status == "completed" and final.output_text == ANSWER
    [item] = final.output
    assert_message(item, ANSWER)
    assert_usage(final.usage)


def test_instructions_and_developer_messages_reach_the_system_prompt(make_proxy, fake_api) -> None:
    client = strict_client(make_proxy())
    response = create(client, [{"role": "developer", "content": "Answer briefly."},
                               {"type": "message", "role": "user",
                                "content": [{"type": "input_text", "text": "[[reply:OK]] hi"}]}],
                      instructions="You are a Responses client.")
    assert response.output_text == "OK"
    assert response.instructions == "You are a Responses client."  # the request's parameters are echoed
    system = system_prompt_of(fake_api)
    assert "You are a Responses client." in system and "Answer briefly." in system
    assert turn_texts(fake_api.main_requests()[0]) == [("user", "[[reply:OK]] hi")]


def test_instructions_alone_end_the_system_prompt(make_proxy, fake_api) -> None:
    create(strict_client(make_proxy()), "hi", instructions="You are a Responses client.")
    assert system_prompt_of(fake_api).endswith("You are a Responses client.")  # append mode, after Claude Code's own


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
def test_thinking_becomes_a_reasoning_item(make_proxy, streamed: bool) -> None:
    client = strict_client(make_proxy())
    if streamed:
        with client.responses.stream(model="claude-code", input="[[think]] hi") as stream:
            events = list(stream)
            response = stream.get_final_response()
        summary_deltas = [e.delta for e in events if e.type == "response.reasoning_summary_text.delta"]
        assert "".join(summary_deltas) == "Let me think."
    else:
        response = create(client, "[[think]] hi")
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.id
    assert [(s.type, s.text) for s in reasoning.summary] == [("summary_text", "Let me think.")]
    assert_message(message, ANSWER)
    assert response.output_text == ANSWER  # the reasoning never leaks into the text


# ── openai-python: function calls through the native bridge ──


def test_function_call_round_trip(make_proxy, fake_api) -> None:
    """Not streamed, resending the whole output (what the Agents SDK does) plus the function_call_output."""
    client = strict_client(make_proxy())
    conversation = [{"role": "user", "content": WEATHER_CALL}]
    first = create(client, conversation, tools=[WEATHER, TIME])
    assert first.status == "completed"
    assert [item.type for item in first.output] == ["message", "function_call"]
    assert_message(first.output[0], TOOL_TEXT)
    [call] = function_calls(first)
    assert call.call_id.startswith("toolu_") and call.id
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    assert sorted(t["name"] for t in fake_api.main_requests()[0]["tools"] if t["name"].startswith("mcp__")) == [
        "mcp__tools__get_time", "mcp__tools__get_weather"]

    conversation += [item.model_dump(exclude_none=True) for item in first.output]
    conversation.append({"type": "function_call_output", "call_id": call.call_id, "output": "21C sunny"})
    second = create(client, conversation, tools=[WEATHER, TIME])
    assert second.status == "completed" and second.id != first.id
    [item] = second.output
    assert_message(item, "Tool said: 21C sunny")

    [result] = native_tool_results(fake_api)
    assert result["tool_use_id"] == call.call_id and not result.get("is_error")
    assert result["content"] == [{"type": "text", "text": "21C sunny"}]


def test_function_call_round_trip_streamed(make_proxy, fake_api) -> None:
    """Streamed, resending only the function_call item and its output (the message item left out)."""
    client = make_proxy().client()
    conversation = [{"role": "user", "content": "[[tool:get_time]]"}]
    with client.responses.stream(model="claude-code", input=conversation, tools=[TIME]) as stream:
        events = list(stream)
        first = stream.get_final_response()
    [call] = function_calls(first)
    assert (call.name, call.arguments) == ("get_time", "{}") and call.call_id.startswith("toolu_")
    [done] = [e for e in events if e.type == "response.output_item.done" and e.item.type == "function_call"]
    assert done.item.call_id == call.call_id and done.item.arguments == "{}"  # Codex reads calls only from here
    assert "response.function_call_arguments.done" in [e.type for e in events]

    conversation += [{"type": "function_call", "call_id": call.call_id, "name": "get_time", "arguments": "{}"},
                     {"type": "function_call_output", "call_id": call.call_id, "output": "noon"}]
    with client.responses.stream(model="claude-code", input=conversation, tools=[TIME]) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        second = stream.get_final_response()
    assert second.output_text == "Tool said: noon" and len(deltas) >= 2
    [result] = native_tool_results(fake_api)
    assert result["tool_use_id"] == call.call_id and result["content"] == [{"type": "text", "text": "noon"}]


def test_parallel_function_calls_continue_with_previous_response_id(make_proxy, fake_api) -> None:
    client = strict_client(make_proxy(claude_sessions=1))
    first = create(client, f"{WEATHER_CALL} [[tool:get_time]]", tools=[WEATHER, TIME])
    calls = function_calls(first)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert len({c.call_id for c in calls}) == 2
    outputs = {"get_weather": "rain", "get_time": "noon"}
    second = create(client, [{"type": "function_call_output", "call_id": c.call_id, "output": outputs[c.name]}
                             for c in calls], tools=[WEATHER, TIME], previous_response_id=first.id)
    assert second.output_text == "Tool said: rain | noon"
    assert second.previous_response_id == first.id
    results = native_tool_results(fake_api)
    assert {b["tool_use_id"]: result_text(b) for b in results} == {calls[0].call_id: "rain", calls[1].call_id: "noon"}


# ── previous_response_id ──


def test_previous_response_id_resumes_the_session_with_only_the_new_input(make_proxy, fake_api) -> None:
    proxy = make_proxy(claude_sessions=1)
    client = strict_client(proxy)
    first = create(client, "[[reply:ALPHA]] hi")
    assert first.output_text == "ALPHA"
    [kept] = cli_processes(proxy)
    second = create(client, "[[reply:BETA]] again", previous_response_id=first.id)
    assert second.output_text == "BETA" and second.previous_response_id == first.id
    assert turn_texts(fake_api.main_requests()[-1]) == [
        ("user", "[[reply:ALPHA]] hi"), ("assistant", "ALPHA"), ("user", "[[reply:BETA]] again")]
    assert kept in cli_processes(proxy), "the same Claude Code process answered"
    third = create(client, "[[echo]]", previous_response_id=second.id)
    assert third.output_text == "len=8 tail=[[echo]]"  # exactly the new input reached Claude, not a replay
    assert [role for role, _ in turn_texts(fake_api.main_requests()[-1])] == ["user", "assistant"] * 2 + ["user"]


@pytest.mark.parametrize("sessions", [0, 1], ids=["sessions-off", "sessions-on"])
def test_an_unknown_previous_response_id_is_a_400(make_proxy, fake_api, sessions: int) -> None:
    client = strict_client(make_proxy(claude_sessions=sessions))
    with pytest.raises(openai.BadRequestError) as raised:
        create(client, "hi", previous_response_id="resp_does_not_exist")
    assert raised.value.status_code == 400 and raised.value.code == "previous_response_not_found"
    assert set(raised.value.body) == {"message", "type", "param", "code"}
    assert raised.value.body["type"] == "invalid_request_error"
    assert fake_api.main_requests() == [], "nothing was run"


# ── errors in the Responses shape ──


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def test_unknown_model_is_a_404_model_not_found(make_proxy, fake_api) -> None:
    proxy = make_proxy()
    with pytest.raises(openai.NotFoundError) as raised:
        strict_client(proxy).responses.create(model="gpt-4o", input="hi")
    assert raised.value.code == "model_not_found"
    response = post_json(proxy, "/v1/responses", {"model": "gpt-4o", "input": "hi", "stream": True})
    assert response.status_code == 404 and error_of(response)["code"] == "model_not_found"
    assert fake_api.main_requests() == []


def test_a_token_is_required_when_set(make_proxy) -> None:
    proxy = make_proxy(claude_proxy_token="responses-secret")
    with pytest.raises(openai.AuthenticationError) as raised:
        proxy.client(api_key="wrong").responses.create(model="claude-code", input="hi")
    assert raised.value.status_code == 401 and raised.value.body["type"] == "authentication_error"
    assert error_of(post_json(proxy, "/v1/responses", {"model": "claude-code", "input": "hi"}))["type"] == (
        "authentication_error")
    assert create(proxy.client(), "hi").output_text == ANSWER  # Authorization: Bearer responses-secret


@pytest.mark.parametrize("body", [
    pytest.param({"model": "claude-code", "input": 42}, id="input-not-text-or-items"),
    pytest.param({"model": "claude-code", "input": [{"type": "message", "role": "user", "content": 7}]},
                 id="bad-content"),
    pytest.param([1, 2], id="not-an-object"),
    pytest.param({"model": "claude-code", "input": [{"type": "item_reference", "id": "msg_never_issued"}]},
                 id="unknown-item-reference"),
])
def test_bad_bodies_are_400_in_the_openai_shape(make_proxy, fake_api, body: object) -> None:
    response = post_json(make_proxy(), "/v1/responses", body)
    assert response.status_code == 400, response.text
    assert error_of(response)["type"] == "invalid_request_error"
    assert fake_api.main_requests() == []


def test_invalid_json_is_a_400(make_proxy) -> None:
    response = httpx.post(make_proxy().url + "/v1/responses", content=b'{"model": "claude-code", "input": ',
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 400 and error_of(response)["type"] == "invalid_request_error"


def test_an_upstream_rate_limit_is_a_429_rate_limit_exceeded(make_proxy) -> None:
    proxy = make_proxy()
    with pytest.raises(openai.RateLimitError) as raised:
        strict_client(proxy).responses.create(model="claude-code", input="[[error:429]] hi")
    error = raised.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    message = error.body["message"]
    assert re.search(r"try again in \d+(\.\d+)? ?m?s", message, re.IGNORECASE), message  # Codex parses the delay
    assert int(error.response.headers["retry-after"]) >= 0


def test_an_upstream_rate_limit_while_streaming(make_proxy) -> None:
    """Streamed: a 429 before the headers, or a response.failed event with the code once the stream started."""
    proxy = make_proxy()
    response = post_json(proxy, "/v1/responses", {"model": "claude-code", "input": "[[error:429]] hi", "stream": True})
    if response.status_code != 200:
        assert response.status_code == 429 and error_of(response)["code"] == "rate_limit_exceeded"
        assert "retry-after" in response.headers
        return
    events = [json.loads(data) for _, data in sse_frames(response)]
    assert events[-1]["type"] == "response.failed", [e["type"] for e in events]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "rate_limit_exceeded"
    assert re.search(r"try again in \d+(\.\d+)? ?m?s", failed["error"]["message"], re.IGNORECASE)


# ── the raw event stream ──


def test_raw_stream_of_a_text_answer(make_proxy) -> None:
    events = stream_events(make_proxy(), {"input": f"{USAGE} hi"})
    completed, [item] = check_stream(events)
    assert item["type"] == "message" and item["content"][0]["text"] == ANSWER
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert len(deltas) >= 2 and all(e["logprobs"] == [] for e in deltas)
    assert events[0]["response"]["output"] == [] and events[0]["response"]["model"] == "claude-code"
    assert_usage(Response.model_validate(completed).usage)
    assert completed["status"] == "completed" and completed["error"] is None


def test_raw_stream_with_reasoning(make_proxy) -> None:
    completed, items = check_stream(stream_events(make_proxy(), {"input": "[[think]] hi"}))
    assert [item["type"] for item in items] == ["reasoning", "message"]
    assert items[0]["summary"] == [{"type": "summary_text", "text": "Let me think."}]
    assert items[1]["content"][0]["text"] == ANSWER


def test_raw_stream_of_a_function_call(make_proxy) -> None:
    events = stream_events(make_proxy(), {"input": WEATHER_CALL, "tools": [WEATHER]})
    completed, items = check_stream(events)
    assert [item["type"] for item in items] == ["message", "function_call"]
    call = items[1]
    assert call["call_id"].startswith("toolu_") and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    assert completed["status"] == "completed"
    added = next(e for e in events if e["type"] == "response.output_item.added" and e["output_index"] == 1)
    assert added["item"]["call_id"] == call["call_id"] and added["item"]["name"] == "get_weather"


# ── tools the proxy does not run ──


def test_hosted_and_unknown_tool_types_are_ignored(make_proxy, fake_api) -> None:
    tools = [
        {"type": "web_search", "external_web_access": True},
        {"type": "custom", "name": "apply_patch", "description": "Apply a patch", "format": {"type": "text"}},
        {"type": "local_shell"},
        {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents", "tools": [
            {"type": "function", "name": "close_agent", "description": "Close", "parameters": {"type": "object"}}]},
        {"type": "image_generation"},
        TIME,
    ]
    response = post_json(make_proxy(), "/v1/responses", {"model": "claude-code", "input": "[[tool:get_time]]",
                                                          "tools": tools, "tool_choice": "auto"})
    assert response.status_code == 200, response.text
    [call] = [item for item in response.json()["output"] if item["type"] == "function_call"]
    assert call["name"] == "get_time"
    bridged = [t["name"] for t in fake_api.main_requests()[0]["tools"] if t["name"].startswith("mcp__")]
    assert bridged == ["mcp__tools__get_time"]


# ── Cursor: Responses-shaped bodies on /v1/chat/completions ──


CURSOR_BODY = {"model": "claude-code", "instructions": "You are Cursor.", "user": "cursor",
               "input": [{"role": "user", "content": [{"type": "input_text", "text": f"{USAGE} hi"}]}]}


def test_cursor_shape_on_chat_completions(make_proxy, fake_api) -> None:
    response = post_json(make_proxy(), "/v1/chat/completions", CURSOR_BODY)
    assert response.status_code == 200, response.text
    completion = response.json()
    assert completion["object"] == "chat.completion" and completion["id"].startswith("chatcmpl-")
    [choice] = completion["choices"]
    assert (choice["message"]["role"], choice["message"]["content"], choice["finish_reason"]) == (
        "assistant", ANSWER, "stop")
    usage = completion["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["prompt_tokens_details"]["cached_tokens"]) == (
        INPUT_TOKENS, OUTPUT_TOKENS, CACHED)
    assert system_prompt_of(fake_api).endswith("You are Cursor.")


def test_cursor_shape_on_chat_completions_streamed(make_proxy) -> None:
    body = {**CURSOR_BODY, "stream": True}
    response = post_json(make_proxy(), "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    frames = [data for _, data in sse_frames(response)]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(data) for data in frames[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    texts = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert "".join(t or "" for t in texts) == ANSWER and len([t for t in texts if t]) >= 2
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] == [
        "stop"]


# ── the Vercel AI SDK (@ai-sdk/openai's default Responses model) ──


def assert_ai_sdk_usage(usage: dict) -> None:
    assert (usage["inputTokens"], usage["outputTokens"], usage["totalTokens"]) == (
        INPUT_TOKENS, OUTPUT_TOKENS, INPUT_TOKENS + OUTPUT_TOKENS)
    details = usage["inputTokenDetails"]  # derived from cached_tokens and cache_write_tokens
    assert (details["noCacheTokens"], details["cacheReadTokens"], details["cacheWriteTokens"]) == (
        INPUT_TOKENS - CACHED - WRITTEN, CACHED, WRITTEN)


def test_ai_sdk_generate_text(make_proxy, fake_api) -> None:
    proxy = make_proxy(claude_proxy_token="ai-sdk-secret")
    result = run_node("ai_sdk.mjs", "generate", proxy.url + "/v1", f"{USAGE} hi",
                      "--system", "You are the AI SDK.", api_key="ai-sdk-secret")
    assert (result["ai_version"], result["provider_version"]) == ("7.0.173", "4.0.118")
    [request] = result["requests"]
    assert request["url"] == proxy.url + "/v1/responses"  # the default provider speaks Responses
    assert (result["text"], result["finish_reason"]) == (ANSWER, "stop")
    assert result["response_id"].startswith("resp_")
    assert_ai_sdk_usage(result["usage"])
    assert system_prompt_of(fake_api).endswith("You are the AI SDK.")  # sent as an input message of role system


def test_ai_sdk_stream_text(make_proxy) -> None:
    result = run_node("ai_sdk.mjs", "stream", make_proxy().url + "/v1", f"{USAGE} hi")
    assert "errors" not in result, result.get("errors")
    assert result["requests"][0]["body"]["stream"] is True
    assert len(result["deltas"]) >= 2 and "".join(result["deltas"]) == ANSWER
    assert (result["text"], result["finish_reason"]) == (ANSWER, "stop")
    assert result["response_id"].startswith("resp_")
    assert_ai_sdk_usage(result["usage"])


@pytest.mark.parametrize("streamed", [False, True], ids=["generateText", "streamText"])
def test_ai_sdk_tool_with_execute_over_two_steps(make_proxy, fake_api, streamed: bool) -> None:
    args = ["--stream"] if streamed else []
    result = run_node("ai_sdk.mjs", "tools", make_proxy().url + "/v1", WEATHER_CALL, *args)
    call = assert_ai_sdk_weather_cycle(result)
    assert result["text"] == "Tool said: 21C sunny"

    # The SDK's second request (store defaults to true): the earlier message as an item_reference to the id the
    # proxy issued, the function_call and its output.
    follow_up = result["requests"][1]["body"]["input"]
    kinds = [item.get("type", "message") for item in follow_up]
    assert kinds == ["message", "item_reference", "function_call", "function_call_output"], follow_up
    assert follow_up[1]["id"].startswith("msg_")
    assert follow_up[3] == {"type": "function_call_output", "call_id": call["id"], "output": "21C sunny"}
    [block] = native_tool_results(fake_api)
    assert block["tool_use_id"] == call["id"] and block["content"] == [{"type": "text", "text": "21C sunny"}]


# ── the OpenAI Agents SDK (default model: Responses) ──


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
def test_agents_sdk_function_tool(make_proxy, fake_api, streamed: bool) -> None:
    from agents import Agent, RunConfig, Runner, function_tool
    from agents.models.openai_provider import OpenAIProvider
    from agents.models.openai_responses import OpenAIResponsesModel

    proxy = make_proxy()
    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather of a city."""
        cities.append(city)
        return "21C sunny"

    async def run():
        client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        provider = OpenAIProvider(openai_client=client)
        assert isinstance(provider.get_model("claude-code"), OpenAIResponsesModel)  # the default is Responses
        agent = Agent(name="Assistant", instructions="You are an agent.", tools=[get_weather], model="claude-code")
        config = RunConfig(model_provider=provider, tracing_disabled=True)
        try:
            if not streamed:
                return await Runner.run(agent, WEATHER_CALL, run_config=config)
            result = Runner.run_streamed(agent, WEATHER_CALL, run_config=config)
            async for _ in result.stream_events():
                pass
            return result
        finally:
            await client.close()

    result = asyncio.run(run())
    assert result.final_output == "Tool said: 21C sunny"
    assert cities == ["Paris"]
    assert [type(item).__name__ for item in result.new_items] == [
        "MessageOutputItem", "ToolCallItem", "ToolCallOutputItem", "MessageOutputItem"]
    assert len(result.raw_responses) == 2
    assert all(r.response_id.startswith("resp_") for r in result.raw_responses)
    [block] = native_tool_results(fake_api)
    assert block["content"] == [{"type": "text", "text": "21C sunny"}]
    assert fake_api.main_requests()[0]["system"][-1]["text"].endswith("You are an agent.")


# ── the OpenAI Codex CLI ──


def run_codex(proxy, tmp_path: Path, prompt: str, api_key: str = "unused") -> str:
    """`codex exec` against the proxy (the offline setup of proxy_harness.codex_environment); Codex's last message."""
    if not (os.path.isfile(CODEX_BIN) and os.access(CODEX_BIN, os.X_OK)):
        pytest.fail("The Codex CLI for the end-to-end tests is missing: run ./tests/run.sh, which installs the "
                    "pinned @openai/codex into tests/.cli.")
    env = codex_environment(tmp_path / "codex", proxy.url + "/v1", api_key=api_key)
    work = tmp_path / "codex-work"
    work.mkdir(exist_ok=True)
    last = tmp_path / "codex-last-message.txt"
    done = subprocess.run([CODEX_BIN, "exec", "--skip-git-repo-check", "--ephemeral", "--sandbox",
                           "danger-full-access", "--output-last-message", str(last), prompt],
                          cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (f"codex exec failed ({done.returncode}):\n{done.stderr[-4000:]}\n"
                                  f"proxy log:\n{proxy.output()[-3000:]}")
    return last.read_text().strip()


def test_codex_exec_answers(make_proxy, fake_api, tmp_path) -> None:
    proxy = make_proxy(claude_proxy_token="codex-secret")
    last_message = run_codex(proxy, tmp_path, "[[reply:Codex got this.]] say hello", api_key="codex-secret")
    assert last_message == "Codex got this."
    [request] = fake_api.main_requests()
    # Codex's prompt is its last user input item; it reached Claude as the user's text, its developer
    # instructions as context.
    assert turn_texts(request)[-1][1].endswith("[[reply:Codex got this.]] say hello")
    assert "You are a coding agent running in the Codex CLI" in json.dumps(request)
    bridged = sorted(t["name"] for t in request["tools"] if t["name"].startswith("mcp__"))
    assert "mcp__tools__exec_command" in bridged  # its plain function tools, its namespace and web_search ignored


def test_codex_runs_its_own_tool_and_gets_the_result_back(make_proxy, fake_api, tmp_path) -> None:
    proxy = make_proxy()
    last_message = run_codex(proxy, tmp_path, '[[tool:exec_command:{"cmd":"echo codex-ran-$((6*7))"}]]')
    assert last_message.startswith("Tool said: ") and "codex-ran-42" in last_message, last_message
    [block] = native_tool_results(fake_api)
    assert not block.get("is_error") and "codex-ran-42" in result_text(block)  # Codex's shell ran the command
    asked = fake_api.main_requests()[1]["messages"][-2]
    [tool_use] = [b for b in asked["content"] if b["type"] == "tool_use"]
    assert tool_use["name"] == "mcp__tools__exec_command" and tool_use["input"] == {"cmd": "echo codex-ran-$((6*7))"}
