//! `sample-negatives`: groups of (query, positives, k negatives) for reranker training,
//! re-drawn for every epoch, with a query-level train / validation / test split.
//!
//! ```yaml
//! negatives:
//!   uses: sample-negatives
//!   with:
//!     input: data/reranker.jsonl   # seed 003's JSONL (query_text, positives, negatives, …)
//!     corpus: data/passages.jsonl  # optional {doc_id, text} per line; default: every
//!                                  # positive, given negative and source_chunk passage
//!     method: mix                  # bm25 | random | mix (default mix)
//!     k: 8                         # negatives per query and epoch
//!     hard_ratio: 0.5              # mix only: share of the k taken from the hard pool
//!     range_min: 10                # hard pool = BM25 ranks range_min..range_max
//!     range_max: 100
//!     margin: 0.5                  # optional: drop candidates scoring ≥ min positive − margin
//!     epochs: 3
//!     seed: 13
//!     split: {valid: 0.1, test: 0.0}   # optional, by query; default: everything is train
//!     bm25: {k1: 1.2, b: 0.75}     # optional
//!     model: models/minilm-l6      # optional (ml build): re-rank BM25's candidates with
//!                                  # this cross-encoder (Hugging Face directory)
//!     adapter: ${stages.train.outs.adapter}  # optional, with model: a PEFT adapter
//!     batch: 32                    # with model: pairs per forward pass
//!     max_length: 256              # with model: tokens per pair
//!     label: 0                     # with model: the relevant label of an N-label head
//! ```
//!
//! Outputs: `train` (one JSON line per (epoch, query), epochs in order, queries in input
//! order: `{"epoch", "query_text", "positives", "negatives"}`, passages as `{doc_id,
//! text}`), `valid` and `test` (the same lines for epoch 0 only: a fixed evaluation set) and
//! `stats` (counts). The same inputs give the same bytes. See docs/ranking.md.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use std::num::NonZeroU64;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::contract::{Reporter, Stage, StageInput};
use crate::kinds::{KindInfo, SettingsInfo, settings};
use crate::ranking::bm25::{Bm25Index, Bm25Params};
use crate::ranking::data::{
    QueryGroup, SourceChunk, SplitFractions, for_each_passage, group_by_query, read_records,
    split_by_query,
};
use crate::ranking::negatives::{
    Corpus, Draw, HardPool, Method, MiningConfig, PairScorer, draw, hard_pools,
};
use crate::ranking::normalize;
use tsumugi_base::atomic::AtomicFile;

/// Its descriptor. Bump `version` whenever the output bytes for the same inputs may change
/// (sampling, the generator, the analyzer, BM25, the JSON layout).
pub const INFO: KindInfo = KindInfo {
    name: "sample-negatives",
    // 2: `model` (cross-encoder re-scored hard negatives), `adapter`, `batch`,
    // `max_length`, `label`.
    version: 2,
    summary: "hard (BM25 or model-scored) and random negatives per query, re-drawn per epoch, split by query",
    input_fields: &["input", "corpus", "model", "adapter"],
    outputs: &[
        ("train", "train.jsonl"),
        ("valid", "valid.jsonl"),
        ("test", "test.jsonl"),
        ("stats", "stats.json"),
    ],
    metrics: Some("stats"),
    per_item: false,
    settings: SettingsInfo::of::<Config>(),
};

const SIDES: [&str; 3] = ["train", "valid", "test"];

