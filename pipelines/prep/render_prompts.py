#!/usr/bin/env python3
"""Image prompts for pipelines/humor-images.yaml: each distinct prompt of a (prompt, answer,
score) JSONL drawn as a PNG, black on white in Noto Sans CJK (wrapped at ~36 characters),
and the rows written again with the image's path as the prompt: the shape of seed 000's
data, whose prompts are pictures with text in them (a caption stage reads them back).

Rows without a prompt are left out: they have nothing to draw. Needs Pillow (Debian's
python3-pil) and fonts-noto-cjk. The same input gives the same files.

Usage: python3 pipelines/prep/render_prompts.py --pairs data/humor/pairs.jsonl \\
         --images data/humor-images/images --out data/humor-images/pairs.jsonl
"""
import argparse
import json
import os
import shutil
import sys
import textwrap

FONT = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--images", required=True, help="directory the PNGs are written to (replaced)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--px", type=int, default=28, help="font size in pixels")
    a = ap.parse_args()
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        sys.exit("render_prompts.py needs Pillow: apt-get install python3-pil (or pip install pillow)")
    if not os.path.exists(FONT):
        sys.exit(f"font {FONT} not found: apt-get install fonts-noto-cjk")
    font = ImageFont.truetype(FONT, a.px, index=0)

    rows = []
    with open(a.pairs, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    sys.exit(f"{a.pairs}:{n}: not JSON: {e}")
    prompts = sorted({r["prompt"] for r in rows if r.get("prompt")})
    shutil.rmtree(a.images, ignore_errors=True)
    os.makedirs(a.images)
    path_of = {}
    for i, prompt in enumerate(prompts, 1):
        lines = textwrap.wrap(prompt, 36) or [""]
        line_h = int(a.px * 1.5)
        width = max(int(font.getlength(l)) for l in lines) + 2 * a.px
        img = Image.new("RGB", (width, line_h * len(lines) + 2 * a.px), "white")
        d = ImageDraw.Draw(img)
        for k, l in enumerate(lines):
            d.text((a.px, a.px + k * line_h), l, font=font, fill="black")
        path = os.path.join(a.images, f"prompt-{i:03d}.png")
        img.save(path)
        path_of[prompt] = path.replace(os.sep, "/")

    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    tmp = a.out + ".tmp"
    kept = 0
    with open(tmp, "w", encoding="utf-8") as w:
        for r in rows:
            if r.get("prompt"):
                w.write(json.dumps({"prompt": path_of[r["prompt"]], "answer": r["answer"], "score": r["score"]}, ensure_ascii=False) + "\n")
                kept += 1
    os.replace(tmp, a.out)
    print(f"{a.out}: {kept} rows over {len(prompts)} rendered prompts in {a.images}")


if __name__ == "__main__":
    main()
