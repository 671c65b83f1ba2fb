#!/usr/bin/env bash
# The test command: sets up everything on a fresh machine, then runs the whole suite.
#   ./tests/run.sh            all tests (unit, HTTP, end-to-end with the real Claude Code CLI)
#   ./tests/run.sh -k stream  extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

CLAUDE_CLI_VERSION="2.1.197"   # the pinned @anthropic-ai/claude-code the end-to-end tests drive

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt

cli_dir="tests/.cli"
if [ "$("$cli_dir/node_modules/.bin/claude" --version 2>/dev/null | cut -d' ' -f1)" != "$CLAUDE_CLI_VERSION" ]; then
  command -v npm >/dev/null || { echo "npm is needed to install the Claude Code CLI for the end-to-end tests" >&2; exit 1; }
  mkdir -p "$cli_dir"
  npm install --silent --no-audit --no-fund --no-save --prefix "$cli_dir" "@anthropic-ai/claude-code@$CLAUDE_CLI_VERSION"
fi
export TEST_CLAUDE_BIN="$PWD/$cli_dir/node_modules/.bin/claude"

exec .venv/bin/python -m pytest "$@"
