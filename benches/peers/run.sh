#!/usr/bin/env bash
# Peer comparison: the same `shardmcp load` runs against shardmcp, rmcp, the
# official TypeScript SDK and a bare HTTP responder (the ceiling), one server
# at a time, and one markdown table of the results.
#
#   benches/peers/run.sh           warmup 5 s + 20 s measured per run
#   benches/peers/run.sh --quick   warmup 1 s + 3 s (a smoke run)
#
# Servers (each built here, outside shardmcp's dependency tree):
#   shardmcp   target/release/shardmcp serve (the demo server's `echo` tool);
#              a quick answer goes as plain JSON (its default)
#   shardmcp-sse  the same with limits.http_json_answer_turns = 0: every
#              answer is an SSE stream, as rmcp and the TypeScript SDK answer
#   rmcp       benches/peers/rmcp-echo: rmcp 3.11.0, axum, tokio, stateful, SSE answers
#   ts-sdk     benches/peers/ts-echo: @modelcontextprotocol/sdk 1.32.2 on node, stateful, SSE answers
#   bare       benches/peers/bare: glommio, one executor per core, SO_REUSEPORT,
#              fixed JSON-RPC answers (no MCP work at all)
#
# Load: Streamable HTTP, closed loop, `tools/call echo {"text":"hi"}` only,
# at 64 and 256 connections, each in two shapes:
#   per-conn   one session per connection (--sessions = --connections)
#   shared     many requests per session: 2 sessions (one per generator
#              thread) shared by all connections, each session's requests
#              in flight on many connections at once
# The generator gives every request its own JSON-RPC id and sets TCP_NODELAY;
# every server sets TCP_NODELAY on its sockets too.
#
# CPU placement (PLACEMENT): "shared" (the default) lets every server and the
# generator share all the CPUs of this process (no taskset), as DESIGN.md's
# peer figures were taken. "split" gives the server the last CPU and the
# generator (one thread) the first, each alone on its core (taskset), so
# latency is the servers' own and not the wait for a core. The same for
# every server. Server CPU seconds are utime+stime from /proc/PID/stat over
# the measured window (the generator's --server-pid), RSS is the server's
# VmRSS peak during the run.
#
# Environment: WARMUP, DURATION (override the above), CONNS ("64 256"),
# SHAPES ("per-conn shared"), SERVERS ("shardmcp shardmcp-sse rmcp ts-sdk
# bare"), PLACEMENT ("shared"), OUT (target/peers).
# Writes $OUT/table.md, $OUT/<server>-<shape>-<conns>.json
# (the raw reports) and the servers' logs. Needs cargo, node >= 18, npm, jq.
# Exits non-zero with a message when a build, a server start or a run fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/common.sh
ROOT=$(pwd)
PEERS=$ROOT/benches/peers

WARMUP=${WARMUP:-5s}
DURATION=${DURATION:-20s}
if [ "${1:-}" = --quick ]; then
    WARMUP=${QUICK_WARMUP:-1s}
    DURATION=${QUICK_DURATION:-3s}
    shift
fi
if [ $# -gt 0 ]; then
    echo "usage: benches/peers/run.sh [--quick]" >&2
    exit 2
fi
CONNS=${CONNS:-64 256}
SHAPES=${SHAPES:-per-conn shared}
SERVERS=${SERVERS:-shardmcp shardmcp-sse rmcp ts-sdk bare}
PLACEMENT=${PLACEMENT:-shared}
OUT=${OUT:-target/peers}
MIX='tools/call:echo:{"text":"hi"}'
# Sessions of the "shared" shape: one per generator thread (the generator
# runs no more threads than sessions).
SHARED_SESSIONS=$(nproc)

die() {
    echo "peers: $*" >&2
    exit 1
}
for tool in cargo node npm jq; do
    command -v "$tool" >/dev/null || die "needs $tool on PATH"
done
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] || die "the TypeScript SDK needs node >= 18, found $(node --version)"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# Placement: a prefix for the server's command line, and the generator's.
SERVER_CPUS=()
LOAD_CPUS=()
LOAD_THREADS=()
case $PLACEMENT in
    shared) ;;
    split)
        for tool in taskset python3; do
            command -v "$tool" >/dev/null || die "PLACEMENT=split needs $tool"
        done
        cpus=$(nproc)
        [ "$cpus" -ge 2 ] || die "PLACEMENT=split needs at least 2 CPUs, found $cpus"
        first=$(python3 -c 'import os; print(min(os.sched_getaffinity(0)))')
        last=$(python3 -c 'import os; print(max(os.sched_getaffinity(0)))')
        SERVER_CPUS=(taskset -c "$last")
        LOAD_CPUS=(taskset -c "$first")
        LOAD_THREADS=(--threads 1)
        ;;
    *) die "PLACEMENT takes shared or split, not $PLACEMENT" ;;
