"""Small helpers the test files share: what the fake Anthropic API received, the proxy's CLI processes, images,
and running the Node clients in tests/clients/."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import zlib
from pathlib import Path

from fake_anthropic import result_text

CLIENTS = Path(__file__).resolve().parent / "clients"


def run_node(script: str, *args: str, api_key: str = "unused", timeout: float = 120) -> dict:
    """Run tests/clients/<script> with node (the key as OPENAI_API_KEY and ANTHROPIC_API_KEY); its one line of
    stdout is JSON."""
    env = {**os.environ, "OPENAI_API_KEY": api_key, "ANTHROPIC_API_KEY": api_key}
    done = subprocess.run(["node", str(CLIENTS / script), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert done.returncode == 0, f"node {script} failed ({done.returncode}):\n{done.stderr}"
    return json.loads(done.stdout)


def assert_ai_sdk_weather_cycle(result: dict) -> dict:
    """tests/clients/ai_sdk.mjs `tools` over two steps: the model called get_weather (the fake's
    [[tool:get_weather:{"city":"Paris"}]]), the SDK ran execute, and the model answered with the result.
    Returns the call."""
    assert "errors" not in result, result.get("errors")
    first, second = result["steps"]
    assert first["finish_reason"] == "tool-calls" and first["text"] == "I'll run a command."
    [call] = first["tool_calls"]
    assert (call["name"], call["input"]) == ("get_weather", {"city": "Paris"}) and call["id"].startswith("toolu_")
    assert result["executed"] == [{"city": "Paris"}]
    assert (second["finish_reason"], second["text"]) == ("stop", "Tool said: 21C sunny")
    return call


def system_prompt_of(fake_api) -> str:
    """The system prompt of the one main request the fake API received."""
    [request] = fake_api.main_requests()
    return request["system"][-1]["text"]


def native_tool_results(fake_api) -> list[dict]:
    """The tool_result blocks of the continuation, as Claude Code sent them: the second main request must continue
    the same run (its assistant turn holds the tool_use blocks the results answer), not start a new one."""
    requests = fake_api.main_requests()
    assert len(requests) == 2, "the tool results must continue the held Claude Code run"
    *_, asked, last = requests[1]["messages"]
    assert asked["role"] == "assistant" and last["role"] == "user"
    assert all(block["type"] == "tool_result" for block in last["content"])
    assert sorted(b["id"] for b in asked["content"] if b["type"] == "tool_use") == sorted(
        b["tool_use_id"] for b in last["content"])
    return last["content"]


def turn_texts(request: dict) -> list[tuple[str, str]]:
    """The API request's conversation as (role, text) pairs, without the CLI's reminders and agent listing."""
    pairs = []
    for message in request["messages"]:
        blocks = message["content"] if isinstance(message["content"], list) else [
            {"type": "text", "text": message["content"]}]
        texts = [b["text"] for b in blocks if b.get("type") == "text" and not b["text"].startswith("<system-reminder>")]
        if message["role"] in ("user", "assistant") and texts:
            pairs.append((message["role"], "".join(texts).strip()))
    return pairs


def cli_processes(proxy) -> list:
    """The proxy's live child processes (its Claude Code CLIs)."""
    return [p for p in proxy.ps.children() if p.is_running() and p.status() != "zombie"]


def tiny_png() -> bytes:
    """A valid 1x1 PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0\xff\0\0")) + chunk(
        b"IEND", b"")


__all__ = ["assert_ai_sdk_weather_cycle", "cli_processes", "native_tool_results", "result_text", "run_node", "system_prompt_of", "tiny_png",
           "turn_texts"]
