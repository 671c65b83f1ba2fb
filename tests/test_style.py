"""main.py stays typed and tidy: mypy --strict and ruff pass on it, with the settings in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys

import pytest

from proxy_harness import REPO

PYPROJECT = REPO / "pyproject.toml"


def test_mypy_strict_passes_on_main() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(PYPROJECT), "main.py"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_passes_on_main() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--config", str(PYPROJECT), "main.py"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_checks_are_not_loosened() -> None:
    """What the two checks above check lives in pyproject.toml: strict mypy and ruff's E, F, W, B, I, UP rules."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    tool = tomllib.loads(PYPROJECT.read_text())["tool"]
    assert tool["mypy"]["strict"] is True
    assert not {key for key, value in tool["mypy"].items() if value is False or key.startswith(("disable_", "allow_"))}
    assert "overrides" not in tool["mypy"]
    assert {"E", "F", "W", "B", "I", "UP"} <= set(tool["ruff"]["lint"]["select"])
    assert not {"ignore", "extend-ignore", "per-file-ignores"} & set(tool["ruff"]["lint"])
    assert tool["ruff"]["line-length"] <= 120
