#!/usr/bin/env python3
"""Writes stages/tests/data/loss_refs.json: loss values and input gradients computed by
PyTorch (float64, autograd) for fixed inputs, which `stages/tests/loss_refs.rs` compares
with tsumugi's f64 reference losses (stages/src/losses.rs) at 1e-9.

Run by hand (not by CI) and commit the output:
    /work/.venv-ml/bin/python scripts/make_loss_refs.py
"""

import json
import os
import sys

import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(__file__), "..", "stages", "tests", "data", "loss_refs.json")


def t(x):
    return torch.tensor(x, dtype=torch.float64, requires_grad=True)


def case(inputs, loss):
    """inputs: dict name -> tensor (requires_grad); returns value and flat gradients."""
    loss.backward()
    out = {"value": loss.item()}
    for name, x in inputs.items():
        out["grad_" + name] = x.grad.reshape(-1).tolist()
    return out


def main():
    torch.manual_seed(13)
    r = lambda *shape: torch.round(torch.randn(*shape, dtype=torch.float64) * 1000) / 1000

    cases = {}
    pred, target = r(6).tolist(), r(6).tolist()
    x = t(pred)
    cases["mse"] = {"pred": pred, "target": target, **case({"pred": x}, F.mse_loss(x, torch.tensor(target, dtype=torch.float64)))}

    logits = (r(6) * 3).tolist() + [40.0, -40.0]
    y = torch.rand(8, dtype=torch.float64).round(decimals=3).tolist()
    x = t(logits)
    cases["bce_with_logits"] = {"logits": logits, "target": y, **case({"logits": x}, F.binary_cross_entropy_with_logits(x, torch.tensor(y, dtype=torch.float64)))}

    ce_logits = r(4, 3).tolist()
    ce_t = [0, 2, 1, 2]
    x = t(ce_logits)
    cases["cross_entropy"] = {"logits": ce_logits, "n_classes": 3, "target": ce_t, **case({"logits": x}, F.cross_entropy(x, torch.tensor(ce_t)))}

    pos, neg = r(5).tolist(), r(5).tolist()
    p, n = t(pos), t(neg)
    cases["margin_ranking"] = {"pos": pos, "neg": neg, "margin": 0.5, **case({"pos": p, "neg": n}, F.margin_ranking_loss(p, n, torch.ones(5, dtype=torch.float64), margin=0.5))}

    groups = r(3, 5).tolist()
    x = t(groups)
    cases["listwise_softmax"] = {"scores": groups, "group_size": 5, **case({"scores": x}, F.cross_entropy(x, torch.zeros(3, dtype=torch.long)))}

    mpos, mneg = r(3).tolist(), r(4).tolist()
    p, n = t(mpos), t(mneg)
    per = torch.stack([torch.logsumexp(torch.cat([p[i : i + 1], n]), 0) - p[i] for i in range(3)])
    cases["multi_positive_softmax"] = {"pos": mpos, "neg": mneg, **case({"pos": p, "neg": n}, per.mean())}
    p, n = t(mpos), t(mneg)
    pooled = torch.logsumexp(torch.cat([p, n]), 0) - torch.logsumexp(p, 0)
    cases["multi_positive_logsumexp"] = {"pos": mpos, "neg": mneg, **case({"pos": p, "neg": n}, pooled)}

    out = {"generated_by": "scripts/make_loss_refs.py", "versions": {"torch": torch.__version__}, "cases": cases}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT + ".tmp", "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    os.replace(OUT + ".tmp", OUT)
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
