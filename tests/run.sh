#!/usr/bin/env bash
# The test command: sets up everything on a fresh machine, then runs the whole suite.
#   ./tests/run.sh            all tests (unit, HTTP, end-to-end with the real Claude Code CLI)
#   ./tests/run.sh -k stream  extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

CLAUDE_CLI_VERSION="2.1.197"   # the pinned @anthropic-ai/claude-code the end-to-end tests drive
OPENAI_NODE_VERSION="7.57.0"   # the OpenAI Node SDK tests/test_clients.py drives
OPENCLAW_AI_VERSION="2026.9.6" # OpenClaw's provider library (brings its own openai 7.15.0), ditto

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt

cli_dir="tests/.cli"
node_package_version() { node -p "require('./$cli_dir/node_modules/$1/package.json').version" 2>/dev/null || true; }
if [ "$("$cli_dir/node_modules/.bin/claude" --version 2>/dev/null | cut -d' ' -f1)" != "$CLAUDE_CLI_VERSION" ] ||
   [ "$(node_package_version openai)" != "$OPENAI_NODE_VERSION" ] ||
   [ "$(node_package_version @openclaw/ai)" != "$OPENCLAW_AI_VERSION" ]; then
  command -v npm >/dev/null || { echo "npm is needed to install the Claude Code CLI and the Node clients for the end-to-end tests" >&2; exit 1; }
  mkdir -p "$cli_dir"
  # One command for all: an install without --save removes what it was not given.
  npm install --silent --no-audit --no-fund --no-save --prefix "$cli_dir" "@anthropic-ai/claude-code@$CLAUDE_CLI_VERSION" \
    "openai@$OPENAI_NODE_VERSION" "@openclaw/ai@$OPENCLAW_AI_VERSION"
fi
export TEST_CLAUDE_BIN="$PWD/$cli_dir/node_modules/.bin/claude"

exec .venv/bin/python -m pytest "$@"
