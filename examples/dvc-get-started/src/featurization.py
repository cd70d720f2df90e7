"""Bag of n-grams with TF-IDF weights over the max_features most frequent n-grams of the
training set: data/features/{train,test}.json (labels and sparse rows) and vocab.json."""

import argparse
import json
import math
import os
from collections import Counter


def ngrams(text, n):
    words = text.lower().split()
    grams = list(words)
    for k in range(2, n + 1):
        grams += [" ".join(words[i : i + k]) for i in range(len(words) - k + 1)]
    return grams


def read(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            pid, label, text = line.rstrip("\n").split("\t", 2)
            rows.append((pid, int(label), text))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-features", type=int, required=True)
    ap.add_argument("--ngrams", type=int, required=True)
    ap.add_argument("prepared")
    ap.add_argument("out")
    a = ap.parse_args()
    train = read(os.path.join(a.prepared, "train.tsv"))
    test = read(os.path.join(a.prepared, "test.tsv"))
    df = Counter()
    for _, _, text in train:
        df.update(set(ngrams(text, a.ngrams)))
    vocab = [g for g, _ in sorted(df.items(), key=lambda kv: (-kv[1], kv[0]))[: a.max_features]]
    index = {g: i for i, g in enumerate(vocab)}
    idf = [math.log((1 + len(train)) / (1 + df[g])) + 1 for g in vocab]
    os.makedirs(a.out, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        feats = []
        for _, label, text in rows:
            tf = Counter(index[g] for g in ngrams(text, a.ngrams) if g in index)
            w = {i: c * idf[i] for i, c in tf.items()}
            norm = math.sqrt(sum(v * v for v in w.values())) or 1.0
            feats.append({"label": label, "x": {str(i): round(v / norm, 6) for i, v in sorted(w.items())}})
        with open(os.path.join(a.out, f"{name}.json"), "w") as f:
            json.dump(feats, f)
    with open(os.path.join(a.out, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    print(f"{len(vocab)} features, {len(train)} train and {len(test)} test rows")


if __name__ == "__main__":
    main()
