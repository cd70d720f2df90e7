//! The reranker data reader, the query-level split and the `sample-negatives` kind.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Value, json};
use tsumugi_stages::ranking::bm25::{Bm25Index, Bm25Params};
use tsumugi_stages::ranking::data::{
    Passage, QueryGroup, SplitFractions, group_by_query, read_records, split_by_query,
};
use tsumugi_stages::ranking::negatives::{
    Corpus, HardPool, Method, MiningConfig, PairScorer, draw, hard_pools,
};
use tsumugi_stages::ranking::normalize;
use tsumugi_stages::{Reporter, kinds};

#[derive(Default)]
struct Recorder {
    lines: Mutex<Vec<String>>,
}

impl Reporter for Recorder {
    fn progress(&self, _: u64, _: Option<u64>, _: &str) {}
    fn metric(&self, _: &str, _: Option<u64>, _: f64) {}
    fn log(&self, line: &str) {
        self.lines.lock().unwrap().push(line.into());
    }
    fn cancelled(&self) -> bool {
        false
    }
}

/// Runs the kind as the engine would; returns each output's text.
fn run(dir: &Path, with: Value) -> anyhow::Result<BTreeMap<String, String>> {
    let info = kinds::kind("sample-negatives").expect("registered");
    assert_eq!(info.input_fields, ["input", "corpus", "model", "adapter"]);
    Ok(support::read_outputs(&support::run_kind(
        "sample-negatives",
        dir,
        "negatives",
        &with,
        &Recorder::default(),
    )?))
}

fn lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Words shared across topics, so BM25 ranks many passages for every query.
const COMMON: [&str; 12] = [
    "system", "data", "model", "query", "search", "index", "score", "user", "train", "rank",
    "text", "token",
];

struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn passage(rng: &mut Lcg, topic: usize) -> String {
    let len = 8 + rng.next(8) as usize;
    (0..len)
        .map(|_| {
            if rng.next(3) == 0 {
                format!("topic{topic}")
            } else {
                COMMON[rng.next(COMMON.len() as u64) as usize].to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `n` queries over 20 topics, each with two positives, one given negative, plus
/// whitespace/case traps: query 1 repeats query 0 with other spacing, and the corpus holds a
/// copy of a positive's text under another doc_id.
fn fixture(dir: &Path, n: usize) {
    let mut rng = Lcg(7);
    let mut input = String::new();
    let mut corpus = String::new();
    for q in 0..n {
        let topic = q % 20;
        let query = if q == 1 {
            "  query   0 topic0\tsearch ".to_string()
        } else {
            format!("query {q} topic{topic} search")
        };
        let p1 = passage(&mut rng, topic);
        let p2 = passage(&mut rng, topic);
        let neg = passage(&mut rng, (topic + 1) % 20);
        let line = json!({
            "query_text": query,
            "positives": [{"doc_id": format!("p{q}a"), "text": p1}, {"doc_id": format!("p{q}b"), "text": p2}],
            "negatives": [{"doc_id": format!("n{q}"), "text": neg}],
            "source_chunk": format!("chunk{q}"),
            "meta": {"domain": "test"}
        });
        input.push_str(&line.to_string());
        input.push('\n');
        for (id, t) in [
            (format!("p{q}a"), &p1),
            (format!("p{q}b"), &p2),
            (format!("n{q}"), &neg),
        ] {
            corpus.push_str(&json!({"doc_id": id, "text": t}).to_string());
            corpus.push('\n');
        }
        if q == 2 {
            // The same text as a positive of query 2, spaced differently, under another id.
            let copy = format!(" {}  ", p1.replace(' ', "   "));
            corpus.push_str(&json!({"doc_id": "copy-of-p2a", "text": copy}).to_string());
            corpus.push('\n');
        }
    }
    for i in 0..200 {
        corpus.push_str(
            &json!({"doc_id": format!("x{i}"), "text": passage(&mut rng, i % 20)}).to_string(),
        );
        corpus.push('\n');
    }
    std::fs::write(dir.join("rr.jsonl"), input).unwrap();
    std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
}

/// Every output group: no positive among its negatives (by id, by normalised text), no
/// duplicate negative, the positives of the query (merged over its lines).
fn check_groups(out: &str, k: usize) {
    for g in lines(out) {
        let pos_ids: HashSet<&str> = g["positives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["doc_id"].as_str().unwrap())
            .collect();
        let pos_texts: HashSet<String> = g["positives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| normalize(p["text"].as_str().unwrap()))
            .collect();
        let negs = g["negatives"].as_array().unwrap();
        assert_eq!(negs.len(), k, "{g}");
        let mut seen = HashSet::new();
        for n in negs {
            let id = n["doc_id"].as_str().unwrap();
            assert!(!pos_ids.contains(id), "positive {id} among negatives: {g}");
            assert!(
                !pos_texts.contains(&normalize(n["text"].as_str().unwrap())),
                "a positive's text among negatives ({id}): {g}"
            );
            assert!(seen.insert(id.to_string()), "duplicate negative {id}");
        }
    }
}

#[test]
fn negatives_never_contain_a_positive() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 60);
    for method in ["bm25", "random", "mix"] {
        for corpus in [Some("corpus.jsonl"), None] {
            let mut with = json!({"input": "rr.jsonl", "method": method, "k": 6, "range_min": 0,
                                  "range_max": 40, "epochs": 2});
            if let Some(c) = corpus {
                with["corpus"] = c.into();
            }
            let out = run(dir.path(), with).unwrap();
            check_groups(&out["train"], 6);
            // 60 lines, but lines 0 and 1 are one query.
            assert_eq!(lines(&out["train"]).len(), 2 * 59, "{method}");
        }
    }
    // The merged query keeps both lines' positives, so neither line's positives can be
    // drawn as the other's negatives.
    let out = run(
        dir.path(),
        json!({"input": "rr.jsonl", "corpus": "corpus.jsonl"}),
    )
    .unwrap();
    let first = &lines(&out["train"])[0];
    assert_eq!(first["query_text"], "query 0 topic0 search");
    let ids: Vec<&str> = first["positives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["doc_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["p0a", "p0b", "p1a", "p1b"]);
}

#[test]
fn a_corpus_with_too_few_passages_gives_short_groups_not_positives() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rr.jsonl"),
        "{\"query_text\":\"a b\",\"positives\":[{\"doc_id\":\"1\",\"text\":\"a b c\"}],\"negatives\":[{\"doc_id\":\"2\",\"text\":\"a d\"}]}\n",
    )
    .unwrap();
    let out = run(
        dir.path(),
        json!({"input": "rr.jsonl", "k": 4, "range_min": 0}),
    )
    .unwrap();
    let g = &lines(&out["train"])[0];
    assert_eq!(g["negatives"], json!([{"doc_id": "2", "text": "a d"}]));
    let stats: Value = serde_json::from_str(&out["stats"]).unwrap();
    assert_eq!(stats["groups_short_of_k"], 3);
}

#[test]
fn draws_are_reproducible_per_epoch_and_differ_between_epochs() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 40);
    let with = json!({"input": "rr.jsonl", "corpus": "corpus.jsonl", "method": "mix", "k": 6,
                      "range_min": 2, "range_max": 60, "epochs": 3, "seed": 5});
    let a = run(dir.path(), with.clone()).unwrap();
    let b = run(dir.path(), with.clone()).unwrap();
    assert_eq!(a, b, "same inputs, same bytes");

    let groups = lines(&a["train"]);
    assert_eq!(groups.len(), 3 * 39);
    let by_epoch = |e: u64| -> HashMap<String, Vec<String>> {
        groups
            .iter()
            .filter(|g| g["epoch"] == e)
            .map(|g| {
                let negs = g["negatives"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n["doc_id"].as_str().unwrap().to_string())
                    .collect();
                (g["query_text"].as_str().unwrap().to_string(), negs)
            })
            .collect()
    };
    let (e0, e1, e2) = (by_epoch(0), by_epoch(1), by_epoch(2));
    for (q, negs) in &e0 {
        assert_ne!(negs, &e1[q], "epoch 0 and 1 of {q:?}");
        assert_ne!(&e1[q], &e2[q], "epoch 1 and 2 of {q:?}");
    }

    // More epochs leave the earlier ones unchanged: epoch k depends on (seed, epoch, query).
    let mut more = with.clone();
    more["epochs"] = 4.into();
    let c = run(dir.path(), more).unwrap();
    assert!(c["train"].starts_with(&a["train"]));

    let mut other = with;
    other["seed"] = 6.into();
    let d = run(dir.path(), other).unwrap();
    assert_ne!(d["train"], a["train"], "another seed, other draws");
}

