#!/usr/bin/env bash
# Spreads a NIC's queue interrupts over the shard cores, one queue per core,
# so each shard's packets are handled on its own core (no cross-core wake-up
# between the interrupt and the shard that reads the socket).
#
# Usage: tuning/irq-affinity.sh [--apply] [--cpus LIST] [--match PATTERN] IFACE
#   IFACE          the interface whose queue IRQs to place (e.g. eth0)
#   --cpus LIST    the shard cores, e.g. 0-3 or 0,2,4 [default: the online CPUs]
#   --match PAT    match IRQ names by this extended regex instead of IFACE
#                  (drivers such as mlx5 name queues by PCI address)
#   --apply        write /proc/irq/N/smp_affinity_list (root); without it the
#                  script only prints what it would do (dry run)
# Stop irqbalance first (systemctl disable --now irqbalance): it would move
# the IRQs back. PROC_INTERRUPTS and PROC_IRQ override /proc/interrupts and
# /proc/irq (for tests).
set -euo pipefail

apply=0
cpus=""
match=""
iface=""
while [ $# -gt 0 ]; do
    case "$1" in
        --apply) apply=1 ;;
        --cpus) cpus=${2:?--cpus needs a list}; shift ;;
        --match) match=${2:?--match needs a pattern}; shift ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "irq-affinity: unknown option $1" >&2; exit 2 ;;
        *) iface=$1 ;;
    esac
    shift
done
[ -n "$iface" ] || [ -n "$match" ] || { echo "irq-affinity: name an interface (see --help)" >&2; exit 2; }
interrupts=${PROC_INTERRUPTS:-/proc/interrupts}
irq_dir=${PROC_IRQ:-/proc/irq}
[ -n "$cpus" ] || cpus=$(cat /sys/devices/system/cpu/online)
[ -n "$match" ] || match="(^|[^[:alnum:]])${iface}([^[:alnum:]]|$)"

# "0-2,5" -> 0 1 2 5
expand() {
    local part out=()
    IFS=, read -ra parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ $part =~ ^([0-9]+)-([0-9]+)$ ]]; then
            out+=($(seq "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"))
        elif [[ $part =~ ^[0-9]+$ ]]; then
            out+=("$part")
        else
            echo "irq-affinity: bad CPU list: $1" >&2; exit 2
        fi
    done
    echo "${out[@]}"
}
read -ra cores <<<"$(expand "$cpus")"
[ "${#cores[@]}" -gt 0 ] || { echo "irq-affinity: no CPUs in '$cpus'" >&2; exit 2; }

# IRQ lines: "  42:  123  456  PCI-MSI 524288-edge  eth0-TxRx-0"; the name is the last field.
irqs=()
names=()
while read -r first rest; do
    irq=${first%:}
    [[ $irq =~ ^[0-9]+$ ]] || continue
    name=${rest##* }
    if [[ $name =~ $match ]]; then
        irqs+=("$irq")
        names+=("$name")
    fi
done <"$interrupts"
if [ "${#irqs[@]}" -eq 0 ]; then
    echo "irq-affinity: no IRQs in $interrupts match '${iface:-$match}' (virtual NICs may have none; try --match)" >&2
    exit 1
fi
if [ "$apply" -eq 1 ] && pgrep -x irqbalance >/dev/null 2>&1; then
    echo "irq-affinity: warning: irqbalance is running and will move these IRQs again" >&2
fi

mode=$([ "$apply" -eq 1 ] && echo "applying" || echo "dry run (add --apply to write)")
echo "irq-affinity: ${#irqs[@]} queue IRQs over cores ${cores[*]}: $mode"
for i in "${!irqs[@]}"; do
    core=${cores[$((i % ${#cores[@]}))]}
    target="$irq_dir/${irqs[$i]}/smp_affinity_list"
    echo "irq ${irqs[$i]} (${names[$i]}) -> cpu $core"
    if [ "$apply" -eq 1 ]; then
        echo "$core" >"$target"
    else
        echo "  echo $core > $target"
    fi
done
if [ "${#irqs[@]}" -lt "${#cores[@]}" ]; then
    echo "irq-affinity: fewer queues than cores: raise them with ethtool -L $iface combined ${#cores[@]}, or spread with RPS (/sys/class/net/$iface/queues/rx-*/rps_cpus)"
fi
