#!/usr/bin/env python3
"""Checks a merged export (the `export` kind with `merge: true`) in Python.

    /work/.venv-ml/bin/python scripts/check_export.py EXPORT_DIR BASE_DIR ADAPTER_DIR

On the test fixture (the Rust test keeps its merged export and adapter when asked):

    TSUMUGI_EXPORT_CHECK_DIR=/tmp/export-check cargo test -p tsumugi-stages --features ml \
        --test stages_lora
    python scripts/check_export.py /tmp/export-check/model stages/tests/fixtures/bert-1 \
        /tmp/export-check/adapter

ModernBERT (issue 12; one directory per fixture under the kept one):

    TSUMUGI_EXPORT_CHECK_DIR=/tmp/mb-export cargo test -p tsumugi-stages --features ml \
        --test modernbert_lora merged_export
    for n in modernbert-1 modernbert-3; do python scripts/check_export.py \
        /tmp/mb-export/$n/model stages/tests/fixtures/$n /tmp/mb-export/$n/adapter; done

Loads EXPORT_DIR with plain transformers (`AutoModelForSequenceClassification`,
`AutoTokenizer`: no PEFT), and BASE_DIR + ADAPTER_DIR with PEFT, scores a few pairs with
both and exits non-zero when the logits differ by more than 1e-4 or transformers reports
missing/unexpected weights.
"""

import sys

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

PAIRS = [
    ("A man is playing a guitar.", "A person plays an instrument."),
    ("A cat sleeps on the sofa.", "The stock market fell sharply."),
    ("Two dogs run on the beach.", "Dogs are running on sand."),
]


def main():
    export_dir, base_dir, adapter_dir = sys.argv[1:4]
    merged, info = AutoModelForSequenceClassification.from_pretrained(export_dir, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        print(f"{export_dir}: transformers loading problems: {bad}")
        sys.exit(1)
    tok = AutoTokenizer.from_pretrained(export_dir)
    peft = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=merged.config.num_labels), adapter_dir)
    enc = tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        a = merged.eval()(**enc).logits
        b = peft.eval()(**enc).logits
    diff = float((a - b).abs().max())
    print(f"{export_dir}: max |logits(merged export) - logits(base + PEFT adapter)| = {diff:.3e}")
    sys.exit(0 if diff <= 1e-4 else 1)


if __name__ == "__main__":
    main()
