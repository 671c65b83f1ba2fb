"""Property-based fuzzing of the HTTP surface: no body, however malformed, gets a 5xx or an error body of another
protocol: OpenAI's envelope on /v1/chat/completions and /v1/responses, Anthropic's on /v1/messages and
/v1/messages/count_tokens."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proxy_fixtures import fake_claude_calls

json_scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False)
                | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
roles = st.sampled_from(["user", "assistant", "system", "developer", "tool", "function", "wizard", "", "USER"])
parts = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_audio", "file", "x"])},
                              optional={"text": json_scalars, "image_url": json_values})
contents = st.none() | st.text(max_size=30) | st.lists(parts, max_size=3) | json_values
messages = st.fixed_dictionaries({}, optional={"role": roles | json_scalars, "content": contents,
                                              "tool_calls": json_values, "tool_call_id": json_scalars,
                                              "name": json_scalars})
bodies = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["claude-code", "sonnet", "gpt-4o", ""]) | json_scalars,
    "messages": st.lists(messages, max_size=4) | json_values,
    "stream": st.booleans() | json_scalars,
    "stream_options": json_values,
    "n": json_scalars, "logprobs": json_scalars, "temperature": json_scalars, "max_tokens": json_scalars,
    "tools": json_values, "tool_choice": json_values, "metadata": json_values,
}) | json_values
# Nearly valid bodies, so that accepted requests (which do start the CLI) are fuzzed too.
near_valid = st.fixed_dictionaries(
    {"model": st.just("claude-code"),
     "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]),
                                                 "content": st.text(max_size=30) | st.lists(parts, max_size=2)}),
                          min_size=1, max_size=3)},
    optional={"stream": st.booleans(), "temperature": json_scalars, "user": json_scalars, "store": json_values,
              "n": st.integers(0, 2), "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()})},
)


def test_random_bodies_never_cause_a_server_error(make_fake_proxy, fake_claude_log) -> None:
    proxy = make_fake_proxy()
    client = httpx.Client(base_url=proxy.url, timeout=30)
    seen = {"ok": 0, "rejected": 0}

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=near_valid | bodies, truncate=st.booleans())
    def check(body: object, truncate: bool) -> None:
        content = json.dumps(body).encode()
        content = content[: len(content) // 2 or 1] if truncate else content
        response = client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
            seen["rejected"] += 1
        else:
            seen["ok"] += 1

    check()
    assert seen["rejected"] > 50 and seen["ok"] > 10
    assert len(fake_claude_calls(fake_claude_log)) == seen["ok"]
    assert "Traceback" not in proxy.output()


# ── /v1/responses ──

models = st.sampled_from(["claude-code", "sonnet", "claude-sonnet-4-5", "gpt-4o", ""]) | json_scalars
response_parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "output_text", "input_image", "input_file", "refusal", "text", "x"])},
    optional={"text": json_scalars, "image_url": json_scalars, "file_id": json_scalars, "detail": json_scalars})
response_items = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "item_reference",
                              "custom_tool_call", "local_shell_call", "x"])},
    optional={"role": roles | json_scalars, "content": st.text(max_size=20) | st.lists(response_parts, max_size=3)
              | json_values, "id": json_scalars, "call_id": json_scalars, "name": json_scalars,
              "arguments": json_scalars, "output": json_values, "summary": json_values, "status": json_scalars})
response_tools = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "web_search", "custom", "local_shell", "namespace", "file_search", "x"])},
    optional={"name": json_scalars, "description": json_scalars, "parameters": json_values, "strict": json_scalars,
              "tools": json_values})
responses_bodies = st.fixed_dictionaries({}, optional={
    "model": models,
    "input": st.text(max_size=30) | st.lists(response_items | messages, max_size=4) | json_values,
    "instructions": json_scalars, "stream": st.booleans() | json_scalars,
    "tools": st.lists(response_tools, max_size=3) | json_values, "tool_choice": json_values,
    "previous_response_id": json_scalars, "max_output_tokens": json_scalars, "reasoning": json_values,
    "text": json_values, "store": json_values, "include": json_values, "metadata": json_values,
    "parallel_tool_calls": json_scalars, "prompt_cache_key": json_scalars, "temperature": json_scalars,
}) | json_values
input_messages = st.fixed_dictionaries({
    "role": st.sampled_from(["user", "developer", "system"]),
    "content": st.text(max_size=30) | st.lists(st.fixed_dictionaries({"type": st.just("input_text"),
                                                                       "text": st.text(max_size=20)}), max_size=2)})
near_valid_responses = st.fixed_dictionaries(
    {"model": st.just("claude-code"),
     "input": st.text(min_size=1, max_size=30) | st.lists(input_messages, min_size=1, max_size=3)},
    optional={"stream": st.booleans(), "instructions": st.text(max_size=20), "store": st.booleans(),
              "temperature": json_scalars, "max_output_tokens": st.integers(1, 4096), "metadata": json_values,
              "tools": st.lists(st.sampled_from([{"type": "web_search"}, {"type": "local_shell"}]), max_size=2)},
)

# ── /v1/messages and /v1/messages/count_tokens ──

anthropic_blocks = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking",
                              "document", "x"])},
    optional={"text": json_scalars, "source": json_values, "id": json_scalars, "name": json_scalars,
              "input": json_values, "tool_use_id": json_scalars, "content": json_values, "is_error": json_scalars,
              "thinking": json_scalars, "signature": json_scalars, "cache_control": json_values})
anthropic_messages = st.fixed_dictionaries({}, optional={
    "role": roles | json_scalars,
    "content": st.text(max_size=30) | st.lists(anthropic_blocks, max_size=3) | json_values})
messages_bodies = st.fixed_dictionaries({}, optional={
    "model": models, "max_tokens": json_scalars,
    "messages": st.lists(anthropic_messages, max_size=4) | json_values,
    "system": st.text(max_size=20) | st.lists(anthropic_blocks, max_size=2) | json_values,
    "stream": st.booleans() | json_scalars, "tools": json_values, "tool_choice": json_values, "thinking": json_values,
    "metadata": json_values, "stop_sequences": json_values, "temperature": json_scalars, "top_k": json_scalars,
}) | json_values
near_valid_messages = st.fixed_dictionaries(
    {"model": st.just("claude-code"), "max_tokens": st.integers(1, 64000),
     "messages": st.lists(st.fixed_dictionaries({
         "role": st.just("user"),
         "content": st.text(min_size=1, max_size=30) | st.lists(st.fixed_dictionaries(
             {"type": st.just("text"), "text": st.text(min_size=1, max_size=20)}), min_size=1, max_size=2)}),
         min_size=1, max_size=2)},
    optional={"stream": st.booleans(), "system": st.text(max_size=20), "temperature": st.floats(0, 1),
              "metadata": st.fixed_dictionaries({"user_id": st.text(max_size=10)}),
              "thinking": st.just({"type": "disabled"}), "tools": st.lists(st.fixed_dictionaries(
                  {"type": st.just("web_search_20250305"), "name": st.just("web_search")}), max_size=1)},
)

ANTHROPIC_ERRORS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error"}


def openai_error(response: httpx.Response) -> None:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str), error


def anthropic_error(response: httpx.Response) -> None:
    body = response.json()
    assert body["type"] == "error" and set(body) <= {"type", "error", "request_id"}, body
    assert set(body["error"]) == {"type", "message"} and isinstance(body["error"]["message"], str), body
    assert body["error"]["type"] == ANTHROPIC_ERRORS.get(response.status_code), (response.status_code, body)


ENDPOINTS = [  # path, bodies, the error check, whether an accepted body runs the CLI once
    pytest.param("/v1/responses", near_valid_responses | responses_bodies, openai_error, True, id="responses"),
    pytest.param("/v1/messages", near_valid_messages | messages_bodies, anthropic_error, True, id="messages"),
    pytest.param("/v1/messages/count_tokens", near_valid_messages | messages_bodies, anthropic_error, False,
                 id="count_tokens"),
]


@pytest.mark.parametrize("path,strategy,check_error,runs", ENDPOINTS)
def test_random_bodies_on_the_other_apis(make_fake_proxy, fake_claude_log, path: str, strategy: st.SearchStrategy,
                                         check_error: Callable[[httpx.Response], None], runs: bool) -> None:
    proxy = make_fake_proxy()
    client = httpx.Client(base_url=proxy.url, timeout=30)
    seen = {"ok": 0, "rejected": 0}

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=strategy, truncate=st.booleans())
    def check(body: object, truncate: bool) -> None:
        content = json.dumps(body).encode()
        content = content[: len(content) // 2 or 1] if truncate else content
        response = client.post(path, content=content, headers={"content-type": "application/json",
                                                               "anthropic-version": "2023-06-01"})
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            check_error(response)
            seen["rejected"] += 1
        else:
            seen["ok"] += 1

    check()
    assert seen["rejected"] > 30 and seen["ok"] > 10, seen
    assert len(fake_claude_calls(fake_claude_log)) == (seen["ok"] if runs else 0)
    assert "Traceback" not in proxy.output()


def test_listening_beyond_loopback_needs_a_token(make_fake_proxy) -> None:
    refused = make_fake_proxy(proxy_host="0.0.0.0", wait=False)
    assert refused.proc.wait(20) != 0
    assert "CLAUDE_PROXY_TOKEN" in refused.output() and "Refusing" in refused.output()
    guarded = make_fake_proxy(proxy_host="0.0.0.0", claude_proxy_token="a-long-random-secret")
    assert httpx.get(guarded.url + "/v1/models").status_code == 401
    assert guarded.client().models.list().data[0].id == "claude-code"
