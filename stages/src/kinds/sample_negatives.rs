//! `sample-negatives`: ranking groups (one query, one positive, k negatives) from seed 003's
//! JSONL, split by query, with BM25 hard negatives and random negatives re-drawn per epoch.
//!
//! ```yaml
//! groups:
//!   uses: sample-negatives
//!   with:
//!     input: data/rerank.jsonl     # {query_text, positives:[{doc_id,text}], negatives:[…], source_chunk, meta}
//!     corpus: data/passages.jsonl  # optional extra passages {doc_id, text}
//!     split: {dev: 0.1}            # by query: meta.query_id if present, else query_text
//!     epochs: 3                    # train draws written, one per epoch
//!     hard: 4                      # BM25 negatives per group, drawn from ranks [range_min, range_max)
//!     range_min: 0
//!     range_max: 50
//!     random: 4                    # uniform negatives from the whole corpus
//!     seed: 13
//! ```
//! The corpus is every positive and given negative of the input plus `corpus`, by
//! `doc_id` (the first text seen for an id wins). A query's positives are never drawn as
//! its negatives. The negatives of one query and epoch are shared by its positives (the
//! multi-positive losses need one set), given negatives are kept in every group
//! (`keep_given: false` drops them). Outputs: `train.jsonl` (all epochs, `epoch` field),
//! `dev.jsonl` (epoch 0), `dev_pairs.jsonl` (the dev queries as build-pairs rows, positives
//! label 1 and negatives 0, for the ranking metrics), `stats.json`. Hard negatives mined by
//! a model's scores need the burn model and are not in this version.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use super::build_pairs::write_atomic;
use crate::contract::{Reporter, Stage, StageInput};
use crate::kinds::KindInfo;
use crate::negatives::{Bm25Index, Bm25Params, draw};

/// The `sample-negatives` kind.
pub struct SampleNegatives;

/// Its descriptor; bump `version` when the same input may give other bytes.
pub const INFO: KindInfo = KindInfo {
    name: "sample-negatives",
    version: 1,
    summary: "ranking groups from query/positives/negatives JSONL: split by query, BM25 hard + random negatives per epoch",
    input_fields: &["input", "corpus"],
    outputs: &[
        ("train", "train.jsonl"),
        ("dev", "dev.jsonl"),
        ("dev_pairs", "dev_pairs.jsonl"),
        ("stats", "stats.json"),
    ],
    metrics: Some("stats"),
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    input: PathBuf,
    corpus: Option<PathBuf>,
    split: Option<Split>,
    #[serde(default = "one")]
    epochs: u64,
    #[serde(default)]
    hard: usize,
    #[serde(default)]
    range_min: usize,
    #[serde(default = "fifty")]
    range_max: usize,
    #[serde(default)]
    random: usize,
    #[serde(default = "yes")]
    keep_given: bool,
    #[serde(default)]
    seed: u64,
}

fn one() -> u64 {
    1
}
fn fifty() -> usize {
    50
}
fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Split {
    #[serde(default)]
    dev: f64,
}

#[derive(Debug, Clone, Deserialize)]
struct Doc {
    doc_id: String,
    text: String,
}

#[derive(Debug, Deserialize)]
struct QueryLine {
    query_text: String,
    positives: Vec<Doc>,
    #[serde(default)]
    negatives: Vec<Doc>,
    #[serde(default)]
    meta: Option<Value>,
}

struct Query {
    key: String,
    text: String,
    /// Corpus indices.
    positives: Vec<usize>,
    given: Vec<usize>,
}

/// Passages by index, and the index of each doc_id.
#[derive(Default)]
struct Corpus {
    ids: Vec<String>,
    texts: Vec<String>,
    by_id: HashMap<String, usize>,
}

