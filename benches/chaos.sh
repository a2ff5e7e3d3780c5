#!/usr/bin/env bash
# Availability and recovery under chaos: `shardmcp serve --chaos` (2 shards)
# under `shardmcp load` with 15,000 HTTP sessions while `--chaos` kills a
# random pool every second and a random shard every 10 seconds.
#
#   benches/chaos.sh          run it and print the report and one summary line
#
# Environment: SESSIONS (15000), DURATION (60s), WARMUP (5s), RATE (10000
# total req/s), CHAOS ("pool=1s,shard=10s"), SHARDS (2), PROCS (2: a process
# holds at most RLIMIT_NOFILE sockets, so 15,000 connections need the
# generator in processes of their own), THREADS (generator threads, default
# one per core), GRACE (3s: each session of this run sends about every
# 1.5 s, so a session lost with its shard fails within it; see `shardmcp
# load --help`, CHAOS), OUT (target/chaos), SKIP_BUILD=1 to use
# target/release/shardmcp as it is.
# Needs jq. The server is started on free ports and stopped on exit, even on
# failure; the reports are in $OUT/chaos.json and $OUT/chaos.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh

SESSIONS=${SESSIONS:-15000}
DURATION=${DURATION:-60s}
WARMUP=${WARMUP:-5s}
RATE=${RATE:-10000}
CHAOS=${CHAOS:-pool=1s,shard=10s}
SHARDS=${SHARDS:-2}
PROCS=${PROCS:-2}
GRACE=${GRACE:-3s}
OUT=${OUT:-target/chaos}
BIN=target/release/shardmcp

command -v jq >/dev/null || { echo "chaos: needs jq" >&2; exit 2; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet
mkdir -p "$OUT"

trap stop_server EXIT INT TERM

"$BIN" serve --chaos --shards "$SHARDS" --http 127.0.0.1:0 --tcp "" --admin 127.0.0.1:0 \
    --log warn >"$OUT/serve.out" 2>"$OUT/serve.err" &
SERVER_PID=$!
if ! wait_for_listeners "$OUT/serve.out" http admin; then
    echo "chaos: the server did not come up:" >&2
    cat "$OUT/serve.err" >&2
    exit 1
fi

echo "== $SESSIONS sessions over HTTP, $DURATION after $WARMUP warmup at $RATE req/s, --chaos $CHAOS, $SHARDS shards"
"$BIN" load --transport http --target "http://$HTTP_ADDR/mcp" --sessions "$SESSIONS" \
    --procs "$PROCS" ${THREADS:+--threads "$THREADS"} --rate "$RATE" --duration "$DURATION" \
    --warmup "$WARMUP" --chaos "$CHAOS" --admin "$ADMIN_ADDR" --chaos-grace "$GRACE" \
    --json "$OUT/chaos.json" 2> >(tee "$OUT/chaos.progress" >&2) | tee "$OUT/chaos.txt"

echo "== summary ($(date -u +%F), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg))"
jq -r '"availability " + ((.availability // 0) * 100 | tostring) + " %"
    + ", requests " + (.requests.attempted|tostring) + " (" + (.requests.failed|tostring) + " failed)"
    + ", failed inside " + (.chaos.failed_inside|tostring)
    + ", outside " + (.chaos.failed_outside|tostring)
    + ", errors " + (.errors.by_kind|tostring)' "$OUT/chaos.json"
jq -r '.chaos.recovery[] | "recovery " + .kind + ": " + (.injected|tostring) + " injected, "
    + (.sessions_affected|tostring) + " sessions hit, p50 " + (.recovery_ms.p50|tostring)
    + " ms, p99 " + (.recovery_ms.p99|tostring) + " ms, max " + (.recovery_ms.max|tostring) + " ms"
    + (if .unrecovered > 0 then ", " + (.unrecovered|tostring) + " unrecovered" else "" end)
    + (if .failed_to_inject > 0 then ", " + (.failed_to_inject|tostring) + " failed to inject" else "" end)' \
    "$OUT/chaos.json"
