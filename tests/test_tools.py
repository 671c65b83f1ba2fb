"""Native OpenAI tool calling: the client's tools reach Claude Code over the proxy's own MCP bridge."""

from __future__ import annotations

import asyncio
import json
import time
import types
import os

import httpx
import openai
import pytest

import main
from main import ChatMessage, ChatRequest
from proxy_harness import wait_until

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time"}}


def request(**fields: object) -> ChatRequest:
    return ChatRequest.model_validate({"model": "claude-code", "messages": [{"role": "user", "content": "x"}],
                                       **fields})


# ── pure functions ──


def test_tools_become_mcp_definitions() -> None:
    [weather, time_] = [json.loads(t) for t in main.bridge_tools(request(tools=[WEATHER, TIME]))]
    assert weather == {"name": "get_weather", "description": "Weather of a city",
                       "inputSchema": WEATHER["function"]["parameters"]}
    assert time_["inputSchema"] == {"type": "object", "properties": {}}
    flat = {"type": "function", "name": "get_time", "parameters": {"type": "object"}}
    assert json.loads(main.bridge_tools(request(tools=[flat]))[0])["name"] == "get_time"
    assert main.bridge_tools(request(tools=[WEATHER], tool_choice="none")) == ()
    assert main.bridge_tools(request(tools=[])) == ()


def test_unsupported_tools_and_choices_are_refused() -> None:
    with pytest.raises(main.InvalidRequest) as raised:
        main.bridge_tools(request(tools=[{"type": "custom", "custom": {"name": "ApplyPatch"}}]))
    assert raised.value.param == "tools[0].type"
    with pytest.raises(main.InvalidRequest) as raised:
        main.tool_choice_instruction(request(tools=[WEATHER], tool_choice={"type": "function",
                                                                            "function": {"name": "nope"}}))
    assert raised.value.param == "tool_choice"
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert "get_weather" in main.tool_choice_instruction(request(tools=[WEATHER], tool_choice=named))
    assert main.tool_choice_instruction(request(tools=[WEATHER], tool_choice="required"))
    assert main.tool_choice_instruction(request(tools=[WEATHER], tool_choice="auto")) is None


def test_argv_for_a_bridged_run() -> None:
    launch = main.Launch(tools=main.bridge_tools(request(tools=[WEATHER])))
    argv = main.build_argv("/bin/claude", main.Settings(), launch, mcp_config_file="/private/dir/.mcp-config.json")
    assert "--mcp-config=/private/dir/.mcp-config.json" in argv
    # alwaysLoad: the tools are never deferred behind Claude Code's tool search (test_forty_tools_... below); the
    # bridge's secret travels as a header, in the file, never on argv
    config = json.loads(main.mcp_config("http://127.0.0.1:1/mcp", "s3"))
    assert config == {"mcpServers": {"tools": {"type": "http", "url": "http://127.0.0.1:1/mcp", "alwaysLoad": True,
                                               "headers": {"Authorization": "Bearer s3"}}}}
    assert {"--strict-mcp-config", "--allowedTools=mcp__tools", "--tools="} <= set(argv)
    kept = main.build_argv("/bin/claude", main.Settings(keep_builtin_tools=True), launch, mcp_config_file="/f")
    assert "--tools=" not in kept