fn groups_of(dir: &Path) -> Vec<QueryGroup> {
    group_by_query(read_records(&dir.join("rr.jsonl")).unwrap())
}

fn corpus_of(dir: &Path) -> Corpus {
    tsumugi_stages::ranking::data::read_corpus(&dir.join("corpus.jsonl"))
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn hard_negatives_come_from_the_rank_range() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 30);
    let groups = groups_of(dir.path());
    let corpus = corpus_of(dir.path());
    let ix = Bm25Index::build(&corpus.texts(), Bm25Params::default()).unwrap();
    let cfg = MiningConfig {
        method: Method::Bm25,
        k: 3,
        range_min: 3,
        range_max: 9,
        ..MiningConfig::default()
    };
    let pools = hard_pools(&ix, &corpus, &groups, &cfg, None, &|_| true).unwrap();
    for (g, pool) in groups.iter().zip(&pools) {
        // The BM25 list without positives, by hand.
        let pos: HashSet<String> = g.positives.iter().map(|p| normalize(&p.text)).collect();
        let ids: HashSet<&str> = g.positives.iter().map(|p| p.doc_id.as_str()).collect();
        let ranked: Vec<u32> = ix
            .search(&g.query_text, corpus.len(), &mut ix.scratch())
            .into_iter()
            .map(|h| h.doc)
            .filter(|&d| {
                !ids.contains(corpus.doc_id(d as usize))
                    && !pos.contains(&normalize(corpus.text(d as usize)))
            })
            .collect();
        assert_eq!(pool.candidates, ranked[3..9], "{:?}", g.query_text);
        for epoch in 0..3 {
            let d = draw(&corpus, g, pool, &cfg, epoch);
            assert_eq!((d.hard, d.shortfall, d.negatives.len()), (3, 0, 3));
            assert!(d.negatives.iter().all(|n| ranked[3..9].contains(n)));
        }
    }
}

#[test]
fn margin_drops_candidates_close_to_a_positive() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 30);
    let groups = groups_of(dir.path());
    let corpus = corpus_of(dir.path());
    let ix = Bm25Index::build(&corpus.texts(), Bm25Params::default()).unwrap();
    let base = MiningConfig {
        method: Method::Bm25,
        range_min: 0,
        range_max: 50,
        ..MiningConfig::default()
    };
    let plain = hard_pools(&ix, &corpus, &groups, &base, None, &|_| true).unwrap();
    let margin = 0.3;
    let filtered = hard_pools(
        &ix,
        &corpus,
        &groups,
        &MiningConfig {
            margin: Some(margin),
            ..base
        },
        None,
        &|_| true,
    )
    .unwrap();
    let mut dropped = 0;
    for ((g, p), f) in groups.iter().zip(&plain).zip(&filtered) {
        let min_pos = g
            .positives
            .iter()
            .map(|p| ix.score_text(&g.query_text, &p.text))
            .fold(f64::INFINITY, f64::min);
        let keep: Vec<u32> = p
            .candidates
            .iter()
            .copied()
            .filter(|&d| ix.score_doc(&g.query_text, d) < min_pos - margin)
            .collect();
        assert_eq!(f.candidates, keep);
        assert_eq!(f.dropped_by_margin, p.candidates.len() - keep.len());
        dropped += f.dropped_by_margin;
    }
    assert!(dropped > 0, "the fixture must exercise the filter");
}

