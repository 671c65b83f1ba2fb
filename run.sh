#!/usr/bin/env bash
# Start the proxy: creates .venv and installs requirements.txt on first use, then runs main.py.
#   ./run.sh                 serve on 127.0.0.1:18880
#   ./run.sh --help          every setting (flags, and the environment variables they mirror)
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.requirements.installed
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  touch "$stamp"
fi

# exec: the service manager's SIGTERM must reach uvicorn, which then stops every Claude Code run.
exec .venv/bin/python main.py "$@"
