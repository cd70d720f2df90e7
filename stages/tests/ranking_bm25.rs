//! BM25 against hand-computed scores, the CJK analyzer, and top-k search against brute force.

use tsumugi_stages::ranking::analyzer::tokens;
use tsumugi_stages::ranking::bm25::{Bm25Index, Bm25Params, Hit};

fn index(texts: &[&str]) -> Bm25Index {
    Bm25Index::build(texts, Bm25Params::default()).unwrap()
}

/// N = 3 passages of 3, 6 and 3 tokens: avgdl = 4. For the query "the cat":
/// idf(the) = ln(1 + (3 − 2 + 0.5)/(2 + 0.5)) = ln 1.6, idf(cat) = ln(1 + 2.5/1.5) = ln(8/3);
/// norm(|d| = 3) = 1.2 · (0.25 + 0.75 · 3/4) = 0.975, norm(|d| = 6) = 1.2 · (0.25 + 0.75 · 6/4) = 1.65;
/// d0 = (ln 1.6 + ln 8/3) · 1/(1 + 0.975), d1 = ln 1.6 · 2/(2 + 1.65), d2 shares no term.
#[test]
fn scores_match_a_hand_computed_example() {
    let ix = index(&["the cat sat", "The dog sat on the mat", "cats and dogs"]);
    assert_eq!(ix.len(), 3);
    assert_eq!(ix.avgdl(), 4.0);
    assert_eq!(ix.df("the"), 2);
    assert!((ix.idf("the").unwrap() - 1.6f64.ln()).abs() < 1e-12);
    assert!((ix.idf("cat").unwrap() - (8.0f64 / 3.0).ln()).abs() < 1e-12);
    assert_eq!(ix.idf("bird"), None);

    let d0 = (1.6f64.ln() + (8.0f64 / 3.0).ln()) / 1.975;
    let d1 = 1.6f64.ln() * 2.0 / 3.65;
    // The same values as decimals (Python: math.log(1.6*8/3)/1.975, math.log(1.6)*2/3.65).
    assert!((d0 - 0.734_598_927_725_297_1).abs() < 1e-12);
    assert!((d1 - 0.257_536_235_203_142_84).abs() < 1e-12);

    let hits = ix.search("the cat", 10, &mut ix.scratch());
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0].doc, 0);
    assert!((hits[0].score - d0).abs() < 1e-9);
    assert_eq!(hits[1].doc, 1);
    assert!((hits[1].score - d1).abs() < 1e-9);
    for (doc, want) in [(0, d0), (1, d1), (2, 0.0)] {
        assert!((ix.score_doc("the cat", doc) - want).abs() < 1e-9);
    }
    // A text outside the corpus is scored with the corpus' idf and avgdl.
    assert!((ix.score_text("the cat", "The  CAT, sat!") - d0).abs() < 1e-9);
    // A repeated query term counts once per occurrence.
    assert!((ix.score_doc("cat cat", 0) - 2.0 * (8.0f64 / 3.0).ln() / 1.975).abs() < 1e-9);
    assert!((ix.score_doc("cat cat", 0) - 0.993_244_813_176_431_5).abs() < 1e-9);

    // k1 = 2, b = 0: no length normalisation; "the" in d1 (tf 2) = ln 1.6 · 2/(2 + 2).
    let flat = Bm25Index::build(
        &["the cat sat", "The dog sat on the mat", "cats and dogs"],
        Bm25Params { k1: 2.0, b: 0.0 },
    )
    .unwrap();
    assert!((flat.score_doc("the", 1) - 1.6f64.ln() / 2.0).abs() < 1e-9);
}

#[test]
fn bad_parameters_are_refused() {
    let err = Bm25Index::build(&["a"], Bm25Params { k1: -1.0, b: 0.75 })
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("k1"), "{err}");
    let err = Bm25Index::build(&["a"], Bm25Params { k1: 1.2, b: 1.5 })
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("[0, 1]"), "{err}");
}

