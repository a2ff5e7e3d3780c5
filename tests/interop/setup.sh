#!/usr/bin/env bash
# Installs the official MCP clients the interop tests drive, pinned:
#   node_modules/  the TypeScript SDK (package.json), run by the machine's node (>= 18)
#   .venv/         the Python SDK (requirements.txt), in a venv of python3 (>= 3.10)
# Idempotent: a stamp holding the pins' checksum skips work already done.
# Safe to run concurrently (an flock serialises runs).
# Usage: tests/interop/setup.sh        (no arguments; prints what it does)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

exec 9>"$here/.setup.lock"
flock 9

need() { command -v "$1" >/dev/null || { echo "interop setup: $1 is needed but not on PATH" >&2; exit 1; }; }
need node
need npm
need python3

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 18 ]; then
    echo "interop setup: the TypeScript SDK needs node >= 18, found $(node --version)" >&2
    exit 1
fi

stamp_of() { sha256sum "$@" | sha256sum | cut -d' ' -f1; }

npm_stamp=$(stamp_of package.json)
if [ "$(cat node_modules/.interop-stamp 2>/dev/null)" != "$npm_stamp" ]; then
    echo "interop setup: npm install (TypeScript SDK) into $here/node_modules"
    npm install --no-audit --no-fund --no-package-lock --loglevel=error >/dev/null
    echo "$npm_stamp" > node_modules/.interop-stamp
fi

py_stamp=$(stamp_of requirements.txt)
if [ "$(cat .venv/.interop-stamp 2>/dev/null)" != "$py_stamp" ]; then
    echo "interop setup: python venv + pip install (Python SDK) into $here/.venv"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || { echo "interop setup: the Python SDK needs python >= 3.10, found $(python3 --version)" >&2; exit 1; }
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
    echo "$py_stamp" > .venv/.interop-stamp
fi
echo "interop setup: ready (TypeScript SDK $(node -p 'require("./node_modules/@modelcontextprotocol/sdk/package.json").version'), Python SDK $(.venv/bin/python -c 'from importlib.metadata import version; print(version("mcp"))'))"