#[test]
fn mix_takes_its_share_from_the_pool_and_fills_shortfalls_with_random() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 20);
    let groups = groups_of(dir.path());
    let corpus = corpus_of(dir.path());
    let cfg = MiningConfig {
        method: Method::Mix,
        k: 8,
        hard_ratio: 0.25,
        ..MiningConfig::default()
    };
    assert_eq!(cfg.n_hard(), 2);
    let pool = HardPool {
        candidates: (0..10)
            .filter(|&d| {
                !groups[0]
                    .positives
                    .iter()
                    .any(|p| p.doc_id == corpus.doc_id(d as usize))
            })
            .collect(),
        dropped_by_margin: 0,
    };
    let d = draw(&corpus, &groups[0], &pool, &cfg, 0);
    assert_eq!((d.hard, d.shortfall, d.negatives.len()), (2, 0, 8));
    assert!(d.negatives[..2].iter().all(|n| pool.candidates.contains(n)));
    // A pool of one: one hard, one short, seven random.
    let tiny = HardPool {
        candidates: vec![pool.candidates[0]],
        dropped_by_margin: 0,
    };
    let d = draw(&corpus, &groups[0], &tiny, &cfg, 0);
    assert_eq!((d.hard, d.shortfall, d.negatives.len()), (1, 1, 8));

    // Through the kind: 2 hard per group and epoch with a deep enough range.
    let out = run(
        dir.path(),
        json!({"input": "rr.jsonl", "corpus": "corpus.jsonl", "k": 8, "hard_ratio": 0.25,
               "range_min": 0, "range_max": 30, "epochs": 2}),
    )
    .unwrap();
    let stats: Value = serde_json::from_str(&out["stats"]).unwrap();
    let n = 19 * 2;
    assert_eq!(stats["hard_negatives"], 2 * n);
    assert_eq!(stats["random_negatives"], 6 * n);
    assert_eq!(stats["hard_shortfall"], 0);
}

/// A stand-in for the cross-encoder: prefers short passages.
struct ByLength;
impl PairScorer for ByLength {
    fn score(&self, _q: &str, passages: &[&str]) -> anyhow::Result<Vec<f64>> {
        Ok(passages.iter().map(|p| -(p.len() as f64)).collect())
    }
}

#[test]
fn a_scorer_reorders_the_bm25_candidates() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 10);
    let groups = groups_of(dir.path());
    let corpus = corpus_of(dir.path());
    let ix = Bm25Index::build(&corpus.texts(), Bm25Params::default()).unwrap();
    let cfg = MiningConfig {
        method: Method::Bm25,
        range_min: 0,
        range_max: 20,
        ..MiningConfig::default()
    };
    let bm25 = hard_pools(&ix, &corpus, &groups, &cfg, None, &|_| true).unwrap();
    let model = hard_pools(&ix, &corpus, &groups, &cfg, Some(&ByLength), &|_| true).unwrap();
    for (b, m) in bm25.iter().zip(&model) {
        let mut same: Vec<u32> = b.candidates.clone();
        same.sort_by_key(|&d| corpus.text(d as usize).len());
        assert_eq!(
            m.candidates, same,
            "the same candidates, in the scorer's order"
        );
    }
}

// With `ml`, tests/negatives_model.rs runs the model-scored path.
#[cfg(not(feature = "ml"))]
#[test]
fn model_scored_negatives_need_the_ml_build() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 5);
    let err = run(
        dir.path(),
        json!({"input": "rr.jsonl", "model": "models/minilm"}),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("model-scored negatives need a build with the ml feature"),
        "{err}"
    );
}

#[test]
fn the_split_is_by_query_without_leakage() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 200);
    let with = json!({"input": "rr.jsonl", "corpus": "corpus.jsonl", "method": "random", "k": 2,
                      "epochs": 2, "split": {"valid": 0.1, "test": 0.2}, "seed": 3});
    let out = run(dir.path(), with.clone()).unwrap();
    let queries = |s: &str| -> HashSet<String> {
        lines(s)
            .iter()
            .map(|g| normalize(g["query_text"].as_str().unwrap()))
            .collect()
    };
    let (tr, va, te) = (
        queries(&out["train"]),
        queries(&out["valid"]),
        queries(&out["test"]),
    );
    // 200 lines, 199 distinct queries (line 1 repeats line 0 with other whitespace).
    assert_eq!((tr.len(), va.len(), te.len()), (139, 20, 40));
    assert!(tr.is_disjoint(&va) && tr.is_disjoint(&te) && va.is_disjoint(&te));
    // Validation and test are one fixed draw (epoch 0); train has every epoch.
    assert_eq!(lines(&out["valid"]).len(), 20);
    assert!(lines(&out["valid"]).iter().all(|g| g["epoch"] == 0));
    assert_eq!(lines(&out["train"]).len(), 2 * 139);
    let stats: Value = serde_json::from_str(&out["stats"]).unwrap();
    assert_eq!(stats["queries_test"], 40);

    // The library function: a query's side depends on its normalised text, not its spelling
    // or its position in the file.
    let groups = group_by_query(read_records(&dir.path().join("rr.jsonl")).unwrap());
    let f = SplitFractions {
        valid: 0.1,
        test: 0.2,
    };
    let [a, b, c] = split_by_query(groups.clone(), |g| g.key.as_str(), f, 3);
    let mut rev = groups;
    rev.reverse();
    let [ra, rb, rc] = split_by_query(rev, |g| g.key.as_str(), f, 3);
    let keys = |v: &[QueryGroup]| v.iter().map(|g| g.key.clone()).collect::<HashSet<_>>();
    assert_eq!(
        (keys(&a), keys(&b), keys(&c)),
        (keys(&ra), keys(&rb), keys(&rc))
    );
    assert!(!keys(&a).is_empty() && !keys(&b).is_empty() && !keys(&c).is_empty());
}

