"""The Python peer for the hard-negative mining benchmark: bm25s (method "lucene", the same
formula and k1/b as tsumugi's BM25) on the same corpus.jsonl / queries.jsonl.

    python peer_bm25s.py DIR [--k 100] [--threads 2] [--dump N]

Prints one JSON line with the same fields as `bench-negatives search`. With --dump N it
also writes DIR/top10.bm25s.tsv and, when DIR/top10.tsumugi.tsv exists, reports how
often both engines agree on the top-10 (ids in order, up to ties) and the largest score
difference. Tokens: lowercase runs of word characters (`\\w+`), the same tokens as tsumugi's
analyzer on this ASCII-only synthetic data.
"""

import argparse
import json
import re
import sys
import time

import bm25s
import numpy as np

WORD = re.compile(r"\w+")


def tokens(text):
    return WORD.findall(text.lower())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dump", type=int, default=0)
    a = ap.parse_args()

    t = time.perf_counter()
    ids, texts = [], []
    with open(f"{a.dir}/corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            o = json.loads(line)
            ids.append(o["doc_id"])
            texts.append(o["text"])
    queries = []
    with open(f"{a.dir}/queries.jsonl", encoding="utf-8") as f:
        for line in f:
            queries.append(json.loads(line)["query_text"])
    read_s = time.perf_counter() - t

    t, c = time.perf_counter(), time.process_time()
    corpus_tokens = [tokens(x) for x in texts]
    del texts
    retriever = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    retriever.index(corpus_tokens, show_progress=False)
    del corpus_tokens
    index_s, index_cpu_s = time.perf_counter() - t, time.process_time() - c

    query_tokens = [tokens(q) for q in queries]
    t, c = time.perf_counter(), time.process_time()
    docs, scores = retriever.retrieve(
        query_tokens, k=a.k, n_threads=a.threads, show_progress=False
    )
    search_s, search_cpu_s = time.perf_counter() - t, time.process_time() - c

    out = {
        "engine": f"bm25s {bm25s.__version__}",
        "passages": len(ids),
        "queries": len(queries),
        "k": a.k,
        "threads": a.threads,
        "read_s": read_s,
        "index_s": index_s,
        "index_cpu_s": index_cpu_s,
        "search_s": search_s,
        "search_cpu_s": search_cpu_s,
        "queries_per_s": len(queries) / search_s,
        "queries_per_cpu_s": len(queries) / search_cpu_s,
    }
    if a.dump:
        lines = []
        for qi in range(min(a.dump, len(queries))):
            for rank in range(10):
                lines.append(f"{qi}\t{rank}\t{ids[docs[qi, rank]]}\t{scores[qi, rank]:.6f}")
        with open(f"{a.dir}/top10.bm25s.tsv", "w") as f:
            f.write("\n".join(lines) + "\n")
        try:
            ours = {}
            with open(f"{a.dir}/top10.tsumugi.tsv") as f:
                for line in f:
                    qi, rank, doc, score = line.rstrip("\n").split("\t")
                    ours.setdefault(int(qi), []).append((doc, float(score)))
        except FileNotFoundError:
            ours = None
        if ours is not None:
            same, max_diff = 0, 0.0
            n = min(a.dump, len(queries))
            for qi in range(n):
                theirs = [(ids[docs[qi, r]], float(scores[qi, r])) for r in range(10)]
                mine = ours.get(qi, [])
                diffs = [abs(x[1] - y[1]) for x, y in zip(mine, theirs)]
                max_diff = max([max_diff] + diffs)
                # Equal ids in order, or equal scores where ties may order ids differently.
                if [d for d, _ in mine] == [d for d, _ in theirs] or (
                    len(mine) == 10 and max(diffs) < 1e-4
                ):
                    same += 1
            out["top10_agreement"] = same / n
            out["top10_max_score_diff"] = max_diff
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