esac

echo "peers: building shardmcp, rmcp-echo, bare-responder (release) and installing the TypeScript SDK"
cargo build --release --quiet || die "building shardmcp failed"
(cd "$PEERS/rmcp-echo" && CARGO_TARGET_DIR="$PEERS/target" cargo build --release --quiet) \
    || die "building benches/peers/rmcp-echo failed"
(cd "$PEERS/bare" && CARGO_TARGET_DIR="$PEERS/target" cargo build --release --quiet) \
    || die "building benches/peers/bare failed"
(cd "$PEERS/ts-echo" && npm install --no-audit --no-fund --no-package-lock --loglevel=error >/dev/null) \
    || die "npm install in benches/peers/ts-echo failed"
LOAD=$ROOT/target/release/shardmcp

SERVER_ADDR=""

trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# Starts server $1 on a free port of 127.0.0.1; sets SERVER_PID, SERVER_ADDR.
start_server() {
    local name=$1 log=$OUT/$1.server
    # The line that says it is up: shardmcp prints "shardmcp: http listening
    # on ADDR (...)", the peers "listening on ADDR".
    local ready="^listening on"
    case $name in shardmcp*) ready="http listening on" ;; esac
    stop_server
    case $name in
        shardmcp)
            "${SERVER_CPUS[@]}" "$ROOT/target/release/shardmcp" serve --http 127.0.0.1:0 --tcp "" --admin "" \
                --log warn >"$log.out" 2>"$log.err" &
            ;;
        shardmcp-sse)
            printf '[limits]\nhttp_json_answer_turns = 0\n' >"$OUT/shardmcp-sse.toml"
            "${SERVER_CPUS[@]}" "$ROOT/target/release/shardmcp" serve --config "$OUT/shardmcp-sse.toml" \
                --http 127.0.0.1:0 --tcp "" --admin "" --log warn >"$log.out" 2>"$log.err" &
            ;;
        rmcp) "${SERVER_CPUS[@]}" "$PEERS/target/release/rmcp-echo" 127.0.0.1:0 >"$log.out" 2>"$log.err" & ;;
        ts-sdk) "${SERVER_CPUS[@]}" node "$PEERS/ts-echo/server.mjs" 127.0.0.1:0 >"$log.out" 2>"$log.err" & ;;
        bare) "${SERVER_CPUS[@]}" "$PEERS/target/release/bare-responder" 127.0.0.1:0 >"$log.out" 2>"$log.err" & ;;
        *) die "unknown server $name (SERVERS takes shardmcp shardmcp-sse rmcp ts-sdk bare)" ;;
    esac
    SERVER_PID=$!
    SERVER_ADDR=""
    for _ in $(seq 1 200); do
        SERVER_ADDR=$(grep -m1 -o "$ready [0-9.]*:[0-9]*" "$log.out" 2>/dev/null | awk '{print $NF}' || true)
        [ -n "$SERVER_ADDR" ] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "peers: $name did not come up; its stderr:" >&2
    cat "$log.err" >&2
    exit 1
}

