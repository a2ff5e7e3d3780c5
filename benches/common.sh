# Shared by the bench and tuning scripts (`source` it after `cd` to the
# repository root): one `shardmcp serve` at a time, started in the
# background by the script, its pid in SERVER_PID.

SERVER_PID=""
HTTP_ADDR=""
TCP_ADDR=""
ADMIN_ADDR=""

# Stops the server: SIGTERM (its drain is bounded by
# runtime.drain_deadline_ms), SIGKILL if it is still there 15 s later.
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    # Reaped even when it had already died.
    [ -z "$SERVER_PID" ] || wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# wait_for_listeners LOG KIND...: waits up to 10 s for serve to print, in
# LOG, the address of each listener KIND (http, tcp, admin), and sets
# HTTP_ADDR, TCP_ADDR, ADMIN_ADDR accordingly. Fails when the server exits
# first or the time runs out.
wait_for_listeners() {
    local log=$1 kind addr ready
    shift
    for _ in $(seq 1 100); do
        ready=1
        for kind in "$@"; do
            addr=$(awk -v line="$kind listening on" 'index($0, line) {print $5; exit}' "$log" 2>/dev/null || true)
            printf -v "${kind^^}_ADDR" '%s' "$addr"
            [ -n "$addr" ] || ready=0
        done
        [ "$ready" = 1 ] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    return 1
}
