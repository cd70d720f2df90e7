#!/usr/bin/env python3
"""Two PEFT LoRA adapters (seeds 1 and 2, lora_B and the head randomised) on the scoring
benchmark's 1-label MiniLM (benches/score/prepare.py), for the serving load test's swaps.

    PY benches/serve/prepare.py --base out/bench-score/minilm-1label --out out/bench-serve
"""
import argparse
import os

import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="out/bench-score/minilm-1label")
    ap.add_argument("--out", default="out/bench-serve")
    args = ap.parse_args()
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(args.base, dtype=torch.float32)
        config = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.0,
                            target_modules=["query", "value"], modules_to_save=["classifier"])
        model = get_peft_model(model, config).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name or "modules_to_save" in name:
                    p.copy_(torch.randn_like(p) * 0.05)
        model.save_pretrained(os.path.join(args.out, "adapters", f"a{seed}"))
    print(f"adapters in {args.out}/adapters")


if __name__ == "__main__":
    main()
