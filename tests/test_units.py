"""Pure functions: settings, prompt building, argv and environment, event translation."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

import main
from main import ChatMessage, ChatRequest, Launch, Settings


def messages(*pairs: tuple[str, object]) -> list[ChatMessage]:
    return [ChatMessage.model_validate({"role": role, "content": content}) for role, content in pairs]


def turns(chat_messages: list[ChatMessage]) -> list[main.Turn]:
    return [main.chat_turn(message, f"messages[{i}]") for i, message in enumerate(chat_messages)]


def prompt_of(chat_messages: list[ChatMessage], mode: str) -> main.Prompt:
    return main.build_prompt(turns(chat_messages), mode)


class CompletionBuilder:
    """CLI events through the Interpreter into the Chat Completions renderer, as a run and its request do."""

    def __init__(self, model: str, include_usage: bool = False, show_activity: bool = False) -> None:
        self.interpreter = main.Interpreter(show_activity)
        self.renderer = main.ChatRenderer(model, include_usage)
        self.id, self.created = self.renderer.id, self.renderer.created

    def role_chunk(self) -> dict:
        return self.renderer.role_chunk()

    def feed(self, event: dict) -> list[dict]:
        answer_events = self.interpreter.feed(event)
        return [chunk for e in answer_events for chunk in self.renderer.render(e, self.interpreter.answer)]

    def finish(self) -> list[dict]:
        return self.renderer.finish(self.interpreter.answer)

    def completion(self) -> dict:
        return self.renderer.completion(self.interpreter.answer)


# ── settings ──


def test_settings_defaults_are_safe() -> None:
    settings = main.load_settings([], {})
    assert settings.host == "127.0.0.1"
    assert settings.port == 18880
    assert settings.permission_mode == "bypassPermissions"
    assert settings.model_name == "claude-code"
    assert (settings.max_turns, settings.timeout, settings.token) == (10, 300.0, "")


def test_settings_from_environment_and_flags_override_it() -> None:
    env = {"PROXY_PORT": "19000", "CLAUDE_TIMEOUT": "12.5", "MODEL_NAME": "cc", "CLAUDE_PROXY_TOKEN": "s3cret"}
    settings = main.load_settings(["--port", "19001"], env)
    assert (settings.port, settings.timeout, settings.model_name, settings.token) == (19001, 12.5, "cc", "s3cret")


@pytest.mark.parametrize("argv", [["--permission-mode", "yolo"], ["--port", "x"], ["--system-prompt-mode", "top"]])
def test_settings_reject_bad_values(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        main.load_settings(argv, {})


def test_help_lists_every_setting_with_its_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main.load_settings(["--help"], {})
    text = capsys.readouterr().out
    for env in ("CLAUDE_BIN", "PROXY_PORT", "PROXY_HOST", "CLAUDE_PROXY_TOKEN", "CLAUDE_MAX_TURNS", "CLAUDE_TIMEOUT",
                "MODEL_NAME", "CLAUDE_PERMISSION_MODE", "CLAUDE_CWD", "CLAUDE_SYSTEM_PROMPT_MODE"):
        assert env in text


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                           ("0.0.0.0", False), ("192.168.1.4", False), ("example.com", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert main.is_loopback(host) is loopback


def test_find_claude_prefers_the_configured_path(tmp_path) -> None:
    exe = tmp_path / "my-claude"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert main.find_claude(str(exe)) == str(exe)
    assert main.find_claude(str(tmp_path / "missing")) is None


# ── prompt building ──


def test_single_user_turn_is_sent_verbatim() -> None:
    prompt = prompt_of(messages(("user", "--help")), "append")
    assert prompt == main.Prompt(None, "--help")


def test_system_and_developer_messages_become_the_system_prompt() -> None:
    prompt = prompt_of(messages(("system", "Be brief."), ("developer", "Use French."), ("user", "hi")),
                               "append")
    assert prompt.system == "Be brief.\n\nUse French."
    assert prompt.text == "hi"


def test_inline_mode_puts_the_system_text_at_the_top_of_the_user_turn() -> None:
    prompt = prompt_of(messages(("system", "Be brief."), ("user", "hi")), "inline")
    assert prompt.system is None
    assert prompt.text == "<instructions>\nBe brief.\n</instructions>\n\nhi"


def test_history_becomes_a_transcript_with_the_last_user_turn_last() -> None:
    prompt = prompt_of(messages(("user", "My name is Ada."), ("assistant", "Hello Ada."),
                                        ("user", "What is my name?")), "append")
    assert prompt.text == (
        "<conversation>\n<user>\nMy name is Ada.\n</user>\n<assistant>\nHello Ada.\n</assistant>\n</conversation>"
        "\n\nWhat is my name?"
    )


def test_tool_calls_and_results_are_rendered_in_the_transcript() -> None:
    convo = [
        ChatMessage(role="user", content="weather?"),
        ChatMessage.model_validate({"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
        ChatMessage(role="tool", content="21C", tool_call_id="call_1"),
    ]
    text = prompt_of(convo, "append").text
    assert '<tool_call id="call_1" name="get_weather">{}</tool_call>' in text
    assert '<tool_result tool_call_id="call_1">\n21C\n</tool_result>' in text
    assert text.endswith("Continue the conversation above from where it ends.")


def test_text_parts_are_joined_and_assistant_null_content_is_allowed() -> None:
    convo = messages(("user", [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
                     ("assistant", None), ("user", "c"))
    assert "<user>\nab\n</user>\n<assistant>\n\n</assistant>" in prompt_of(convo, "append").text


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 20).decode()


def test_image_parts_are_marked_in_the_text_and_collected_in_order() -> None:
    convo = messages(("user", [{"type": "text", "text": "compare "},
                               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                               {"type": "image_url", "image_url": {"url": "https://example.com/b.jpg"}}]))
    assert prompt_of(convo, "append").text == "compare [image][image]"
    assert [place for turn in turns(convo) for place in turn.images] == [
        (f"data:image/png;base64,{PNG}", "messages[0].content[1]"), ("https://example.com/b.jpg", "messages[0].content[2]")]


def test_data_url_images_become_base64_blocks() -> None:
    block = main.data_url_image(f"data:image/png;base64,{PNG}", 1000, "here")
    assert block == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}


@pytest.mark.parametrize("url,reason", [
    (f"data:image/bmp;base64,{PNG}", "Unsupported image type"),
    ("data:image/png;base64,@@not-base64@@", "not valid base64"),
    ("data:image/png,rawbytes", "not a base64 data: URL"),
    ("data:image/png;base64," + base64.b64encode(b"x" * 2000).decode(), "larger than CLAUDE_MAX_IMAGE_BYTES"),
])
def test_bad_images_are_refused(url: str, reason: str) -> None:
    with pytest.raises(main.InvalidRequest, match=reason):
        main.data_url_image(url, 1000, "messages[0].content[0]")


def test_unknown_part_types_are_refused_naming_the_part() -> None:
    convo = messages(("user", [{"type": "input_audio", "input_audio": {}}]))
    with pytest.raises(main.InvalidRequest) as raised:
        prompt_of(convo, "append")
    assert "input_audio" in raised.value.message
    assert raised.value.param == "messages[0].content[0]"


def test_a_conversation_without_a_user_message_is_refused() -> None:
    with pytest.raises(main.InvalidRequest):
        prompt_of(messages(("system", "x"), ("assistant", "y")), "append")


@pytest.mark.parametrize("model,expected", [("claude-code", None), ("opus", "opus"), ("sonnet", "sonnet"),
                                            ("haiku", "haiku"), ("claude-sonnet-4-5-20250929",
                                                                 "claude-sonnet-4-5-20250929")])
def test_resolve_model(model: str, expected: str | None) -> None:
    assert main.resolve_model(model, Settings()) == expected


@pytest.mark.parametrize("model", ["fable", "opus[1m]", "claude-opus-5-5[1m]"])
def test_aliases_of_newer_clis_go_to_the_cli(model: str) -> None:
    assert main.resolve_model(model, Settings()) == model


def test_unknown_model_is_404_listing_the_valid_ids() -> None:
    with pytest.raises(main.ModelNotFound) as raised:
        main.resolve_model("gpt-4o", Settings())
    assert raised.value.status == 404 and raised.value.code == "model_not_found"
    assert "claude-code" in raised.value.message and "sonnet" in raised.value.message


def test_meaning_changing_parameters_are_refused_and_hints_ignored() -> None:
    with pytest.raises(main.InvalidRequest) as raised:
        main.check_request(ChatRequest(model="m", messages=messages(("user", "x")), n=2))
    assert (raised.value.param, raised.value.code) == ("n", "unsupported_value")
    with pytest.raises(main.InvalidRequest) as raised:
        main.check_request(ChatRequest(model="m", messages=messages(("user", "x")), logprobs=True))
    assert raised.value.code == "unsupported_parameter"
    req = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                      "temperature": 0.2, "store": False, "whatever": 1})
    assert main.check_request(req) == ["store", "temperature", "whatever"]


# ── argv and environment ──


def test_argv_reads_stream_json_on_stdin_and_never_carries_the_prompt() -> None:
    argv = main.build_argv("/bin/claude", Settings(), Launch())
    assert argv[:2] == ["/bin/claude", "-p"]
    for flag in ("--input-format=stream-json", "--output-format=stream-json", "--verbose",
                 "--include-partial-messages", "--max-turns=10", "--permission-mode=bypassPermissions"):
        assert flag in argv
    assert not any(a.startswith("--model") or "system-prompt" in a for a in argv)


def test_argv_passes_model_and_system_prompt_as_single_flag_words() -> None:
    launch = Launch(model="sonnet", system_prompt="--dangerous value")
    argv = main.build_argv("/bin/claude", Settings(), launch)
    assert "--model=sonnet" in argv and "--append-system-prompt=--dangerous value" in argv
    replace = main.build_argv("/bin/claude", Settings(system_prompt_mode="replace"), launch)
    assert "--system-prompt=--dangerous value" in replace
    from_file = main.build_argv("/bin/claude", Settings(), launch, "/tmp/p.txt")
    assert "--append-system-prompt-file=/tmp/p.txt" in from_file


def test_child_env_drops_nesting_markers_and_the_proxy_token() -> None:
    env = main.child_env(Settings(max_retries=2, tool_wait=60, timeout=30),
                         {"CLAUDECODE": "1", "CLAUDE_PROXY_TOKEN": "t", "PATH": "/bin"})
    assert env == {"PATH": "/bin", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "CLAUDE_CODE_MAX_RETRIES": "2",
                   "MCP_TOOL_TIMEOUT": "90000", "CLAUDE_CODE_MCP_AUTO_BACKGROUND_MS": "0"}
    kept = main.child_env(Settings(), {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "0"})
    assert kept["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "0"
    # A held client tool call must never be moved to the background, whatever the user's environment says.
    forced = main.child_env(Settings(), {"CLAUDE_CODE_MCP_AUTO_BACKGROUND_MS": "1500"})
    assert forced["CLAUDE_CODE_MCP_AUTO_BACKGROUND_MS"] == "0"


HELP_2_1_331 = """Usage: claude [options] [command] [prompt]

