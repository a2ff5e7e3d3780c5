#!/usr/bin/env bash
# Measures the effect of the tuning knobs on this host with `shardmcp load`
# and a connect storm; prints a Markdown table (also $OUT/results.md) of
# medians over RUNS runs. Writes sysctls (root): each one it changes is
# saved first and put back on exit, failure and Ctrl-C included.
#
#   tuning/measure.sh [all|shards|spin|mesh|ring|backlog|ports|nofile|otel]...
#
# `otel` (not part of `all`) needs target/release/shardmcp built with
# `--features otel` (then SKIP_BUILD=1): the cost of span export, against a
# small OTLP/HTTP receiver that answers 200 to every POST.
#
# Environment: RUNS (3), DURATION (5s per load run), OUT (target/tuning),
# STORM (connections in one connect storm, 3000), SKIP_BUILD=1 to use
# target/release/shardmcp as it is. Needs jq and python3. Every server binds
# port 0 on 127.0.0.1 and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh

RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
OUT=${OUT:-target/tuning}
STORM=${STORM:-3000}
BIN=target/release/shardmcp
WHAT=("$@")
[ ${#WHAT[@]} -gt 0 ] || WHAT=(all)

command -v jq >/dev/null || { echo "measure: needs jq" >&2; exit 2; }
command -v python3 >/dev/null || { echo "measure: needs python3" >&2; exit 2; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet
mkdir -p "$OUT"

# --- sysctls: saved before the first change, restored on any exit ---------
declare -A SAVED=()
set_sysctl() { # NAME VALUE
    if [ -z "${SAVED[$1]+x}" ]; then
        SAVED[$1]=$(sysctl -n "$1")
    fi
    sysctl -qw "$1=$2"
}
restore_sysctls() {
    local name
    for name in "${!SAVED[@]}"; do
        sysctl -qw "$name=${SAVED[$name]}" || echo "measure: could not restore $name=${SAVED[$name]}" >&2
    done
    SAVED=()
}

# --- one server at a time --------------------------------------------------
cleanup() {
    stop_server
    restore_sysctls
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server "TOML" [wrapper...]: config text, then an optional command to
# run serve under (e.g. prlimit).
start_server() {
    local toml=$1
    shift
    local config="$OUT/server.toml" log="$OUT/server.out"
    printf '%s\n' "$toml" >"$config"
    "$@" "$BIN" serve --config "$config" --http 127.0.0.1:0 --tcp 127.0.0.1:0 \
        --admin "" --log warn >"$log" 2>&1 &
    SERVER_PID=$!
    wait_for_listeners "$log" http tcp && return 0
    echo "measure: server did not start:" >&2
    cat "$log" >&2
    return 1
}

# load NAME [load flags...]: one run against the http listener (the tcp one
# with --transport tcp); the JSON report goes to $OUT/NAME.json.
load() {
    local name=$1 target="http://$HTTP_ADDR/mcp"
    shift
    case " $* " in *" --transport tcp "*) target=$TCP_ADDR ;; esac
    "$BIN" load --target "$target" --quiet --json "$OUT/$name.json" "$@" >/dev/null
}

# median of the numbers on stdin
median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { print "n/a"; exit }
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        if (m == int(m)) printf "%d\n", m; else if (m >= 100 || m <= -100) printf "%.0f\n", m; else if (m >= 1) printf "%.1f\n", m; else printf "%.3f\n", m }'
}

# med PREFIX JQ: the median of JQ over $OUT/PREFIX-*.json
med() {
    local f
    for f in "$OUT/$1"-*.json; do jq -r "$2" "$f"; done | median
}

# Server CPU (utime + stime, clock ticks) of a pid.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# Server CPU in % of one core while idle for 3 s.
idle_cpu() {
    local before after
    sleep 1
    before=$(cpu_ticks "$SERVER_PID")
    sleep 3
    after=$(cpu_ticks "$SERVER_PID")
    echo "$before $after $(getconf CLK_TCK)" | awk '{ printf "%.1f\n", ($2 - $1) * 100 / $3 / 3 }'
}

RESULTS="$OUT/results.md"
: >"$RESULTS"
row() {
    printf '| %s |\n' "$*" | tee -a "$RESULTS"
}
want() {
    local w
    for w in "${WHAT[@]}"; do
        { [ "$w" = all ] && [ "$1" != otel ]; } || [ "$w" = "$1" ] && return 0
    done
    return 1
}

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(nproc) vCPU $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "runs: $RUNS x $DURATION; medians"
    echo
    echo "| knob | setting | result |"
    echo "| --- | --- | --- |"
} | tee -a "$RESULTS"

