#!/usr/bin/env python3
"""Reference ids of transformers' BertJapaneseTokenizer for the Japanese tokenizer tests.

Run by hand (not by CI), from the repository root, in a venv with transformers, fugashi,
unidic-lite and ipadic from PyPI (torch only for the tiny model):

    python3 -m venv /tmp/javenv && /tmp/javenv/bin/pip install transformers fugashi \
        unidic-lite==1.0.8 ipadic==1.0.0 torch safetensors
    mkdir -p /tmp/jadeb && (cd /tmp/jadeb && apt-get download debian-policy-ja \
        aptitude-doc-ja debian-edu-doc-ja manpages-ja)
    /tmp/javenv/bin/python scripts/make_japanese_tokenizer_fixtures.py /tmp/jadeb

Real Japanese text comes from Debian packages (the .debs in the given directory, extracted
into a temporary directory): the HTML of debian-policy-ja, aptitude-doc-ja and
debian-edu-doc-ja split into sentences, every manpages-ja line with full-width forms, and a
few hand-written stress lines. Writes stages/tests/fixtures/japanese/:
  sentences.txt.gz            one text a line
  vocab.txt                   a synthetic WordPiece vocabulary built from the corpus (no real
                              Japanese BERT vocab is in a registry): specials, characters seen
                              twice, their ## forms and frequent UniDic words of 2-4 chars, so
                              longer words split into sub-words and rare characters are [UNK]
  ids-<dic>-<sub>.txt.gz      for each dictionary (unidic_lite, ipadic) and subword type
                              (wordpiece, character): input_ids of tokenizer(text), one line
                              of space-separated ids per sentence; then, after a line "PAIRS",
                              "ids|type_ids" of tokenizer(a, b, truncation="longest_first",
                              max_length=32) for 300 consecutive pairs
  model/                      a tiny random BertForSequenceClassification with this
                              vocabulary (tokenizer_config.json says BertJapaneseTokenizer,
                              unidic_lite, wordpiece; no tokenizer.json) and expected.json:
                              logits of a few Japanese pairs
It prints the Python tokenizer's sentences/s (1 thread) for each configuration.
"""

import collections
import glob
import gzip
import html.parser
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unicodedata

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "stages", "tests", "fixtures", "japanese")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
N_DOC = 2000
STRESS = [
    "ｶﾀｶﾅの半角カタカナとＡＢＣの全角英字、１２３の全角数字。",
    "丸数字①②③と㍻、㈱、㌔のような互換文字。",
    "絵文字😀と𠮷野家の髙橋さん（非BMP文字）。",
    "全角スペース　を含む　文です。",
    "URL は https://www.debian.org/doc/ja/ を参照してください。",
    "テキスト中の[SEP]や[CLS]、[UNK]、[MASK]は特殊トークンになる。",
    "全角の［ＳＥＰ］は特殊トークンではない。",
    "超長単語" + "あいうえおかきくけこさしすせそたちつてと" * 6 + "です。",
    "ＡｐａｃｈｅHTTPサーバーのバージョン2.4.57をapt-get installでインストールする。",
    "価格は￥１，０００（税込）、約$9.99です！？",
    "「引用」『二重引用』【注意】〈山括弧〉《二重山括弧》",
    "ｱｲｳｴｵｶﾞｷﾞｸﾞｹﾞｺﾞﾊﾟﾋﾟﾌﾟﾍﾟﾎﾟ",
    "ＣＰＵ使用率が９９．９％に達しました。",
    "Linuxカーネル6.1とsystemd 252、GNOME 43を使う。",
    "タブ\t区切り\tの\t文。",
    "ＭｉｘｅｄＣａｓｅ　ＷＯＲＤＳ　ａｎｄ　ｗｏｒｄｓ。",
    "ヴァイオリンとヴィオラとチェロ、ウ゛の合成形。",
    "〜波ダッシュ～全角チルダ‐ハイフン−マイナス—ダッシュ",
    "数式 x² + y² = z² や ½ ¼ の分数。",
    "日本語とEnglishとdigits123が混ざったmixedテキスト。",
]


