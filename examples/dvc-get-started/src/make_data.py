"""Writes a synthetic Stack Overflow dump in the format of DVC's example data (data/data.xml).

One <row …/> per line, as in the Stack Exchange data dumps: Id, PostTypeId, CreationDate,
Score, ViewCount, Title, Body (escaped HTML) and Tags ("<python><pandas>"). About a third of
the posts are tagged python; their words lean towards Python vocabulary, with noise, so that a
classifier learns something but not everything. Deterministic for a given --rows and --seed.
"""

import argparse
import os
import random
from xml.sax.saxutils import quoteattr

COMMON = (
    "how can i get the value from a list of items when the loop ends error after update "
    "function returns none why does this code fail on windows but works on linux best way "
    "to parse string into date convert array to map sort by key read file line by line "
    "install package version conflict memory leak in long running process unit test mock "
    "http request timeout json response null pointer exception regex match group thread "
    "safe queue async await callback performance slow query index database connection"
).split()
PYTHON = (
    "python pandas numpy dataframe django flask pip virtualenv def import lambda dict "
    "comprehension generator decorator pytest matplotlib asyncio venv conda jupyter"
).split()
OTHER = (
    "java javascript react node npm maven spring kotlin swift android ios css html "
    "typescript rust cargo golang goroutine csharp dotnet linq php laravel ruby rails r ggplot"
).split()
OTHER_TAGS = ["java", "javascript", "android", "c#", "php", "r", "ruby", "go", "rust", "css"]
PY_TAGS = ["pandas", "django", "numpy", "flask", "python-3.x"]


def sentence(rng, lean, n):
    words = []
    for _ in range(n):
        r = rng.random()
        if r < 0.035:
            words.append(rng.choice(lean))
        elif r < 0.085:
            words.append(rng.choice(PYTHON + OTHER))  # noise: either side's vocabulary
        else:
            words.append(rng.choice(COMMON))
    return " ".join(words)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("out")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n')
        for i in range(1, a.rows + 1):
            is_py = rng.random() < 0.33
            lean = PYTHON if is_py else OTHER
            tags = (["python"] + rng.sample(PY_TAGS, rng.randint(0, 2))) if is_py else rng.sample(OTHER_TAGS, rng.randint(1, 3))
            title = sentence(rng, lean, rng.randint(5, 12))
            body = "<p>" + sentence(rng, lean, rng.randint(20, 60)) + "</p>"
            attrs = {
                "Id": str(i),
                "PostTypeId": "1",
                "CreationDate": "2017-%02d-%02dT12:00:00.000" % (rng.randint(1, 12), rng.randint(1, 28)),
                "Score": str(rng.randint(-2, 40)),
                "ViewCount": str(rng.randint(10, 5000)),
                "Title": title,
                "Body": body,
                "Tags": "".join("<%s>" % t for t in tags),
            }
            f.write("  <row " + " ".join("%s=%s" % (k, quoteattr(v)) for k, v in attrs.items()) + " />\n")
        f.write("</posts>\n")
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
