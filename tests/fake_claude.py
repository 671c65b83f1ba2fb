#!/usr/bin/env python3
"""A stand-in for the `claude` CLI that replays canned stream-json, for fast tests of the proxy's failure handling.

It behaves like `claude -p --input-format=stream-json --output-format=stream-json --verbose` as far as the proxy can
tell: it reads one user message from stdin, then writes events. FAKE_CLAUDE_MODE picks the script:

    reply          init, text deltas of FAKE_CLAUDE_TEXT (default "fake reply"), result (the default)
    exit           FAKE_CLAUDE_STDERR on stderr, exit code FAKE_CLAUDE_EXIT (default 1), nothing on stdout
    hang           init, then nothing until killed
    tool           init, then a child in a session of its own, as the Bash tool runs commands (`python3 -c <sleep>
                   FAKE_CLAUDE_TAG`), then nothing until killed
    huge           one text delta of FAKE_CLAUDE_BYTES characters, then the result
    garbage        non-JSON lines between the events of "reply"
    error_result   a result with is_error and api_error_status FAKE_CLAUDE_STATUS (default 500)

`claude auth status` prints {"loggedIn": true, "authMethod": "api_key", …} (FAKE_CLAUDE_LOGIN=0: logged out).

Every invocation appends {"argv", "stdin", "env", "pid"} as a JSON line to FAKE_CLAUDE_LOG when it is set.
`--version` prints VERSION; `--help` prints the flags listed in FAKE_CLAUDE_FLAGS (default: HELP_FLAGS, those the
proxy probes for), one per line. Control requests on stdin are not understood: the first line is taken as the prompt.
"""

import json
import os
import subprocess
import sys
import time

VERSION = "2.1.197 (Claude Code)"
HELP_FLAGS = "--exclude-dynamic-system-prompt-sections"


def emit(event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def text_events(text):
    yield {"type": "system", "subtype": "init", "session_id": "fake-session", "model": "fake"}
    yield {"type": "stream_event", "parent_tool_use_id": None,
           "event": {"type": "message_start", "message": {"id": "msg_fake", "usage": {
               "input_tokens": 3, "cache_read_input_tokens": 2, "cache_creation_input_tokens": 1, "output_tokens": 1}}}}
    step = max(1, len(text) // 3)
    for i in range(0, len(text), step):
        yield {"type": "stream_event", "parent_tool_use_id": None,
               "event": {"type": "content_block_delta", "index": 0,
                         "delta": {"type": "text_delta", "text": text[i:i + step]}}}
    yield {"type": "assistant", "message": {"content": [{"type": "text", "text": text}]}}
    yield {"type": "stream_event", "parent_tool_use_id": None,
           "event": {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}}


def result(**extra):
    event = {"type": "result", "subtype": "success", "is_error": False, "result": "", "total_cost_usd": 0.001,
             "usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 2,
                       "cache_creation_input_tokens": 1}}
    event.update(extra)
    return event


def log_invocation(stdin_text):
    path = os.environ.get("FAKE_CLAUDE_LOG")
    if path:
        env = {k: v for k, v in os.environ.items() if k.startswith(("CLAUDE", "FAKE_", "IS_SANDBOX"))}
        with open(path, "a") as log:
            log.write(json.dumps({"argv": sys.argv, "stdin": stdin_text, "env": env, "pid": os.getpid()}) + "\n")


def main():
    if "--version" in sys.argv:
        print(VERSION)
        return 0
    if sys.argv[1:3] == ["auth", "status"]:
        logged_in = os.environ.get("FAKE_CLAUDE_LOGIN", "1") == "1"
        print(json.dumps({"loggedIn": logged_in, "authMethod": "api_key" if logged_in else "none",
                          "apiProvider": "firstParty"}, indent=2))
        return 0 if logged_in else 1
    if "--help" in sys.argv:
        print("Usage: claude [options] [command] [prompt]\n\nOptions:")
        for flag in os.environ.get("FAKE_CLAUDE_FLAGS", HELP_FLAGS).split():
            print(f"  {flag}")
        return 0
    if "--verbose" not in sys.argv:
        print("Error: When using --print, --output-format=stream-json requires --verbose", file=sys.stderr)
        return 1
    mode = os.environ.get("FAKE_CLAUDE_MODE", "reply")
    log_invocation(sys.stdin.readline())
    if mode == "exit":
        print(os.environ.get("FAKE_CLAUDE_STDERR", "fake failure"), file=sys.stderr)
        return int(os.environ.get("FAKE_CLAUDE_EXIT", "1"))
    if mode in ("hang", "tool"):
        emit({"type": "system", "subtype": "init"})
        if mode == "tool":
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", os.environ.get("FAKE_CLAUDE_TAG", "")],
                             start_new_session=True)
        time.sleep(3600)
        return 0
    if mode == "error_result":
        emit({"type": "system", "subtype": "init"})
        status = int(os.environ.get("FAKE_CLAUDE_STATUS", "500"))
        emit(result(is_error=True, api_error_status=status, result=f"API Error: {status} fake"))
        return 1
    text = "x" * int(os.environ.get("FAKE_CLAUDE_BYTES", "10")) if mode == "huge" else os.environ.get(
        "FAKE_CLAUDE_TEXT", "fake reply")
    for event in text_events(text):
        if mode == "garbage":
            sys.stdout.write("not json at all\n")
        emit(event)
    emit(result(result=text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
