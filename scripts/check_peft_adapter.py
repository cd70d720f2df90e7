#!/usr/bin/env python3
"""Loads an adapter written by tsumugi with Python PEFT and compares the logits.

    TSUMUGI_PEFT_CHECK_DIR=/tmp/peft-check cargo test -p tsumugi-stages --features ml \
        --test lora_peft tsumugi_adapter_for_python
    /work/.venv-ml/bin/python scripts/check_peft_adapter.py /tmp/peft-check

ModernBERT (issue 12): `TSUMUGI_PEFT_CHECK_DIR=/tmp/mb-peft cargo test … --test
modernbert_lora tsumugi_adapter_for_python`, then DIR = /tmp/mb-peft/modernbert-{1,3}.

DIR holds `adapter/` (adapter_config.json + adapter_model.safetensors) and `expected.json`
(`base`: the base model directory, `inputs`: tokenized batch, `logits`: tsumugi's). Exits
non-zero when PEFT refuses the adapter or the logits differ by more than 1e-4.
"""

import json
import os
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification


def main():
    d = sys.argv[1]
    rec = json.load(open(os.path.join(d, "expected.json")))
    base = AutoModelForSequenceClassification.from_pretrained(rec["base"])
    model = PeftModel.from_pretrained(base, os.path.join(d, "adapter")).eval()
    inputs = {k: torch.tensor(v) for k, v in rec["inputs"].items()}
    with torch.no_grad():
        logits = model(**inputs).logits.flatten()
    want = torch.tensor(rec["logits"])
    diff = float((logits - want).abs().max())
    print(f"PEFT {d}: max |logits(PEFT) - logits(tsumugi)| = {diff:.3e}")
    sys.exit(0 if diff <= 1e-4 else 1)


if __name__ == "__main__":
    main()
