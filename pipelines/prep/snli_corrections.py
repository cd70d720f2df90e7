#!/usr/bin/env python3
"""The `corrections` table of seed 002, made from real SNLI pairs (stdlib only).

seed 002's application writes user corrections (premise, hypothesis, label) into a SQLite
table; tsumugi's pipeline only reads it. This script stands in for that application:

  init  creates data/corrections.db if missing and, while the table is empty, loads the
        first --rows consensus-labelled pairs of the SNLI train subset. It never deletes
        or rewrites rows, so running it again (or after `add`) changes nothing.
  add   appends the next --n SNLI train pairs not yet in the table, as new corrections
        (the "insert 100 rows and re-run" step of the README).

Usage:
  python3 pipelines/prep/snli_corrections.py init --db data/corrections.db \
      --snli data/snli/snli_1.0_train_subset.jsonl --rows 3000
  python3 pipelines/prep/snli_corrections.py add --db data/corrections.db \
      --snli data/snli/snli_1.0_train_subset.jsonl --n 100
"""
import argparse
import json
import sqlite3
import sys
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS corrections (
    id         INTEGER PRIMARY KEY,
    pair_id    TEXT NOT NULL UNIQUE,
    sentence1  TEXT NOT NULL,
    sentence2  TEXT NOT NULL,
    gold_label TEXT NOT NULL CHECK (gold_label IN ('entailment', 'neutral', 'contradiction')),
    source     TEXT NOT NULL,
    added_at   TEXT NOT NULL
);
"""


def snli_rows(path):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON: {e}")
            if d.get("gold_label") in ("entailment", "neutral", "contradiction"):
                yield d["pairID"], d["sentence1"], d["sentence2"], d["gold_label"]


def insert(db, rows, source):
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    cur = db.executemany(
        "INSERT OR IGNORE INTO corrections (pair_id, sentence1, sentence2, gold_label, source, added_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(*r, source, now) for r in rows],
    )
    return cur.rowcount


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["init", "add"])
    ap.add_argument("--db", required=True)
    ap.add_argument("--snli", required=True, help="snli_1.0_train_subset.jsonl")
    ap.add_argument("--rows", type=int, default=3000, help="init: rows loaded into an empty table")
    ap.add_argument("--n", type=int, default=100, help="add: rows appended")
    a = ap.parse_args()
    db = sqlite3.connect(a.db)
    with db:
        db.executescript(SCHEMA)
        have = {r[0] for r in db.execute("SELECT pair_id FROM corrections")}
        if a.command == "init":
            if have:
                print(f"{a.db}: corrections has {len(have)} rows; nothing loaded")
                return
            rows = []
            for r in snli_rows(a.snli):
                if len(rows) == a.rows:
                    break
                rows.append(r)
            n = insert(db, rows, "snli-train-subset")
            print(f"{a.db}: loaded {n} SNLI pairs into corrections")
        else:
            rows = []
            for r in snli_rows(a.snli):
                if len(rows) == a.n:
                    break
                if r[0] not in have:
                    rows.append(r)
            if len(rows) < a.n:
                sys.exit(f"{a.snli}: only {len(rows)} pairs left that are not in the table")
            n = insert(db, rows, "user-correction")
            total = db.execute("SELECT count(*) FROM corrections").fetchone()[0]
            print(f"{a.db}: added {n} corrections ({total} rows now)")


if __name__ == "__main__":
    main()
