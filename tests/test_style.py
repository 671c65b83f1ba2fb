"""main.py stays typed and tidy: mypy --strict and ruff pass on it."""

from __future__ import annotations

import subprocess
import sys

from proxy_harness import REPO


def test_mypy_strict_passes_on_main() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--ignore-missing-imports", "main.py"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_passes_on_main() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--target-version", "py310", "--line-length", "120",
                             "--select", "E,F,W,B,I,UP", "main.py"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
