#!/usr/bin/env bash
# caption-images over N rendered images (default 200), as one whole stage and item by item
# (`map:` + `uses:`), in the same run of this script: the first run of each, then one image
# added and the run again. Prints wall times; compare them as ratios.
#
#   cargo build --release --no-default-features
#   PYTHON=/path/to/python-with-PIL benches/map/caption_mapped_vs_whole.sh target/release/tsumugi [N]
#
# Needs tesseract (+ tesseract-ocr-eng) and DejaVu Sans (fonts-dejavu-core).
set -euo pipefail
BIN=$(realpath "${1:?usage: caption_mapped_vs_whole.sh TSUMUGI [N]}")
N=${2:-200}
PY=${PYTHON:-python3}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
mkdir -p "$DIR/whole/data/images"
"$PY" - "$N" "$DIR/whole/data/images" <<'PY'
import sys
from PIL import Image, ImageDraw, ImageFont
f = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 26)
for i in range(int(sys.argv[1])):
    im = Image.new("RGB", (200, 50), "white")
    ImageDraw.Draw(im).text((10, 10), f"tile {i}", fill="black", font=f)
    im.save(f"{sys.argv[2]}/img_{i:04}.png")
PY
cp -r "$DIR/whole" "$DIR/mapped1"
cat > "$DIR/whole/p.yaml" <<'YAML'
name: cap
stages:
  caption:
    uses: caption-images
    with: {images: data/images, method: ocr, language: eng}
YAML
cat > "$DIR/mapped1/p.yaml" <<'YAML'
name: cap
stages:
  caption:
    uses: caption-images
    map: {glob: "data/images/*.png"}
    with: {images: "${item.path}", method: ocr, language: eng}
YAML
cp -r "$DIR/mapped1" "$DIR/mapped2"
timed() { # LABEL DIR JOBS
    local s e
    s=$(date +%s.%N)
    (cd "$2" && "$BIN" run p.yaml -j "$3" -q >/dev/null)
    e=$(date +%s.%N)
    printf '%-36s %8.1f s\n' "$1" "$(echo "$e - $s" | bc)"
}
uptime
timed "whole stage, $N images, -j 1" "$DIR/whole" 1
timed "mapped, $N images, -j 1" "$DIR/mapped1" 1
timed "mapped, $N images, -j 2" "$DIR/mapped2" 2
cmp "$DIR/whole/out/cap/caption/captions.jsonl" "$DIR/mapped1/out/cap/caption/captions.jsonl" \
    && echo "captions.jsonl: mapped == whole, byte for byte"
for d in whole mapped1; do
    cp "$DIR/$d/data/images/img_0000.png" "$DIR/$d/data/images/zz_new.png"
done
timed "whole stage, +1 image" "$DIR/whole" 1
timed "mapped, +1 image" "$DIR/mapped1" 1
uptime
