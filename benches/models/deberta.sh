#!/usr/bin/env bash
# Scoring throughput and peak memory of a DeBERTa-v3-xsmall-sized cross-encoder (random
# weights; 384 wide, 12 layers, 6 heads, 256 position buckets, shared attention keys):
# tsumugi (burn, flex CPU backend) vs PyTorch transformers, same CPU, model, pairs, batch
# size, max length and thread count, alternating runs, medians.
#
#   benches/models/deberta.sh [THREADS=2] [BATCH=16] [MAX_LENGTH=256] [RUNS=3] [PAIRS=all]
#
# Needs a Python with torch and transformers ($PYTHON, default /tmp/javenv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
threads="${1:-2}"; batch="${2:-16}"; max_len="${3:-256}"; runs="${4:-3}"; n="${5:-}"
py="${PYTHON:-/tmp/javenv/bin/python}"
out=out/bench-deberta
model="$out/deberta-v3-xsmall-1label"
[ -d "$model" ] || "$py" scripts/make_deberta_fixtures.py --big "$model"
# The same synthetic pairs as the ModernBERT bench (English, up to ~200 tokens).
[ -f "$out/pairs.jsonl" ] || "$py" - "$out/pairs.jsonl" <<'PY'
import json, random, sys
sys.path.insert(0, "benches/models")
from prepare_modernbert import sentence
rng = random.Random(0)
with open(sys.argv[1], "w") as f:
    for i in range(384):
        f.write(json.dumps({"id": i, "text_a": sentence(rng, 4, 24), "text_b": sentence(rng, 10, 160)}) + "\n")
PY
cargo build --release --quiet --features ml --bin tsumugi
bin="${CARGO_TARGET_DIR:-target}/release/tsumugi"
pairs="$out/pairs.jsonl"
if [ -n "$n" ]; then head -n "$n" "$out/pairs.jsonl" > "$out/pairs.$n.jsonl"; pairs="$out/pairs.$n.jsonl"; fi

peak() { python3 - "$@" <<'PY'
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print(f"PEAK_RSS_KIB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", file=sys.stderr)
sys.exit(rc)
PY
}

for run in $(seq "$runs"); do
  RAYON_NUM_THREADS="$threads" peak "$bin" score --model "$model" --pairs "$pairs" \
    --out "$out/tsumugi.jsonl" --batch "$batch" --max-length "$max_len" 2> "$out/tsumugi.$run.log"
  OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" peak "$py" benches/score/bench_torch.py \
    --model "$model" --pairs "$pairs" --out "$out/torch.jsonl" \
    --batch "$batch" --max-length "$max_len" --threads "$threads" > "$out/torch.$run.json" 2> "$out/torch.$run.log"
done

python3 - "$out" "$threads" "$batch" "$max_len" "$runs" <<'PY'
import json, re, statistics, sys
out, threads, batch, max_len, runs = sys.argv[1:]
def rss(log): return int(re.search(r"PEAK_RSS_KIB (\d+)", open(log).read()).group(1))
ts, tp, tr, pr = [], [], [], []
for run in range(1, int(runs) + 1):
    log = open(f"{out}/tsumugi.{run}.log").read()
    ts.append(float(re.search(r"\(([\d.]+) pairs/s\)", log).group(1))); tr.append(rss(f"{out}/tsumugi.{run}.log"))
    tp.append(json.load(open(f"{out}/torch.{run}.json"))["pairs_per_s"]); pr.append(rss(f"{out}/torch.{run}.log"))
a = [json.loads(l) for l in open(f"{out}/tsumugi.jsonl")]
b = [json.loads(l) for l in open(f"{out}/torch.jsonl")]
diff = max(abs(x["logits"][0] - y["logits"][0]) for x, y in zip(a, b))
t, p = statistics.median(ts), statistics.median(tp)
print(f"pairs {len(a)}, threads {threads}, batch {batch}, max_length {max_len}")
print(f"tsumugi  {t:8.1f} pairs/s  peak RSS {max(tr)/1024:7.1f} MiB   runs {ts}")
print(f"pytorch  {p:8.1f} pairs/s  peak RSS {max(pr)/1024:7.1f} MiB   runs {tp}")
print(f"ratio tsumugi/pytorch: throughput {t/p:.2f}x, peak RSS {max(tr)/max(pr):.2f}x; max |Δ logit| {diff:.2e}")
PY