#[test]
fn japanese_is_indexed_as_character_bigrams() {
    assert_eq!(tokens("東京の天気"), ["東京", "京の", "の天", "天気"]);
    let ix = index(&["東京都の天気は晴れ", "京都の天気は雨", "大阪のたこ焼き"]);
    let hits = ix.search("東京の天気", 10, &mut ix.scratch());
    let docs: Vec<u32> = hits.iter().map(|h| h.doc).collect();
    assert_eq!(docs, [0, 1], "{hits:?}");
    // Mixed scripts: the Latin word is a word, the kana a bigram.
    let ix = index(&["BM25とは何か", "TF-IDFとは"]);
    let hits = ix.search("bm25", 10, &mut ix.scratch());
    assert_eq!(hits.iter().map(|h| h.doc).collect::<Vec<_>>(), [0]);
}

#[test]
fn empty_and_unknown_queries_find_nothing() {
    let ix = index(&["alpha beta", "", "gamma"]);
    let mut s = ix.scratch();
    assert!(ix.search("", 5, &mut s).is_empty());
    assert!(ix.search("delta", 5, &mut s).is_empty());
    assert!(ix.search("alpha", 0, &mut s).is_empty());
    let empty = Bm25Index::build(&Vec::<String>::new(), Bm25Params::default()).unwrap();
    assert!(empty.is_empty());
    assert!(empty.search("alpha", 5, &mut empty.scratch()).is_empty());
}

/// A deterministic pseudo-random corpus over a small vocabulary, so postings are long and
/// scores tie often.
fn synthetic(n: usize) -> Vec<String> {
    let mut x: u64 = 42;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|_| {
            let len = 3 + (next() % 12) as usize;
            (0..len)
                .map(|_| format!("w{}", (next() % 40) * (next() % 3 + 1) % 60))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn top_k_equals_brute_force_and_parallel_equals_sequential() {
    let texts = synthetic(3000);
    let ix = Bm25Index::build(&texts, Bm25Params::default()).unwrap();
    let queries: Vec<String> = texts[..50]
        .iter()
        .map(|t| t.split(' ').take(4).collect::<Vec<_>>().join(" "))
        .collect();
    let mut scratch = ix.scratch();
    for q in &queries {
        let mut all: Vec<Hit> = (0..texts.len() as u32)
            .map(|d| Hit {
                doc: d,
                score: ix.score_doc(q, d),
            })
            .filter(|h| h.score > 0.0)
            .collect();
        all.sort_by(|a, b| b.cmp(a));
        let got = ix.search(q, 25, &mut scratch);
        assert_eq!(got.len(), 25);
        for (g, w) in got.iter().zip(&all) {
            assert_eq!(g.doc, w.doc, "query {q:?}");
            assert!((g.score - w.score).abs() < 1e-12);
        }
    }
    let many = ix.search_many(&queries, 25);
    for (q, hits) in queries.iter().zip(&many) {
        assert_eq!(hits, &ix.search(q, 25, &mut scratch));
    }
}

#[test]
fn ties_go_to_the_lower_passage_number() {
    let ix = index(&["x y", "z", "x y", "x y"]);
    let hits = ix.search("x", 2, &mut ix.scratch());
    assert_eq!(hits.iter().map(|h| h.doc).collect::<Vec<_>>(), [0, 2]);
    assert_eq!(hits[0].score, hits[1].score);
}

/// Rare terms first, then one term in every passage: the search skips the frequent term's
/// postings (MaxScore) and must still add its contribution to every passage it returns.
#[test]
fn pruned_search_equals_brute_force() {
    let texts: Vec<String> = (0..5000)
        .map(|i| {
            let mut t = format!("rare{} ", i % 500);
            t.push_str(&"common ".repeat(i % 7 + 1));
            t.push_str(&"filler ".repeat(i % 5));
            t
        })
        .collect();
    let ix = Bm25Index::build(&texts, Bm25Params::default()).unwrap();
    let mut scratch = ix.scratch();
    for q in [
        "rare3 common",
        "common rare42 rare7",
        "rare499 common common",
    ] {
        let mut all: Vec<Hit> = (0..texts.len() as u32)
            .map(|d| Hit {
                doc: d,
                score: ix.score_doc(q, d),
            })
            .filter(|h| h.score > 0.0)
            .collect();
        all.sort_by(|a, b| b.cmp(a));
        for k in [1, 3, 10, 25] {
            let got = ix.search(q, k, &mut scratch);
            assert_eq!(got, all[..k], "query {q:?}, k {k}");
        }
    }
    // The scratch space is clean after pruned searches: a fresh one gives the same.
    assert_eq!(
        ix.search("common", 7, &mut scratch),
        ix.search("common", 7, &mut ix.scratch())
    );
}
