"""Scores the forest on train and test: eval/metrics.json (average precision, ROC AUC,
accuracy) and the plot data DVC's example writes under eval/plots/ (ROC and precision-recall
curves, confusion rows, feature importance)."""

import argparse
import json
import os


def predict(tree, x):
    while "f" in tree:
        tree = tree["l"] if tree["f"] in x else tree["r"]
    return tree["p"]


def curves(labels, scores):
    """ROC and precision-recall points at every distinct threshold, highest first."""
    pairs = sorted(zip(scores, labels), key=lambda t: -t[0])
    p = sum(labels)
    n = len(labels) - p
    tp = fp = 0
    roc, prc = [{"fpr": 0.0, "tpr": 0.0, "threshold": 1.0}], []
    ap = 0.0
    prev_recall = 0.0
    for i, (s, y) in enumerate(pairs):
        tp += y
        fp += 1 - y
        if i + 1 < len(pairs) and pairs[i + 1][0] == s:
            continue
        tpr = tp / p if p else 0.0
        fpr = fp / n if n else 0.0
        precision = tp / (tp + fp)
        roc.append({"fpr": round(fpr, 6), "tpr": round(tpr, 6), "threshold": round(s, 6)})
        prc.append({"recall": round(tpr, 6), "precision": round(precision, 6), "threshold": round(s, 6)})
        ap += (tpr - prev_recall) * precision
        prev_recall = tpr
    auc = sum((b["fpr"] - a["fpr"]) * (a["tpr"] + b["tpr"]) / 2 for a, b in zip(roc, roc[1:]))
    return roc, prc, ap, auc


def write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model")
    ap.add_argument("features")
    a = ap.parse_args()
    with open(a.model) as f:
        model = json.load(f)
    metrics = {"avg_prec": {}, "roc_auc": {}, "accuracy": {}}
    for split in ("train", "test"):
        with open(f"{a.features}/{split}.json") as f:
            data = json.load(f)
        labels = [d["label"] for d in data]
        xs = [{int(k) for k in d["x"]} for d in data]
        scores = [sum(predict(t, x) for t in model["trees"]) / len(model["trees"]) for x in xs]
        roc, prc, avg_prec, auc = curves(labels, scores)
        metrics["avg_prec"][split] = round(avg_prec, 6)
        metrics["roc_auc"][split] = round(auc, 6)
        predicted = [int(s >= 0.5) for s in scores]
        metrics["accuracy"][split] = round(sum(int(a == b) for a, b in zip(predicted, labels)) / len(labels), 6)
        write(f"eval/plots/sklearn/roc/{split}.json", {"roc": roc})
        write(f"eval/plots/sklearn/prc/{split}.json", {"prc": prc})
        write(f"eval/plots/sklearn/cm/{split}.json",
              [{"actual": str(y), "predicted": str(p)} for y, p in zip(labels, predicted)])
    # How often each feature decides a split, a stand-in for sklearn's impurity importance.
    counts = {}

    def walk(t):
        if "f" in t:
            counts[t["f"]] = counts.get(t["f"], 0) + 1
            walk(t["l"])
            walk(t["r"])

    for t in model["trees"]:
        walk(t)
    with open(f"{a.features}/vocab.json") as f:
        vocab = json.load(f)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    write("eval/plots/importance.json",
          {"importance": [{"rank": i + 1, "feature": vocab[f], "splits": c} for i, (f, c) in enumerate(top)]})
    write("eval/metrics.json", metrics)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
