"""The stateful core in process, no subprocess: stdout line framing, admission, the run state machine, pool targets.

A stand-in for asyncio's Process feeds ClaudeProcess its stdout in chunks cut anywhere, so framing is tested on the
real reader; runs read scripted events from a stand-in ClaudeProcess.
"""

from __future__ import annotations

import asyncio
import json
import time
import types

import pytest

import main


class FakeProc:
    """What ClaudeProcess uses of asyncio's Process: pid, returncode, stdin, stdout and stderr streams."""

    def __init__(self) -> None:
        self.pid, self.returncode, self.stdin = 0, None, None
        self.stdout, self.stderr = asyncio.StreamReader(), asyncio.StreamReader()


def event_line(event: dict) -> bytes:
    return json.dumps(event).encode() + b"\n"


async def read_all(chunks: list[bytes], max_line_bytes: int = 1 << 20) -> list[object]:
    proc = FakeProc()
    process = main.ClaudeProcess(proc, asyncio.get_running_loop().create_future(), "/nonexistent",  # type: ignore
                                 max_line_bytes)
    for chunk in chunks:
        proc.stdout.feed_data(chunk)
        await asyncio.sleep(0)
    proc.stdout.feed_eof()
    proc.stderr.feed_eof()
    items: list[object] = []
    while True:
        try:
            item = await process.next_event()
        except main.ProxyError as exc:
            items.append(exc)
            break
        if item is None:
            break
        items.append(item)
    return items


def test_lines_are_framed_across_chunks_cut_anywhere() -> None:
    events = [{"type": "system", "n": i, "text": "x" * (i * 37)} for i in range(1, 6)]
    data = b"not json\n" + b"".join(event_line(e) for e in events) + event_line({"type": "result"})[:-1]
    for size in (1, 7, 64, 1000, len(data)):
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        assert asyncio.run(read_all(chunks)) == [*events, {"type": "result"}], size  # the last line has no newline


def test_an_oversized_line_is_an_error_not_a_hang() -> None:
    items = asyncio.run(read_all([event_line({"type": "system"}), b'{"type": "x", "big": "' + b"y" * 5000],
                                 max_line_bytes=1000))
    assert items[0] == {"type": "system"}
    assert isinstance(items[1], main.ClaudeFailed) and "CLAUDE_MAX_LINE_BYTES" in items[1].message


def test_admission_runs_queues_and_refuses() -> None:
    async def scenario() -> None:
        admission = main.Admission(running=1, waiting=1)
        await admission.acquire(time.monotonic() + 5)
        queued = asyncio.ensure_future(admission.acquire(time.monotonic() + 5))
        await asyncio.sleep(0)
        assert (admission.running, admission.queued) == (1, 1)
        with pytest.raises(main.Overloaded):
            admission.check()  # every slot and place in line taken: refused at once
        admission.release()
        await queued
        assert (admission.running, admission.queued) == (1, 0)
        with pytest.raises(main.RunTimeout):
            await admission.acquire(time.monotonic() + 0.05)  # waited in line past its deadline
        assert admission.queued == 0

    asyncio.run(scenario())


class ScriptedProcess:
    """A ClaudeProcess stand-in whose events are a script."""

    def __init__(self, events: list[dict]) -> None:
        self.events, self.interrupted, self.billed, self.bridge = list(events), None, 0.0, None
        self.has_pending = False

    async def next_event(self) -> dict | None:
        return self.events.pop(0) if self.events else None

    async def failure(self) -> main.ProxyError:
        return main.ClaudeFailed("Claude Code exited without a result")


def stream(event: dict) -> dict:
    return {"type": "stream_event", "event": event, "parent_tool_use_id": None}


TOOL_CALL = [stream({"type": "message_start", "message": {"usage": {"input_tokens": 3}}}),
             stream({"type": "content_block_start", "index": 0, "content_block": {
                 "type": "tool_use", "id": "toolu_1", "name": "mcp__tools__get_time", "input": {}}}),
             stream({"type": "content_block_stop", "index": 0}),
             stream({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 2}})]
RESULT = {"type": "result", "subtype": "success", "is_error": False, "total_cost_usd": 0.1}


def new_run(events: list[dict]) -> main.Run:
    conversation = main.Conversation("claude-code", None, (main.Turn("user", "hi"),))
    return main.Run(ScriptedProcess(events), conversation, time.monotonic() + 30, None)  # type: ignore[arg-type]


async def drain(run: main.Run) -> list[object]:
    return [event async for event in run.events()]


def test_a_run_goes_running_awaiting_running_done() -> None:
    async def scenario() -> None:
        run = new_run([*TOOL_CALL, stream({"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": "12:00"}}), RESULT])
        assert run.state is main.RunState.RUNNING
        events = await drain(run)
        assert run.state is main.RunState.AWAITING and run.interpreter.awaiting == ("toolu_1",)
        assert [type(e).__name__ for e in events] == ["Started", "Delta", "Ended"]  # the call, "{}" arguments
        assert run.answer.finish == "tool_calls" and not run.failed
        run.interpreter.next_answer()
        run.state = main.RunState.RUNNING  # what continue_with does, without a bridge
        await drain(run)
        assert run.state is main.RunState.DONE and run.answer.text == "12:00" and run.answer.finish == "stop"

    asyncio.run(scenario())


def test_a_run_that_fails_is_marked_failed() -> None:
    async def scenario() -> None:
        run = new_run([stream({"type": "message_start", "message": {}})])  # then the CLI ends without a result
        with pytest.raises(main.ClaudeFailed):
            await drain(run)
        assert run.failed and run.state is main.RunState.RUNNING
        error = new_run([{**RESULT, "is_error": True, "api_error_status": 500, "result": "API Error: 500"}])
        with pytest.raises(main.UpstreamError):
            await drain(error)
        assert error.failed and error.state is main.RunState.DONE  # done, but nothing of it worth keeping

    asyncio.run(scenario())


def test_pool_targets_share_the_slots_round_robin_most_recent_first() -> None:
    pool = main.WarmPool(3, 60, None, None, types.SimpleNamespace())  # type: ignore[arg-type]
    launches = [main.Launch(model=m) for m in ("a", "b")]
    for launch in [*launches, *launches]:  # each used twice: the pool keeps processes for them
        pool.learn(launch)
    assert pool.targets() == {launches[1]: 2, launches[0]: 1}


def test_an_empty_text_block_adds_no_blank_line_to_the_answer_or_the_stream() -> None:
    builder = main.Interpreter()
    renderer = main.ChatRenderer("m")
    events = [stream({"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
              stream({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a"}}),
              stream({"type": "content_block_stop", "index": 0}),
              stream({"type": "content_block_start", "index": 1, "content_block": {"type": "text"}}),  # no deltas
              stream({"type": "content_block_stop", "index": 1}),
              stream({"type": "content_block_start", "index": 2, "content_block": {"type": "text"}}),
              stream({"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "b"}}),
              stream({"type": "content_block_stop", "index": 2})]
    chunks = [c for e in events for a in builder.feed(e) for c in renderer.render(a, builder.answer)]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == builder.answer.text == "a\n\nb"
    assert renderer.completion(builder.answer)["choices"][0]["message"]["content"] == "a\n\nb"
