"""Splits the posts of data.xml into data/prepared/{train,test}.tsv: id, label, text.

label is 1 when the post is tagged <python>. Lines that are not a <row …/> are skipped with a
message, as in DVC's example.
"""

import argparse
import os
import random
import re
import sys
import xml.etree.ElementTree as ET


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=float, required=True, help="share of posts for the test set")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("data")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    out = os.path.join("data", "prepared")
    os.makedirs(out, exist_ok=True)
    n = {"train": 0, "test": 0}
    with open(a.data, encoding="utf-8") as fin, open(
        os.path.join(out, "train.tsv"), "w", encoding="utf-8"
    ) as ftrain, open(os.path.join(out, "test.tsv"), "w", encoding="utf-8") as ftest:
        for num, line in enumerate(fin, 1):
            line = line.strip()
            if not line.startswith("<row"):
                continue
            try:
                attr = ET.fromstring(line).attrib
            except ET.ParseError as e:
                print(f"skipping the broken line {num}: {e}", file=sys.stderr)
                continue
            label = 1 if "<python>" in attr.get("Tags", "") else 0
            text = re.sub(r"<[^>]+>", " ", attr.get("Title", "") + " " + attr.get("Body", ""))
            text = re.sub(r"\s+", " ", text).strip()
            which = "test" if rng.random() < a.split else "train"
            (ftest if which == "test" else ftrain).write(f"{attr.get('Id', '')}\t{label}\t{text}\n")
            n[which] += 1
    print(f"prepared {n['train']} train and {n['test']} test posts")


if __name__ == "__main__":
    main()
