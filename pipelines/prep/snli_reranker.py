#!/usr/bin/env python3
"""Reranker data in seed 003's JSONL shape, built from real SNLI pairs (stdlib only).

What it is: SNLI premises (image captions) used as queries, and the hypotheses annotators
wrote for them used as passages. A hypothesis labelled `entailment` for a premise is that
query's positive (it is true given the caption), its `contradiction` hypotheses are the
given negatives (same topic, not true), and every hypothesis of the train subset is in the
passage corpus. It is an entailment-retrieval task, not question answering: the queries
are statements, and another premise's hypothesis may also be true of this one (which is
why `sample-negatives` skips the very top of the BM25 list).

Writes, for the first --queries premises with at least one entailed hypothesis:
  OUT/queries.jsonl  {query_text, positives:[{doc_id,text}], negatives:[…], source_chunk, meta}
  OUT/corpus.jsonl   {doc_id, text}: every hypothesis of the file (doc_id = SNLI pairID)

Usage: python3 pipelines/prep/snli_reranker.py --snli data/snli/snli_1.0_train_subset.jsonl \
           --queries 600 --out data/reranker
"""
import argparse
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snli", required=True)
    ap.add_argument("--queries", type=int, default=600)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    premises = {}  # premise -> {"pos": [...], "neg": [...], "caption": id}, in file order
    corpus = []
    with open(a.snli, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{a.snli}:{n}: not JSON: {e}")
            doc = {"doc_id": d["pairID"], "text": d["sentence2"]}
            corpus.append(doc)
            p = premises.setdefault(d["sentence1"], {"pos": [], "neg": [], "caption": d["captionID"]})
            if d["gold_label"] == "entailment":
                p["pos"].append(doc)
            elif d["gold_label"] == "contradiction":
                p["neg"].append(doc)

    os.makedirs(a.out, exist_ok=True)
    written = 0
    tmp = os.path.join(a.out, "queries.jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as w:
        for premise, p in premises.items():
            if written == a.queries:
                break
            if not p["pos"]:
                continue
            w.write(json.dumps({
                "query_text": premise,
                "positives": p["pos"],
                "negatives": p["neg"],
                "source_chunk": p["caption"],
                "meta": {"domain": "snli", "construction": "premise -> entailed hypotheses"},
            }, ensure_ascii=False) + "\n")
            written += 1
    os.replace(tmp, os.path.join(a.out, "queries.jsonl"))
    tmp = os.path.join(a.out, "corpus.jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as w:
        for doc in corpus:
            w.write(json.dumps(doc, ensure_ascii=False) + "\n")
    os.replace(tmp, os.path.join(a.out, "corpus.jsonl"))
    print(f"{a.out}: {written} queries, {len(corpus)} passages")


if __name__ == "__main__":
    main()