def test_trailing_tool_results_and_conversation_keys() -> None:
    convo = [ChatMessage.model_validate(m) for m in (
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1, "y": 2}'}}]},
        {"role": "tool", "tool_call_id": "a", "content": [{"type": "text", "text": "one"}]},
    )]
    def conversation(chat_messages: list[ChatMessage], model: str = "m") -> main.Conversation:
        return main.chat_conversation(ChatRequest(model=model, messages=chat_messages),
                                      main.Settings(model_name=model))

    def key(model: str, chat_messages: list[ChatMessage]) -> str:
        return conversation(chat_messages, model).keys[-1]

    assert {k: t.text for k, t in conversation(convo).tool_results().items()} == {"a": "one"}
    assert conversation(convo[:2]).tool_results() == {}
    reformatted = [convo[0], ChatMessage.model_validate({"role": "assistant", "content": "", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"y":2,"x":1}'}}]})]
    assert key("m", convo[:2]) == key("m", reformatted)
    assert key("m", convo[:2]) != key("other", convo[:2])
    assert key("m", convo[:1]) != key("m", convo[:2])


def test_mcp_answers() -> None:
    async def scenario() -> None:
        bridge = main.ToolBridge(main.bridge_tools(request(tools=[WEATHER])))
        init = await main.answer_mcp(bridge, {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                              "params": {"protocolVersion": "2025-06-18"}})
        assert init["result"]["capabilities"] == {"tools": {"listChanged": False}}
        assert await main.answer_mcp(bridge, {"jsonrpc": "2.0", "method": "notifications/initialized"}) is None
        listed = await main.answer_mcp(bridge, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        assert [t["name"] for t in listed["result"]["tools"]] == ["get_weather"]
        bridge.deliver("toolu_early", "delivered before the call")
        call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                "params": {"name": "get_weather", "arguments": {}, "_meta": {"claudecode/toolUseId": "toolu_early"}}}
        reply = await main.answer_mcp(bridge, call)
        assert reply["result"]["content"] == [{"type": "text", "text": "delivered before the call"}]
        unknown = await main.answer_mcp(bridge, {"jsonrpc": "2.0", "id": 4, "method": "resources/list"})
        assert unknown["error"]["code"] == -32601

    asyncio.run(scenario())


# ── end to end through the real CLI ──


def ask(client: openai.OpenAI, messages: list[dict], **kwargs: object):
    return client.chat.completions.create(model="claude-code", messages=messages, **kwargs)


def continue_with(messages: list[dict], message, results: dict[str, str]) -> list[dict]:
    return [*messages, message.model_dump(exclude_none=True),
            *({"role": "tool", "tool_call_id": call.id, "content": results[call.function.name]}
              for call in message.tool_calls)]


def loaded_tools(body: dict) -> list[str]:
    """The names of the tools a request shows the model (CLI 2.1.331 adds a DeferredToolPlaceholder with
    defer_loading, which the API keeps from the model)."""
    return [t["name"] for t in body.get("tools") or [] if not t.get("defer_loading")]


def test_round_trip_without_streaming(make_proxy, fake_api) -> None:
    proxy = make_proxy()
    client = proxy.client(_strict_response_validation=True)
    messages = [{"role": "user", "content": '[[tool:get_weather:{"city":"Paris"}]]'}]
    first = ask(client, messages, tools=[WEATHER, TIME])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert (call.type, call.function.name, json.loads(call.function.arguments)) == (
        "function", "get_weather", {"city": "Paris"})
    second = ask(client, continue_with(messages, choice.message, {"get_weather": "21C sunny"}), tools=[WEATHER, TIME])
    assert second.choices[0].message.content == "Tool said: 21C sunny"
    assert second.choices[0].finish_reason == "stop"
    requests = fake_api.main_requests()
    assert sorted(loaded_tools(requests[0])) == ["mcp__tools__get_time", "mcp__tools__get_weather"]
    assert len(requests) == 2, "the continuation is the same run, not a new conversation"
    [result_block] = requests[1]["messages"][-1]["content"]
    assert result_block["type"] == "tool_result" and result_block["tool_use_id"] == call.id
    assert result_block["content"] == [{"type": "text", "text": "21C sunny"}]


def test_round_trip_with_the_sdk_stream_helper(make_proxy) -> None:
    client = make_proxy().client()
    messages = [{"role": "user", "content": "[[tool:get_time]]"}]
    with client.chat.completions.stream(model="claude-code", messages=messages, tools=[TIME]) as stream:
        first = stream.get_final_completion()
    [call] = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls" and call.function.arguments == "{}"
    follow = continue_with(messages, first.choices[0].message, {"get_time": "noon"})
    with client.chat.completions.stream(model="claude-code", messages=follow, tools=[TIME]) as stream:
        chunks = [event.chunk for event in stream if event.type == "chunk"]
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Tool said: noon"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2


def test_parallel_calls_and_an_error_result(make_proxy, fake_api) -> None:
    client = make_proxy().client()
    messages = [{"role": "user", "content": '[[tool:get_weather:{"city":"Oslo"}]] [[tool:get_time]]'}]
    first = ask(client, messages, tools=[WEATHER, TIME], stream=True)
    chunks = list(first)
    starts = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or [] if d.id]
    assert [(d.index, d.function.name) for d in starts] == [(0, "get_weather"), (1, "get_time")]
    assert len({d.id for d in starts}) == 2
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    message = openai.types.chat.ChatCompletionMessage(role="assistant", content=None, tool_calls=[
        {"id": d.id, "type": "function", "function": {"name": d.function.name, "arguments": "{}"}} for d in starts])
    results = {"get_weather": "Error: the weather service is down", "get_time": "noon"}
    second = ask(client, continue_with(messages, message, results), tools=[WEATHER, TIME])
    assert second.choices[0].message.content == "Tool said: Error: the weather service is down | noon"
    assert len(fake_api.main_requests()) == 2


def test_a_parked_run_holds_no_run_slot(make_proxy) -> None:
    proxy = make_proxy(claude_max_concurrency=1, claude_max_queue=0)
    client = proxy.client()
    first = ask(client, [{"role": "user", "content": "[[tool:get_time]]"}], tools=[TIME])
    assert first.choices[0].finish_reason == "tool_calls"
    assert ask(client, [{"role": "user", "content": "hi"}]).choices[0].message.content == "Hello from fake model."


def test_a_parked_run_times_out_and_the_follow_up_falls_back(make_proxy, fake_api) -> None:
    proxy = make_proxy(claude_tool_wait=1)
    client = proxy.client()
    messages = [{"role": "user", "content": "[[tool:get_time]] [[reply:fresh]]"}]
    first = ask(client, messages, tools=[TIME])
    assert wait_until(lambda: not proxy.children(), timeout=10), "the held run was stopped"
    follow = continue_with(messages, first.choices[0].message, {"get_time": "noon"})
    second = ask(client, follow, tools=[TIME])
    assert second.choices[0].finish_reason in ("tool_calls", "stop")
    fallback = fake_api.main_requests()[-1]
    text = json.dumps(fallback["messages"])
    call_id = first.choices[0].message.tool_calls[0].id
    assert f'<tool_result tool_call_id=\\"{call_id}\\">\\nnoon\\n</tool_result>' in text


def test_an_edited_history_does_not_resume_and_ends_the_held_run(make_proxy, fake_api) -> None:
    proxy = make_proxy()
    client = proxy.client()
    messages = [{"role": "user", "content": "[[tool:get_time]]"}]
    first = ask(client, messages, tools=[TIME])
    held = proxy.children()
    assert held
    edited = continue_with([{"role": "user", "content": "[[tool:get_time]] (edited)"}], first.choices[0].message,
                           {"get_time": "noon"})
    ask(client, edited, tools=[TIME])
    assert len(fake_api.main_requests()) == 2 and "<tool_result" in json.dumps(fake_api.main_requests()[1])
    assert wait_until(lambda: not any(p.is_running() for p in held), timeout=10)


def test_a_new_user_message_abandons_the_held_run(make_proxy) -> None:
    proxy = make_proxy()
    client = proxy.client()
    messages = [{"role": "user", "content": "[[tool:get_time]]"}]
    first = ask(client, messages, tools=[TIME])
    held = proxy.children()
    moved_on = [*messages, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "user", "content": "never mind"}]
    ask(client, moved_on, tools=[TIME])
    assert wait_until(lambda: not any(p.is_running() for p in held), timeout=10)


