#!/usr/bin/env bash
# OCR quality (issue 13): character error rate of plain `tesseract` on the raw image vs
# tsumugi's OCR without and with its preprocessing, on 64 images drawn with real fonts
# (Japanese/English × sans/serif × 16/32 px × straight/3° × clean/3 % noise × 2 texts).
# Needs: apt-get install tesseract-ocr tesseract-ocr-jpn tesseract-ocr-eng fonts-noto-cjk fonts-dejavu-core
# Prints a Markdown table (BENCHMARKS.md, "OCR quality (issue 13)"); per-image figures on stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo run --quiet -p tsumugi-stages --example bench-ocr -- "$@"
