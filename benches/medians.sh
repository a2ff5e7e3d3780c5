#!/usr/bin/env bash
# Prints the median of every criterion benchmark from the last `cargo bench`
# run (target/criterion/*/new/estimates.json) as a Markdown table.
# Usage: cargo bench --bench registry --bench mesh --bench supervision --bench request_path && benches/medians.sh
set -euo pipefail
root="${CARGO_TARGET_DIR:-$(dirname "$0")/../target}/criterion"
[ -d "$root" ] || { echo "no criterion results under $root: run cargo bench first" >&2; exit 1; }
python3 - "$root" <<'PY'
import json, os, sys
root = sys.argv[1]
rows = []
for dirpath, _, files in os.walk(root):
    if os.path.basename(dirpath) == "new" and "estimates.json" in files:
        with open(os.path.join(dirpath, "estimates.json")) as f:
            median_ns = json.load(f)["median"]["point_estimate"]
        bench = os.path.relpath(os.path.dirname(dirpath), root)
        per_elem = None
        bench_file = os.path.join(dirpath, "benchmark.json")
        if os.path.exists(bench_file):
            with open(bench_file) as f:
                throughput = json.load(f).get("throughput") or {}
            elements = throughput.get("Elements")
            if elements:
                per_elem = median_ns / elements
        rows.append((bench, median_ns, per_elem))
def fmt(ns):
    if ns is None:
        return ""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"
print("| benchmark | median per iteration | per element | elements/s |")
print("| --- | --- | --- | --- |")
for bench, median, per_elem in sorted(rows):
    rate = f"{1e9 / per_elem:,.0f}" if per_elem else ""
    print(f"| {bench} | {fmt(median)} | {fmt(per_elem)} | {rate} |")
PY
