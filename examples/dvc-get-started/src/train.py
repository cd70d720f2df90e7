"""A small random forest (bootstrap samples, a random subset of features per split, Gini
impurity, splits on "n-gram present") trained on data/features/train.json; writes the
trees as JSON. Standard library only, so the example runs wherever Python 3 does."""

import argparse
import json
import math
import random


def gini(pos, n):
    if n == 0:
        return 0.0
    p = pos / n
    return 2 * p * (1 - p)


def grow(rows, idx, rng, n_feat, min_split, depth):
    pos = sum(rows[i][0] for i in idx)
    leaf = {"p": pos / len(idx)}
    if len(idx) < min_split or pos in (0, len(idx)) or depth >= 12:
        return leaf
    parent = gini(pos, len(idx))
    best = None
    for f in rng.sample(range(n_feat), max(1, int(math.sqrt(n_feat)))):
        left = [i for i in idx if f in rows[i][1]]
        if not left or len(left) == len(idx):
            continue
        lp = sum(rows[i][0] for i in left)
        nl, nr = len(left), len(idx) - len(left)
        gain = parent - (nl * gini(lp, nl) + nr * gini(pos - lp, nr)) / len(idx)
        if best is None or gain > best[0]:
            best = (gain, f, left)
    if best is None or best[0] <= 0:
        return leaf
    _, f, left = best
    in_left = set(left)
    right = [i for i in idx if i not in in_left]
    return {
        "f": f,
        "l": grow(rows, left, rng, n_feat, min_split, depth + 1),
        "r": grow(rows, right, rng, n_feat, min_split, depth + 1),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--n-est", type=int, required=True, help="number of trees")
    ap.add_argument("--min-split", type=float, required=True, help="min share of samples to split a node")
    ap.add_argument("features")
    ap.add_argument("model")
    a = ap.parse_args()
    with open(f"{a.features}/train.json") as f:
        data = json.load(f)
    with open(f"{a.features}/vocab.json") as f:
        n_feat = len(json.load(f))
    rows = [(d["label"], {int(k) for k in d["x"]}) for d in data]
    rng = random.Random(a.seed)
    min_split = max(2, math.ceil(a.min_split * len(rows)))
    trees = []
    for _ in range(a.n_est):
        sample = [rng.randrange(len(rows)) for _ in rows]
        trees.append(grow(rows, sample, rng, n_feat, min_split, 0))
    with open(a.model, "w") as f:
        json.dump({"n_features": n_feat, "trees": trees}, f)
    print(f"trained {len(trees)} trees on {len(rows)} rows")


if __name__ == "__main__":
    main()
