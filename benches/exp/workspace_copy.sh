#!/bin/sh
# What `tsumugi exp run -j N` pays to give each experiment its own copy of the project,
# against `cp -r` (a plain copy) and `cp -al` (hard links, which tsumugi does not use: a
# command writing a file in place would change the project's) of the same data, in the
# same run. Usage: benches/exp/workspace_copy.sh [TSUMUGI] [FILES] [MiB_PER_FILE]
set -eu
T=${1:-target/release/tsumugi}
T=$(realpath "$T")
N=${2:-100}
M=${3:-2}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
cd "$D"
mkdir data
i=0
while [ $i -lt "$N" ]; do head -c $((M * 1048576)) /dev/urandom > data/f$i.bin; i=$((i + 1)); done
printf 'a: 1\n' > params.yaml
printf 'stages:\n  s:\n    cmd: cat data/*.bin | wc -c > n.txt\n    deps: [data]\n    params: [a]\n    outs: [n.txt]\n' > p.yaml
"$T" run p.yaml -q
# Warm: every figure below reads from the page cache.
cat data/* > /dev/null
"$T" exp run p.yaml -S a=2,3 -j 2 -q 2>&1 | grep copied
s=$(date +%s.%N); cp -r data "$D/cp"; e=$(date +%s.%N)
echo "cp -r:  $(echo "$e - $s" | bc) s"
s=$(date +%s.%N); cp -al data "$D/hl"; e=$(date +%s.%N)
echo "cp -al: $(echo "$e - $s" | bc) s"