# One generator run; the report goes to $OUT/$name.json.
run_load() {
    local name=$1 conns=$2 sessions=$3
    "${LOAD_CPUS[@]}" "$LOAD" load --transport http --target "http://$SERVER_ADDR/mcp" --mix "$MIX" \
        "${LOAD_THREADS[@]}" \
        --connections "$conns" --sessions "$sessions" --warmup "$WARMUP" --duration "$DURATION" \
        --server-pid "$SERVER_PID" --quiet --json "$OUT/$name.json" >"$OUT/$name.txt" \
        || die "the run $name failed (see $OUT/$name.txt)"
}

REPORTS=()
case $PLACEMENT in
    shared) where="servers and generator on all of them" ;;
    split) where="each server alone on CPU $last, the generator (1 thread) alone on CPU $first" ;;
esac
echo "peers: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $where; warmup $WARMUP, measured $DURATION per run"
for server in $SERVERS; do
    for conns in $CONNS; do
        for shape in $SHAPES; do
            case $shape in
                per-conn) sessions=$conns ;;
                shared) sessions=$SHARED_SESSIONS ;;
                *) die "unknown shape $shape (SHAPES takes per-conn shared)" ;;
            esac
            name=$server-$shape-$conns
            # A fresh server for every run: no run inherits another's sessions.
            start_server "$server"
            run_load "$name" "$conns" "$sessions"
            REPORTS+=("$OUT/$name.json")
            stop_server
            jq -r --arg name "$name" '"peers: \($name): \(.requests.ok_per_second|floor) req/s, p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms, errors \(.errors.total)"' "$OUT/$name.json"
        done
    done
done

# The table: one row per server and run; ratios against shardmcp's row of
# the same connections and shape.
{
    echo "| server | conns | sessions | req/s | p50 ms | p99 ms | server CPU s | CPU µs/req | RSS MiB | shardmcp req/s ÷ this | this p99 ÷ shardmcp p99 | errors |"
    echo "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for conns in $CONNS; do
        for shape in $SHAPES; do
            base=$OUT/shardmcp-$shape-$conns.json
            for server in $SERVERS; do
                report=$OUT/$server-$shape-$conns.json
                if [ -f "$base" ]; then
                    jq -r -s --arg server "$server" --arg shape "$shape" '
                        .[0] as $r | .[1] as $b |
                        def f(n): (n * 10 | round / 10 | tostring);
                        def f2(n): (n * 100 | round / 100 | tostring);
                        def f3(n): (n * 1000 | round / 1000 | tostring);
                        "| \($server) | \($r.connections) | \(if $shape == "shared" then "\($r.sessions) shared" else "1 per conn" end)"
                        + " | \($r.requests.ok_per_second | round) | \(f3($r.latency_ms.p50)) | \(f3($r.latency_ms.p99))"
                        + " | \(f2($r.server.cpu_seconds // 0)) | \(f($r.server.cpu_us_per_request // 0))"
                        + " | \(f(($r.server.rss_bytes.max // 0) / 1048576))"
                        + " | \(if $r.requests.ok_per_second > 0 then f2($b.requests.ok_per_second / $r.requests.ok_per_second) else "-" end)"
                        + " | \(if $b.latency_ms.p99 > 0 then f2($r.latency_ms.p99 / $b.latency_ms.p99) else "-" end)"
                        + " | \($r.errors.total) |"' "$report" "$base"
                else
                    jq -r --arg server "$server" '"| \($server) | \(.connections) | \(.sessions) | \(.requests.ok_per_second | round) | \(.latency_ms.p50) | \(.latency_ms.p99) | \(.server.cpu_seconds // 0) | \(.server.cpu_us_per_request // 0) | \((.server.rss_bytes.max // 0) / 1048576 | floor) | - | - | \(.errors.total) |"' "$report"
                fi
            done
        done
    done
} >"$OUT/table.md"

echo
echo "peers: $(date -u +%F), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $where; closed loop, tools/call echo, warmup $WARMUP, measured $DURATION"
cat "$OUT/table.md"
echo "peers: table in $OUT/table.md, raw reports in $OUT/*.json"
errors=$(jq -s 'map(.errors.total) | add' "${REPORTS[@]}")
[ "$errors" = 0 ] || die "$errors requests failed in all (see $OUT/*.txt)"
