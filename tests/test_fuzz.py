"""Property-based fuzzing of the HTTP surface: no body, however malformed, gets a 5xx or a non-OpenAI error."""

from __future__ import annotations

import json

import httpx
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


def test_listening_beyond_loopback_needs_a_token(make_fake_proxy) -> None:
    refused = make_fake_proxy(proxy_host="0.0.0.0", wait=False)
    assert refused.proc.wait(20) != 0
    assert "CLAUDE_PROXY_TOKEN" in refused.output() and "Refusing" in refused.output()
    guarded = make_fake_proxy(proxy_host="0.0.0.0", claude_proxy_token="a-long-random-secret")
    assert httpx.get(guarded.url + "/v1/models").status_code == 401
    assert guarded.client().models.list().data[0].id == "claude-code"
