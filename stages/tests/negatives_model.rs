//! Model-scored hard negatives (`sample-negatives` with `model:`) on the tiny committed
//! fixtures: the scorer agrees with the scoring library, the hard pool follows the model's
//! order without positives, `margin` uses the model's scores of the positives, and bad
//! `model` / `adapter` directories are clear errors.
#![cfg(feature = "ml")]

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};
use tsumugi_stages::device::DeviceSpec;
use tsumugi_stages::model_scorer::{ModelScorer, ModelScorerOptions};
use tsumugi_stages::ranking::bm25::{Bm25Index, Bm25Params};
use tsumugi_stages::ranking::data::{QueryGroup, group_by_query, read_records};
use tsumugi_stages::ranking::negatives::{Corpus, Method, MiningConfig, PairScorer, hard_pools};
use tsumugi_stages::ranking::passage_key;
use tsumugi_stages::score::{ScoreOptions, Scorer};
use tsumugi_stages::{Reporter, kinds};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn options(batch: usize) -> ModelScorerOptions {
    ModelScorerOptions {
        batch,
        max_length: 64,
        label: None,
    }
}

const WORDS: [&str; 16] = [
    "the", "river", "bank", "money", "cat", "sleeps", "on", "a", "sofa", "guitar", "plays", "loud",
    "music", "water", "boils", "fast",
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
    fn text(&mut self, min: usize, spread: u64) -> String {
        let len = min + self.next(spread) as usize;
        (0..len)
            .map(|_| WORDS[self.next(WORDS.len() as u64) as usize])
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `n` queries with two positives each and a corpus of 60 more passages.
fn write_data(dir: &Path, n: usize) {
    let mut rng = Lcg(11);
    let mut input = String::new();
    for q in 0..n {
        let line = json!({
            "query_text": format!("query {q} {}", rng.text(2, 3)),
            "positives": [{"doc_id": format!("p{q}a"), "text": rng.text(4, 8)},
                          {"doc_id": format!("p{q}b"), "text": rng.text(4, 8)}],
        });
        input += &line.to_string();
        input += "\n";
    }
    let mut corpus = String::new();
    for r in read_records_from(&input) {
        for p in r {
            corpus += &json!({"doc_id": p.0, "text": p.1}).to_string();
            corpus += "\n";
        }
    }
    for i in 0..60 {
        corpus += &json!({"doc_id": format!("x{i}"), "text": rng.text(3, 12)}).to_string();
        corpus += "\n";
    }
    std::fs::write(dir.join("rr.jsonl"), input).unwrap();
    std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
}

fn read_records_from(input: &str) -> Vec<Vec<(String, String)>> {
    input
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["positives"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["doc_id"].as_str().unwrap().to_string(),
                        p["text"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .collect()
}

fn groups_and_corpus(dir: &Path) -> (Vec<QueryGroup>, Corpus) {
    let groups = group_by_query(read_records(&dir.join("rr.jsonl")).unwrap());
    let corpus = tsumugi_stages::ranking::data::read_corpus(&dir.join("corpus.jsonl"))
        .unwrap()
        .into_iter()
        .collect();
    (groups, corpus)
}

#[test]
fn scores_equal_the_scoring_library() {
    let base = fixtures().join("bert-1");
    let scorer = ModelScorer::load(&base, None, DeviceSpec::Cpu, options(3)).unwrap();
    let lib = Scorer::load(
        &base,
        DeviceSpec::Cpu,
        ScoreOptions {
            batch_size: 3,
            max_length: 64,
            ..ScoreOptions::default()
        },
    )
    .unwrap();
    let mut rng = Lcg(3);
    let queries: Vec<(String, Vec<String>)> = (0..3)
        .map(|q| {
            (
                format!("query {q} {}", rng.text(1, 3)),
                (0..5 + q).map(|_| rng.text(1, 20)).collect(),
            )
        })
        .collect();
    let requests: Vec<(&str, Vec<&str>)> = queries
        .iter()
        .map(|(q, ps)| (q.as_str(), ps.iter().map(String::as_str).collect()))
        .collect();
    let many = scorer.score_many(&requests).unwrap();
    for ((q, ps), got) in requests.iter().zip(&many) {
        let one = scorer.score(q, ps).unwrap();
        let pairs: Vec<(&str, &str)> = ps.iter().map(|p| (*q, *p)).collect();
        let want = lib.score(&pairs, &mut |_| {}).unwrap();
        assert_eq!(got.len(), ps.len());
        for ((g, o), w) in got.iter().zip(&one).zip(&want) {
            assert_eq!(w.len(), 1);
            // Batches differ (across queries vs one query), so padding differs: not bit
            // for bit, but the same numbers.
            assert!((g - w[0] as f64).abs() < 1e-5, "{g} vs {}", w[0]);
            assert!((o - w[0] as f64).abs() < 1e-5, "{o} vs {}", w[0]);
        }
    }

    // With an adapter: base + LoRA, as evaluate computes it, and not the base's scores.
    let adapter = fixtures().join("lora/bert-1/adapter");
    let tuned = ModelScorer::load(&base, Some(&adapter), DeviceSpec::Cpu, options(4)).unwrap();
    let dir = tsumugi_stages::models::ModelDir::open(&base).unwrap();
    let dev = Default::default();
    let (lora, _) = tsumugi_stages::peft::load_adapter::<tsumugi_stages::device::CpuBackend>(
        &dir, &adapter, &dev,
    )
    .unwrap();
    let (q, ps) = &requests[0];
    let pairs: Vec<(&str, &str)> = ps.iter().map(|p| (*q, *p)).collect();
    let tok = tsumugi_stages::tokenize::PairTokenizer::for_model(
        &dir,
        64,
        tsumugi_stages::tokenize::Truncation::LongestFirst,
    )
    .unwrap();
    let want =
        tsumugi_stages::train::predict(&lora, &tok, &tok.encode_all(&pairs).unwrap(), 4, &dev);
    let got = tuned.score(q, ps).unwrap();
    let mut moved = 0.0f64;
    for ((g, w), b) in got.iter().zip(&want).zip(&many[0]) {
        assert!((g - w[0] as f64).abs() < 1e-5, "{g} vs {}", w[0]);
        moved = moved.max((g - b).abs());
    }
    assert!(moved > 1e-4, "the adapter changes the scores");

    // A 3-label head: `label` is required; the score is that label's log-probability.
    let nli = fixtures().join("bert-3");
    let err = ModelScorer::load(&nli, None, DeviceSpec::Cpu, options(4))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("3 labels") && err.contains("label"), "{err}");
    let three = ModelScorer::load(
        &nli,
        None,
        DeviceSpec::Cpu,
        ModelScorerOptions {
            label: Some(2),
            ..options(4)
        },
    )
    .unwrap();
    let lib3 = Scorer::load(&nli, DeviceSpec::Cpu, ScoreOptions::default()).unwrap();
    let got = three.score(q, ps).unwrap();
    let logits = lib3.score(&pairs, &mut |_| {}).unwrap();
    for (g, l) in got.iter().zip(&logits) {
        let tsumugi_stages::score::Interpreted::Probs(p) =
            tsumugi_stages::score::interpret(l, tsumugi_stages::head::HeadActivation::Sigmoid)
        else {
            panic!("probs")
        };
        assert!((g - (p[2] as f64).ln()).abs() < 1e-5, "{g} vs ln {}", p[2]);
    }
    let err = ModelScorer::load(
        &nli,
        None,
        DeviceSpec::Cpu,
        ModelScorerOptions {
            label: Some(3),
            ..options(4)
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("label 3"), "{err}");
}

#[test]
fn the_hard_pool_follows_the_model_and_margin_uses_its_positive_scores() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path(), 12);
    let (groups, corpus) = groups_and_corpus(tmp.path());
    let ix = Bm25Index::build(&corpus.texts(), Bm25Params::default()).unwrap();
    let scorer = ModelScorer::load(
        &fixtures().join("bert-1"),
        None,
        DeviceSpec::Cpu,
        options(8),
    )
    .unwrap();
    let range_max = 20;
    // BM25's candidates: the whole list without positives, in BM25 order.
    let all = MiningConfig {
        method: Method::Bm25,
        range_min: 0,
        range_max,
        ..MiningConfig::default()
    };
    let bm25 = hard_pools(&ix, &corpus, &groups, &all, None, &|_| true).unwrap();
    // The model's scores of those candidates and of the positives.
    let model_order: Vec<Vec<(u32, f64)>> = groups
        .iter()
        .zip(&bm25)
        .map(|(g, p)| {
            let texts: Vec<&str> = p
                .candidates
                .iter()
                .map(|&d| corpus.text(d as usize))
                .collect();
            let s = scorer.score(&g.query_text, &texts).unwrap();
            let mut v: Vec<(u32, f64)> = p.candidates.iter().copied().zip(s).collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1));
            v
        })
        .collect();
    let positive_min: Vec<f64> = groups
        .iter()
        .map(|g| {
            let texts: Vec<&str> = g.positives.iter().map(|p| p.text.as_str()).collect();
            scorer
                .score(&g.query_text, &texts)
                .unwrap()
                .into_iter()
                .fold(f64::INFINITY, f64::min)
        })
        .collect();

    assert!(
        bm25.iter()
            .zip(&model_order)
            .any(|(b, m)| b.candidates != m.iter().map(|&(d, _)| d).collect::<Vec<_>>()),
        "the model must re-order something for this test to mean anything"
    );

    // Ordered by the model, ranks range_min.. kept, never a positive.
    let cfg = MiningConfig {
        range_min: 3,
        ..all
    };
    let calls = Mutex::new(Vec::new());
    let pools = hard_pools(&ix, &corpus, &groups, &cfg, Some(&scorer), &|done| {
        calls.lock().unwrap().push(done);
        true
    })
    .unwrap();
    assert_eq!(calls.into_inner().unwrap().last(), Some(&groups.len()));
    for ((g, pool), order) in groups.iter().zip(&pools).zip(&model_order) {
        let want: Vec<u32> = order.iter().skip(3).map(|&(d, _)| d).collect();
        assert_eq!(pool.candidates, want, "query {:?}", g.query_text);
        assert!(order.windows(2).all(|w| w[0].1 >= w[1].1));
        let ids: HashSet<&str> = g.positives.iter().map(|p| p.doc_id.as_str()).collect();
        let texts: HashSet<String> = g.positives.iter().map(|p| passage_key(&p.text)).collect();
        for &d in &pool.candidates {
            assert!(!ids.contains(corpus.doc_id(d as usize)));
            assert!(!texts.contains(&passage_key(corpus.text(d as usize))));
        }
    }

    // margin: dropped = in-range candidates scoring ≥ (the model's lowest positive score −
    // margin). A margin from the data, so that some are dropped and some kept.
    let mut gaps: Vec<f64> = model_order
        .iter()
        .zip(&positive_min)
        .flat_map(|(o, &p)| o.iter().skip(3).map(move |&(_, s)| p - s))
        .collect();
    gaps.sort_by(f64::total_cmp);
    let margin = gaps[gaps.len() / 2];
    let cfg = MiningConfig {
        range_min: 3,
        margin: Some(margin),
        ..all
    };
    let pools = hard_pools(&ix, &corpus, &groups, &cfg, Some(&scorer), &|_| true).unwrap();
    let (mut kept, mut dropped) = (0, 0);
    for ((pool, order), &p) in pools.iter().zip(&model_order).zip(&positive_min) {
        let t = p - margin;
        let want: Vec<u32> = order
            .iter()
            .skip(3)
            .filter(|&&(_, s)| s < t)
            .map(|&(d, _)| d)
            .collect();
        assert_eq!(pool.candidates, want);
        assert_eq!(
            pool.dropped_by_margin,
            order.len().saturating_sub(3) - want.len()
        );
        kept += want.len();
        dropped += pool.dropped_by_margin;
    }
    assert!(kept > 0 && dropped > 0, "kept {kept}, dropped {dropped}");

    // Cancellation between batches of queries.
    let err = hard_pools(&ix, &corpus, &groups, &cfg, Some(&scorer), &|_| false).unwrap_err();
    assert!(err.to_string().contains("cancelled"));
}