FORTY = [{"type": "function", "function": {
    "name": f"tool_{i:02d}", "description": f"Tool number {i}: " + "looks a thing up in the records. " * 30,
    "parameters": {"type": "object", "properties": {"key": {"type": "string", "description": "what to look up"}}}}}
    for i in range(40)]


@pytest.mark.parametrize("settings", [{}, {"claude_keep_builtin_tools": 1, "enable_tool_search": "true"}],
                         ids=["client-tools-only", "with-claude-code-tools-and-tool-search"])
def test_forty_tools_are_all_loaded_and_the_last_one_is_called(make_proxy, fake_api, settings) -> None:
    # With Claude Code's own tools on, CLI 2.1.331 defers MCP tools behind its tool search (2.1.197 does with
    # ENABLE_TOOL_SEARCH): the model would see their names only, and "NO TOOL tool_39" would come back.
    client = make_proxy(**settings).client()
    answer = ask(client, [{"role": "user", "content": '[[tool:tool_39:{"key":"k9"}]]'}], tools=FORTY)
    [call] = answer.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("tool_39", {"key": "k9"})
    loaded = loaded_tools(fake_api.main_requests()[0])
    assert {f"mcp__tools__tool_{i:02d}" for i in range(40)} <= set(loaded)


def test_a_tool_call_held_past_the_auto_background_limit_stays_in_the_run(make_proxy, fake_api) -> None:
    # CLI 2.1.331 moves an MCP call still running after CLAUDE_CODE_MCP_AUTO_BACKGROUND_MS to the background when
    # CLAUDE_AUTO_BACKGROUND_TASKS is on, and tells the model "still running" instead of the result. Here the limit
    # is lowered to 1.5 s in the proxy's environment, and the client takes 4 s to bring the result.
    proxy = make_proxy(claude_auto_background_tasks=1, claude_code_mcp_auto_background_ms=1500)
    client = proxy.client()
    messages = [{"role": "user", "content": '[[tool:get_weather:{"city":"Paris"}]]'}]
    first = ask(client, messages, tools=[WEATHER])
    assert first.choices[0].finish_reason == "tool_calls"
    time.sleep(4)
    assert len(fake_api.main_requests()) == 1, "the model was asked again while the call was held"
    second = ask(client, continue_with(messages, first.choices[0].message, {"get_weather": "21C sunny"}),
                 tools=[WEATHER])
    assert second.choices[0].message.content == "Tool said: 21C sunny"
    assert len(fake_api.main_requests()) == 2


