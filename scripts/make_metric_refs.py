#!/usr/bin/env python3
"""Writes stages/tests/data/metric_refs.json: inputs and reference metric values computed
by numpy / scipy / scikit-learn, which `stages/tests/metric_refs.rs` compares with
tsumugi's Rust metrics at 1e-9.

Run by hand (not by CI) when a metric or its convention changes, and commit the output:
    /work/.venv-ml/bin/python scripts/make_metric_refs.py
Needs numpy, scipy and scikit-learn. Inputs are drawn from a fixed seed and rounded to a
few decimals so that the JSON stays small and both sides parse the same doubles; ties are
included on purpose (average ranks, tie-averaged DCG, precision-recall steps).
"""

import json
import os
import sys

import numpy as np
import scipy
import scipy.stats
import sklearn
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    ndcg_score,
    r2_score,
)

OUT = os.path.join(os.path.dirname(__file__), "..", "stages", "tests", "data", "metric_refs.json")
RANK_KS = [1, 3, 5, 10]
ECE_BINS = 15


def regression_case(y, p):
    y, p = np.asarray(y, float), np.asarray(p, float)
    return {
        "y": y.tolist(),
        "p": p.tolist(),
        "mse": float(mean_squared_error(y, p)),
        "rmse": float(np.sqrt(mean_squared_error(y, p))),
        "mae": float(mean_absolute_error(y, p)),
        "r2": float(r2_score(y, p)),
        "pearson": float(scipy.stats.pearsonr(y, p)[0]),
        "spearman": float(scipy.stats.spearmanr(y, p)[0]),
    }


def ece(probs, y, n_bins):
    """Guo et al. (2017): equal-width bins (b/B, (b+1)/B] over the max probability."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(total)


def classification_case(probs, y):
    probs, y = np.asarray(probs, float), np.asarray(y)
    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    onehot = np.eye(k)[y]
    return {
        "n_classes": k,
        "y": y.tolist(),
        "pred": pred.tolist(),
        "probs": probs.tolist(),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=list(range(k)), average="macro", zero_division=0)),
        "confusion": confusion_matrix(y, pred, labels=list(range(k))).tolist(),
        # Brier (1950), summed over classes, averaged over samples.
        "brier": float(((probs - onehot) ** 2).sum(axis=1).mean()),
        "ece15": ece(probs, y, ECE_BINS),
    }


def ranking_case(ids, rel, scores):
    ids, rel, scores = np.asarray(ids), np.asarray(rel, float), np.asarray(scores, float)
    groups = list(dict.fromkeys(ids.tolist()))
    out = {"ids": ids.tolist(), "rel": rel.tolist(), "scores": scores.tolist(), "ks": RANK_KS}
    per = {f"ndcg@{k}": [] for k in RANK_KS}
    per.update({f"mrr@{k}": [] for k in RANK_KS})
    per.update({f"recall@{k}": [] for k in RANK_KS})
    per["map"] = []
    for g in groups:
        m = ids == g
        r, s = rel[m], scores[m]
        order = np.argsort(-s, kind="stable")
        relevant = r > 0
        for k in RANK_KS:
            per[f"ndcg@{k}"].append(ndcg_score([r], [s], k=k))
            top = relevant[order][:k]
            hit = np.flatnonzero(top)
            per[f"mrr@{k}"].append(1.0 / (hit[0] + 1) if hit.size else 0.0)
            per[f"recall@{k}"].append(top.sum() / relevant.sum() if relevant.any() else 0.0)
        per["map"].append(average_precision_score(relevant, s) if relevant.any() else 0.0)
    out.update({name: float(np.mean(v)) for name, v in per.items()})
    return out


def main():
    rng = np.random.RandomState(13)
    reg = []
    y = np.round(rng.uniform(0, 5, 20), 1)  # STS-like scores with ties
    reg.append(regression_case(y, np.round(y + rng.normal(0, 0.8, 20), 3)))
    reg.append(regression_case(np.round(rng.normal(0, 1, 15), 2), np.round(rng.normal(0, 1, 15), 2)))
    reg.append(regression_case([1, 2, 2, 3, 3, 3, 4], [0.5, 0.5, 2, 2, 2, 5, 1]))

    cls = []
    for n, k, sharp in [(24, 3, 1.0), (16, 2, 3.0), (12, 4, 0.5)]:
        probs = rng.dirichlet(np.full(k, sharp), n)
        probs = np.round(probs, 2)
        probs[:, -1] = np.round(1 - probs[:, :-1].sum(axis=1), 2)
        probs = np.clip(probs, 0, 1)
        y = rng.randint(0, k, n)
        # Bias the truth towards the argmax so accuracy is not chance level.
        agree = rng.uniform(size=n) < 0.6
        y[agree] = probs[agree].argmax(axis=1)
        cls.append(classification_case(probs, y))
    # A class never seen (truth nor prediction) and confidences on bin edges (0.4, 0.6).
    cls.append(classification_case([[0.4, 0.3, 0.3, 0.0], [0.6, 0.4, 0.0, 0.0], [0.2, 0.8, 0.0, 0.0], [0.1, 0.3, 0.6, 0.0]], [0, 1, 1, 2]))

    rank = []
    ids, rel, scores = [], [], []
    for q in range(6):
        n = rng.randint(3, 13)
        ids += [f"q{q}"] * n
        grades = rng.choice([0, 0, 0, 1, 2, 3], n) if q % 2 else rng.choice([0, 0, 1], n)
        if q == 4:
            grades[:] = 0  # a query without a relevant document
        rel += grades.tolist()
        scores += np.round(rng.normal(0, 1, n) + 0.5 * grades, 3).tolist()
    rank.append(ranking_case(ids, rel, scores))
    # Heavy ties in scores.
    ids2 = ["a"] * 6 + ["b"] * 5
    rel2 = [1, 0, 0, 1, 0, 0, 0, 2, 1, 0, 0]
    sc2 = [0.5, 0.5, 0.1, 0.1, 0.1, 0.9, 0.3, 0.3, 0.3, 0.3, 0.7]
    rank.append(ranking_case(ids2, rel2, sc2))

    out = {
        "generated_by": "scripts/make_metric_refs.py",
        "versions": {"numpy": np.__version__, "scipy": scipy.__version__, "sklearn": sklearn.__version__},
        "regression": reg,
        "classification": cls,
        "ranking": rank,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT + ".tmp", "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    os.replace(OUT + ".tmp", OUT)
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