/// Opens a model named in `with: {model: …}` as a [`PairScorer`]. The build with the `ml`
/// feature provides one through [`SampleNegatives::with_scorer`]; see docs/ranking.md.
pub type ScorerFactory =
    fn(model: &serde_json::Value, input: &StageInput<'_>) -> Result<Box<dyn PairScorer>>;

/// The `sample-negatives` kind.
#[derive(Default)]
pub struct SampleNegatives {
    scorer: Option<ScorerFactory>,
}

impl SampleNegatives {
    /// The kind with model-scored hard negatives enabled.
    pub fn with_scorer(factory: ScorerFactory) -> Self {
        SampleNegatives {
            scorer: Some(factory),
        }
    }
}

/// `with:` of `sample-negatives`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Queries with positives (JSONL: query_text, positives, negatives, …).
    input: PathBuf,
    /// Passages `{doc_id, text}` per line (default: every passage of the input).
    corpus: Option<PathBuf>,
    /// Default: mix.
    method: Option<MethodName>,
    /// Negatives per query and epoch.
    k: Option<usize>,
    /// mix only: the share of the k taken from the hard pool.
    hard_ratio: Option<f64>,
    /// The hard pool is BM25 ranks range_min..range_max.
    range_min: Option<usize>,
    range_max: Option<usize>,
    /// Drop candidates scoring at least (lowest positive − margin).
    margin: Option<f64>,
    /// Draws of negatives (default 3).
    epochs: Option<u64>,
    seed: Option<u64>,
    /// By query; default: everything is train.
    split: Option<SplitSpec>,
    bm25: Option<Bm25Spec>,
    /// A cross-encoder (Hugging Face directory) re-ranking BM25's candidates (ml build).
    model: Option<PathBuf>,
    // Read by the scorer factory (from `input.with`); only valid with `model`.
    /// With `model`: a PEFT adapter directory.
    adapter: Option<PathBuf>,
    /// With `model`: pairs per forward pass.
    batch: Option<NonZeroU64>,
    /// With `model`: tokens per pair.
    max_length: Option<NonZeroU64>,
    /// With `model`: the relevant label of an N-label head.
    label: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum MethodName {
    Bm25,
    Random,
    Mix,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SplitSpec {
    #[serde(default)]
    valid: f64,
    #[serde(default)]
    test: f64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Bm25Spec {
    k1: Option<f64>,
    b: Option<f64>,
}

impl Stage for SampleNegatives {
    fn run(&self, input: &StageInput<'_>, report: &dyn Reporter) -> Result<()> {
        let started = Instant::now();
        let cfg: Config = settings::parse(input.with)
            .map_err(|e| anyhow!("sample-negatives `with:` of stage `{}`: {e}", input.name))?;
        let method = match cfg.method.unwrap_or(MethodName::Mix) {
            MethodName::Bm25 => Method::Bm25,
            MethodName::Random => Method::Random,
            MethodName::Mix => Method::Mix,
        };
        if cfg.hard_ratio.is_some() && method != Method::Mix {
            bail!("sample-negatives: `hard_ratio` applies to `method: mix` only");
        }
        let defaults = MiningConfig::default();
        let mining = MiningConfig {
            method,
            k: cfg.k.unwrap_or(defaults.k),
            hard_ratio: cfg.hard_ratio.unwrap_or(defaults.hard_ratio),
            range_min: cfg.range_min.unwrap_or(defaults.range_min),
            range_max: cfg.range_max.unwrap_or(defaults.range_max),
            margin: cfg.margin,
            seed: cfg.seed.unwrap_or(defaults.seed),
        };
        mining
            .validate()
            .map_err(|e| anyhow!("sample-negatives: {e}"))?;
        let epochs = cfg.epochs.unwrap_or(3);
        if epochs == 0 {
            bail!("sample-negatives: `epochs` must be at least 1");
        }
        let fractions = cfg.split.as_ref().map_or(
            SplitFractions {
                valid: 0.0,
                test: 0.0,
            },
            |s| SplitFractions {
                valid: s.valid,
                test: s.test,
            },
        );
        fractions
            .validate()
            .map_err(|e| anyhow!("sample-negatives: {e}"))?;
        let params = Bm25Params {
            k1: cfg.bm25.as_ref().and_then(|b| b.k1).unwrap_or(1.2),
            b: cfg.bm25.as_ref().and_then(|b| b.b).unwrap_or(0.75),
        };
        params
            .validate()
            .map_err(|e| anyhow!("sample-negatives: bm25: {e}"))?;
        if cfg.model.is_none() {
            let only_with_model: Vec<&str> = [
                ("adapter", cfg.adapter.is_some()),
                ("batch", cfg.batch.is_some()),
                ("max_length", cfg.max_length.is_some()),
                ("label", cfg.label.is_some()),
            ]
            .into_iter()
            .filter_map(|(k, given)| given.then_some(k))
            .collect();
            if !only_with_model.is_empty() {
                bail!(
                    "sample-negatives: `{}` only apply with `model` (model-scored hard negatives)",
                    only_with_model.join("`, `")
                );
            }
        }
        let scorer: Option<Box<dyn PairScorer>> = match (&cfg.model, self.scorer) {
            (None, _) => None,
            (Some(_), _) if method == Method::Random => {
                bail!(
                    "sample-negatives: `model` scores hard negatives; `method: random` draws none"
                )
            }
            (Some(_), Some(factory)) => {
                // The factory reads the model's settings from `with:` as written.
                let m = &input.with["model"];
                report.progress(0, None, "loading the scoring model");
                let t = Instant::now();
                let scorer = factory(m, input)?;
                report.log(&format!(
                    "sample-negatives: hard negatives re-scored by the model {m} (loaded in {:.2}s)",
                    t.elapsed().as_secs_f64()
                ));
                Some(scorer)
            }
            (Some(_), None) => bail!(
                "sample-negatives: model-scored negatives need a build with the ml feature \
                 (`cargo build --features ml`); without `model`, hard negatives are mined by BM25"
            ),
        };
        let outs = output_paths(input)?;

        // Read.
        let input_path = input.project_root.join(&cfg.input);
        report.progress(0, None, "reading queries");
        let records = read_records(&input_path)?;
        let n_records = records.len();
        let mut corpus = Corpus::new();
        let mut conflicting_ids = 0usize;
        match &cfg.corpus {
            Some(p) => {
                report.progress(0, None, "reading corpus");
                for_each_passage(&input.project_root.join(p), |passage| {
                    corpus.push(&passage.doc_id, &passage.text)
                })?;
            }
            None => {
                // Every distinct (doc_id, normalised text) of the input. The same id with
                // two texts is kept twice (ids are sometimes local to a record, like the
                // seed's "p1"); both are then excluded wherever the id is a positive.
                let mut seen: HashSet<(String, String)> = HashSet::new();
                let mut ids: HashSet<String> = HashSet::new();
                for r in &records {
                    let chunk = match &r.source_chunk {
                        Some(SourceChunk::Passage(p)) => Some(p),
                        _ => None,
                    };
                    for p in r.positives.iter().chain(&r.negatives).chain(chunk) {
                        if seen.insert((p.doc_id.clone(), normalize(&p.text))) {
                            if !ids.insert(p.doc_id.clone()) {
                                conflicting_ids += 1;
                            }
                            corpus.push(&p.doc_id, &p.text);
                        }
                    }
                }
            }
        }
        if conflicting_ids > 0 {
            report.log(&format!(
                "warning: {conflicting_ids} doc_id(s) of the input come with more than one text; each text is a separate corpus passage"
            ));
        }
        let groups = group_by_query(records);
        let [train, valid, test] = split_by_query(
            groups,
            |g: &QueryGroup| g.key.as_str(),
            fractions,
            mining.seed,
        );
        if report.cancelled() {
            bail!("sample-negatives: cancelled");
        }

        // Index.
        let t_index = Instant::now();
        report.progress(0, None, &format!("indexing {} passages", corpus.len()));
        let index = if mining.n_hard() > 0 {
            Some(Bm25Index::build(&corpus.texts(), params)?)
        } else {
            None
        };
        let index_s = t_index.elapsed().as_secs_f64();
        if let Some(ix) = &index {
            report.log(&format!(
                "sample-negatives: BM25 index of {} passages, {} terms, {} postings in {index_s:.2}s",
                ix.len(),
                ix.vocabulary_size(),
                ix.postings()
            ));
        }
        if report.cancelled() {
            bail!("sample-negatives: cancelled");
        }

        // Mine: one hard pool per query, shared by its epochs.
        let n_queries = train.len() + valid.len() + test.len();
        let t_mine = Instant::now();
        let sides = [train, valid, test];
        let mut pools: Vec<Vec<HardPool>> = Vec::with_capacity(3);
        let mut done_before = 0usize;
        for side in &sides {
            let p = match &index {
                Some(ix) => hard_pools(ix, &corpus, side, &mining, scorer.as_deref(), &|done| {
                    report.progress(
                        (done_before + done) as u64,
                        Some(n_queries as u64),
                        if scorer.is_some() {
                            "scoring hard negatives with the model"
                        } else {
                            "mining hard negatives"
                        },
                    );
                    !report.cancelled()
                })
                .map_err(|e| anyhow!("sample-negatives: {e}"))?,
                None => vec![HardPool::default(); side.len()],
            };
            done_before += side.len();
            pools.push(p);
        }
        let mine_s = t_mine.elapsed().as_secs_f64();
        if index.is_some() && n_queries > 0 {
            report.log(&format!(
                "sample-negatives: mined {n_queries} queries in {mine_s:.2}s ({:.0} queries/s)",
                n_queries as f64 / mine_s.max(1e-9)
            ));
        }

        // Draw and write.
        let mut counts = Counts::default();
        for (s, (side, pools)) in sides.iter().zip(&pools).enumerate() {
            let side_epochs = if s == 0 { epochs } else { 1 };
            let mut file = AtomicFile::create(&outs[SIDES[s]])?;
            for epoch in 0..side_epochs {
                for (g, pool) in side.iter().zip(pools) {
                    let d = draw(&corpus, g, pool, &mining, epoch);
                    counts.add(&d, mining.k);
                    write_group(file.writer(), epoch, g, &d, &corpus)?;
                }
                if report.cancelled() {
                    bail!("sample-negatives: cancelled");
                }
            }
            file.commit()?;
        }

        let pool_sizes: Vec<usize> = pools.iter().flatten().map(|p| p.candidates.len()).collect();
        let mut stats = serde_json::Map::new();
        stats.insert("records".into(), n_records.into());
        stats.insert("queries".into(), n_queries.into());
        for (name, side) in SIDES.iter().zip(&sides) {
            stats.insert(format!("queries_{name}"), side.len().into());
        }
        stats.insert("corpus_passages".into(), corpus.len().into());
        stats.insert(
            "vocabulary".into(),
            index.as_ref().map_or(0, |i| i.vocabulary_size()).into(),
        );
        stats.insert("epochs".into(), epochs.into());
        stats.insert("k".into(), mining.k.into());
        stats.insert("hard_negatives".into(), counts.hard.into());
        stats.insert("random_negatives".into(), counts.random.into());
        stats.insert("hard_shortfall".into(), counts.shortfall.into());
        stats.insert("groups_short_of_k".into(), counts.short_groups.into());
        stats.insert(
            "hard_pool_mean".into(),
            if pool_sizes.is_empty() {
                0.0.into()
            } else {
                (pool_sizes.iter().sum::<usize>() as f64 / pool_sizes.len() as f64).into()
            },
        );
        stats.insert(
            "hard_pool_empty".into(),
            if index.is_some() {
                pool_sizes.iter().filter(|&&n| n == 0).count()
            } else {
                0
            }
            .into(),
        );
        stats.insert(
            "dropped_by_margin".into(),
            pools
                .iter()
                .flatten()
                .map(|p| p.dropped_by_margin)
                .sum::<usize>()
                .into(),
        );
        let mut stats_file = AtomicFile::create(&outs["stats"])?;
        serde_json::to_writer_pretty(
            stats_file.writer(),
            &serde_json::Value::Object(stats.clone()),
        )?;
        stats_file.writer().write_all(b"\n")?;
        stats_file.commit()?;
        for (k, v) in &stats {
            if let Some(x) = v.as_f64() {
                report.metric(k, None, x);
            }
        }
        if counts.short_groups > 0 {
            report.log(&format!(
                "warning: {} group(s) got fewer than k = {} negatives: the corpus has too few passages that are not their positives",
                counts.short_groups, mining.k
            ));
        }
        report.log(&format!(
            "sample-negatives: {} train / {} valid / {} test queries, {epochs} epoch(s), {} hard + {} random negatives, {:.2}s",
            sides[0].len(),
            sides[1].len(),
            sides[2].len(),
            counts.hard,
            counts.random,
            started.elapsed().as_secs_f64()
        ));
        report.progress(
            n_queries as u64,
            Some(n_queries as u64),
            "negatives written",
        );
        Ok(())
    }
}

#[derive(Default)]
struct Counts {
    hard: usize,
    random: usize,
    shortfall: usize,
    short_groups: usize,
}

impl Counts {
    fn add(&mut self, d: &Draw, k: usize) {
        self.hard += d.hard;
        self.random += d.negatives.len() - d.hard;
        self.shortfall += d.shortfall;
        if d.negatives.len() < k {
            self.short_groups += 1;
        }
    }
}

fn output_paths(input: &StageInput<'_>) -> Result<BTreeMap<&'static str, PathBuf>> {
    let mut out = BTreeMap::new();
    for key in SIDES.iter().chain(&["stats"]) {
        let path = input.outs.get(*key).ok_or_else(|| {
            anyhow!("sample-negatives: the engine gave no path for output `{key}`")
        })?;
        out.insert(*key, path.clone());
    }
    Ok(out)
}

fn write_passage(w: &mut dyn Write, doc_id: &str, text: &str) -> Result<()> {
    w.write_all(b"{\"doc_id\":")?;
    serde_json::to_writer(&mut *w, doc_id)?;
    w.write_all(b",\"text\":")?;
    serde_json::to_writer(&mut *w, text)?;
    w.write_all(b"}")?;
    Ok(())
}

/// One output line, fields written one by one so their order is fixed.
fn write_group(
    w: &mut dyn Write,
    epoch: u64,
    g: &QueryGroup,
    d: &Draw,
    corpus: &Corpus,
) -> Result<()> {
    write!(w, "{{\"epoch\":{epoch},\"query_text\":")?;
    serde_json::to_writer(&mut *w, &g.query_text)?;
    w.write_all(b",\"positives\":[")?;
    for (i, p) in g.positives.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write_passage(w, &p.doc_id, &p.text)?;
    }
    w.write_all(b"],\"negatives\":[")?;
    for (i, &n) in d.negatives.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write_passage(w, corpus.doc_id(n as usize), corpus.text(n as usize))?;
    }
    w.write_all(b"]}\n")?;
    Ok(())
}

/// The `ml` build's [`ScorerFactory`]: loads `with: {model, adapter, batch, max_length,
/// label}` as a [`crate::model_scorer::ModelScorer`] on the stage's device.
#[cfg(feature = "ml")]
pub fn model_scorer(
    model: &serde_json::Value,
    input: &StageInput<'_>,
) -> Result<Box<dyn PairScorer>> {
    use crate::device::DeviceSpec;
    use crate::model_scorer::{ModelScorer, ModelScorerOptions};
    use anyhow::Context;

    let path_of = |field: &str, v: &serde_json::Value| -> Result<PathBuf> {
        let p = v.as_str().filter(|s| !s.is_empty()).ok_or_else(|| {
            anyhow!("sample-negatives: `{field}`: expected the path of a directory, found {v}")
        })?;
        Ok(crate::kinds::train_lora::resolve(
            input.project_root,
            std::path::Path::new(p),
        ))
    };
    let count = |field: &str| -> Result<Option<usize>> {
        match input.with.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Ok(Some(n as usize)),
                _ => bail!("sample-negatives: `{field}`: expected a positive integer, found {v}"),
            },
        }
    };
    let model_dir = path_of("model", model)?;
    let adapter = match input.with.get("adapter") {
        None | Some(serde_json::Value::Null) => None,
        Some(a) => Some(path_of("adapter", a)?),
    };
    let defaults = ModelScorerOptions::default();
    let label = match input.with.get("label") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            anyhow!("sample-negatives: `label`: expected a label index (0, 1, …), found {v}")
        })? as usize),
    };
    let options = ModelScorerOptions {
        batch: count("batch")?.unwrap_or(defaults.batch),
        max_length: count("max_length")?.unwrap_or(defaults.max_length),
        label,
    };
    if !model_dir.is_dir() {
        bail!(
            "sample-negatives: `model`: {} is not a directory (expected a Hugging Face model: config.json, model.safetensors, tokenizer.json)",
            model_dir.display()
        );
    }
    if let Some(a) = &adapter
        && !a.join("adapter_config.json").is_file()
    {
        bail!(
            "sample-negatives: `adapter`: {} is not a PEFT adapter directory (no adapter_config.json)",
            a.display()
        );
    }
    let device: DeviceSpec = input
        .device
        .parse()
        .with_context(|| format!("sample-negatives: device {:?}", input.device))?;
    let scorer =
        ModelScorer::load(&model_dir, adapter.as_deref(), device, options).map_err(|e| {
            match &adapter {
                Some(a) => anyhow!(
                    "sample-negatives: `model` {} with `adapter` {}: {e}",
                    model_dir.display(),
                    a.display()
                ),
                None => anyhow!("sample-negatives: `model` {}: {e}", model_dir.display()),
            }
        })?;
    Ok(Box::new(scorer))
}