class Text(html.parser.HTMLParser):
    """Visible text of an HTML page, <pre>/<script>/<style> left out."""

    def __init__(self):
        super().__init__()
        self.skip = 0
        self.parts = []

    def handle_starttag(self, tag, attrs):
        if tag in ("pre", "script", "style"):
            self.skip += 1
        elif tag in ("p", "li", "div", "br", "td", "h1", "h2", "h3", "h4", "dt", "dd"):
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("pre", "script", "style") and self.skip:
            self.skip -= 1

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


JA = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
FULLWIDTH = re.compile(r"[\uff01-\uff5e]")


def doc_sentences(root):
    out, seen = [], set()
    for path in sorted(glob.glob(os.path.join(root, "**", "*.html"), recursive=True)):
        if not os.path.isfile(path) or ("/ja" not in path and ".ja." not in path):
            continue
        p = Text()
        p.feed(open(path, encoding="utf-8", errors="replace").read())
        for block in "".join(p.parts).split("\n"):
            block = " ".join(block.split())
            for s in re.split(r"(?<=[。！？])", block):
                s = s.strip()
                if len(s) >= 10 and JA.search(s) and s not in seen:
                    seen.add(s)
                    out.append(s)
    return out


def man_lines(root):
    out, seen = [], set()
    for path in sorted(glob.glob(os.path.join(root, "usr/share/man/ja/**/*.gz"), recursive=True)):
        try:
            text = gzip.open(path).read().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for line in text.split("\n"):
            if line.startswith((".", "'")) or "\\" in line:
                continue
            line = line.strip()
            if len(line) >= 12 and JA.search(line) and FULLWIDTH.search(line) and line not in seen:
                seen.add(line)
                out.append(line)
    return out