impl Corpus {
    fn add(&mut self, d: &Doc) -> usize {
        if let Some(&i) = self.by_id.get(&d.doc_id) {
            return i;
        }
        self.ids.push(d.doc_id.clone());
        self.texts.push(d.text.clone());
        self.by_id.insert(d.doc_id.clone(), self.ids.len() - 1);
        self.ids.len() - 1
    }

    fn doc(&self, i: usize, kind: Option<&str>) -> Value {
        match kind {
            Some(k) => json!({"doc_id": self.ids[i], "text": self.texts[i], "kind": k}),
            None => json!({"doc_id": self.ids[i], "text": self.texts[i]}),
        }
    }
}

fn read_lines(path: &Path, mut each: impl FnMut(usize, &str) -> Result<()>) -> Result<()> {
    let file = File::open(path)
        .with_context(|| format!("sample-negatives: cannot open {}", path.display()))?;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| anyhow!("{}:{}: {e}", path.display(), n + 1))?;
        let line = if n == 0 {
            line.trim_start_matches('\u{feff}').to_string()
        } else {
            line
        };
        if !line.trim().is_empty() {
            each(n + 1, &line)?;
        }
    }
    Ok(())
}

impl Stage for SampleNegatives {
    fn run(&self, input: &StageInput<'_>, report: &dyn Reporter) -> Result<()> {
        let cfg: Config = serde_json::from_value(input.with.clone())
            .map_err(|e| anyhow!("sample-negatives `with:` of stage `{}`: {e}", input.name))?;
        let dev_frac = cfg.split.as_ref().map_or(0.0, |s| s.dev);
        if !(0.0..=1.0).contains(&dev_frac) {
            bail!("sample-negatives: `split.dev` must lie in [0, 1], got {dev_frac}");
        }
        if cfg.range_min >= cfg.range_max && cfg.hard > 0 {
            bail!(
                "sample-negatives: `range_min` ({}) must be below `range_max` ({})",
                cfg.range_min,
                cfg.range_max
            );
        }
        let mut outs = BTreeMap::new();
        for (key, _) in INFO.outputs {
            let p = input.outs.get(*key).ok_or_else(|| {
                anyhow!("sample-negatives: the engine gave no path for output `{key}`")
            })?;
            outs.insert(*key, p.clone());
        }

        let path = input.project_root.join(&cfg.input);
        let mut corpus = Corpus::default();
        let mut queries: Vec<Query> = Vec::new();
        let mut seen_keys: HashMap<String, usize> = HashMap::new();
        read_lines(&path, |lineno, line| {
            let at = format!("{}:{lineno}", path.display());
            let q: QueryLine = serde_json::from_str(line).map_err(|e| {
                anyhow!("{at}: expected {{query_text, positives: [{{doc_id, text}}], negatives: […]}}: {e}")
            })?;
            if q.positives.is_empty() {
                bail!(
                    "{at}: query {:?} has no positives (expected at least one)",
                    q.query_text
                );
            }
            let key = q
                .meta
                .as_ref()
                .and_then(|m| m.get("query_id"))
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .unwrap_or_else(|| q.query_text.clone());
            if let Some(first) = seen_keys.insert(key.clone(), lineno) {
                bail!(
                    "{at}: query {key:?} already appeared on line {first}: merge its positives into one line"
                );
            }
            let positives: Vec<usize> = q.positives.iter().map(|d| corpus.add(d)).collect();
            let pos: HashSet<usize> = positives.iter().copied().collect();
            let given = q
                .negatives
                .iter()
                .map(|d| corpus.add(d))
                .filter(|i| !pos.contains(i))
                .collect();
            queries.push(Query {
                key,
                text: q.query_text,
                positives,
                given,
            });
            Ok(())
        })?;
        if let Some(extra) = &cfg.corpus {
            let cpath = input.project_root.join(extra);
            read_lines(&cpath, |lineno, line| {
                let d: Doc = serde_json::from_str(line).map_err(|e| {
                    anyhow!(
                        "{}:{lineno}: expected {{doc_id, text}}: {e}",
                        cpath.display()
                    )
                })?;
                corpus.add(&d);
                Ok(())
            })?;
        }
        report.log(&format!(
            "sample-negatives: {} queries, corpus of {} passages",
            queries.len(),
            corpus.ids.len()
        ));

        // Split by query key: the same seeded-hash order as build-pairs uses for groups.
        let mut order: Vec<usize> = (0..queries.len()).collect();
        order.sort_by_key(|&i| {
            (
                super::build_pairs::stable_hash(cfg.seed, &queries[i].key),
                i,
            )
        });
        let n_dev = (queries.len() as f64 * dev_frac).round() as usize;
        let dev: HashSet<usize> = order[..n_dev].iter().copied().collect();

        let index = if cfg.hard > 0 {
            Some(Bm25Index::build(
                corpus.texts.iter().map(String::as_str),
                Bm25Params::default(),
            ))
        } else {
            None
        };

        let (mut train_buf, mut dev_buf, mut pairs_buf) = (Vec::new(), Vec::new(), Vec::new());
        let mut groups = [0u64; 2];
        for (qi, q) in queries.iter().enumerate() {
            if report.cancelled() {
                bail!("sample-negatives: cancelled");
            }
            let pos: HashSet<usize> = q.positives.iter().copied().collect();
            // BM25 candidates are computed once per query; the per-epoch part is the draw.
            let candidates: Vec<usize> = match &index {
                Some(ix) => ix
                    .top_k(&q.text, cfg.range_max + pos.len())
                    .into_iter()
                    .map(|(d, _)| d as usize)
                    .filter(|d| !pos.contains(d))
                    .skip(cfg.range_min)
                    .take(cfg.range_max - cfg.range_min)
                    .collect(),
                None => Vec::new(),
            };
            let is_dev = dev.contains(&qi);
            let epochs = if is_dev { 1 } else { cfg.epochs };
            for epoch in 0..epochs {
                let mut chosen: Vec<(usize, &str)> = Vec::new();
                if cfg.keep_given {
                    chosen.extend(q.given.iter().map(|&i| (i, "given")));
                }
                let taken: HashSet<usize> = chosen.iter().map(|c| c.0).collect();
                let hard = draw(
                    cfg.seed,
                    epoch,
                    &format!("hard\u{0}{}", q.key),
                    candidates.len(),
                    cfg.hard,
                    |i| taken.contains(&candidates[i]),
                );
                chosen.extend(hard.into_iter().map(|i| (candidates[i], "hard")));
                let taken: HashSet<usize> = chosen.iter().map(|c| c.0).collect();
                let random = draw(
                    cfg.seed,
                    epoch,
                    &format!("random\u{0}{}", q.key),
                    corpus.ids.len(),
                    cfg.random,
                    |i| pos.contains(&i) || taken.contains(&i),
                );
                chosen.extend(random.into_iter().map(|i| (i, "random")));
                let negatives: Vec<Value> = chosen
                    .iter()
                    .map(|&(i, k)| corpus.doc(i, Some(k)))
                    .collect();
                for &p in &q.positives {
                    let line = json!({"query_text": q.text, "positive": corpus.doc(p, None), "negatives": negatives, "epoch": epoch});
                    let buf = if is_dev { &mut dev_buf } else { &mut train_buf };
                    serde_json::to_writer(&mut *buf, &line)?;
                    buf.push(b'\n');
                    groups[usize::from(is_dev)] += 1;
                }
                if is_dev {
                    let rows = q
                        .positives
                        .iter()
                        .map(|&p| (p, 1))
                        .chain(chosen.iter().map(|&(i, _)| (i, 0)));
                    for (doc, label) in rows {
                        // build-pairs' layout: text_a, text_b, label, group.
                        let row = json!({"text_a": q.text, "text_b": corpus.texts[doc], "label": label, "group": q.key});
                        serde_json::to_writer(&mut pairs_buf, &row)?;
                        pairs_buf.push(b'\n');
                    }
                }
            }
            if (qi + 1) % 1000 == 0 {
                report.progress(
                    qi as u64 + 1,
                    Some(queries.len() as u64),
                    "sampling negatives",
                );
            }
        }
        write_atomic(&outs["train"], &train_buf)?;
        write_atomic(&outs["dev"], &dev_buf)?;
        write_atomic(&outs["dev_pairs"], &pairs_buf)?;
        let stats = json!({
            "queries": queries.len(),
            "queries_dev": n_dev,
            "corpus": corpus.ids.len(),
            "groups_train": groups[0],
            "groups_dev": groups[1],
            "epochs": cfg.epochs,
        });
        let mut bytes = serde_json::to_vec_pretty(&stats)?;
        bytes.push(b'\n');
        write_atomic(&outs["stats"], &bytes)?;
        for (k, v) in stats.as_object().into_iter().flatten() {
            if let Some(x) = v.as_f64() {
                report.metric(k, None, x);
            }
        }
        report.progress(
            queries.len() as u64,
            Some(queries.len() as u64),
            "groups written",
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Quiet;
    impl Reporter for Quiet {
        fn progress(&self, _: u64, _: Option<u64>, _: &str) {}
        fn metric(&self, _: &str, _: Option<u64>, _: f64) {}
        fn log(&self, _: &str) {}
        fn cancelled(&self) -> bool {
            false
        }
    }

    fn run(dir: &Path, with: Value) -> Result<BTreeMap<String, String>> {
        let outs: BTreeMap<String, PathBuf> = INFO
            .outputs
            .iter()
            .map(|(k, f)| (k.to_string(), dir.join("out").join(f)))
            .collect();
        let env = BTreeMap::new();
        let input = StageInput {
            name: "neg",
            project_root: dir,
            with: &with,
            outs: &outs,
            env: &env,
            device: "cpu",
        };
        SampleNegatives.run(&input, &Quiet)?;
        Ok(outs
            .iter()
            .map(|(k, p)| (k.clone(), std::fs::read_to_string(p).unwrap()))
            .collect())
    }

    fn data(dir: &Path) {
        let topics = [
            "cat", "dog", "bird", "fish", "horse", "cow", "sheep", "goat", "duck", "frog",
        ];
        let mut lines = String::new();
        for (q, t) in topics.iter().enumerate() {
            let pos: Vec<Value> = (0..2)
                .map(|j| json!({"doc_id": format!("{t}-{j}"), "text": format!("the {t} number {j} likes {t} food")}))
                .collect();
            let neg = vec![json!({"doc_id": format!("{t}-given"), "text": format!("toy for {t}")})];
            let line = json!({"query_text": format!("{t} diet question"), "positives": pos, "negatives": neg,
                              "source_chunk": null, "meta": {"query_id": format!("q{q}")}});
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        std::fs::write(dir.join("q.jsonl"), lines).unwrap();
        let corpus: String = (0..200)
            .map(|i| json!({"doc_id": format!("p{i}"), "text": format!("passage {i} about {} and food", topics[i % 10])}).to_string() + "\n")
            .collect();
        std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
    }

    fn parse(s: &str) -> Vec<Value> {
        s.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn split_by_query_epochs_and_no_positive_negatives() {
        let dir = tempfile::tempdir().unwrap();
        data(dir.path());
        let with = json!({"input": "q.jsonl", "corpus": "corpus.jsonl", "split": {"dev": 0.2}, "epochs": 3,
                          "hard": 2, "range_max": 20, "random": 3, "seed": 13});
        let a = run(dir.path(), with.clone()).unwrap();
        assert_eq!(
            a,
            run(dir.path(), with.clone()).unwrap(),
            "reproducible bytes"
        );

        let train = parse(&a["train"]);
        let dev = parse(&a["dev"]);
        let q = |v: &Value| v["query_text"].as_str().unwrap().to_string();
        let tq: HashSet<String> = train.iter().map(q).collect();
        let dq: HashSet<String> = dev.iter().map(q).collect();
        assert_eq!((tq.len(), dq.len()), (8, 2));
        assert!(tq.is_disjoint(&dq), "no query on both sides");
        // 8 queries × 2 positives × 3 epochs; dev once.
        assert_eq!((train.len(), dev.len()), (48, 4));

        for g in train.iter().chain(&dev) {
            let topic = q(g).split(' ').next().unwrap().to_string();
            let positives = [format!("{topic}-0"), format!("{topic}-1")];
            let negs = g["negatives"].as_array().unwrap();
            assert_eq!(negs.len(), 1 + 2 + 3, "given + hard + random");
            let ids: Vec<&str> = negs.iter().map(|n| n["doc_id"].as_str().unwrap()).collect();
            assert!(
                ids.iter().all(|id| !positives.iter().any(|p| p == id)),
                "a positive drawn as negative: {ids:?}"
            );
            assert_eq!(
                ids.iter().collect::<HashSet<_>>().len(),
                ids.len(),
                "distinct negatives"
            );
        }
        // Draws differ between epochs of one query, and are the same for its two positives.
        let of = |epoch: u64, pos: &str| {
            train
                .iter()
                .find(|g| g["epoch"] == epoch && g["positive"]["doc_id"] == pos)
                .map(|g| g["negatives"].clone())
                .unwrap()
        };
        let some_pos = train[0]["positive"]["doc_id"].as_str().unwrap().to_string();
        let sibling = some_pos.replace("-0", "-1");
        assert_ne!(of(0, &some_pos), of(1, &some_pos));
        assert_eq!(of(2, &some_pos), of(2, &sibling));

        // dev_pairs: positives label 1, negatives 0, grouped by the query id.
        let pairs = parse(&a["dev_pairs"]);
        assert_eq!(pairs.len(), 2 * (2 + 6));
        assert_eq!(pairs.iter().filter(|p| p["label"] == 1).count(), 4);

        let mut other = with;
        other["seed"] = 14.into();
        assert_ne!(run(dir.path(), other).unwrap()["train"], a["train"]);
    }

    #[test]
    fn hard_negatives_come_from_bm25() {
        let dir = tempfile::tempdir().unwrap();
        data(dir.path());
        // Hard only, from the top 3 BM25 ranks: every one shares the query's topic.
        let with = json!({"input": "q.jsonl", "corpus": "corpus.jsonl", "hard": 2, "range_max": 3, "keep_given": false});
        let out = run(dir.path(), with).unwrap();
        for g in parse(&out["train"]) {
            let topic = g["query_text"]
                .as_str()
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string();
            for n in g["negatives"].as_array().unwrap() {
                assert_eq!(n["kind"], "hard");
                assert!(
                    n["text"].as_str().unwrap().contains(&topic),
                    "{n} for {topic}"
                );
            }
        }
    }

    #[test]
    fn bad_input_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("q.jsonl"),
            "{\"query_text\":\"a\",\"positives\":[{\"doc_id\":\"1\",\"text\":\"x\"}]}\n{\"query_text\":\"b\",\"positives\":[]}\n",
        )
        .unwrap();
        let err = run(dir.path(), json!({"input": "q.jsonl"}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("q.jsonl:2:") && err.contains("no positives"),
            "{err}"
        );
        std::fs::write(dir.path().join("q.jsonl"), "{\"query\":\"a\"}\n").unwrap();
        let err = run(dir.path(), json!({"input": "q.jsonl"}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("q.jsonl:1:") && err.contains("query_text"),
            "{err}"
        );
        let err = run(
            dir.path(),
            json!({"input": "q.jsonl", "hard": 1, "range_min": 5, "range_max": 5}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("range_min"));
    }
}
