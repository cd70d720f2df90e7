#!/usr/bin/env bash
# Hard-negative mining benchmark (issue 5). Not a test: it takes minutes and ~2 GB (tsumugi)
# plus ~6 GB (the bm25s peer) at the default size.
#
#   benches/negatives/run.sh [PASSAGES] [QUERIES]      # default 1000000 10000
#   PEER=0 benches/negatives/run.sh                    # skip the Python peer
#
# Writes benches/negatives/data/<size>/ (generated corpus, git-ignored) and
# benches/negatives/results/*.json + *.time (git-ignored); prints a summary.
set -euo pipefail
cd "$(dirname "$0")/../.."
PASSAGES=${1:-1000000}
QUERIES=${2:-10000}
DATA=benches/negatives/data/p${PASSAGES}-q${QUERIES}
RES=benches/negatives/results
mkdir -p "$RES"

cargo build --release -p tsumugi-stages --example bench-negatives
BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench-negatives

[ -f "$DATA/corpus.jsonl" ] || "$BIN" gen "$DATA" --passages "$PASSAGES" --queries "$QUERIES"

rss() { sed -n 's/.*Maximum resident set size (kbytes): //p' "$1"; }

/usr/bin/time -v "$BIN" search "$DATA" --k 100 --dump 500 >"$RES/tsumugi-search.json" 2>"$RES/tsumugi-search.time"
echo "tsumugi search: $(cat "$RES/tsumugi-search.json") peak_rss_kb=$(rss "$RES/tsumugi-search.time")"

/usr/bin/time -v "$BIN" stage "$DATA" >"$RES/tsumugi-stage.json" 2>"$RES/tsumugi-stage.time"
echo "tsumugi stage: $(cat "$RES/tsumugi-stage.json") peak_rss_kb=$(rss "$RES/tsumugi-stage.time")"

if [ "${PEER:-1}" != 0 ]; then
  VENV=.venv-bench
  [ -x "$VENV/bin/python" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q bm25s==0.3.16 numpy scipy; }
  /usr/bin/time -v "$VENV/bin/python" benches/negatives/peer_bm25s.py "$DATA" --k 100 --threads "$(nproc)" --dump 500 \
    >"$RES/peer-bm25s.json" 2>"$RES/peer-bm25s.time"
  echo "bm25s: $(cat "$RES/peer-bm25s.json") peak_rss_kb=$(rss "$RES/peer-bm25s.time")"
fi
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, load $(cut -d' ' -f1-3 /proc/loadavg)"
