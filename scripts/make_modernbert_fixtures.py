#!/usr/bin/env python3
"""Tiny random-weight ModernBERT cross-encoder fixtures for tsumugi's parity tests (issue 12).

Run by hand (not by CI), from the repository root, with torch + transformers (CPU):

    /tmp/javenv/bin/python scripts/make_modernbert_fixtures.py

Writes stages/tests/fixtures/modernbert-<labels>/ with config.json, model.safetensors (f32),
tokenizer.json (a byte-level BPE with ModernBERT's `[CLS] A [SEP] B [SEP]` template and no
token types) and expected.json in the format of `scripts/make_fixtures.py` (the padded
batches, their ids and masks, and transformers' logits).

The two fixtures cover what differs between ModernBERT checkpoints:
- modernbert-1: 1 label, `cls` pooling, 4 layers with a global layer every 3 (0 and 3
  global, 1 and 2 local), no biases (as released models), and config.json in the format
  of the Hub's checkpoints (`global_attn_every_n_layers`, `global_rope_theta`,
  `local_rope_theta`), which transformers still reads;
- modernbert-3: 3 labels, `mean` pooling, 3 layers with a global layer every 2, every
  bias on (`norm_bias`, `attention_bias`, `mlp_bias`, `classifier_bias`), and config.json
  as transformers 5 writes it (`layer_types`, `rope_parameters`).
Both have `local_attention` 8 (a key within 4 positions of the query), far below the
sequence lengths of the batches (up to ~60 tokens), so local attention matters; each
batch mixes lengths, so padding runs past the window. The logits are computed with eager
attention and checked against sdpa (transformers runs both padded, never unpadded).
"""

import json
import os
import shutil
import sys
import tempfile

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import ModernBertConfig, ModernBertForSequenceClassification, PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "stages", "tests", "fixtures")

PAIRS = [
    ("A man is playing a guitar.", "A person plays an instrument."),
    ("猫がソファの上で寝ている。", "ソファで猫が眠っています。"),
    ("The quick brown fox jumps over the lazy dog near the river bank today.", "A fox."),
    ("Short.", "This second text is considerably longer than the first one and needs truncation when the limit is small."),
    ("東京は日本の首都です。", "Tokyo is the capital of Japan."),
    ("Is it raining?", "雨が降っていますか？ Yes, it is raining heavily in Kyoto."),
]

# (pair indices, max_length, truncation strategy)
BATCHES = [
    ([0, 1, 2], 64, "longest_first"),
    ([2, 3, 4, 5], 24, "longest_first"),
    ([0, 3, 5], 40, "only_second"),
    ([3, 0], 64, "longest_first"),
    ([1], 64, "longest_first"),
]

CORPUS = [t for p in PAIRS for t in p] + [
    "A woman is slicing an onion.",
    "Two dogs are running through a field of grass.",
    "The cat sat on the mat while the dog barked.",
    "私は毎朝コーヒーを飲みます。",
    "今日はとても良い天気ですね。",
    "Machine learning models score pairs of sentences.",
]

# [PAD] is not id 0, so the pad id must come from config.json.
SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=330, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    # ModernBERT's own tokenizer.json: `[CLS] $A [SEP] $B [SEP]`, all type ids 0.
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tok


def save_tokenizer_config(hf_tok, out):
    with tempfile.TemporaryDirectory() as tmp:
        hf_tok.save_pretrained(tmp)
        for f in ("tokenizer_config.json", "special_tokens_map.json"):
            if os.path.exists(os.path.join(tmp, f)):
                shutil.copy(os.path.join(tmp, f), out)


