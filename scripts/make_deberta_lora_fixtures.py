#!/usr/bin/env python3
"""LoRA fixtures (PEFT adapter, two AdamW steps, merged logits) for the DeBERTa fixtures.

    /tmp/javenv/bin/python scripts/make_deberta_lora_fixtures.py

Same recipe and file layout as `scripts/make_lora_fixtures.py` (whose `make` this calls),
on stages/tests/fixtures/deberta-v3-1 and deberta-v2-3: writes
stages/tests/fixtures/lora/deberta-*/. With `share_att_key` (v3) PEFT's wrapped
query_proj/key_proj also project the relative-position embeddings, so their LoRA paths are
on that route too.
"""

import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("make_lora_fixtures", os.path.join(HERE, "make_lora_fixtures.py"))
lora = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lora)

if __name__ == "__main__":
    # Every layer linear of the v3-style model (shared keys: q/k also see positions);
    # not `dense`, which PEFT would also match on `pooler.dense`, outside the layers.
    lora.make("deberta-v3-1", ["query_proj", "key_proj", "value_proj", "output.dense", "intermediate.dense"], 31)
    # PEFT's default targets on the v2-style model with separate position projections.
    lora.make("deberta-v2-3", ["query_proj", "value_proj"], 32)