def test_tool_choice_none_exposes_no_tools_and_a_bad_name_is_400(make_proxy, fake_api) -> None:
    proxy = make_proxy()
    client = proxy.client()
    answer = ask(client, [{"role": "user", "content": "[[tool:get_time]]"}], tools=[TIME], tool_choice="none")
    assert answer.choices[0].message.content == "NO TOOL get_time"
    assert not any(t["name"].startswith("mcp__") for t in fake_api.main_requests()[0]["tools"])
    with pytest.raises(openai.BadRequestError) as raised:
        ask(client, [{"role": "user", "content": "x"}], tools=[TIME],
            tool_choice={"type": "function", "function": {"name": "nope"}})
    assert raised.value.param == "tool_choice"


def test_required_tool_choice_reaches_the_system_prompt(make_proxy, fake_api) -> None:
    client = make_proxy().client()
    ask(client, [{"role": "user", "content": "[[tool:get_time]]"}], tools=[TIME], tool_choice="required")
    assert "calling one or more of the available tools" in fake_api.main_requests()[0]["system"][-1]["text"]


def test_the_bridge_rejects_unknown_secrets(make_proxy) -> None:
    proxy = make_proxy()
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Bearer not-a-secret"}, {"Authorization": "not-a-secret"}):
        response = httpx.post(proxy.url + "/mcp", json=listing, headers=headers)
        assert response.status_code == 404 and "error" in response.json()


