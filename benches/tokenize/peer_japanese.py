#!/usr/bin/env python3
"""The peer of bench-japanese-tokenize: transformers' BertJapaneseTokenizer (fugashi +
unidic-lite / ipadic) on the same texts, one thread. Prints one JSON line."""

import gzip
import json
import os
import sys
import time

from transformers import BertJapaneseTokenizer

dic, sub = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
fx = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "stages", "tests", "fixtures", "japanese")
sents = gzip.open(os.path.join(fx, "sentences.txt.gz")).read().decode().splitlines()
t = time.perf_counter()
tok = BertJapaneseTokenizer(os.path.join(fx, "vocab.txt"), do_lower_case=False, word_tokenizer_type="mecab",
                            subword_tokenizer_type=sub, mecab_kwargs={"mecab_dic": dic})
load = time.perf_counter() - t
ids = sum(len(tok(s)["input_ids"]) for s in sents)  # warm-up
c0, t0 = time.process_time(), time.perf_counter()
for _ in range(rounds):
    for s in sents:
        tok(s)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
n = len(sents) * rounds
print(json.dumps({"impl": "transformers", "dic": dic, "sub": sub, "sentences": len(sents), "rounds": rounds,
                  "ids": ids, "load_s": load, "wall_s": wall, "cpu_s": cpu,
                  "sentences_per_s_wall": n / wall, "sentences_per_cpu_s": n / cpu}))
