#!/usr/bin/env bash
# Japanese tokenizer speed (issue 12): tsumugi's BertJapaneseTokenizer vs transformers' on the
# 2,117 texts of stages/tests/fixtures/japanese, one thread each, same machine, same run.
#
#   benches/tokenize/japanese.sh [ROUNDS]              # default 5
#   PY=/tmp/javenv/bin/python benches/tokenize/japanese.sh
#   BIN=target/debug/examples/bench-japanese-tokenize benches/tokenize/japanese.sh   # prebuilt
#
# PY: a Python with transformers, fugashi, unidic-lite and ipadic (pip install transformers
# fugashi unidic-lite==1.0.8 ipadic==1.0.0). Prints one JSON line per implementation and
# configuration, then the ratios (CPU seconds: the machine may be shared).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-5}
PY=${PY:-/tmp/javenv/bin/python}
# BIN: an already built bench-japanese-tokenize (skips the release build).
if [ -z "${BIN:-}" ]; then
  cargo build --release -p tsumugi-stages --features ml --example bench-japanese-tokenize
  BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench-japanese-tokenize
fi
export RAYON_NUM_THREADS=1 OMP_NUM_THREADS=1
for dic in unidic_lite ipadic; do
  for sub in wordpiece character; do
    r=$("$BIN" "$dic" "$sub" "$ROUNDS")
    p=$("$PY" benches/tokenize/peer_japanese.py "$dic" "$sub" "$ROUNDS")
    echo "$r"; echo "$p"
    python3 - "$r" "$p" <<'PYEOF'
import json, sys
r, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert r["ids"] == p["ids"], f"different token counts: {r['ids']} vs {p['ids']}"
print(f"{r['dic']}/{r['sub']}: tsumugi {r['sentences_per_cpu_s']:.0f} sentences/CPU-s "
      f"({r['sentences_per_s_wall']:.0f}/s wall), transformers {p['sentences_per_cpu_s']:.0f} "
      f"({p['sentences_per_s_wall']:.0f}/s wall): {r['sentences_per_cpu_s'] / p['sentences_per_cpu_s']:.1f}x")
PYEOF
  done
done
echo "machine: $(nproc --all) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
