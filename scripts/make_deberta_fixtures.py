#!/usr/bin/env python3
"""Tiny random-weight DeBERTa-v2/v3 cross-encoders for tsumugi's parity tests (issue 12).

Run by hand (not by CI), from the repository root, with torch, transformers, sentencepiece
and safetensors from PyPI (CPU is enough):

    /tmp/javenv/bin/python scripts/make_deberta_fixtures.py

Writes stages/tests/fixtures/deberta-<style>-<num_labels>/ with config.json,
model.safetensors, tokenizer.json (saved by transformers' DeBERTa-v2 fast tokenizer from a
SentencePiece model trained here) and expected.json: for padded pair batches, the token
ids, masks, token type ids (only where the model has token types) and the logits that
transformers computes in f32. The batches are longer than the position buckets / the
relative distance limit, so bucketing and clamping are exercised.

Styles:
- v3: relative_attention, position_buckets 8, share_att_key, pos_att_type p2c|c2p,
  norm_rel_ebd layer_norm, position_biased_input false, type_vocab_size 0 (DeBERTa-v3's
  own config, shrunk); v3-3 also has embedding_size != hidden_size (embed_proj);
- v2: no buckets, max_relative_positions 12, share_att_key false (separate
  pos_key_proj/pos_query_proj), no rel-embedding norm, position_biased_input false;
  v2-3 instead has absolute positions (position_biased_input true), 2 token types and
  only c2p.

`--big DIR` writes a random DeBERTa-v3-xsmall-sized model (384 wide, 12 layers, 6 heads,
vocab 128100, buckets 256) with the fixtures' tokenizer into DIR, for the benchmark.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import sentencepiece as spm
import torch
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification
from transformers.models.deberta_v2.tokenization_deberta_v2 import DebertaV2Tokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "stages", "tests", "fixtures")

PAIRS = [
    ("A man is playing a guitar.", "A person plays an instrument."),
    ("猫がソファの上で寝ている。", "ソファで猫が眠っています。"),
    ("The quick brown fox jumps over the lazy dog near the river bank today, and then it runs far away.", "A fox."),
    ("Short.", "This second text is considerably longer than the first one and needs truncation when the limit is small, which it is here."),
    ("東京は日本の首都です。", "Tokyo is the capital of Japan, and Kyoto was the capital for more than a thousand years."),
    ("Is it raining?", "雨が降っていますか？ Yes, it is raining heavily in Kyoto."),
]

# (pair indices, max_length, truncation). The first batch runs to ~60 tokens: far past
# the 8 buckets and the v2 distance limit of 12.
BATCHES = [
    ([0, 1, 2, 3], 64, "longest_first"),
    ([2, 3, 4, 5], 20, "longest_first"),
    ([0, 3, 5], 40, "only_second"),
    ([4], 64, "longest_first"),
]

CORPUS = [t for p in PAIRS for t in p] + [
    "A woman is slicing an onion.",
    "Two dogs are running through a field of grass.",
    "The cat sat on the mat while the dog barked.",
    "私は毎朝コーヒーを飲みます。",
    "今日はとても良い天気ですね。",
    "京都の寺は美しい。雨の日も静かです。",
    "Machine learning models score pairs of sentences.",
]


def train_tokenizer(tmp, rule):
    """A SentencePiece Unigram model with DeBERTa-v3's special ids ([PAD] 0, [CLS] 1,
    [SEP] 2, [UNK] 3, [MASK] 4), converted and saved by transformers' fast tokenizer.
    `rule` nmt_nfkc (DeBERTa-v3's own) embeds a ~300 KB precompiled charsmap in
    tokenizer.json, so only one fixture gets it; `identity` gives transformers' other
    normalizer branch and a small file."""
    tmp = os.path.join(tmp, rule)
    os.makedirs(tmp)
    corpus = os.path.join(tmp, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(CORPUS * 3))
    prefix = os.path.join(tmp, "spm")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=160, model_type="unigram",
        pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]",
        user_defined_symbols=["[MASK]"], character_coverage=1.0, minloglevel=2,
        normalization_rule_name=rule,
    )
    # from_pretrained on a directory holding spm.model converts it as for a hub model.
    tok = DebertaV2Tokenizer.from_pretrained(tmp)
    out = os.path.join(tmp, "tok")
    tok.save_pretrained(out)
    return out


def randomize(model, gen):
    """Larger weights than HF's init, so logits are O(1) and a wrong op moves them far
    beyond the 1e-4 tolerance (as scripts/make_fixtures.py)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            elif "embeddings" in name:
                p.copy_(0.7 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / (p.shape[-1] ** 0.5) * 1.5)


STYLES = {
    "v3": dict(
        relative_attention=True, position_buckets=8, max_relative_positions=-1,
        share_att_key=True, pos_att_type="p2c|c2p", norm_rel_ebd="layer_norm",
        position_biased_input=False, type_vocab_size=0,
    ),
    "v2": dict(
        relative_attention=True, max_relative_positions=12, share_att_key=False,
        pos_att_type="p2c|c2p", position_biased_input=False, type_vocab_size=0,
    ),
}


def make(style, num_labels, tok_dir, seed, extra):
    name = f"deberta-{style}-{num_labels}"
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    hf_tok = DebertaV2Tokenizer.from_pretrained(tok_dir)
    kw = dict(STYLES[style])
    kw.update(extra)
    cfg = DebertaV2Config(
        vocab_size=len(hf_tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
        hidden_act="gelu", pooler_hidden_act="gelu", layer_norm_eps=1e-7, pad_token_id=0, **kw,
    )
    model = DebertaV2ForSequenceClassification(cfg)
    randomize(model, torch.Generator().manual_seed(seed))
    model.eval()
    with_types = cfg.type_vocab_size > 0
    batches = []
    for idx, max_len, strategy in BATCHES:
        a = [PAIRS[i][0] for i in idx]
        b = [PAIRS[i][1] for i in idx]
        enc = hf_tok(a, b, truncation=strategy, max_length=max_len, padding=True, return_tensors="pt",
                     return_token_type_ids=with_types)
        with torch.no_grad():
            logits = model(**enc).logits
        batches.append(dict(
            text_a=a, text_b=b, max_length=max_len, truncation=strategy,
            input_ids=enc["input_ids"].tolist(),
            attention_mask=enc["attention_mask"].tolist(),
            token_type_ids=enc["token_type_ids"].tolist() if with_types else None,
            logits=logits.tolist(),
        ))
    model.save_pretrained(out, safe_serialization=True)
    shutil.copy(os.path.join(tok_dir, "tokenizer.json"), os.path.join(out, "tokenizer.json"))
    for f in os.listdir(out):
        if f == "generation_config.json":
            os.remove(os.path.join(out, f))
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(dict(arch="deberta-v2", style=style, num_labels=num_labels, batches=batches), f, ensure_ascii=False)
    longest = max(len(r) for bt in batches for r in bt["input_ids"])
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"{name}: {size / 1024:.0f} KiB, longest input {longest} tokens")


def make_big(out, tok_dir):
    """DeBERTa-v3-xsmall's shape with random weights (for benches/models/deberta.sh)."""
    os.makedirs(out, exist_ok=True)
    cfg = DebertaV2Config(
        vocab_size=128100, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
        intermediate_size=1536, max_position_embeddings=512, relative_attention=True,
        position_buckets=256, max_relative_positions=-1, share_att_key=True,
        pos_att_type="p2c|c2p", norm_rel_ebd="layer_norm", position_biased_input=False,
        type_vocab_size=0, layer_norm_eps=1e-7, pad_token_id=0, num_labels=1,
    )
    torch.manual_seed(0)
    model = DebertaV2ForSequenceClassification(cfg).eval()
    model.save_pretrained(out, safe_serialization=True)
    shutil.copy(os.path.join(tok_dir, "tokenizer.json"), os.path.join(out, "tokenizer.json"))
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", help="write a random DeBERTa-v3-xsmall-sized model here instead")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        nfkc = train_tokenizer(tmp, "nmt_nfkc")
        if args.big:
            return make_big(args.big, nfkc)
        plain = train_tokenizer(tmp, "identity")
        make("v3", 1, nfkc, 11, {})
        make("v3", 3, plain, 12, dict(embedding_size=24))
        make("v2", 1, plain, 13, {})
        make("v2", 3, plain, 14, dict(position_biased_input=True, type_vocab_size=2, pos_att_type="c2p"))


if __name__ == "__main__":
    sys.exit(main())