def corpus(debdir):
    with tempfile.TemporaryDirectory() as tmp:
        docs, man = os.path.join(tmp, "docs"), os.path.join(tmp, "man")
        for pat, dest in [("debian-policy-ja_*.deb", docs), ("aptitude-doc-ja_*.deb", docs),
                          ("debian-edu-doc-ja_*.deb", docs), ("manpages-ja_*.deb", man)]:
            debs = sorted(glob.glob(os.path.join(debdir, pat)))
            if not debs:
                sys.exit(f"{debdir}: no {pat} (apt-get download it there)")
            subprocess.run(["dpkg-deb", "-x", debs[-1], dest], check=True)
        doc = doc_sentences(docs)
        full = man_lines(man)
    # Every N-th sentence so all three packages are represented.
    step = max(1, len(doc) // N_DOC)
    doc = doc[::step][:N_DOC]
    print(f"{len(doc)} doc sentences, {len(full)} full-width manpage lines, {len(STRESS)} stress lines")
    return doc + full + STRESS


def synthetic_vocab(sents):
    import fugashi
    import unidic_lite

    tagger = fugashi.GenericTagger(f"-d {unidic_lite.DICDIR} -r {unidic_lite.DICDIR}/mecabrc")
    chars, words = collections.Counter(), collections.Counter()
    for s in sents:
        n = unicodedata.normalize("NFKC", s)
        chars.update(c for c in n if not c.isspace())
        words.update(w.surface for w in tagger(n))
    keep = sorted(c for c, k in chars.items() if k >= 2)
    vocab = SPECIALS + keep + ["##" + c for c in keep]
    have = set(vocab)
    for w, k in words.most_common():
        if 2 <= len(w) <= 4 and k >= 3 and w not in have and all(c in chars for c in w):
            vocab.append(w)
            vocab.append("##" + w)
            have.update([w, "##" + w])
    return vocab


def main():
    debdir = sys.argv[1] if len(sys.argv) > 1 else "/tmp/jadeb"
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertJapaneseTokenizer

    from transformers.utils import logging

    logging.set_verbosity_error()  # one "overflowing tokens are not returned" line per pair
    torch.set_num_threads(1)
    os.makedirs(ROOT, exist_ok=True)
    sents = corpus(debdir)
    assert all("\n" not in s for s in sents)
    with gzip.GzipFile(os.path.join(ROOT, "sentences.txt.gz"), "wb", mtime=0) as f:
        f.write("".join(s + "\n" for s in sents).encode())
    vocab = synthetic_vocab(sents)
    vocab_path = os.path.join(ROOT, "vocab.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        f.write("".join(v + "\n" for v in vocab))
    print(f"vocab: {len(vocab)} entries")
    pairs = [(sents[i], sents[i + 1]) for i in range(0, 600, 2)]
    for dic in ["unidic_lite", "ipadic"]:
        for sub in ["wordpiece", "character"]:
            tok = BertJapaneseTokenizer(vocab_path, do_lower_case=False, word_tokenizer_type="mecab",
                                        subword_tokenizer_type=sub, mecab_kwargs={"mecab_dic": dic})
            t0 = time.perf_counter()
            ids = [tok(s)["input_ids"] for s in sents]
            dt = time.perf_counter() - t0
            unk = sum(i.count(1) for i in ids)
            pieces = sum(sum(1 for x in i if vocab[x].startswith("##")) for i in ids)
            print(f"{dic} {sub}: python {len(sents) / dt:.0f} sentences/s, {unk} [UNK], {pieces} ## pieces")
            lines = [" ".join(map(str, i)) for i in ids] + ["PAIRS"]
            for a, b in pairs:
                e = tok(a, b, truncation="longest_first", max_length=32, return_token_type_ids=True)
                lines.append(" ".join(map(str, e["input_ids"])) + "|" + " ".join(map(str, e["token_type_ids"])))
            with gzip.GzipFile(os.path.join(ROOT, f"ids-{dic}-{sub}.txt.gz"), "wb", mtime=0) as f:
                f.write("".join(l + "\n" for l in lines).encode())
    make_model(vocab_path, pairs)


def make_model(vocab_path, pairs):
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertJapaneseTokenizer

    d = os.path.join(ROOT, "model")
    os.makedirs(d, exist_ok=True)
    shutil.copy(vocab_path, os.path.join(d, "vocab.txt"))
    tok = BertJapaneseTokenizer(vocab_path, do_lower_case=False, word_tokenizer_type="mecab",
                                subword_tokenizer_type="wordpiece", mecab_kwargs={"mecab_dic": "unidic_lite"})
    torch.manual_seed(12)
    cfg = BertConfig(vocab_size=len(open(vocab_path, encoding="utf-8").read().splitlines()), hidden_size=16,
                     num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=128, num_labels=1, pad_token_id=0)
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(d)
    tok.save_pretrained(d)
    for extra in ["tokenizer.json", "special_tokens_map.json", "chat_template.jinja"]:
        p = os.path.join(d, extra)
        if os.path.exists(p) and extra == "tokenizer.json":
            os.remove(p)
    chosen = [pairs[0], pairs[5], (STRESS[5], STRESS[0]), ("東京は日本の首都です。", "京都は古い都です。")]
    enc = tok([a for a, _ in chosen], [b for _, b in chosen], padding=True, truncation="longest_first",
              max_length=64, return_tensors="pt", return_token_type_ids=True)
    with torch.no_grad():
        logits = model(**enc).logits
    json.dump({"pairs": chosen, "max_length": 64, "input_ids": enc["input_ids"].tolist(),
               "logits": logits.tolist()}, open(os.path.join(d, "expected.json"), "w"),
              ensure_ascii=False, indent=1)
    print("model:", sorted(os.listdir(d)))


if __name__ == "__main__":
    main()
