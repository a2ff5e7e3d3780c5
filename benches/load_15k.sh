#!/usr/bin/env bash
# 15,000 MCP sessions against `shardmcp serve` on this machine.
#
#   benches/load_15k.sh run      15,000 sessions over HTTP keep-alive (one
#                                connection each), then over TCP, DURATION
#                                each at RATE req/s; exits 1 on any error
#   benches/load_15k.sh memory   server RSS per idle session at 1,000, 5,000
#                                and 15,000 sessions: tcp (session and its
#                                connection), http (same), and http with all
#                                sessions over 64 connections (session alone)
#   benches/load_15k.sh all      both
#
# Environment: SESSIONS (15000), DURATION (60s), WARMUP (5s), RATE (10000,
# total req/s; "closed" for closed loop), SHARDS (server shards, default one
# per core), THREADS (generator threads, default one per core), HOLD (5s,
# how long idle sessions are held in memory mode), SIZES ("1000 5000 15000",
# session counts of memory mode), OUT (target/load), SKIP_BUILD=1 to use
# target/release/shardmcp as it is. For other hosts (benches/load_100k.sh):
# SERVER_CONFIG (a config file for serve), SERVER_WRAP and LOAD_WRAP
# (commands put in front, e.g. "taskset -c 0-15"), LOAD_ARGS (more load
# flags, e.g. "--procs 4 --source-ips 127.0.0.1-4"). Needs jq.
#
# Every server is started on free ports (port 0) and stopped on exit, even
# on failure. The reports are in $OUT/*.json and $OUT/*.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh

MODE=${1:-run}
SESSIONS=${SESSIONS:-15000}
DURATION=${DURATION:-60s}
WARMUP=${WARMUP:-5s}
RATE=${RATE:-10000}
HOLD=${HOLD:-5s}
SIZES=${SIZES:-1000 5000 15000}
OUT=${OUT:-target/load}
# Word-split on purpose: they hold a command and its arguments.
read -r -a SERVER_WRAP <<<"${SERVER_WRAP:-}"
read -r -a LOAD_WRAP <<<"${LOAD_WRAP:-}"
read -r -a LOAD_ARGS <<<"${LOAD_ARGS:-}"
BIN=target/release/shardmcp