#[test]
fn multi_positive_lines_merge_by_normalised_query() {
    let groups = group_by_query(vec![
        record("What is BM25?", &[("a", "x")], 1),
        record("  What is\tBM25? ", &[("b", "y"), ("a", "x")], 2),
        record("what is bm25?", &[("c", "z")], 3),
    ]);
    assert_eq!(
        groups.len(),
        2,
        "case is part of the identity, whitespace is not"
    );
    assert_eq!(groups[0].query_text, "What is BM25?");
    assert_eq!(groups[0].lines, [1, 2]);
    let ids: Vec<&str> = groups[0]
        .positives
        .iter()
        .map(|p| p.doc_id.as_str())
        .collect();
    assert_eq!(ids, ["a", "b"]);
}

fn record(
    q: &str,
    pos: &[(&str, &str)],
    line: usize,
) -> tsumugi_stages::ranking::data::RerankerRecord {
    tsumugi_stages::ranking::data::RerankerRecord {
        query_text: q.into(),
        positives: pos
            .iter()
            .map(|(i, t)| Passage {
                doc_id: i.to_string(),
                text: t.to_string(),
            })
            .collect(),
        negatives: Vec::new(),
        source_chunk: None,
        meta: None,
        line,
    }
}

#[test]
fn bad_input_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 7] = [
        (
            "{\"positives\":[{\"doc_id\":\"a\",\"text\":\"t\"}]}",
            "field `query_text` is missing",
        ),
        (
            "{\"query_text\":\"q\",\"positives\":[{\"doc_id\":\"a\",\"text\":\"t\"},{\"doc_id\":\"b\",\"text\":3}]}",
            "field `positives[1].text`: expected a string, found a number",
        ),
        (
            "{\"query_text\":\"q\",\"positives\":[]}",
            "field `positives`: expected at least one passage",
        ),
        (
            "{\"query_text\":\"q\",\"positives\":[{\"text\":\"t\"}]}",
            "field `positives[0].doc_id` is missing",
        ),
        (
            "{\"query_text\":\"q\",\"positives\":[{\"doc_id\":\"a\",\"text\":\"t\"}],\"negatives\":{}}",
            "field `negatives`: expected an array",
        ),
        (
            "{\"query_text\":\"q\",\"positives\":[{\"doc_id\":1.5,\"text\":\"t\"}]}",
            "expected a string or an integer",
        ),
        (
            "{\"query_text\": \"q\",",
            "expected one JSON object per line",
        ),
    ];
    let good = "{\"query_text\":\"ok\",\"positives\":[{\"doc_id\":7,\"text\":\"fine\"}]}";
    for (bad, want) in cases {
        std::fs::write(dir.path().join("rr.jsonl"), format!("{good}\n\n{bad}\n")).unwrap();
        let err = run(dir.path(), json!({"input": "rr.jsonl"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("rr.jsonl:3: ") && err.contains(want), "{err}");
    }
    std::fs::write(dir.path().join("rr.jsonl"), format!("{good}\n")).unwrap();
    std::fs::write(
        dir.path().join("c.jsonl"),
        "{\"doc_id\":\"a\",\"text\":\"x\"}\n{\"doc_id\":\"a\",\"text\":\"y\"}\n",
    )
    .unwrap();
    let err = run(
        dir.path(),
        json!({"input": "rr.jsonl", "corpus": "c.jsonl"}),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("c.jsonl:2: doc_id `a` repeats (first on line 1)"),
        "{err}"
    );
    std::fs::write(dir.path().join("empty.jsonl"), "\n").unwrap();
    let err = run(dir.path(), json!({"input": "empty.jsonl"}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no records"), "{err}");
    let err = run(dir.path(), json!({"input": "missing.jsonl"}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.jsonl: cannot open"), "{err}");
}

#[test]
fn bad_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 3);
    for (with, want) in [
        (
            json!({"input": "rr.jsonl", "range_min": 50, "range_max": 50}),
            "range_min (50) must be below range_max (50)",
        ),
        (
            json!({"input": "rr.jsonl", "method": "bm25", "hard_ratio": 0.3}),
            "`hard_ratio` applies to `method: mix` only",
        ),
        (json!({"input": "rr.jsonl", "k": 0}), "k must be at least 1"),
        (
            json!({"input": "rr.jsonl", "hard_ratio": 1.5}),
            "hard_ratio must lie in [0, 1]",
        ),
        (
            json!({"input": "rr.jsonl", "epochs": 0}),
            "`epochs` must be at least 1",
        ),
        (
            json!({"input": "rr.jsonl", "method": "dense"}),
            "method: expected one of: bm25, random, mix, found \"dense\"",
        ),
        (
            json!({"input": "rr.jsonl", "negatives": 3}),
            "unknown field `negatives`",
        ),
        (
            json!({"input": "rr.jsonl", "split": {"valid": 0.7, "test": 0.7}}),
            "at most 1",
        ),
        (
            json!({"input": "rr.jsonl", "bm25": {"b": 2}}),
            "b must lie in [0, 1]",
        ),
        (
            json!({"input": "rr.jsonl", "method": "random", "model": "m"}),
            "draws none",
        ),
    ] {
        let err = run(dir.path(), with.clone()).unwrap_err().to_string();
        assert!(err.contains(want), "{with}: {err}");
    }
}

#[test]
fn huge_ranges_and_k_do_not_overflow() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 5);
    let out = run(
        dir.path(),
        json!({"input": "rr.jsonl", "corpus": "corpus.jsonl", "method": "bm25", "k": 4,
               "range_min": 0, "range_max": usize::MAX, "epochs": 1}),
    )
    .unwrap();
    check_groups(&out["train"], 4);
    let out = run(
        dir.path(),
        json!({"input": "rr.jsonl", "k": 1_000_000, "epochs": 1}),
    )
    .unwrap();
    let stats: Value = serde_json::from_str(&out["stats"]).unwrap();
    assert_eq!(
        stats["groups_short_of_k"], 4,
        "every group gets what the corpus has"
    );
}

/// Japanese end to end: BM25 over character bigrams finds the passage about the same
/// place as the hardest negative, and never the positive written with other spacing.
#[test]
fn japanese_queries_get_bigram_hard_negatives() {
    let dir = tempfile::tempdir().unwrap();
    let rec = json!({"query_text": "東京の天気は？",
        "positives": [{"doc_id": "p", "text": "東京の天気は晴れです。"}],
        "negatives": [{"doc_id": "copy", "text": "東京の天気は　晴れです。 "},
                      {"doc_id": "near", "text": "東京の明日の天気は雨です。"},
                      {"doc_id": "far1", "text": "大阪のたこ焼きはおいしい。"},
                      {"doc_id": "far2", "text": "富士山は日本一高い山です。"}]});
    std::fs::write(dir.path().join("rr.jsonl"), format!("{rec}\n")).unwrap();
    let out = run(
        dir.path(),
        json!({"input": "rr.jsonl", "method": "bm25", "k": 1, "range_min": 0, "range_max": 1,
               "epochs": 2}),
    )
    .unwrap();
    for g in lines(&out["train"]) {
        // "copy" is the positive with an ideographic space inserted: still the positive.
        assert_eq!(g["negatives"][0]["doc_id"], "near", "{g}");
    }
}