HTTP_CLOSED=(--sessions 64 --connections 64 --duration "$DURATION" --warmup 1s)

# Shards: one vs two executors on two vCPUs, closed loop over HTTP.
if want shards; then
    for shards in 1 2; do
        start_server "[runtime]
shards = $shards"
        for run in $(seq 1 "$RUNS"); do load "shards$shards-$run" "${HTTP_CLOSED[@]}"; done
        stop_server
        row "runtime.shards | $shards | $(med "shards$shards" .requests.ok_per_second) req/s, p99 $(med "shards$shards" .latency_ms.p99) ms, server $(med "shards$shards" .server.cpu_us_per_request) µs CPU/request"
    done
fi

# Spinning before parking: latency at a moderate open-loop rate, and the
# CPU an idle server burns.
if want spin; then
    for spin in 0 50 500; do
        start_server "[runtime]
shards = 2
spin_before_park_us = $spin"
        idle=$(idle_cpu)
        for run in $(seq 1 "$RUNS"); do
            load "spin$spin-$run" --sessions 16 --rate 2000 --duration "$DURATION" --warmup 1s
        done
        stop_server
        row "runtime.spin_before_park_us | $spin | at 2,000 req/s: p50 $(med "spin$spin" .latency_ms.p50) ms, p99 $(med "spin$spin" .latency_ms.p99) ms, server $(med "spin$spin" .server.cpu_us_per_request) µs CPU/request; idle server ${idle} % of a core"
    done
fi

# Mesh spinning: every session's requests cross shards (--spread-sessions).
if want mesh; then
    for spin in 0 50 1000; do
        start_server "[runtime]
shards = 2
mesh_spin_us = $spin"
        for run in $(seq 1 "$RUNS"); do
            load "mesh$spin-$run" "${HTTP_CLOSED[@]}" --spread-sessions
        done
        stop_server
        row "runtime.mesh_spin_us | $spin | cross-shard, closed loop: $(med "mesh$spin" .requests.ok_per_second) req/s, p99 $(med "mesh$spin" .latency_ms.p99) ms, server $(med "mesh$spin" .server.cpu_us_per_request) µs CPU/request"
    done
fi

# Ring depth: with thousands of connections armed for polling, every cancel
# searches the kernel's poll table, sized from the ring depth.
if want ring; then
    for depth in 128 4096; do
        start_server "[runtime]
shards = 2
io_ring_depth = $depth"
        for run in $(seq 1 "$RUNS"); do
            load "ring$depth-$run" --transport tcp --sessions 5000 \
                --rate 2000 --duration "$DURATION" --warmup 2s
        done
        stop_server
        row "runtime.io_ring_depth | $depth | 5,000 TCP sessions at 2,000 req/s: server $(med "ring$depth" .server.cpu_us_per_request) µs CPU/request, p99 $(med "ring$depth" .latency_ms.p99) ms"
    done
fi

