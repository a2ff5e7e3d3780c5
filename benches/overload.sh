#!/usr/bin/env bash
# Overload: what `shardmcp serve` does when offered twice what it can serve.
#
#   1. capacity: closed loop (each connection sends its next request when
#      the last is answered) over CONNS connections: ok/s is the capacity.
#   2. overload: open loop at FACTOR x capacity (default 2) over
#      OVER_CONNS connections, enough that the server sees the excess as
#      requests in flight rather than the generator queueing it.
#   During 2, /health/live is timed with curl every 100 ms and the server's
#   RSS is sampled every 250 ms.
#
# The server runs with protect.requests_in_flight_per_shard_max = INFLIGHT
# (default 256) so that it sheds (503 + Retry-After) past that many POSTs
# in flight per shard; the rest of its config is the default.
#
# Environment: SESSIONS (1000), CONNS (256), OVER_CONNS (2048), DURATION
# (20s), WARMUP (3s), FACTOR (2), INFLIGHT (256), SHARDS (server shards,
# default one per core), THREADS (generator threads), OUT (target/overload),
# SKIP_BUILD=1 to use target/release/shardmcp as it is, SERVER_WRAP and
# LOAD_WRAP (commands put in front, e.g. "taskset -c 0"): on a small host,
# give the server and the generator a core each, or the generator cannot
# offer twice what the server serves. Needs jq and curl.
#
# The server is started on free ports (port 0) and stopped on exit, even
# on failure. Reports are in $OUT/*.json; the summary is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh

SESSIONS=${SESSIONS:-1000}
CONNS=${CONNS:-256}
OVER_CONNS=${OVER_CONNS:-2048}
DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-3s}
FACTOR=${FACTOR:-2}
INFLIGHT=${INFLIGHT:-256}
OUT=${OUT:-target/overload}
BIN=target/release/shardmcp
# Word-split on purpose: they hold a command and its arguments.
read -r -a SERVER_WRAP <<<"${SERVER_WRAP:-}"
read -r -a LOAD_WRAP <<<"${LOAD_WRAP:-}"

for tool in jq curl; do
    command -v "$tool" >/dev/null || { echo "overload: needs $tool" >&2; exit 2; }
done
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet
mkdir -p "$OUT"

SAMPLER_PIDS=()
stop_all() {
    for pid in "${SAMPLER_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    stop_server
}
trap stop_all EXIT INT TERM

cat >"$OUT/serve.toml" <<EOF
[protect]
requests_in_flight_per_shard_max = $INFLIGHT
EOF
"${SERVER_WRAP[@]}" "$BIN" serve --config "$OUT/serve.toml" --http 127.0.0.1:0 --tcp "" --admin 127.0.0.1:0 \
    --log warn ${SHARDS:+--shards "$SHARDS"} >"$OUT/serve.out" 2>"$OUT/serve.err" &
SERVER_PID=$!
if ! wait_for_listeners "$OUT/serve.out" http admin; then
    echo "overload: the server did not come up:" >&2
    cat "$OUT/serve.err" >&2
    exit 1
fi

load() {
    local name=$1
    shift
    "${LOAD_WRAP[@]}" "$BIN" load --transport http --target "http://$HTTP_ADDR/mcp" --sessions "$SESSIONS" \
        --duration "$DURATION" --warmup "$WARMUP" --server-pid "$SERVER_PID" \
        ${THREADS:+--threads "$THREADS"} "$@" --json "$OUT/$name.json" >"$OUT/$name.txt" \
        2>"$OUT/$name.progress" || true
}

echo "== capacity: closed loop, $SESSIONS sessions over $CONNS connections, $DURATION"
load capacity --connections "$CONNS"
CAPACITY=$(jq '.requests.ok_per_second | floor' "$OUT/capacity.json")
RATE=$((CAPACITY * FACTOR))
echo "capacity $CAPACITY ok/s; offering $RATE req/s"

