"""Structured output: `response_format` (Chat Completions) and `text.format` (Responses) JSON schemas, answered
natively by Claude Code's `--json-schema` (its StructuredOutput tool, validated by the CLI).

In process: schemas into argv, the interpreter turning the result's structured_output into the answer's one text
block (the model's own text becomes reasoning), and the failure paths. End to end through the real CLI, with the fake
API's [[structured:JSON]] directive: openai-python's `chat.completions.parse` and `responses.parse` (streamed and
not), LangChain's `with_structured_output`, the Vercel AI SDK's `generateObject`/`streamObject`, a request with both
tools and a schema, a session's second turn, and the failures (a bad schema is a 400 naming it; a model that never
produces the output is an error, never prose presented as JSON).
"""

from __future__ import annotations

import json

import httpx
import openai
import pydantic
import pytest
from helpers import run_node
from langchain_openai import ChatOpenAI

import main

WEATHER_JSON = '{"city":"Paris","temp":21}'
STRUCTURED = f"[[structured:{WEATHER_JSON}]]"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "temp": {"type": "number"}},
          "required": ["city", "temp"], "additionalProperties": False}


class Weather(pydantic.BaseModel):
    city: str
    temp: float


def stream_event(event: dict) -> dict:
    return {"type": "stream_event", "event": event, "parent_tool_use_id": None}


# ── in process ──


def test_schemas_are_checked_and_made_canonical() -> None:
    assert main.output_schema("json_schema", SCHEMA, "x") == json.dumps(SCHEMA, sort_keys=True)
    assert main.output_schema("json_object", None, "x") == main.JSON_OBJECT_SCHEMA
    assert main.output_schema("text", None, "x") is None and main.output_schema(None, None, "x") is None
    with pytest.raises(main.InvalidRequest, match="Invalid JSON schema at here") as raised:
        main.output_schema("json_schema", {"type": "nonsense"}, "here")
    assert raised.value.param == "here"
    with pytest.raises(main.InvalidRequest, match="needs a JSON schema object"):
        main.output_schema("json_schema", None, "here")
    with pytest.raises(main.InvalidRequest, match="Unsupported response format"):
        main.output_schema("yaml", None, "here")


def test_the_schema_goes_on_argv_and_into_the_launch() -> None:
    launch = main.Launch(json_schema=main.JSON_OBJECT_SCHEMA)
    argv = main.build_argv("/bin/claude", main.Settings(), launch)
    assert f"--json-schema={main.JSON_OBJECT_SCHEMA}" in argv
    assert not any(a.startswith("--json-schema") for a in main.build_argv("/bin/claude", main.Settings(),
                                                                           main.Launch()))
    assert not launch.same_run(main.Launch()) and launch.same_run(main.Launch(json_schema=main.JSON_OBJECT_SCHEMA,
                                                                             cwd="/x", resume="s"))


