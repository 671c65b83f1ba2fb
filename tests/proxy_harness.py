"""Runs main.py as a real server process on loopback, as users run it, for HTTP and end-to-end tests and bench/.

Also sets up the Codex CLI (tests/.cli, pinned by ./tests/run.sh) to talk to a local server: codex_environment()."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psutil

REPO = Path(__file__).resolve().parent.parent
FAKE_CLAUDE = str(Path(__file__).resolve().parent / "fake_claude.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proxy:
    """A started `python main.py` with the given environment; stop() ends it and reports leftover processes.

    `script`: another copy of main.py to run (bench/bench.py --main)."""

    def __init__(self, env: dict[str, str], log_path: Path, args: tuple[str, ...] = (),
                 script: Path = REPO / "main.py") -> None:
        self.port = int(env.get("PROXY_PORT") or free_port())
        self.env = {**env, "PROXY_PORT": str(self.port)}
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, str(script), *args], env=self.env, cwd=REPO,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.proc.pid)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 20) -> Proxy:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the proxy exited with {self.proc.returncode}:\n{self.output()}")
            try:
                # Any answer will do, from a route that starts no CLI (GET / asks `claude auth status`, GET /v1/models
                # asks the CLI which models it offers).
                httpx.get(self.url + "/v1/ready-probe", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"the proxy did not start:\n{self.output()}")

    def client(self, **kwargs: object) -> openai.OpenAI:
        kwargs.setdefault("api_key", self.env.get("CLAUDE_PROXY_TOKEN") or "unused")
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 120)
        return openai.OpenAI(base_url=self.url + "/v1", **kwargs)

    def children(self) -> list[psutil.Process]:
        try:
            return self.ps.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def wait_until(predicate, timeout: float = 10, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def processes_matching(text: str) -> list[psutil.Process]:
    """Live processes whose command line contains `text` (zombies excluded)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and text in " ".join(process.info["cmdline"] or []):
                found.append(process)
        except psutil.Error:
            continue
    return found


# ── The Codex CLI ──────────────────────────────────────────────────────────

CODEX_BIN = str(REPO / "tests/.cli/node_modules/.bin/codex")  # @openai/codex, pinned by ./tests/run.sh
CODEX_KEY_VARIABLE = "CODEX_PROXY_TEST_KEY"


def codex_environment(folder: Path, base_url: str, api_key: str = "unused",
                      model: str = "claude-code") -> dict[str, str]:
    """An environment for `codex exec` against a local Responses API at `base_url` (".../v1"), offline.

    Writes `folder`/codex-home/config.toml (CODEX_HOME): a custom provider `proxy` (wire_api "responses", its key
    from $CODEX_PROXY_TEST_KEY, sent as `Authorization: Bearer`), no retries, and update checks, analytics, plugins
    and apps off. HOME is `folder` too, so no dotfiles of the developer are read (Codex runs its commands with
    `bash -lc`), and nothing Codex-, OpenAI-, Claude- or proxy-related is inherited.

    Run it as `codex exec --skip-git-repo-check --ephemeral --sandbox danger-full-access --output-last-message FILE
    PROMPT` with stdin closed (exec also reads stdin when it is not a terminal). Measured with Codex 0.169.0: one
    POST {base_url}/responses per model turn, no other traffic (it only connects to base_url); on stderr a
    warning that the model's metadata is unknown, and one that it will not create PATH helpers under /tmp."""
    home = folder / "codex-home"
    home.mkdir(parents=True, exist_ok=True)
    config = f"""\
model = {json.dumps(model)}
model_provider = "proxy"
check_for_update_on_startup = false

[analytics]
enabled = false

[features]
plugins = false
remote_plugin = false
apps = false

[model_providers.proxy]
name = "proxy"
base_url = {json.dumps(base_url)}
wire_api = "responses"
env_key = "{CODEX_KEY_VARIABLE}"
request_max_retries = 0
stream_max_retries = 0
"""
    (home / "config.toml").write_text(config)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CODEX_", "OPENAI_", "CLAUDE", "ANTHROPIC_", "PROXY_"))}
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY") or env.get("no_proxy"), "127.0.0.1,localhost"]))
    env.update(HOME=str(folder), CODEX_HOME=str(home), NO_PROXY=no_proxy, no_proxy=no_proxy)
    env[CODEX_KEY_VARIABLE] = api_key
    return env