def test_the_bridge_secret_is_not_on_argv(make_proxy) -> None:
    """Every user of the machine can read argv (ps); the secret goes in a mode-600 file in the run's private folder."""
    proxy = make_proxy()
    first = ask(proxy.client(), [{"role": "user", "content": "[[tool:get_time]]"}], tools=[TIME])
    assert first.choices[0].finish_reason == "tool_calls"
    [cli] = [p for p in proxy.children() if any(a.startswith("--mcp-config=") for a in p.cmdline())]
    config_file = next(a for a in cli.cmdline() if a.startswith("--mcp-config="))[len("--mcp-config="):]
    assert oct(os.stat(config_file).st_mode & 0o777) == "0o600"
    server = json.loads(open(config_file).read())["mcpServers"]["tools"]
    secret = server["headers"]["Authorization"].removeprefix("Bearer ")
    assert len(secret) >= 24 and server["url"] == proxy.url + "/mcp"
    everyone_sees = " ".join(" ".join(p.cmdline()) for p in [proxy.ps, *proxy.children()])
    assert secret not in everyone_sees
    tools = httpx.post(proxy.url + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                       headers=server["headers"]).json()["result"]["tools"]
    assert [t["name"] for t in tools] == ["get_time"]
    assert secret not in proxy.output()


def test_parked_runs_answer_only_to_their_own_conversation() -> None:
    """A tool result naming another conversation's call id neither continues nor ends that conversation's run."""
    settings = main.Settings()

    def conversation(*messages: dict, model: str = "claude-code") -> main.Conversation:
        return main.chat_conversation(ChatRequest.model_validate(
            {"model": model, "messages": list(messages), "tools": [TIME]}), settings)

    asked = {"role": "user", "content": "what time is it?"}
    calls = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "toolu_A", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}
    result = {"role": "tool", "tool_call_id": "toolu_A", "content": "noon"}
    run = main.Run(types.SimpleNamespace(billed=0.0), conversation(asked), 0.0, None)  # type: ignore[arg-type]
    run.interpreter.awaiting = ("toolu_A",)
    run.answer.blocks.append(main.Block("tool_call", "{}", call_id="toolu_A", name="get_time"))
    parking = main.Parking(60, 4, None, None)  # type: ignore[arg-type]
    parking.runs["toolu_A"] = run
    other_user = {"role": "user", "content": "something else"}
    forged = {**calls, "tool_calls": [{**calls["tool_calls"][0], "function": {"name": "get_weather",
                                                                              "arguments": "{}"}}]}
    for stranger in (conversation(other_user, result), conversation(other_user, forged, result),
                     conversation(asked, calls, result, model="sonnet"),
                     conversation(other_user, forged, {"role": "user", "content": "moved on"})):
        assert parking.find(stranger) == (None, [])
    assert parking.find(conversation(asked, calls, result)) == (run, [])
    assert parking.find(conversation(asked, calls, {"role": "user", "content": "never mind"})) == (None, [run])
    edited = {"role": "user", "content": "what time is it? (edited)"}
    assert parking.find(conversation(edited, calls, result)) == (None, [run])


def test_another_conversation_cannot_end_a_held_run(make_proxy, fake_api) -> None:
    proxy = make_proxy()
    client = proxy.client()
    messages = [{"role": "user", "content": "[[tool:get_time]]"}]
    first = ask(client, messages, tools=[TIME])
    [call] = first.choices[0].message.tool_calls
    held = proxy.children()
    stranger = [{"role": "user", "content": "[[reply:stranger]] hi"},
                {"role": "tool", "tool_call_id": call.id, "content": "forged result"}]
    assert ask(client, stranger, tools=[TIME]).choices[0].message.content == "stranger"
    assert all(p.is_running() for p in held), "the held run is still waiting for its own results"
    second = ask(client, continue_with(messages, first.choices[0].message, {"get_time": "noon"}), tools=[TIME])
    assert second.choices[0].message.content == "Tool said: noon"
    main_requests = fake_api.main_requests()
    assert len(main_requests) == 3 and main_requests[2]["messages"][-1]["content"][0]["tool_use_id"] == call.id
