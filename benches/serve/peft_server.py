#!/usr/bin/env python3
"""The peer: seed 002's ML server as it describes it, by hand: FastAPI + transformers +
PEFT, `POST /predict`, `POST /rerank`, `POST /nli/adapter/load|unload`,
`GET /nli/adapter/status`. One request is one forward pass (no batching across
requests); a load builds the merged PeftModel beside the old one and swaps the reference.

    PY benches/serve/peft_server.py --model DIR --port 8081 [--adapter-root DIR]
"""
import argparse
import os
import threading

import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from peft import PeftModel
from pydantic import BaseModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--port", type=int, default=8081)
ap.add_argument("--adapter-root", default=".")
ap.add_argument("--max-length", type=int, default=128)
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)

tok = AutoTokenizer.from_pretrained(args.model)
base = AutoModelForSequenceClassification.from_pretrained(args.model, dtype=torch.float32).eval()
state = {"model": base, "adapter": None}
load_lock = threading.Lock()
app = FastAPI()


class Pairs(BaseModel):
    pairs: list[list[str]]


class Rerank(BaseModel):
    query: str
    texts: list[str]
    raw_scores: bool = False


class Load(BaseModel):
    path: str


def logits(model, pairs):
    enc = tok([p[0] for p in pairs], [p[1] for p in pairs], padding=True, truncation=True,
              max_length=args.max_length, return_tensors="pt")
    with torch.inference_mode():
        return model(**enc).logits.tolist()


@app.post("/predict")
def predict(req: Pairs):
    out = logits(state["model"], req.pairs)
    return {"results": [{"logits": l, "score": float(torch.sigmoid(torch.tensor(l[0])))} for l in out]}


@app.post("/rerank")
def rerank(req: Rerank):
    out = logits(state["model"], [[req.query, t] for t in req.texts])
    res = [{"index": i, "score": l[0] if req.raw_scores else float(torch.sigmoid(torch.tensor(l[0])))}
           for i, l in enumerate(out)]
    return sorted(res, key=lambda r: -r["score"])


@app.post("/nli/adapter/load")
def load(req: Load):
    root = os.path.realpath(args.adapter_root)
    path = os.path.realpath(os.path.join(root, req.path))
    if not path.startswith(root + os.sep):
        raise HTTPException(403, "outside the adapter root")
    with load_lock:
        fresh = AutoModelForSequenceClassification.from_pretrained(args.model, dtype=torch.float32)
        model = PeftModel.from_pretrained(fresh, path).merge_and_unload().eval()
        state["model"], state["adapter"] = model, req.path
    return {"adapter": req.path}


@app.post("/nli/adapter/unload")
def unload():
    state["model"], state["adapter"] = base, None
    return {"adapter": None}


@app.get("/nli/adapter/status")
def status():
    return {"base_model": args.model, "adapter": state["adapter"]}


@app.get("/health")
def health():
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