#[derive(Default)]
struct Recorder {
    lines: Mutex<Vec<String>>,
    progress: Mutex<Vec<(u64, Option<u64>, String)>>,
}

impl Reporter for Recorder {
    fn progress(&self, done: u64, total: Option<u64>, message: &str) {
        self.progress
            .lock()
            .unwrap()
            .push((done, total, message.into()));
    }
    fn metric(&self, _: &str, _: Option<u64>, _: f64) {}
    fn log(&self, line: &str) {
        self.lines.lock().unwrap().push(line.into());
    }
    fn cancelled(&self) -> bool {
        false
    }
}

fn run(dir: &Path, with: Value, rep: &Recorder) -> anyhow::Result<BTreeMap<String, String>> {
    let info = kinds::kind("sample-negatives").unwrap();
    assert!(info.input_fields.contains(&"model") && info.input_fields.contains(&"adapter"));
    Ok(support::read_outputs(&support::run_kind(
        "sample-negatives",
        dir,
        "negatives",
        &with,
        rep,
    )?))
}

#[test]
fn the_stage_mines_with_a_model_and_names_bad_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir, 10);
    let base = fixtures().join("bert-1");
    let adapter = fixtures().join("lora/bert-1/adapter");
    let with = |extra: Value| {
        let mut w = json!({"input": "rr.jsonl", "corpus": "corpus.jsonl", "method": "bm25",
                           "k": 4, "range_min": 2, "range_max": 15, "epochs": 2,
                           "batch": 8, "max_length": 64});
        for (k, v) in extra.as_object().unwrap() {
            w[k] = v.clone();
        }
        w
    };

    // The stage's hard negatives are drawn from the model's pools (BM25's differ).
    let rep = Recorder::default();
    let out = run(dir, with(json!({"model": base})), &rep).unwrap();
    let bm25 = run(
        dir,
        json!({"input": "rr.jsonl", "corpus": "corpus.jsonl", "method": "bm25", "k": 4,
               "range_min": 2, "range_max": 15, "epochs": 2}),
        &Recorder::default(),
    )
    .unwrap();
    assert_ne!(out["train"], bm25["train"]);
    let (groups, corpus) = groups_and_corpus(dir);
    let ix = Bm25Index::build(&corpus.texts(), Bm25Params::default()).unwrap();
    let scorer = ModelScorer::load(&base, None, DeviceSpec::Cpu, options(8)).unwrap();
    let cfg = MiningConfig {
        method: Method::Bm25,
        k: 4,
        range_min: 2,
        range_max: 15,
        ..MiningConfig::default()
    };
    let pools = hard_pools(&ix, &corpus, &groups, &cfg, Some(&scorer), &|_| true).unwrap();
    let lines: Vec<Value> = out["train"]
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2 * groups.len());
    for (i, line) in lines.iter().enumerate() {
        let (g, pool) = (&groups[i % groups.len()], &pools[i % groups.len()]);
        assert_eq!(line["query_text"], g.query_text.as_str());
        let pool_ids: HashSet<&str> = pool
            .candidates
            .iter()
            .map(|&d| corpus.doc_id(d as usize))
            .collect();
        for n in line["negatives"].as_array().unwrap() {
            assert!(pool_ids.contains(n["doc_id"].as_str().unwrap()), "{n}");
        }
    }
    assert!(
        rep.progress
            .lock()
            .unwrap()
            .iter()
            .any(|(d, t, m)| m.contains("scoring") && *t == Some(10) && *d == 10)
    );
    // With an adapter it runs too (and scores differently).
    let tuned = run(
        dir,
        with(json!({"model": base, "adapter": adapter})),
        &Recorder::default(),
    )
    .unwrap();
    assert_eq!(tuned["train"].lines().count(), 2 * groups.len());

    // Errors name the field and the path.
    let err = |extra: Value| {
        format!(
            "{:#}",
            run(dir, with(extra), &Recorder::default()).unwrap_err()
        )
    };
    let e = err(json!({"model": "models/none"}));
    assert!(e.contains("`model`") && e.contains("models/none"), "{e}");
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let e = err(json!({"model": "empty"}));
    assert!(
        e.contains("`model`") && e.contains("empty") && e.contains("config.json"),
        "{e}"
    );
    let e = err(json!({"model": base, "adapter": "empty"}));
    assert!(e.contains("`adapter`") && e.contains("empty"), "{e}");
    let e = err(json!({"model": 3}));
    assert!(e.contains("model: expected a path"), "{e}");
    let e = err(json!({"model": fixtures().join("bert-3")}));
    assert!(e.contains("3 labels") && e.contains("`label"), "{e}");
    // An encoder without a classification head is refused with the reason.
    let headless = dir.join("headless");
    std::fs::create_dir_all(&headless).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(base.join(f), headless.join(f)).unwrap();
    }
    let bytes = std::fs::read(base.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("classifier"))
        .collect();
    safetensors::serialize_to_file(kept, None, &headless.join("model.safetensors")).unwrap();
    let e = err(json!({"model": "headless"}));
    assert!(
        e.contains("`model`") && e.contains("headless") && e.contains("no classification head"),
        "{e}"
    );
    let e = err(json!({"model": base, "method": "random"}));
    assert!(e.contains("method: random"), "{e}");
    let e = format!(
        "{:#}",
        run(
            dir,
            json!({"input": "rr.jsonl", "adapter": adapter, "batch": 4}),
            &Recorder::default()
        )
        .unwrap_err()
    );
    assert!(
        e.contains("`adapter`, `batch`") && e.contains("only apply with `model`"),
        "{e}"
    );
}
