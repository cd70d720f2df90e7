#!/usr/bin/env python3
"""Generate the tiny random-weight cross-encoder fixtures used by the Rust parity tests.

Run by hand (not by CI), from the repository root, in a venv with torch, transformers,
tokenizers and safetensors from PyPI (CPU is enough):

    python3 -m venv /work/.venv-ml && /work/.venv-ml/bin/pip install torch transformers safetensors tokenizers
    /work/.venv-ml/bin/python scripts/make_fixtures.py

Writes stages/tests/fixtures/<arch>-<num_labels>/ with config.json, weights
(model.safetensors, or a sharded set + model.safetensors.index.json), tokenizer.json and
expected.json: for a handful of padded pair batches, the token ids, attention masks,
token type ids and logits that Hugging Face transformers computes. Each fixture exercises
one loading path on purpose (f32 with a stray int64 position_ids buffer, bf16, f16,
sharded f16) so the loader is covered by the same tests.
"""

import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "stages", "tests", "fixtures")

# Pairs chosen to cover: plain English, Japanese (kana + kanji), mixed scripts, a long
# first text, a long second text (truncation), and very unequal lengths (padding).
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
    ([2, 3, 4, 5], 16, "longest_first"),
    ([0, 3, 5], 24, "only_second"),
    ([1], 64, "longest_first"),
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


def train_wordpiece():
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=260, special_tokens=specials)
    tok.train_from_iterator(CORPUS * 3, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece()
    return tok, dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def train_bytelevel_bpe():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=340, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    return tok, dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", cls_token="<s>", sep_token="</s>", mask_token="<mask>")


def train_unigram():
    # SentencePiece-style, as XLM-R's tokenizer.json: NFKC, Metaspace, Unigram.
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.UnigramTrainer(vocab_size=240, special_tokens=specials, unk_token="<unk>")
    tok.train_from_iterator(CORPUS * 3, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return tok, dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", cls_token="<s>", sep_token="</s>", mask_token="<mask>")


def randomize(model, gen):
    """Replace HF's tiny default init (std 0.02) with larger weights, so the logits are O(1)
    and a wrong op (missing mask, wrong position offset, wrong GELU) moves them by far more
    than the 1e-4 tolerance."""
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


def make(arch, num_labels, tok, tok_specials, dtype, shard, stray_position_ids, seed):
    name = f"{arch}-{num_labels}"
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    vocab = tok.get_vocab_size()
    common = dict(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=num_labels, hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    if arch == "bert":
        cfg = BertConfig(max_position_embeddings=64, type_vocab_size=2, pad_token_id=tok.token_to_id("[PAD]"), **common)
        model = BertForSequenceClassification(cfg)
    elif arch == "roberta":
        cfg = RobertaConfig(max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, **common)
        model = RobertaForSequenceClassification(cfg)
    else:
        cfg = XLMRobertaConfig(max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, **common)
        model = XLMRobertaForSequenceClassification(cfg)
    gen = torch.Generator().manual_seed(seed)
    randomize(model, gen)
    # Round to the storage dtype first, so the f32 reference uses exactly the stored weights.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))
    model.eval()

    tok_path = os.path.join(out, "tokenizer.json")
    tok.save(tok_path)
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=tok_path, **tok_specials)

    batches = []
    for idx, max_len, strategy in BATCHES:
        a = [PAIRS[i][0] for i in idx]
        b = [PAIRS[i][1] for i in idx]
        enc = hf_tok(a, b, truncation=strategy, max_length=max_len, padding=True, return_tensors="pt",
                     return_token_type_ids=(arch == "bert"))
        with torch.no_grad():
            logits = model(**enc).logits
        batches.append(dict(
            text_a=a, text_b=b, max_length=max_len, truncation=strategy,
            input_ids=enc["input_ids"].tolist(),
            attention_mask=enc["attention_mask"].tolist(),
            token_type_ids=enc["token_type_ids"].tolist() if arch == "bert" else None,
            logits=logits.tolist(),
        ))

    model.to(dtype)
    if shard:
        model.save_pretrained(out, safe_serialization=True, max_shard_size="40KB")
    else:
        model.save_pretrained(out, safe_serialization=True)
    if stray_position_ids:
        # Older checkpoints (MiniLM among them) carry the int64 position_ids buffer.
        path = os.path.join(out, "model.safetensors")
        tensors = load_file(path)
        tensors[f"{arch}.embeddings.position_ids"] = torch.arange(cfg.max_position_embeddings, dtype=torch.int64)[None, :]
        save_file(tensors, path, metadata={"format": "pt"})
    # Only the files a Hugging Face model directory needs for tsumugi; trim the rest.
    for f in os.listdir(out):
        if f in ("generation_config.json",):
            os.remove(os.path.join(out, f))
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(dict(arch=arch, num_labels=num_labels, dtype=str(dtype).removeprefix("torch."), batches=batches), f, ensure_ascii=False)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"{name}: {size / 1024:.0f} KiB, files {sorted(os.listdir(out))}")


def main():
    torch.manual_seed(0)
    wp, wp_s = train_wordpiece()
    bpe, bpe_s = train_bytelevel_bpe()
    uni, uni_s = train_unigram()
    os.makedirs(ROOT, exist_ok=True)
    make("bert", 1, wp, wp_s, torch.float32, shard=False, stray_position_ids=True, seed=1)
    make("bert", 3, wp, wp_s, torch.bfloat16, shard=False, stray_position_ids=False, seed=2)
    make("roberta", 1, bpe, bpe_s, torch.float16, shard=False, stray_position_ids=False, seed=3)
    make("roberta", 3, bpe, bpe_s, torch.float16, shard=True, stray_position_ids=False, seed=4)
    make("xlm-roberta", 1, uni, uni_s, torch.float16, shard=False, stray_position_ids=False, seed=5)
    make("xlm-roberta", 3, uni, uni_s, torch.float32, shard=True, stray_position_ids=False, seed=6)


if __name__ == "__main__":
    sys.exit(main())