def test_the_structured_output_is_the_answer_and_the_text_is_reasoning() -> None:
    interpreter = main.Interpreter(structured=True)
    events = [stream_event({"type": "message_start", "message": {"usage": {"input_tokens": 3}}}),
              stream_event({"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
              stream_event({"type": "content_block_delta", "index": 0,
                            "delta": {"type": "text_delta", "text": "Let me answer."}}),
              stream_event({"type": "content_block_stop", "index": 0}),
              {"type": "result", "subtype": "success", "is_error": False, "result": WEATHER_JSON,
               "structured_output": {"city": "Paris", "temp": 21}}]
    answer_events = [e for event in events for e in interpreter.feed(event)]
    answer = interpreter.answer
    assert [(b.kind, b.text) for b in answer.blocks] == [("reasoning", "Let me answer."),
                                                        ("text", '{"city": "Paris", "temp": 21}')]
    assert json.loads(answer.text) == {"city": "Paris", "temp": 21} and answer.finish == "stop"
    assert [type(e).__name__ for e in answer_events][-3:] == ["Started", "Delta", "Ended"]


@pytest.mark.parametrize("result", [
    {"type": "result", "subtype": "success", "is_error": False, "result": "prose"},  # what CLI 2.1.197 does
    {"type": "result", "subtype": "error_max_structured_output_retries", "is_error": True, "errors": ["x"]},
])
def test_no_structured_output_is_an_error_never_prose(result: dict) -> None:
    with pytest.raises(main.NoStructuredOutput) as raised:
        main.Interpreter(structured=True).feed(result)
    assert raised.value.status == 502 and raised.value.code == "structured_output_failed"


# ── end to end through the real CLI ──


def test_chat_completions_parse(make_proxy, fake_api) -> None:
    client = make_proxy().client(_strict_response_validation=True)
    completion = client.chat.completions.parse(model="claude-code", response_format=Weather,
                                               messages=[{"role": "user", "content": f"{STRUCTURED} weather?"}])
    message = completion.choices[0].message
    assert message.parsed == Weather(city="Paris", temp=21)
    assert json.loads(message.content) == {"city": "Paris", "temp": 21}
    [request] = fake_api.main_requests()
    assert any(tool["name"] == "StructuredOutput" for tool in request["tools"])


def test_chat_completions_stream_with_a_schema(make_proxy) -> None:
    client = make_proxy().client()
    with client.chat.completions.stream(model="claude-code", response_format=Weather,
                                        messages=[{"role": "user", "content": f"{STRUCTURED} weather?"}]) as stream:
        contents = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    assert json.loads("".join(contents)) == {"city": "Paris", "temp": 21}
    assert final.choices[0].message.parsed == Weather(city="Paris", temp=21)


def test_json_object_mode(make_proxy) -> None:
    completion = make_proxy().client().chat.completions.create(
        model="claude-code", response_format={"type": "json_object"},
        messages=[{"role": "user", "content": '[[structured:{"ok":true}]] answer in JSON'}])
    assert json.loads(completion.choices[0].message.content) == {"ok": True}


@pytest.mark.parametrize("streamed", [False, True], ids=["parse", "stream"])
def test_responses_parse(make_proxy, streamed: bool) -> None:
    client = make_proxy().client()
    if streamed:
        with client.responses.stream(model="claude-code", input=f"{STRUCTURED} weather?", text_format=Weather) as s:
            list(s)
            response = s.get_final_response()
    else:
        response = client.responses.parse(model="claude-code", input=f"{STRUCTURED} weather?", text_format=Weather)
    assert response.output_parsed == Weather(city="Paris", temp=21)
    assert json.loads(response.output_text) == {"city": "Paris", "temp": 21}


def test_langchain_with_structured_output(make_proxy) -> None:
    proxy = make_proxy()
    model = ChatOpenAI(base_url=proxy.url + "/v1", api_key="unused", model="claude-code", max_retries=0)
    assert model.with_structured_output(Weather).invoke(f"{STRUCTURED} weather?") == Weather(city="Paris", temp=21)


@pytest.mark.parametrize("streamed", [False, True], ids=["generateObject", "streamObject"])
def test_ai_sdk_generate_object(make_proxy, fake_api, streamed: bool) -> None:
    result = run_node("ai_sdk.mjs", "object", make_proxy().url + "/v1", f"{STRUCTURED} weather?",
                      *(["--stream"] if streamed else []))
    assert "errors" not in result, result.get("errors")
    assert result["object"] == {"city": "Paris", "temp": 21}
    assert result["requests"][0]["url"].endswith("/responses")  # the SDK's default model speaks Responses
    assert result["requests"][0]["body"]["text"]["format"]["type"] == "json_schema"


def test_tools_then_the_schema(make_proxy, fake_api) -> None:
    """The schema applies to the final answer: first a client tool call, then, with its result, the output."""
    client = make_proxy().client()
    tools = [{"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}}}]
    messages = [{"role": "user", "content": f'[[tool:get_weather:{{"city":"Paris"}}]] {STRUCTURED} weather?'}]
    first = client.chat.completions.parse(model="claude-code", messages=messages, tools=tools,
                                          response_format=Weather)
    [call] = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    messages += [first.choices[0].message.model_dump(exclude_none=True, exclude={"parsed"}),
                 {"role": "tool", "tool_call_id": call.id, "content": "21C"}]
    second = client.chat.completions.parse(model="claude-code", messages=messages, tools=tools,
                                           response_format=Weather)
    assert second.choices[0].message.parsed == Weather(city="Paris", temp=21)
    assert len(fake_api.main_requests()) == 2  # the same run continued with the tool result


def test_a_session_continues_with_its_schema(make_proxy, fake_api) -> None:
    proxy = make_proxy(claude_sessions=1)
    client = proxy.client()
    messages = [{"role": "user", "content": f"{STRUCTURED} weather?"}]
    first = client.chat.completions.parse(model="claude-code", messages=messages, response_format=Weather)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": '[[structured:{"city":"Rome","temp":25}]] and Rome?'}]
    second = client.chat.completions.parse(model="claude-code", messages=messages, response_format=Weather)
    assert second.choices[0].message.parsed == Weather(city="Rome", temp=25)
    # The same Claude Code session went on: its history holds the first answer's StructuredOutput call (a
    # flattened replay would send one user message with a transcript instead).
    history = fake_api.main_requests()[-1]["messages"]
    calls = [b["input"] for m in history if m["role"] == "assistant" for b in m["content"] if b["type"] == "tool_use"]
    assert calls == [{"city": "Paris", "temp": 21}]


def test_a_bad_schema_is_a_400_naming_it(make_proxy, fake_api) -> None:
    proxy = make_proxy()
    body = {"model": "claude-code", "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}
    response = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "response_format.json_schema.schema" and "nonsense" in error["message"]
    responses = httpx.post(proxy.url + "/v1/responses", timeout=30, json={
        "model": "claude-code", "input": "hi", "text": {"format": {"type": "json_schema", "schema": 5}}})
    assert responses.status_code == 400 and responses.json()["error"]["param"] == "text.format.schema"
    assert fake_api.main_requests() == []


def test_a_model_that_never_gives_the_output_is_an_error(make_proxy) -> None:
    client = make_proxy().client()
    ask = {"model": "claude-code", "response_format": Weather,
           "messages": [{"role": "user", "content": "[[reply:Just prose, sorry.]] weather?"}]}
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.parse(**ask)
    assert raised.value.status_code == 502 and raised.value.code == "structured_output_failed"
    with pytest.raises(openai.APIError, match="StructuredOutput"):
        with client.chat.completions.stream(**ask) as stream:
            list(stream)