echo "== overload: open loop at $RATE req/s over $OVER_CONNS connections, $DURATION"
: >"$OUT/health.txt"
: >"$OUT/rss.txt"
(
    while true; do
        curl -s -o /dev/null -m 2 -w '%{http_code} %{time_total}\n' \
            "http://$ADMIN_ADDR/health/live" >>"$OUT/health.txt" || echo "000 2" >>"$OUT/health.txt"
        sleep 0.1
    done
) &
SAMPLER_PIDS+=($!)
(
    while kill -0 "$SERVER_PID" 2>/dev/null; do
        awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status" >>"$OUT/rss.txt" 2>/dev/null || true
        sleep 0.25
    done
) &
SAMPLER_PIDS+=($!)
curl -s "http://$ADMIN_ADDR/metrics" >"$OUT/metrics.before"
load overload --connections "$OVER_CONNS" --rate "$RATE"
curl -s "http://$ADMIN_ADDR/metrics" >"$OUT/metrics.after"
for pid in "${SAMPLER_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
done
SAMPLER_PIDS=()
curl -s "http://$ADMIN_ADDR/metrics" | grep '^shardmcp_shed_total' >"$OUT/shed.txt" || true

percentile() { # file column pct
    sort -n "$1" | awk -v p="$2" '{a[NR]=$1} END {if (NR == 0) {print "n/a"; exit}
        i = int(NR * p / 100); if (i < 1) i = 1; if (i > NR) i = NR; print a[i]}'
}
awk '{print $2 * 1000}' "$OUT/health.txt" >"$OUT/health_ms.txt"

# Served requests' latency as the server saw it (arrival at the session to
# answer, all methods and shards) during the overload run: the difference
# of its histogram before and after. The generator's own figures count
# from each request's scheduled time, so they include its queue too.
server_latency() { # pct
    awk -v p="$1" '
        /^shardmcp_request_duration_seconds_bucket/ {
            match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
            # Each series lists its bounds in ascending order.
            if (!(le in sum)) order[++m] = le
            n = $NF + 0
            if (FILENAME ~ /before/) n = -n
            sum[le] += n
        }
        END {
            count = sum["+Inf"]
            if (count <= 0) { print "n/a"; exit }
            for (i = 1; i <= m; i++) {
                if (order[i] == "+Inf") continue
                if (sum[order[i]] >= count * p / 100) { printf "<= %g ms\n", order[i] * 1000; exit }
            }
            print "> 30000 ms"
        }' "$OUT/metrics.before" "$OUT/metrics.after"
}

echo "== summary ($(date -u +%F), $(nproc) CPUs, in flight cap $INFLIGHT per shard)"
jq -r --arg rate "$RATE" '"capacity (closed loop, \(.connections) conns): \(.requests.ok_per_second | floor) ok/s, p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms"' \
    "$OUT/capacity.json"
jq -r --arg rate "$RATE" '"offered \($rate) req/s over \(.connections) conns: answered ok \(.requests.ok) (\(.requests.ok_per_second | floor)/s), shed 503 \(.errors.by_kind.http_503 // 0), 429 \(.errors.by_kind.http_429 // 0), other errors \(.errors.total - (.errors.by_kind.http_503 // 0) - (.errors.by_kind.http_429 // 0)); served p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms"' \
    "$OUT/overload.json"
echo "served requests, server side (its histogram buckets): p50 $(server_latency 50), p99 $(server_latency 99)"
echo "/health/live during overload: $(wc -l <"$OUT/health.txt") probes, non-200 $(awk '$1 != 200' "$OUT/health.txt" | wc -l), p50 $(percentile "$OUT/health_ms.txt" 50) ms, p99 $(percentile "$OUT/health_ms.txt" 99) ms, max $(percentile "$OUT/health_ms.txt" 100) ms"
echo "server RSS during overload: min $(($(percentile "$OUT/rss.txt" 0) / 1024)) MiB, max $(($(percentile "$OUT/rss.txt" 100) / 1024)) MiB ($(wc -l <"$OUT/rss.txt") samples)"
echo "shed counters: $(tr '\n' ' ' <"$OUT/shed.txt")"
