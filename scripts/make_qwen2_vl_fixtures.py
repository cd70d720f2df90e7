#!/usr/bin/env python3
"""Tiny random-weight Qwen2-VL fixtures for tsumugi's parity tests (issue 13).

Run by hand (not by CI), from the repository root, with torch + transformers 5 (CPU):

    /tmp/javenv/bin/python scripts/make_qwen2_vl_fixtures.py

Writes stages/tests/fixtures/qwen2-vl/:
- a checkpoint directory as `save_pretrained` writes it: config.json, model.safetensors
  (bf16, to stay small: the references are computed from the same bf16-rounded weights in
  f32), generation_config.json, tokenizer.json + tokenizer_config.json, the chat template
  and preprocessor_config.json;
- images/*.png: four deterministic pictures (gradients, shapes, noise) of several sizes and
  aspect ratios: one that shrinks to the max_pixels bound, one that grows to min_pixels, one
  tall and narrow, one plain;
- reference.safetensors.gz: the slow (PIL) image processor's pixel_values for each image
  (only the first temporal copy: the script checks that the second is equal), the vision
  tower's merged embeddings, the logits of two image + text chat prompts (every position);
- reference.json: image_grid_thw per image, the prompts, their input ids, position ids
  (get_rope_index), and greedy generations of 32 new tokens (min_new_tokens = 32 so that
  end-of-sequence cannot stop them early) with and without the KV cache.

The tokenizer is a tiny byte-level BPE trained here (no Qwen2 tokenizer.json ships in a
registry package) with Qwen2-VL's special tokens.
"""

import copy
import gzip
import json
import os
import shutil
import tempfile

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "stages", "tests", "fixtures", "qwen2-vl")

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL-7B-Instruct's chat template (tokenizer_config.json on the Hub).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "You are a helpful assistant.",
    "system user assistant",
    "この画像を日本語で簡潔に説明してください。",
    "Describe this image in one sentence.",
    "A red circle on a blue background.",
    "画像には赤い丸と青い背景があります。",
    "The quick brown fox jumps over the lazy dog.",
    "猫がソファの上で寝ている。",
]

# The processor's pixel bounds for the fixture: small, so that the images exercise both.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 8


