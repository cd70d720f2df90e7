#!/usr/bin/env python3
"""Fixtures for tsumugi's LoRA tests (issue 4), made with Python PEFT on M's tiny models.

    /work/.venv-ml/bin/python scripts/make_lora_fixtures.py

For each base in stages/tests/fixtures/{bert-1,roberta-3} it writes
stages/tests/fixtures/lora/<base>/:

- adapter/: a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) made by
  `get_peft_model` + `save_pretrained`, with lora_B and the head randomised so the adapter
  changes the logits (at PEFT's init B = 0 and it would not);
- expected.json: the inputs (the base fixture's first batch, already tokenized), the base
  logits, the logits of base + adapter (PEFT, eval mode) and of the merged model
  (`merge_and_unload`), and the recipe of the training steps below;
- steps.safetensors: two AdamW steps on that batch with every dropout off (eval mode,
  lora_dropout 0), MSE / cross-entropy loss: for step s in {1, 2} the gradients of every
  trainable tensor before clipping (`grad.s.<key>`) and the values after the step
  (`value.s.<key>`), keys as in the adapter file (PEFT names, transposes are tsumugi's job).

With the argument `oft` it writes the same files for PEFT's OFT (`OFTConfig`,
oft_block_size 8, Cayley–Neumann) into stages/tests/fixtures/oft/<base>/ instead, the
`oft_R` weights randomised (at init they are 0: the identity rotation).

`scripts/check_peft_adapter.py` is the other direction: it loads an adapter written by
tsumugi with PEFT and compares its logits with the ones tsumugi wrote next to it.
"""

import json
import os
import sys

import torch
from peft import LoraConfig, OFTConfig, TaskType, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "stages", "tests", "fixtures")

# lr high enough that the step is visible in f32; max_norm below the gradient norm so the
# clipping path is exercised (the test reads both from expected.json).
LR = 1e-2
WEIGHT_DECAY = 0.01
BETAS = (0.9, 0.999)
EPS = 1e-8


def peft_key(name):
    """A parameter name of the PEFT model as `get_peft_model_state_dict` saves it: adapter
    name `.default` removed, `modules_to_save.default.` collapsed onto the module."""
    name = name.replace(".modules_to_save.default.", ".")
    name = name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
    return name.replace(".oft_R.default.", ".oft_R.")


def make(base_name, targets, seed, kind="lora"):
    base_dir = os.path.join(ROOT, base_name)
    out = os.path.join(ROOT, kind, base_name)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    expected = json.load(open(os.path.join(base_dir, "expected.json"), encoding="utf-8"))
    batch = expected["batches"][0]
    num_labels = expected["num_labels"]
    inputs = {
        "input_ids": torch.tensor(batch["input_ids"]),
        "attention_mask": torch.tensor(batch["attention_mask"]),
    }
    if batch.get("token_type_ids") is not None:
        inputs["token_type_ids"] = torch.tensor(batch["token_type_ids"])

    model = AutoModelForSequenceClassification.from_pretrained(base_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = model(**inputs).logits
    if kind == "oft":
        config = OFTConfig(
            task_type=TaskType.SEQ_CLS,
            r=0,
            oft_block_size=8,
            target_modules=targets,
            modules_to_save=["classifier"],
        )
    else:
        config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            target_modules=targets,
            modules_to_save=["classifier"],
        )
    model = get_peft_model(model, config).eval()
    with torch.no_grad():
        init_logits = model(**inputs).logits
        for name, p in model.named_parameters():
            if "lora_B" in name or "oft_R" in name or "modules_to_save" in name:
                p.copy_(torch.randn_like(p) * (0.05 if "oft_R" in name else 0.2))
        lora_logits = model(**inputs).logits
    model.save_pretrained(os.path.join(out, "adapter"))

    # Two optimiser steps on the same batch; everything in eval mode (dropout off).
    n = base_logits.shape[0]
    if num_labels == 1:
        labels = torch.linspace(0.1, 0.9, n)
        loss_fn = lambda logits: torch.nn.functional.mse_loss(logits.squeeze(-1), labels)
        label_list = labels.tolist()
    else:
        labels = torch.arange(n) % num_labels
        loss_fn = lambda logits: torch.nn.functional.cross_entropy(logits, labels)
        label_list = labels.tolist()
    trainable = [(peft_key(k), p) for k, p in model.named_parameters() if p.requires_grad]
    optim = torch.optim.AdamW([p for _, p in trainable], lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    tensors = {}
    steps = []
    for step in (1, 2):
        optim.zero_grad()
        loss = loss_fn(model(**inputs).logits)
        loss.backward()
        norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for _, p in trainable)).item()
        for k, p in trainable:
            tensors[f"grad.{step}.{k}"] = p.grad.detach().clone().contiguous()
        max_norm = 0.5 * norm
        torch.nn.utils.clip_grad_norm_([p for _, p in trainable], max_norm)
        optim.step()
        for k, p in trainable:
            tensors[f"value.{step}.{k}"] = p.detach().clone().contiguous()
        steps.append({"loss": loss.item(), "grad_norm": norm, "max_norm": max_norm})
    save_file(tensors, os.path.join(out, "steps.safetensors"))

    # The merged model, from the adapter as saved (before the training steps).
    fresh = AutoModelForSequenceClassification.from_pretrained(base_dir, dtype=torch.float32)
    from peft import PeftModel

    merged = PeftModel.from_pretrained(fresh, os.path.join(out, "adapter")).merge_and_unload().eval()
    with torch.no_grad():
        merged_logits = merged(**inputs).logits
    record = {
        "base": base_name,
        "num_labels": num_labels,
        "inputs": {k: v.tolist() for k, v in inputs.items()},
        "base_logits": base_logits.tolist(),
        "init_logits": init_logits.tolist(),
        "lora_logits": lora_logits.tolist(),
        "merged_logits": merged_logits.tolist(),
        "labels": label_list,
        "optim": {"lr": LR, "betas": list(BETAS), "eps": EPS, "weight_decay": WEIGHT_DECAY},
        "steps": steps,
        "trainable": [k for k, _ in trainable],
    }
    with open(os.path.join(out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    print(f"{out}: |lora - base| max {float((lora_logits - base_logits).abs().max()):.4f}, "
          f"|merged - lora| max {float((merged_logits - lora_logits).abs().max()):.2e}", file=sys.stderr)


def main():
    kind = sys.argv[1] if len(sys.argv) > 1 else "lora"
    make("bert-1", ["query", "key", "value", "attention.output.dense", "intermediate.dense"], 7, kind)
    # PEFT 0.21.2's OFT fails on RoBERTa's two-linear head in modules_to_save
    # ("RobertaClassificationHead has no attribute weight"), so OFT is checked on BERT only.
    if kind != "oft":
        make("roberta-3", ["query", "value", "output.dense"], 8, kind)


if __name__ == "__main__":
    main()
