#!/usr/bin/env python3
"""LoRA fixtures (PEFT adapter, two AdamW steps, merged logits) for the ModernBERT fixtures.

    /tmp/javenv/bin/python scripts/make_modernbert_lora_fixtures.py

Same recipe and file layout as `scripts/make_lora_fixtures.py` (whose `make` this calls),
on stages/tests/fixtures/modernbert-{1,3}: writes stages/tests/fixtures/lora/modernbert-N/.
PEFT wraps the fused `attn.Wqkv` with one lora_A/lora_B pair (`[r, hidden]`,
`[3·hidden, r]`), which is what tsumugi must read and write.
"""

import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("make_lora_fixtures", os.path.join(HERE, "make_lora_fixtures.py"))
lora = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lora)

if __name__ == "__main__":
    # `Wo` matches both attn.Wo and mlp.Wo: every layer linear of the 1-label model.
    lora.make("modernbert-1", ["Wqkv", "Wo", "Wi"], 21)
    # PEFT's would-be default (attention projections only), on the mean-pooled model.
    lora.make("modernbert-3", ["Wqkv"], 22)
