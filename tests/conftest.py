"""Shared fixtures for driving the real Claude Code CLI against the fake Anthropic API (tests/fake_anthropic.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fake_anthropic import FakeAnthropic, cli_environment

REPO = Path(__file__).resolve().parent.parent
E2E_FIXTURES = {"claude_bin", "cli_env"}  # make_proxy uses both


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that drives the real Claude Code CLI (through these fixtures) `e2e`, new ones included:
    `./tests/run.sh -m "not e2e"` runs only the fast tests."""
    for item in items:
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def claude_bin() -> str:
    """The pinned Claude Code CLI: $TEST_CLAUDE_BIN (set by ./tests/run.sh), else tests/.cli/node_modules/.bin/claude."""
    candidates = [os.environ.get("TEST_CLAUDE_BIN", ""), str(REPO / "tests/.cli/node_modules/.bin/claude")]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    pytest.fail("The Claude Code CLI for the end-to-end tests is missing: run ./tests/run.sh, which installs the "
                "pinned version into tests/.cli and sets TEST_CLAUDE_BIN.")


@pytest.fixture(scope="session")
def claude_version(claude_bin: str) -> str:
    """What the CLI under test says of its version, e.g. "2.1.331 (Claude Code)"."""
    return subprocess.run([claude_bin, "--version"], capture_output=True, text=True, timeout=30,
                          check=True).stdout.strip()


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def cli_env(tmp_path: Path, fake_api: FakeAnthropic) -> dict[str, str]:
    """An environment for the CLI: isolated HOME, only the fake API reachable, no retries, no side traffic."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return cli_environment(str(home), fake_api.base_url)


# Servers of the proxy itself (tests/proxy_fixtures.py): make_proxy (real CLI), make_fake_proxy (fake_claude.py).
pytest_plugins = ["proxy_fixtures"]
