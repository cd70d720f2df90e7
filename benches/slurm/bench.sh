#!/usr/bin/env bash
# Submission overhead per stage: N trivial independent stages through the local one-node
# Slurm (scripts/slurm-local.sh) vs the same pipeline with the local executor, measured
# in the same invocation. Usage:
#   scripts/slurm-local.sh start
#   benches/slurm/bench.sh [N=1000] [JOBS=64]    (TSUMUGI=path/to/tsumugi to pick a binary)
set -euo pipefail
N=${1:-1000}
J=${2:-64}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${TSUMUGI:-$HERE/target/debug/tsumugi}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gen() {
    echo "name: bench"
    echo "stages:"
    for i in $(seq 1 "$N"); do
        printf '  s%d:\n    cmd: echo %d > out/%d.txt\n    outs: [out/%d.txt]\n' "$i" "$i" "$i" "$i"
    done
}
time_run() { # dir executor -> seconds
    local t0 t1
    t0=$(date +%s.%N)
    (cd "$1" && "$BIN" run p.yaml -j "$J" -q --executor "$2" >/dev/null)
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}
for e in local slurm; do mkdir -p "$work/$e"; gen >"$work/$e/p.yaml"; done
tl=$(time_run "$work/local" local)
ts=$(time_run "$work/slurm" slurm)
printf 'stages=%d jobs=%d poll=%sms binary=%s\n' "$N" "$J" "${TSUMUGI_SLURM_POLL_MS:-500}" "$BIN"
printf 'local: %.2fs (%.1f ms/stage)\n' "$tl" "$(echo "$tl * 1000 / $N" | bc -l)"
printf 'slurm: %.2fs (%.1f ms/stage)\n' "$ts" "$(echo "$ts * 1000 / $N" | bc -l)"
printf 'slurm/local: %.1fx; submission overhead: %.1f ms/stage\n' "$(echo "$ts / $tl" | bc -l)" "$(echo "($ts - $tl) * 1000 / $N" | bc -l)"