Options:
  --add-dir <directories...>            More directories Claude can access
  --exclude-dynamic-system-prompt-sections
      Move per-machine sections (cwd, env info, memory paths, git status) from
  -p, --print                           Print response and exit (useful for pipes). Note: The
                                        workspace trust dialog is skipped when Claude is run with the -p mode.
  --tools <tools...>                    Built-in tools to make available: "" for none, "default" for the default set
"""


def test_the_flags_a_cli_knows_are_read_from_its_help() -> None:
    flags = main.cli_flags_of(HELP_2_1_331)
    assert {"--add-dir", "--exclude-dynamic-system-prompt-sections", "--print", "--tools"} <= flags
    assert "--p" not in flags and not any(flag.endswith("-") for flag in flags)
    assert main.cli_flags_of("") == frozenset()


def test_the_supported_cli_range_is_what_the_tests_pin() -> None:
    run_sh = (Path(__file__).parent / "run.sh").read_text()
    pins = dict(re.findall(r'^(CLAUDE_CLI_OLDEST|CLAUDE_CLI_VERSION)="([\d.]+)"', run_sh, re.MULTILINE))
    assert (pins["CLAUDE_CLI_OLDEST"], pins["CLAUDE_CLI_VERSION"]) == main.SUPPORTED_CLI


def test_dynamic_system_prompt_sections_are_excluded_only_on_clis_that_know_the_flag() -> None:
    flag = "--exclude-dynamic-system-prompt-sections"
    assert flag in main.build_argv("/bin/claude", Settings(), Launch(), cli_flags=main.cli_flags_of(HELP_2_1_331))
    assert flag not in main.build_argv("/bin/claude", Settings(), Launch(), cli_flags=frozenset({"--tools"}))


def test_control_requests_and_their_responses() -> None:
    line = main.control_request("r1", "initialize")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"type": "control_request", "request_id": "r1", "request": {"subtype": "initialize"}}
    ok = {"type": "control_response", "response": {"subtype": "success", "request_id": "r1", "response": {"a": 1}}}
    assert main.control_response(ok, "r1") == {"a": 1}
    assert main.control_response(ok, "r2") is None
    assert main.control_response({"type": "result"}, "r1") is None
    refused = {"type": "control_response", "response": {"subtype": "error", "request_id": "r1", "error": "no"}}
    assert main.control_response(refused, "r1") == {}


def test_offered_models_are_the_cli_values_and_what_they_resolve_to() -> None:
    initialized = {"models": [
        {"value": "default", "resolvedModel": "claude-opus-5-5"}, {"value": "opus", "resolvedModel": "claude-opus-5-5"},
        {"value": "sonnet[1m]", "resolvedModel": "claude-sonnet-5[1m]"}, {"value": "haiku"}, "junk"]}
    assert main.offered_models(initialized) == ("opus", "sonnet[1m]", "haiku", "claude-opus-5-5", "claude-sonnet-5[1m]")
    assert main.offered_models({}) == ()


def test_user_message_is_one_stream_json_line() -> None:
    content = [{"type": "text", "text": "line one\nline two"}]
    line = main.user_message(content)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"type": "user", "message": {"role": "user", "content": content}}


@pytest.mark.parametrize("line,event", [(b'{"type":"x"}', {"type": "x"}), (b"warning: hi", None), (b"", None),
                                        (b"{broken", None), (b"[1]", None)])
def test_parse_event(line: bytes, event: dict | None) -> None:
    assert main.parse_event(line) == event


# ── errors ──


@pytest.mark.parametrize("status,cls,http", [(401, main.UpstreamAuthError, 502), (429, main.UpstreamRateLimited, 429),
                                             (529, main.UpstreamOverloaded, 503), (500, main.UpstreamError, 502),
                                             (400, main.UpstreamError, 502), (None, main.ClaudeFailed, 502),
                                             (404, main.ModelNotFound, 404)])
def test_result_errors_map_to_statuses(status: int | None, cls: type, http: int) -> None:
    error = main.result_error({"is_error": True, "api_error_status": status, "result": "API Error: x"}, None, False)
    assert type(error) is cls and error.status == http
    assert error.retryable is (status in (429, 529, 500))
    after_tools = main.result_error({"is_error": True, "api_error_status": status, "result": "x"}, None, True)
    assert after_tools.retryable is False


def test_error_envelope_and_headers() -> None:
    error = main.UpstreamRateLimited("slow down", retry_after=2.2)
    assert main.error_envelope(error) == {"error": {"message": "slow down", "type": "rate_limit_error",
                                                    "param": None, "code": "upstream_rate_limited"}}
    assert main.error_headers(error) == {"x-should-retry": "false", "retry-after": "3"}
    error.retryable = True
    assert main.error_headers(error)["x-should-retry"] == "true"


# ── translation ──


def stream_event(event: dict, parent: str | None = None) -> dict:
    return {"type": "stream_event", "event": event, "parent_tool_use_id": parent}


def text_delta(text: str) -> dict:
    return stream_event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})


RESULT = {"type": "result", "subtype": "success", "is_error": False, "total_cost_usd": 0.5,
          "usage": {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 100,
                    "cache_creation_input_tokens": 20}}
def message_start(**usage: int) -> dict:
    return stream_event({"type": "message_start", "message": {"usage": {"output_tokens": 1, **usage}}})


def message_delta(stop_reason: str, output_tokens: int) -> dict:
    return stream_event({"type": "message_delta", "delta": {"stop_reason": stop_reason},
                         "usage": {"output_tokens": output_tokens}})


TWO_TURNS = [
    {"type": "system", "subtype": "init"},
    message_start(input_tokens=10, cache_read_input_tokens=100),
    text_delta("I'll look."),
    {"type": "assistant", "message": {"content": [{"type": "text", "text": "I'll look."}]}},
    stream_event({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}}),
    stream_event({"type": "content_block_start", "index": 1,
                  "content_block": {"type": "tool_use", "id": "toolu_bash", "name": "Bash", "input": {}}}),
    message_delta("tool_use", 4),
    stream_event({"type": "message_start", "message": {"usage": {"input_tokens": 999}}}, parent="toolu_sub"),
    stream_event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "SUB"}},
                 parent="toolu_sub"),
    message_start(input_tokens=5, cache_creation_input_tokens=20),
    text_delta("Found "),
    text_delta("it."),
    message_delta("end_turn", 3),
    RESULT,
]


def tool_block(index: int, tool_id: str, name: str, *fragments: str) -> list[dict]:
    start = {"type": "content_block_start", "index": index,
             "content_block": {"type": "tool_use", "id": tool_id, "name": name, "input": {}}}
    deltas = [{"type": "content_block_delta", "index": index,
               "delta": {"type": "input_json_delta", "partial_json": fragment}} for fragment in fragments]
    return [stream_event(e) for e in (start, *deltas, {"type": "content_block_stop", "index": index})]


CLIENT_TOOL_TURN = [
    message_start(input_tokens=30),
    text_delta("Checking."),
    *tool_block(1, "toolu_a", "mcp__tools__get_weather", '{"city": ', '"Paris"}'),
    *tool_block(2, "toolu_b", "mcp__tools__get_time"),
    message_delta("tool_use", 9),
]


def test_usage_counts_cache_reads_and_writes_as_prompt_tokens() -> None:
    tokens = {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}
    assert main.openai_usage(tokens, 0.5) == {
        "prompt_tokens": 130, "completion_tokens": 7, "total_tokens": 137,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 20}, "total_cost_usd": 0.5,
    }


def test_stream_chunks_are_valid_openai_chunks_with_turns_separated() -> None:
    builder = CompletionBuilder("claude-code", include_usage=True)
    chunks = [builder.role_chunk(), *(c for e in TWO_TURNS for c in builder.feed(e)), *builder.finish()]
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks]
    assert {(c.id, c.created, c.model) for c in parsed} == {(builder.id, builder.created, "claude-code")}
    assert parsed[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
    assert text == "I'll look.\n\nFound it."
    assert [c.choices[0].finish_reason for c in parsed if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert not any(c.choices and c.choices[0].delta.tool_calls for c in parsed)
    usage = parsed[-1].usage
    assert parsed[-1].choices == [] and (usage.prompt_tokens, usage.completion_tokens) == (135, 7)
    assert usage.prompt_tokens_details.cached_tokens == 100 and usage.model_extra["total_cost_usd"] == 0.5
    assert any(c.get("reasoning_content") == "hm" for c in (ch["choices"][0]["delta"] for ch in chunks[:-1]))


def test_completion_has_the_same_text_as_the_stream() -> None:
    builder = CompletionBuilder("claude-code")
    for event in TWO_TURNS:
        builder.feed(event)
    completion = ChatCompletion.model_validate(builder.completion())
    assert completion.choices[0].message.content == "I'll look.\n\nFound it."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == 142
    assert builder.completion()["choices"][0]["message"]["reasoning_content"] == "hm"


def test_client_tool_calls_stream_as_tool_call_deltas() -> None:
    builder = CompletionBuilder("claude-code", include_usage=True)
    chunks = [builder.role_chunk(), *(c for e in CLIENT_TOOL_TURN for c in builder.feed(e)), *builder.finish()]
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks]
    deltas = [call for c in parsed if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert [(d.index, d.id, d.function.name) for d in deltas if d.id] == [(0, "toolu_a", "get_weather"),
                                                                          (1, "toolu_b", "get_time")]
    arguments = {i: "".join(d.function.arguments or "" for d in deltas if d.index == i) for i in (0, 1)}
    assert json.loads(arguments[0]) == {"city": "Paris"} and arguments[1] == "{}"
    assert [c.choices[0].finish_reason for c in parsed if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert parsed[-1].usage.prompt_tokens == 30


def test_client_tool_calls_in_a_completion() -> None:
    builder = CompletionBuilder("claude-code")
    for event in CLIENT_TOOL_TURN:
        builder.feed(event)
    completion = ChatCompletion.model_validate(builder.completion())
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls" and message.content == "Checking."
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("toolu_a", "get_weather", '{"city": "Paris"}'), ("toolu_b", "get_time", "{}")]


def test_the_cli_timing_of_the_result_is_kept() -> None:
    interpreter = main.Interpreter()
    interpreter.feed({**RESULT, "ttft_ms": 93, "time_to_request_ms": 88, "duration_ms": 120})
    assert interpreter.answer.timing == {"ttft_ms": 93, "time_to_request_ms": 88}
    older = main.Interpreter()
    older.feed(RESULT)
    assert older.answer.timing == {}


def test_no_usage_chunk_unless_asked() -> None:
    builder = CompletionBuilder("m")
    builder.feed(RESULT)
    assert [c["choices"][0]["finish_reason"] for c in builder.finish()] == ["stop"]


@pytest.mark.parametrize("events", [
    [message_delta("tool_use", 1), {**RESULT, "subtype": "error_max_turns", "is_error": True}],
    [message_delta("max_tokens", 1), RESULT],
])
def test_max_turns_and_max_tokens_finish_with_length(events: list[dict]) -> None:
    builder = CompletionBuilder("m")
    for event in events:
        builder.feed(event)
    assert builder.finish()[0]["choices"][0]["finish_reason"] == "length"


def test_sse_frames_one_line_of_json() -> None:
    frame = main.sse({"a": "x\ny"})
    assert frame == 'data: {"a":"x\\ny"}\n\n'
