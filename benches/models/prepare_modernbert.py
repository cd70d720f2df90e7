#!/usr/bin/env python3
"""Prepare the ModernBERT scoring benchmark: a random-weight ModernBERT-base-sized
cross-encoder (768 wide, 22 layers, 12 heads, GeGLU 1152, local window 128, a global layer
every 3, no biases, 1 label: the shape of gte-reranker-modernbert-base) and synthetic
pairs long enough that local attention matters (up to `--max-length` 256 tokens > the
128-token window).

    /tmp/javenv/bin/python benches/models/prepare_modernbert.py [--out out/bench-modernbert] [--pairs 384]

No download: the tokenizer is a byte-level BPE trained here on the pairs themselves (the
real ModernBERT tokenizer is the same kind of BPE with a larger vocabulary, which changes
only the embedding lookup).
"""

import argparse
import json
import os
import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import ModernBertConfig, ModernBertForSequenceClassification, PreTrainedTokenizerFast

WORDS = (
    "the a of to and in is was for on with as by at from that this it be are or an which has "
    "model pair score query passage document answer question river city school music market "
    "science history language system network learning ranking search result user data value "
    "quick brown fox jumps over lazy dog near bank today tomorrow yesterday morning evening "
    "Tokyo Kyoto Osaka Japan capital station train weather rain sunny cold warm coffee tea "
    "2024 2025 3.14 42 100 1,000 (see above) [note] e-mail co-operation well-known state-of-the-art"
).split()


def sentence(rng, lo, hi):
    n = rng.randint(lo, hi)
    words = [rng.choice(WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + "."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="out/bench-modernbert")
    ap.add_argument("--pairs", type=int, default=384)
    args = ap.parse_args()
    rng = random.Random(0)
    pairs = [(sentence(rng, 4, 24), sentence(rng, 10, 160)) for _ in range(args.pairs)]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "pairs.jsonl"), "w") as f:
        for i, (a, b) in enumerate(pairs):
            f.write(json.dumps({"id": i, "text_a": a, "text_b": b}) + "\n")

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([t for p in pairs for t in p], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    model_out = os.path.join(args.out, "modernbert-base-1label")
    os.makedirs(model_out, exist_ok=True)
    tok.save(os.path.join(model_out, "tokenizer.json"))
    PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(model_out, "tokenizer.json"), unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
    ).save_pretrained(model_out)

    torch.manual_seed(0)
    cfg = ModernBertConfig(  # ModernBERT-base's sizes (transformers' defaults)
        vocab_size=50368, num_labels=1, pad_token_id=tok.token_to_id("[PAD]"),
        cls_token_id=tok.token_to_id("[CLS]"), sep_token_id=tok.token_to_id("[SEP]"),
        bos_token_id=tok.token_to_id("[CLS]"), eos_token_id=tok.token_to_id("[SEP]"),
    )
    model = ModernBertForSequenceClassification(cfg)
    model.save_pretrained(model_out, safe_serialization=True)
    print(f"{model_out}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, "
          f"{len(pairs)} pairs in {args.out}/pairs.jsonl")


if __name__ == "__main__":
    main()