def images():
    """Four pictures made from numpy arithmetic: the same bytes on every machine."""
    out = {}
    y, x = np.mgrid[0:200, 0:300]
    big = np.stack([(x * 255 // 299), (y * 255 // 199), ((x + y) * 7) % 256], -1).astype(np.uint8)
    big[60:140, 100:200] = [220, 30, 40]  # a red box: sharp edges for the resampler
    out["wide-300x200.png"] = big
    rng = np.random.default_rng(13)
    out["noise-20x20.png"] = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    y, x = np.mgrid[0:150, 0:40]
    tall = np.stack([(y * 255 // 149), np.full_like(y, 128), (x * 6) % 256], -1).astype(np.uint8)
    tall[::10] = 255  # thin white lines
    out["tall-40x150.png"] = tall
    y, x = np.mgrid[0:61, 0:97]
    disc = (((x - 48) ** 2 + (y - 30) ** 2) < 400)[..., None]
    plain = np.where(disc, np.array([250, 200, 0]), np.array([10, 60, 160])).astype(np.uint8)
    out["disc-97x61.png"] = plain
    return out


def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=330,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def expand(chat, img, image_processor, tok, ids):
    """What `Qwen2VLProcessor.__call__` does for one image (without its video processor,
    which needs torchvision): each <|image_pad|> becomes grid_t·grid_h·grid_w / merge²
    of them, and `mm_token_type_ids` marks them (1) among text (0)."""
    out = image_processor(images=[img], return_tensors="pt")
    n = int(out["image_grid_thw"][0].prod()) // image_processor.merge_size**2
    text = chat.replace("<|image_pad|>", "<|image_pad|>" * n)
    input_ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    assert int((input_ids == ids["<|image_pad|>"]).sum()) == n
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": out["pixel_values"],
        "image_grid_thw": out["image_grid_thw"],
        "mm_token_type_ids": (input_ids == ids["<|image_pad|>"]).long(),
    }


def main():
    torch.manual_seed(13)
    tok = tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    vocab = len(tok)
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
            tie_word_embeddings=False,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=64,
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
            hidden_act="quick_gelu",
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config._attn_implementation = "eager"
    model = Qwen2VLForConditionalGeneration(config)
    with torch.no_grad():
        for p in model.parameters():
            # Larger than the default init (std 0.02) so that the tiny model's logits spread
            # out and greedy decoding has clear winners; rounded to bf16, the stored dtype.
            p.copy_((torch.randn_like(p) * 0.2).to(torch.bfloat16).float())
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_((1.0 + torch.randn_like(p) * 0.1).to(torch.bfloat16).float())
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )

    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS})

    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(os.path.join(OUT, "images"))
    with tempfile.TemporaryDirectory() as tmp:
        # A copy: `.to(bfloat16)` would also round the rotary `inv_freq` buffers, which
        # the f32 reference must keep in f32 (as loading the checkpoint gives them).
        copy.deepcopy(model).to(torch.bfloat16).save_pretrained(tmp)
        for f in ["config.json", "model.safetensors", "generation_config.json"]:
            shutil.copy(os.path.join(tmp, f), OUT)
    image_processor.save_pretrained(OUT)
    tok.save_pretrained(OUT)

    tensors = {}
    grids = {}
    pics = images()
    for name, arr in sorted(pics.items()):
        path = os.path.join(OUT, "images", name)
        Image.fromarray(arr).save(path)
        img = Image.open(path)
        out = image_processor(images=[img], return_tensors="pt")
        pv = out["pixel_values"].float()
        half = pv.shape[1] // 2
        # Each row is (C, T, P, P): the two temporal copies of a still image are equal.
        rows = pv.view(pv.shape[0], 3, 2, 14 * 14)
        assert torch.equal(rows[:, :, 0], rows[:, :, 1])
        tensors[f"pixel_values/{name}"] = rows[:, :, 0].reshape(pv.shape[0], half).contiguous()
        grids[name] = out["image_grid_thw"][0].tolist()
        with torch.no_grad():
            merged = model.model.visual(pv, grid_thw=out["image_grid_thw"]).pooler_output
        tensors[f"vision/{name}"] = merged.float().contiguous()

    prompts = [
        ("disc-97x61.png", "この画像を日本語で簡潔に説明してください。"),
        ("noise-20x20.png", "Describe this image in one sentence."),
    ]
    cases = []
    for i, (name, text) in enumerate(prompts):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        chat = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        img = Image.open(os.path.join(OUT, "images", name))
        inputs = expand(chat, img, image_processor, tok, ids)
        with torch.no_grad():
            logits = model(**inputs).logits[0].float()
        tensors[f"logits/{i}"] = logits.contiguous()
        position_ids, deltas = model.model.get_rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"],
        )
        gens = {}
        for cache in (True, False):
            with torch.no_grad():
                out = model.generate(
                    **inputs, max_new_tokens=32, min_new_tokens=32, do_sample=False, use_cache=cache
                )
            gens[cache] = out[0, inputs["input_ids"].shape[1] :].tolist()
        assert gens[True] == gens[False], "transformers' greedy tokens differ with and without the cache"
        # How clear each greedy choice was: a near tie could flip on rounding.
        with torch.no_grad():
            full = torch.cat([inputs["input_ids"][0], torch.tensor(gens[True])])[None]
            step_logits = model(
                input_ids=full,
                pixel_values=inputs["pixel_values"],
                image_grid_thw=inputs["image_grid_thw"],
                mm_token_type_ids=torch.cat(
                    [inputs["mm_token_type_ids"][0], torch.zeros(32, dtype=torch.long)]
                )[None],
            ).logits[0, inputs["input_ids"].shape[1] - 1 : -1]
        step_logits[:, list(model.generation_config.eos_token_id)] = -float("inf")
        top2 = step_logits.topk(2, dim=-1).values
        gap = (top2[:, 0] - top2[:, 1]).min().item()
        cases.append(
            {
                "image": name,
                "prompt": text,
                "chat": chat,
                "input_ids": inputs["input_ids"][0].tolist(),
                "position_ids": position_ids[:, 0].tolist(),
                "rope_delta": int(deltas[0, 0]),
                "generated": gens[True],
                "generated_text": tok.decode(gens[True]),
                "min_top2_gap": gap,
            }
        )
        print(f"prompt {i}: {inputs['input_ids'].shape[1]} tokens, min top-2 gap {gap:.4f}")

    raw = save(tensors)
    with gzip.GzipFile(os.path.join(OUT, "reference.safetensors.gz"), "wb", mtime=0) as f:
        f.write(raw)
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(
            {
                "transformers": __import__("transformers").__version__,
                "torch": torch.__version__,
                "min_pixels": MIN_PIXELS,
                "max_pixels": MAX_PIXELS,
                "image_grid_thw": grids,
                "special_ids": ids,
                "cases": cases,
            },
            f,
            ensure_ascii=False,
            indent=1,
        )
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT}: {total // 1024} KiB")


if __name__ == "__main__":
    main()
