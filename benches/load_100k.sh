#!/usr/bin/env bash
# 100,000 MCP sessions on one bare-metal host: `shardmcp serve` on one set of
# cores, `shardmcp load` in several generator processes on the others.
#
# It cannot run on the 2-vCPU development VM (RLIMIT_NOFILE is 20,000 there
# and cannot be raised, and two cores cannot hold a server and a generator
# apart); it checks the host first and says what is missing.
#
#   benches/load_100k.sh run      100,000 sessions over HTTP keep-alive, then
#                                 over TCP, DURATION each at RATE req/s
#   benches/load_100k.sh memory   server RSS per idle session at 15,000,
#                                 50,000 and 100,000 sessions
#   benches/load_100k.sh check    only the host checks
#
# What the host needs (tuning/README.md; run `shardmcp doctor` too):
#   - tuning/sysctl.conf applied: somaxconn and tcp_max_syn_backlog 65535
#     (connection storms at setup), ip_local_port_range "1024 65535",
#     fs.nr_open 1048576, the TCP memory settings (100,000 sockets).
#   - tuning/limits.conf for the user: nofile 1048576. The server holds one
#     fd per connection; each generator process holds its share.
#   - 100,000 connections to one server address need as many local ports,
#     more than one range offers (64,511): the generator connects from
#     several loopback addresses (SOURCE_IPS, --source-ips), each adding a
#     range. On loopback every 127.x.y.z is local, nothing to configure.
#   - Cores: SERVER_CPUS for the shards (one shard per core of its affinity
#     mask), LOAD_CPUS for the generator's threads, disjoint, on the same
#     NUMA node if possible. Isolate them (isolcpus/nohz_full) to keep other
#     work off, as tuning/README.md describes.
#   - Memory: about 45 KiB per session and connection in the server (see the
#     README's figures from the 15,000 run: 4.5 GiB for 100,000) and about
#     17 KiB per connection in the generator.
#
# Environment: SESSIONS (100000), DURATION (60s), WARMUP (10s), RATE (100000),
# SERVER_CPUS (first half of the cores), LOAD_CPUS (second half),
# LOAD_PROCS (4 generator processes), LOAD_THREADS (cores in LOAD_CPUS),
# SOURCE_IPS (127.0.0.1-4), OUT (target/load-100k); the rest as in
# benches/load_15k.sh, which does the runs.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-run}
SESSIONS=${SESSIONS:-100000}
CORES=$(nproc)
HALF=$((CORES / 2))
SERVER_CPUS=${SERVER_CPUS:-0-$((HALF - 1))}
LOAD_CPUS=${LOAD_CPUS:-$HALF-$((CORES - 1))}
LOAD_PROCS=${LOAD_PROCS:-4}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.1-4}
OUT=${OUT:-target/load-100k}

cpus_in() { # "0-7,16" -> 9
    local count=0 part
    IFS=',' read -r -a parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then
            count=$((count + ${part#*-} - ${part%-*} + 1))
        else
            count=$((count + 1))
        fi
    done
    echo "$count"
}
LOAD_THREADS=${LOAD_THREADS:-$(cpus_in "$LOAD_CPUS")}

addresses_in() { # "127.0.0.1-4,10.0.0.9" -> 5 (as --source-ips reads it)
    local count=0 part
    IFS=',' read -r -a parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then
            local first=${part%-*}
            count=$((count + ${part#*-} - ${first##*.} + 1))
        else
            count=$((count + 1))
        fi
    done
    echo "$count"
}

problems=0
need() { # need CONDITION-TEXT FIX-TEXT: prints a problem
    echo "load_100k: $1" >&2
    echo "           fix: $2" >&2
    problems=$((problems + 1))
}

check_host() {
    local hard soft low high ports sources somaxconn syn
    hard=$(ulimit -Hn)
    soft=$(ulimit -Sn)
    if [ "$hard" != unlimited ] && [ "$hard" -lt $((SESSIONS + 20000)) ]; then
        need "RLIMIT_NOFILE hard limit is $hard; the server alone needs $((SESSIONS + 20000))" \
            "install tuning/limits.conf (nofile 1048576) and log in again"
    fi
    [ "$soft" = unlimited ] || [ "$soft" -ge $((SESSIONS + 20000)) ] || ulimit -Sn "$hard"
    read -r low high </proc/sys/net/ipv4/ip_local_port_range
    ports=$((high - low + 1))
    sources=$(addresses_in "$SOURCE_IPS")
    if [ $((ports * sources)) -lt "$SESSIONS" ]; then
        need "$SESSIONS connections need $SESSIONS local ports; $sources source addresses x $ports ports give $((ports * sources))" \
            "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\" (tuning/sysctl.conf) or more SOURCE_IPS"
    fi
    somaxconn=$(cat /proc/sys/net/core/somaxconn)
    syn=$(cat /proc/sys/net/ipv4/tcp_max_syn_backlog)
    if [ "$somaxconn" -lt 65535 ] || [ "$syn" -lt 65535 ]; then
        need "somaxconn $somaxconn, tcp_max_syn_backlog $syn: the setup storm overflows them" \
            "apply tuning/sysctl.conf (sysctl --system)"
    fi
    if [ "$CORES" -lt 8 ]; then
        need "$CORES cores: too few to keep the server and the generator apart" \
            "a host with 8 or more cores (16+ for the figures to mean something)"
    fi
    if [ -x target/release/shardmcp ] && target/release/shardmcp doctor --help >/dev/null 2>&1; then
        echo "== shardmcp doctor"
        target/release/shardmcp doctor --config "$OUT/server.toml" || true
    fi
}

mkdir -p "$OUT"
# The server's bounds for this run: a deep accept queue for the setup storm;
# the per-shard session and connection bounds already allow 100,000 on 2 or
# more shards (sessions_per_pool_max 16384 x 8 pools, 65536 connections).
cat >"$OUT/server.toml" <<EOF
[listen]
backlog = 65535
EOF

[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet
check_host
if [ "$problems" -gt 0 ]; then
    echo "load_100k: this host is not ready ($problems problems above)" >&2
    exit 1
fi
[ "$MODE" = check ] && { echo "load_100k: host ok"; exit 0; }

export SKIP_BUILD=1 SESSIONS OUT
export DURATION=${DURATION:-60s} WARMUP=${WARMUP:-10s} RATE=${RATE:-100000}
export SIZES=${SIZES:-15000 50000 100000} HOLD=${HOLD:-10s}
export SERVER_CONFIG="$OUT/server.toml"
export SERVER_WRAP="taskset -c $SERVER_CPUS"
export LOAD_WRAP="taskset -c $LOAD_CPUS"
export THREADS=$LOAD_THREADS
export LOAD_ARGS="--procs $LOAD_PROCS --source-ips $SOURCE_IPS --timeout 30s"
exec benches/load_15k.sh "$MODE"