# Accept queue: STORM connections at once against one shard; a full queue
# drops SYNs and the client retries after 1 s.
storm() { # NAME [CONNECTIONS]
    local run
    for run in $(seq 1 "$RUNS"); do
        python3 - "$TCP_ADDR" "${2:-$STORM}" >"$OUT/$1-$run.json" <<'PY'
import errno, json, selectors, socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
n = int(sys.argv[2])
sel = selectors.DefaultSelector()
start = {}
took = []
failed = 0
socks = []
for _ in range(n):
    s = socket.socket()
    s.setblocking(False)
    start[s] = time.monotonic()
    socks.append(s)
    # No local port left (EADDRNOTAVAIL) fails here, at once.
    if s.connect_ex((host, int(port))) not in (0, errno.EINPROGRESS):
        failed += 1
        continue
    sel.register(s, selectors.EVENT_WRITE)
deadline = time.monotonic() + 20
while len(took) + failed < n and time.monotonic() < deadline:
    for key, _ in sel.select(timeout=1):
        s = key.fileobj
        sel.unregister(s)
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            took.append(time.monotonic() - start[s])
        else:
            failed += 1
failed += n - len(took) - failed
took.sort()
pct = lambda p: round(took[min(len(took) - 1, int(p * len(took)))] * 1000, 1) if took else None
print(json.dumps({"connected": len(took), "failed": failed, "p50_ms": pct(0.5),
                  "p99_ms": pct(0.99), "max_ms": round(took[-1] * 1000, 1) if took else None,
                  "over_900ms": sum(1 for t in took if t > 0.9)}))
for s in socks:
    s.close()
PY
        sleep 1
    done
}
if want backlog; then
    for setting in "4096 4096" "128 4096" "4096 128"; do
        read -r somaxconn backlog <<<"$setting"
        set_sysctl net.core.somaxconn "$somaxconn"
        start_server "[runtime]
shards = 1
[listen]
backlog = $backlog"
        storm "storm$somaxconn-$backlog"
        stop_server
        row "net.core.somaxconn / listen.backlog | $somaxconn / $backlog | $STORM connects at once, 1 shard: connect p50 $(med "storm$somaxconn-$backlog" .p50_ms) ms, p99 $(med "storm$somaxconn-$backlog" .p99_ms) ms, max $(med "storm$somaxconn-$backlog" .max_ms) ms, $(med "storm$somaxconn-$backlog" .over_900ms) waited for a SYN retry (> 0.9 s), $(med "storm$somaxconn-$backlog" .failed) failed"
    done
    restore_sysctls
fi

# Ephemeral ports: 1,500 connections at once from a range of 1,000 ports.
# (`shardmcp load` itself refuses such a run up front and says why.)
if want ports; then
    for range in "32768 60999" "40000 40999"; do
        set_sysctl net.ipv4.ip_local_port_range "$range"
        start_server "[runtime]
shards = 2"
        storm "ports-${range// /-}" 1500
        stop_server
        row "net.ipv4.ip_local_port_range | $range | 1,500 connects at once: $(med "ports-${range// /-}" .connected) connected, $(med "ports-${range// /-}" .failed) failed (no local port)"
    done
    restore_sysctls
fi

# LimitNOFILE: the server's RLIMIT_NOFILE against 1,500 and 15,000 sessions
# (one fd each, plus the shards' own: listeners, rings, eventfds).
if want nofile; then
    for setting in "1024 1500" "20000 1500" "15000 15000" "20000 15000"; do
        read -r nofile sessions <<<"$setting"
        start_server "[runtime]
shards = 2" prlimit --nofile="$nofile"
        load "nofile$nofile-$sessions" --transport tcp --sessions "$sessions" \
            --rate 1000 --duration 2s --timeout 5s || true
        stop_server
        row "LimitNOFILE (server) | $nofile | $sessions TCP sessions: $(jq -r .initialize.sessions_ready "$OUT/nofile$nofile-$sessions.json") ready, $(jq -r .initialize.sessions_failed "$OUT/nofile$nofile-$sessions.json") failed"
    done
fi

# Span export on vs off, same binary, closed loop over HTTP.
RECEIVER_PID=""
if want otel; then
    python3 -c '
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()' >"$OUT/receiver.port" &
    RECEIVER_PID=$!
    trap 'kill "$RECEIVER_PID" 2>/dev/null; cleanup' EXIT
    sleep 1
    for mode in off on; do
        endpoint=""
        [ "$mode" = on ] && endpoint="http://127.0.0.1:$(cat "$OUT/receiver.port")/v1/traces"
        start_server "[runtime]
shards = 2
[otel]
endpoint = \"$endpoint\""
        for run in $(seq 1 "$RUNS"); do load "otel$mode-$run" "${HTTP_CLOSED[@]}"; done
        stop_server
        row "otel export | $mode | $(med "otel$mode" .requests.ok_per_second) req/s, p99 $(med "otel$mode" .latency_ms.p99) ms, server $(med "otel$mode" .server.cpu_us_per_request) µs CPU/request"
    done
    kill "$RECEIVER_PID" 2>/dev/null || true
fi

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS"
