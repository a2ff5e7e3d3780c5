#!/usr/bin/env bash
# Runs every fuzz target for a share of SECONDS (default 60 in all), from the
# seed corpus in fuzz/corpus/<target>/. What a run finds beyond the seeds
# goes to a scratch directory (the seeds stay as committed); a crash stops
# the run with its input in fuzz/artifacts/<target>/ and a nonzero status.
#
#   fuzz/run.sh            # CI: about 12 s per target
#   fuzz/run.sh 3600       # an hour, split over the targets
#   FUZZ_TARGETS="ws_frames" fuzz/run.sh 600
set -euo pipefail
cd "$(dirname "$0")"

total=${1:-60}
targets=(${FUZZ_TARGETS:-jsonrpc_decode http_head sse_resume ws_frames param_headers})
each=$(( total / ${#targets[@]} ))
(( each >= 1 )) || each=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

cargo +nightly fuzz build
for target in "${targets[@]}"; do
    extra=()
    # A frame header must never size an allocation: no single one over 64 MiB.
    [[ $target == ws_frames ]] && extra+=(-malloc_limit_mb=64)
    mkdir -p "$scratch/$target"
    echo "== fuzz $target (${each} s)"
    log="$scratch/$target.log"
    status=0
    cargo +nightly fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$each" -print_final_stats=1 "${extra[@]}" >"$log" 2>&1 || status=$?
    grep -E '^(INFO: seed corpus|stat::number_of_executed_units|stat::peak_rss_mb|Done )' "$log" || true
    if (( status != 0 )); then
        tail -n 60 "$log" >&2
        echo "fuzz $target failed (status $status); the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
echo "fuzz: ${#targets[@]} targets, ${each} s each, no crash"