def randomize(model, gen):
    """Weights of O(1) effect (HF's init std 0.02 would make every logit ~0), so a wrong
    window, rotary half or pooling moves the logits far beyond the 1e-4 tolerance."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm.weight" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            elif "tok_embeddings" in name:
                p.copy_(0.7 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / (p.shape[-1] ** 0.5) * 1.5)


def make(num_labels, pooling, layers, every, biases, legacy_config, seed, tok):
    name = f"modernbert-{num_labels}"
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    cfg = ModernBertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=128,
        local_attention=8,
        global_attn_every_n_layers=every,
        global_rope_theta=160000.0,
        local_rope_theta=10000.0,
        pad_token_id=tok.token_to_id("[PAD]"),
        cls_token_id=tok.token_to_id("[CLS]"),
        sep_token_id=tok.token_to_id("[SEP]"),
        bos_token_id=tok.token_to_id("[CLS]"),
        eos_token_id=tok.token_to_id("[SEP]"),
        norm_bias=biases,
        attention_bias=biases,
        mlp_bias=biases,
        classifier_bias=biases,
        classifier_pooling=pooling,
        num_labels=num_labels,
        # Dropouts on, as a user's checkpoint may have them: eval mode must ignore them.
        embedding_dropout=0.1,
        mlp_dropout=0.1,
        attention_dropout=0.1,
        classifier_dropout=0.1,
    )
    gen = torch.Generator().manual_seed(seed)
    models_by_impl = {}
    for impl in ("eager", "sdpa"):
        cfg._attn_implementation = impl
        m = ModernBertForSequenceClassification(cfg)
        m.config._attn_implementation = impl
        models_by_impl[impl] = m
    model = models_by_impl["eager"]
    randomize(model, gen)
    models_by_impl["sdpa"].load_state_dict(model.state_dict())
    for m in models_by_impl.values():
        m.eval()

    tok_path = os.path.join(out, "tokenizer.json")
    tok.save(tok_path)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_file=tok_path, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        pad_token="[PAD]", mask_token="[MASK]",
    )
    # The tokenizer_config.json a real checkpoint ships (transformers' AutoTokenizer needs
    # it for the special tokens, e.g. scripts/check_export.py padding a batch).
    save_tokenizer_config(hf_tok, out)

    batches = []
    longest = 0
    for idx, max_len, strategy in BATCHES:
        a = [PAIRS[i][0] for i in idx]
        b = [PAIRS[i][1] for i in idx]
        enc = hf_tok(a, b, truncation=strategy, max_length=max_len, padding=True, return_tensors="pt",
                     return_token_type_ids=False)
        with torch.no_grad():
            logits = model(**enc).logits
            sdpa = models_by_impl["sdpa"](**enc).logits
            # Each pair alone, unpadded: what padded execution must reproduce.
            alone = torch.cat([
                model(input_ids=enc["input_ids"][i:i + 1, : int(enc["attention_mask"][i].sum())]).logits
                for i in range(len(idx))
            ])
        assert (logits - sdpa).abs().max() < 1e-5, f"{name}: eager and sdpa differ"
        assert (logits - alone).abs().max() < 1e-5, f"{name}: padded and alone differ"
        longest = max(longest, enc["input_ids"].shape[1])
        batches.append(dict(
            text_a=a, text_b=b, max_length=max_len, truncation=strategy,
            input_ids=enc["input_ids"].tolist(),
            attention_mask=enc["attention_mask"].tolist(),
            token_type_ids=None,
            logits=logits.tolist(),
        ))
    assert longest > 2 * cfg.local_attention, "sequences must be longer than the local window"

    model.save_pretrained(out, safe_serialization=True)
    for f in os.listdir(out):
        if f == "generation_config.json":
            os.remove(os.path.join(out, f))
    if legacy_config:
        # The Hub's ModernBERT configs predate `layer_types`/`rope_parameters`.
        path = os.path.join(out, "config.json")
        c = json.load(open(path))
        c.pop("layer_types")
        c.pop("rope_parameters")
        c["global_attn_every_n_layers"] = every
        c["global_rope_theta"] = 160000.0
        c["local_rope_theta"] = 10000.0
        json.dump(c, open(path, "w"), indent=2)
        reloaded = ModernBertForSequenceClassification.from_pretrained(out, attn_implementation="eager").eval()
        assert reloaded.config.layer_types == model.config.layer_types
        enc = hf_tok([PAIRS[0][0]], [PAIRS[0][1]], return_tensors="pt", return_token_type_ids=False)
        with torch.no_grad():
            assert torch.allclose(reloaded(**enc).logits, model(**enc).logits, atol=1e-6)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(dict(arch="modernbert", num_labels=num_labels, dtype="float32", batches=batches), f,
                  ensure_ascii=False)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"{name}: {size / 1024:.0f} KiB, layer types {model.config.layer_types}, longest {longest} tokens")


def main():
    torch.manual_seed(0)
    tok = train_tokenizer()
    os.makedirs(ROOT, exist_ok=True)
    make(1, "cls", layers=4, every=3, biases=False, legacy_config=True, seed=11, tok=tok)
    make(3, "mean", layers=3, every=2, biases=True, legacy_config=False, seed=12, tok=tok)


if __name__ == "__main__":
    if sys.argv[1:] == ["--tokenizer-config-only"]:
        for n in (1, 3):
            out = os.path.join(ROOT, f"modernbert-{n}")
            save_tokenizer_config(PreTrainedTokenizerFast(
                tokenizer_file=os.path.join(out, "tokenizer.json"), unk_token="[UNK]", cls_token="[CLS]",
                sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]"), out)
        sys.exit(0)
    sys.exit(main())

# Adds the tokenizer_config.json to fixtures made before it was written (weights untouched):
#   python scripts/make_modernbert_fixtures.py --tokenizer-config-only
