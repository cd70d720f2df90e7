#!/usr/bin/env python3
"""(prompt, answer, score) rows from the humor-mcp `mallard` pack (stdlib only).

The pack's lines.jsonl holds 1,148 lines, 975 of them rated 0-5 by one rater:
  joke       a setup (`context`) and an answer, rated
  candidate  an answer without its setup, rated; when the same answer text appears as a
             `joke` line, that line's setup is its prompt
  word       a single word rated on its own (prompt empty)
  slate_winner  not rated: left out
Rows whose answer repeats keep their own score; build-pairs groups by answer text so that
one answer never sits on both sides of the split.

Usage: python3 pipelines/prep/humor_pairs.py --lines PATH/lines.jsonl --out data/humor/pairs.jsonl
"""
import argparse
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    lines = []
    with open(a.lines, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    lines.append(json.loads(line))
                except json.JSONDecodeError as e:
                    sys.exit(f"{a.lines}:{n}: not JSON: {e}")
    setup_of = {d["text"]: d["context"] for d in lines if d["kind"] == "joke" and d.get("context")}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    tmp = a.out + ".tmp"
    kept = 0
    with open(tmp, "w", encoding="utf-8") as w:
        for d in lines:
            if d.get("score") is None or not d.get("text"):
                continue
            prompt = d.get("context") or setup_of.get(d["text"], "")
            w.write(json.dumps({"id": d["ext_id"], "kind": d["kind"], "prompt": prompt,
                                "answer": d["text"], "score": d["score"]}, ensure_ascii=False) + "\n")
            kept += 1
    os.replace(tmp, a.out)
    print(f"{a.out}: {kept} rated (prompt, answer) rows")


if __name__ == "__main__":
    main()
