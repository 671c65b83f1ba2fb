#!/usr/bin/env bash
# The test command: sets up everything on a fresh machine, then runs the whole suite.
#   ./tests/run.sh                 all tests (unit, HTTP, end-to-end with the real Claude Code CLI)
#   ./tests/run.sh -m "not e2e"    only the fast ones: no real Claude Code CLI (the e2e marker, see tests/conftest.py);
#                                  add -n 2 to run them in two workers (pytest-xdist)
#   ./tests/run.sh -k stream       extra arguments go to pytest
#   ./tests/run.sh --install-only  install what the tests need, run nothing (bench/bench.py uses this)
#   ./tests/run.sh --oldest-cli -m e2e   the end-to-end tests against the oldest supported CLI instead (.ci/run)
# Packages are installed only when their pins changed: stamps in .venv and tests/.cli* hold what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."

# The supported @anthropic-ai/claude-code range (README, Tests), both installed: the end-to-end tests drive the
# newest (in tests/.cli, with the Node clients), and .ci/run drives them again with the oldest (in its own folder).
CLAUDE_CLI_VERSION="2.1.331"
CLAUDE_CLI_OLDEST="2.1.197"
# The Node clients the tests drive (tests/clients/*.mjs), as exact npm specs:
NODE_CLIENTS=(
  "openai@7.57.0"              # the OpenAI Node SDK
  "@openclaw/ai@2026.9.6"      # OpenClaw's provider library (brings its own openai 7.15.0)
  "ai@7.0.173"                 # the Vercel AI SDK (declares node>=22; installs with a warning and works on 20)
  "@ai-sdk/openai@4.0.118"
  "@ai-sdk/anthropic@4.0.105"
  "@openai/codex@0.169.0"      # the Codex CLI (a prebuilt binary inside the npm package)
)

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
py_stamp=.venv/.test-requirements.sha256
py_wanted="$(cat requirements.txt tests/requirements.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$py_stamp" 2>/dev/null)" != "$py_wanted" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
  echo "$py_wanted" > "$py_stamp"
fi

# npm_install DIR SPECS...: install exactly SPECS into DIR, unless its stamp says they are there already.
npm_install() {
  local dir="$1"; shift
  local specs="$*" stamp="$dir/.installed-npm-specs"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$specs" ] || [ ! -x "$dir/node_modules/.bin/claude" ]; then
    command -v npm >/dev/null || { echo "npm is needed to install the Claude Code CLI and the Node clients for the end-to-end tests" >&2; exit 1; }
    mkdir -p "$dir"
    rm -f "$stamp"
    # One command for all: an install without --save removes what it was not given.
    npm install --loglevel=error --no-audit --no-fund --no-save --prefix "$dir" "$@"
    echo "$specs" > "$stamp"
  fi
}
cli_dir="tests/.cli"
oldest_dir="tests/.cli-$CLAUDE_CLI_OLDEST"
npm_install "$cli_dir" "@anthropic-ai/claude-code@$CLAUDE_CLI_VERSION" "${NODE_CLIENTS[@]}"
npm_install "$oldest_dir" "@anthropic-ai/claude-code@$CLAUDE_CLI_OLDEST"
export TEST_CLAUDE_BIN="$PWD/$cli_dir/node_modules/.bin/claude"
if [ "${1:-}" = "--oldest-cli" ]; then
  shift
  export TEST_CLAUDE_BIN="$PWD/$oldest_dir/node_modules/.bin/claude"
fi

if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi
exec .venv/bin/python -m pytest "$@"
