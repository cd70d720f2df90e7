#!/usr/bin/env bash
# `tsumugi status` on a mapped stage over N items (default 100,000) with one item changed.
#
#   cargo build --release
#   benches/map/status_100k.sh target/release/tsumugi [N] [REPS]
#
# Setup (not timed): N small files, one `map: {glob: …, batch: true}` run that writes one
# output per item (the batch form, so that setup does not start N processes; status does
# the same work for the per-item form), then one file changed. Timed: `tsumugi status`,
# REPS times (default 5), after one warm-up; prints each wall time and the median.
set -euo pipefail
BIN=$(realpath "${1:?usage: status_100k.sh TSUMUGI [N] [REPS]}")
N=${2:-100000}
REPS=${3:-5}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
cd "$DIR"
mkdir -p data/items
python3 - "$N" <<'PY'
import sys
for i in range(int(sys.argv[1])):
    with open(f"data/items/item_{i:06d}.txt", "w") as f:
        f.write(f"item {i}\n")
PY
cat > p.yaml <<'YAML'
name: map-bench
stages:
  upper:
    map: {glob: "data/items/*.txt", batch: true}
    cmd: >-
      python3 -c "import os;
      [open('out/items/' + os.path.basename(p), 'w').write(open(p).read().upper())
       for p in open(os.environ['TSUMUGI_ADDED']).read().split() + open(os.environ['TSUMUGI_CHANGED']).read().split()]"
    outs: out/items/${item.name}
    merge: {out: out/all.txt}
YAML
mkdir -p out/items
t0=$(date +%s.%N)
"$BIN" run p.yaml >/dev/null 2>&1
t1=$(date +%s.%N)
echo "setup: run over $N items took $(echo "$t1 - $t0" | bc) s"
echo "changed" >> data/items/item_004242.txt
"$BIN" status p.yaml | grep -m1 "items stale"
times=()
for i in $(seq 0 "$REPS"); do
  s=$(date +%s.%N)
  "$BIN" status p.yaml >/dev/null
  e=$(date +%s.%N)
  [ "$i" -gt 0 ] && times+=("$(echo "$e - $s" | bc)")
done
printf 'status wall times (s): %s\n' "${times[*]}"
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print "median:", a[int((NR+1)/2)], "s"}'
