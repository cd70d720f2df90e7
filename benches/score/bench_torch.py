#!/usr/bin/env python3
"""The PyTorch (transformers) side of the scoring benchmark: the same work as
`tsumugi score` — read JSONL, tokenize pairs (longest_first, max_length), batch them by
length (longest first, same grouping as tsumugi), run the model in f32, write JSONL with
logits and sigmoid score — with torch's intra-op threads set to --threads.

Prints one JSON line: pairs, seconds (tokenize + forward, model load excluded, as in
tsumugi's "scored … in" line), pairs_per_s, and peak RSS of the process (KiB).
"""

import argparse
import json
import resource
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32", help="weights and compute dtype")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    on_gpu = args.device.startswith("cuda")

    records = [json.loads(l) for l in open(args.pairs) if l.strip()]
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, torch_dtype=dtype).eval().to(args.device)

    start = time.perf_counter()
    a = [r["text_a"] for r in records]
    b = [r["text_b"] for r in records]
    enc = tok(a, b, truncation="longest_first", max_length=args.max_length)
    lengths = [len(x) for x in enc["input_ids"]]
    order = sorted(range(len(records)), key=lambda i: -lengths[i])
    logits = [None] * len(records)
    with torch.inference_mode():
        for s in range(0, len(order), args.batch):
            idx = order[s:s + args.batch]
            feats = tok.pad({k: [enc[k][i] for i in idx] for k in enc.keys()}, return_tensors="pt").to(args.device)
            out = model(**feats).logits.float().cpu()
            for row, i in enumerate(idx):
                logits[i] = out[row].tolist()
    seconds = time.perf_counter() - start
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None
    with open(args.out, "w") as f:
        for r, l in zip(records, logits):
            r = dict(r, logits=l, score=float(torch.sigmoid(torch.tensor(l[0]))))
            f.write(json.dumps(r) + "\n")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(pairs=len(records), seconds=round(seconds, 3), pairs_per_s=round(len(records) / seconds, 1),
                          peak_rss_kib=peak, peak_gpu_mib=peak_gpu, device=args.device, dtype=args.dtype,
                          threads=args.threads, batch=args.batch, max_length=args.max_length,
                          torch=torch.__version__)))


if __name__ == "__main__":
    main()