command -v jq >/dev/null || { echo "load_15k: needs jq" >&2; exit 2; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet
mkdir -p "$OUT"

trap stop_server EXIT INT TERM

start_server() {
    local name=$1
    stop_server
    "${SERVER_WRAP[@]}" "$BIN" serve --http 127.0.0.1:0 --tcp 127.0.0.1:0 --admin 127.0.0.1:0 \
        --log warn ${SERVER_CONFIG:+--config "$SERVER_CONFIG"} ${SHARDS:+--shards "$SHARDS"} \
        >"$OUT/$name.serve.out" 2>"$OUT/$name.serve.err" &
    SERVER_PID=$!
    wait_for_listeners "$OUT/$name.serve.out" http tcp && return 0
    echo "load_15k: the server did not come up:" >&2
    cat "$OUT/$name.serve.err" >&2
    exit 1
}

rate_args() {
    if [ "$RATE" = closed ]; then echo ""; else echo "--rate $RATE"; fi
}

# One line from a report: what the README quotes.
summary() {
    jq -r '[.transport, (.sessions|tostring) + " sessions / " + (.connections|tostring) + " conns",
        "ok " + (.requests.ok|tostring), "errors " + (.errors.total|tostring),
        "availability " + ((.availability // 0) * 100 | tostring) + " %",
        "ok/s " + (.requests.ok_per_second|floor|tostring),
        "p50 " + (.latency_ms.p50|tostring) + " ms", "p99 " + (.latency_ms.p99|tostring) + " ms",
        "p99.9 " + (.latency_ms.p99_9|tostring) + " ms", "max " + (.latency_ms.max|tostring) + " ms",
        "init p50 " + (.initialize.latency_ms.p50|tostring) + " ms",
        "CPU per request: server " + ((.server.cpu_us_per_request // 0) * 10 | floor / 10 | tostring)
            + " µs, generator " + ((.generator_cpu_us_per_request // 0) * 10 | floor / 10 | tostring) + " µs",
        "server RSS " + (((.server.rss_bytes.ready // 0) / 1048576 * 10 | floor) / 10 | tostring) + " MiB"]
        | join(", ")' "$1"
}

run_load() {
    local name=$1
    shift
    # shellcheck disable=SC2046
    "${LOAD_WRAP[@]}" "$BIN" load "$@" --sessions "$SESSIONS" --duration "$DURATION" \
        --warmup "$WARMUP" $(rate_args) ${THREADS:+--threads "$THREADS"} "${LOAD_ARGS[@]}" \
        --json "$OUT/$name.json" \
        2> >(tee "$OUT/$name.progress" >&2) | tee "$OUT/$name.txt"
}

run_mode() {
    local failed=0
    echo "== $SESSIONS sessions over HTTP keep-alive, $DURATION after $WARMUP warmup, rate $RATE"
    start_server http
    run_load http --transport http --target "http://$HTTP_ADDR/mcp" || failed=1
    stop_server
    echo "== $SESSIONS sessions over TCP, $DURATION after $WARMUP warmup, rate $RATE"
    start_server tcp
    run_load tcp --transport tcp --target "$TCP_ADDR" || failed=1
    stop_server
    echo "== summary ($(date -u +%F), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg))"
    for name in http tcp; do
        [ -f "$OUT/$name.json" ] && summary "$OUT/$name.json"
    done
    local errors
    errors=$(jq -s 'map(.errors.total) | add' "$OUT/http.json" "$OUT/tcp.json" 2>/dev/null || echo missing)
    if [ "$failed" != 0 ] || [ "$errors" != 0 ]; then
        echo "load_15k: FAILED: errors $errors (see $OUT/*.txt)" >&2
        return 1
    fi
    echo "load_15k: no errors"
}

memory_mode() {
    echo "== server memory per idle session (RSS with sessions open - RSS before) / sessions, held $HOLD"
    printf '%-8s %-26s %12s %12s %14s\n' sessions "transport" "before MiB" "open MiB" "KiB/session"
    for n in $SIZES; do
        for variant in tcp http http64; do
            local name="memory-$variant-$n"
            start_server "$name"
            local args=(--transport tcp --target "$TCP_ADDR")
            local label="tcp (1 conn each)"
            case $variant in
                http)
                    args=(--transport http --target "http://$HTTP_ADDR/mcp")
                    label="http (1 conn each)"
                    ;;
                http64)
                    args=(--transport http --target "http://$HTTP_ADDR/mcp" --connections 64)
                    label="http (64 conns in all)"
                    ;;
            esac
            "${LOAD_WRAP[@]}" "$BIN" load "${args[@]}" --sessions "$n" --idle --duration "$HOLD" \
                --quiet ${THREADS:+--threads "$THREADS"} "${LOAD_ARGS[@]}" \
                --json "$OUT/$name.json" >"$OUT/$name.txt"
            jq -r --arg what "$label" '[(.sessions|tostring), $what,
                ((.server.rss_bytes.before / 1048576 * 10 | floor) / 10 | tostring),
                ((.server.rss_bytes.ready / 1048576 * 10 | floor) / 10 | tostring),
                ((.server.rss_per_session_bytes / 1024 * 10 | floor) / 10 | tostring),
                (.errors.total|tostring)] | "\(.[0])\t\(.[1])\t\(.[2])\t\(.[3])\t\(.[4])\terrors \(.[5])"' \
                "$OUT/$name.json" | awk -F'\t' '{printf "%-8s %-26s %12s %12s %14s  %s\n", $1, $2, $3, $4, $5, $6}'
            stop_server
        done
    done
}

case $MODE in
    run) run_mode ;;
    memory) memory_mode ;;
    all)
        memory_mode
        run_mode
        ;;
    *)
        echo "usage: benches/load_15k.sh [run|memory|all]" >&2
        exit 2
        ;;
esac
