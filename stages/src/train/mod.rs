//! LoRA fine-tuning of a cross-encoder on an autodiff backend: the engine of `train-lora`.
//!
//! One optimizer step = `grad_accum` micro-batches of `batch` items, each padded to its
//! longest pair; gradients are summed with weights `items / step items`, so a step's loss
//! is the mean over all its items whatever the accumulation. Then global-norm clipping,
//! AdamW and the schedule of [`optim`].
//!
//! Determinism and resuming: every random draw is derived from `(seed, position)` and made
//! on the host, so it is the same on every backend: the LoRA init and a new head from
//! `seed`, epoch `e`'s shuffle from `(seed, e)`, and the dropout masks of optimizer step `k`
//! from a per-thread stream seeded with `(seed, k)` ([`crate::models::dropout`]). Trainings
//! in parallel threads of one process do not disturb each other. A checkpoint
//! therefore needs no RNG state beyond the step: it holds the adapter, AdamW's moments and
//! the step count, and a resumed run continues bit for bit as the uninterrupted one.
//!
//! Per-epoch negatives: a ranking file from `sample-negatives` has one line per (epoch,
//! query) with the negatives re-drawn for every epoch. Training epoch `e` then trains on
//! exactly the lines with `epoch == e mod E` ([`plan_epochs`]); a file without `epoch`
//! trains on all its lines in every epoch. Epoch `e`'s steps start after the steps of the
//! epochs before it, so step numbers (and resuming) stay well defined even when draws
//! have different sizes.

pub mod loss;
pub mod optim;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::contract::Reporter;
use crate::error::{MlError, Result};
use crate::lora::{LoraModel, LoraSettings};
use crate::models::{CrossEncoder, LoadOptions, ModelDir, ModelInput};
use crate::peft::{self, TensorSet, write_atomic};
use crate::precision::Precision;
use crate::rng::SplitMix;
use crate::tokenize::{EncodedPair, PairTokenizer, Truncation, length_batches};
use loss::LossKind;
use optim::{AdamWConfig, AdamWState, Decay};

pub use crate::task::Task;

/// Optimisation settings (`optim:` of `train-lora`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSettings {
    pub lr: f64,
    pub epochs: usize,
    /// Items (pairs, or ranking groups) per micro-batch.
    pub batch: usize,
    pub seed: u64,
    /// Warmup as a fraction of all optimizer steps (`int(ratio · total)`, as the reference).
    pub warmup: f64,
    /// Warmup in optimizer steps; overrides `warmup`.
    pub warmup_steps: Option<u64>,
    pub schedule: Decay,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global gradient-norm limit; `null` or 0 = no clipping.
    pub grad_clip: Option<f64>,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Evaluate on dev every this many optimizer steps (default: at each epoch's end).
    pub eval_every: Option<u64>,
    /// Stop after this many evaluations without improvement.
    pub patience: Option<u64>,
    /// Train on the first N items of each epoch only (of the whole file, or of the epoch's
    /// draw of negatives for a per-epoch ranking file).
    pub limit: Option<usize>,
    /// Stop after this many optimizer steps (the schedule still spans all epochs).
    pub max_steps: Option<u64>,
}

impl Default for OptimSettings {
    fn default() -> Self {
        let a = AdamWConfig::default();
        Self {
            lr: 5e-4,
            epochs: 1,
            batch: 16,
            seed: 13,
            warmup: 0.1,
            warmup_steps: None,
            schedule: Decay::Linear,
            beta1: a.beta1,
            beta2: a.beta2,
            eps: a.eps,
            weight_decay: a.weight_decay,
            grad_clip: Some(1.0),
            grad_accum: 1,
            eval_every: None,
            patience: None,
            limit: None,
            max_steps: None,
        }
    }
}

impl OptimSettings {
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(MlError::Input(format!("optim: {m}")));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be a positive number, got {}", self.lr));
        }
        if self.epochs == 0 || self.batch == 0 || self.grad_accum == 0 {
            return bad("epochs, batch and grad_accum must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return bad(format!(
                "warmup is a fraction in [0, 1), got {}",
                self.warmup
            ));
        }
        Ok(())
    }
}

/// One training item: a pair with a label, or a ranking group (positive first).
#[derive(Debug, Clone)]
pub enum Item {
    Pair { a: String, b: String, label: f64 },
    Group { query: String, docs: Vec<String> },
}

/// Reads a training/dev file: pair JSONL (`build-pairs`: `text_a`, `text_b`, `label`) for
/// regression/classification, group JSONL (`query_text`, `positive{text}` or
/// `positives[]`, `negatives[]`) for ranking. Errors name the file and line. A ranking
/// line's `epoch` is checked but dropped: see [`read_train_items`] for training files.
pub fn read_items(path: &Path, task: Task, num_labels: usize) -> Result<Vec<Item>> {
    Ok(read_train_items(path, task, num_labels)?.items)
}

/// A training file's items and, for ranking files written by `sample-negatives`, the
/// negative draw (`epoch`) each item belongs to.
#[derive(Debug, Clone)]
pub struct TrainItems {
    pub items: Vec<Item>,
    /// `epochs[i]` = the `epoch` of item `i`'s line; `None` when the lines carry no
    /// `epoch` (every item is trained on in every epoch). When present, the values are
    /// exactly `0..E` for some `E ≥ 1`.
    pub epochs: Option<Vec<usize>>,
}

/// Like [`read_items`], keeping the `epoch` of ranking lines. Either every ranking line
/// has an `epoch` (a non-negative integer) or none does, and the epochs present must be
/// `0..E` without gaps; otherwise the error names the file and line. Pair files
/// (regression, classification) ignore `epoch`.
pub fn read_train_items(path: &Path, task: Task, num_labels: usize) -> Result<TrainItems> {
    let text = std::fs::read_to_string(path).map_err(|e| MlError::io(path, e))?;
    let mut items = Vec::new();
    let mut item_epochs: Vec<usize> = Vec::new();
    // Whether the first ranking line had an `epoch`, and its line number.
    let mut first_epoch_line: Option<(bool, usize)> = None;
    // The first line of each epoch value, for the gap error.
    let mut epoch_lines: std::collections::BTreeMap<usize, usize> = Default::default();
    let mut group_k: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start_matches('\u{feff}');
        if line.trim().is_empty() {
            continue;
        }
        let at = |m: String| MlError::Input(format!("{}:{}: {m}", path.display(), i + 1));
        let v: Value = serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
        let s = |k: &str| -> Result<String> {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| at(format!("expected a string field {k:?}")))
        };
        let text_of = |d: &Value| -> Result<String> {
            d.get("text")
                .and_then(Value::as_str)
                .or_else(|| d.as_str())
                .map(str::to_string)
                .ok_or_else(|| at("expected a passage {\"text\": …}".into()))
        };
        match task {
            Task::Regression | Task::Classification => {
                let label = v
                    .get("label")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| at("expected a number field \"label\"".into()))?;
                if task == Task::Classification
                    && (label < 0.0 || label.fract() != 0.0 || label as usize >= num_labels)
                {
                    return Err(at(format!(
                        "label {label}: expected a class index in 0..{num_labels}"
                    )));
                }
                if !label.is_finite() {
                    return Err(at("label is not finite".into()));
                }
                items.push(Item::Pair {
                    a: s("text_a")?,
                    b: s("text_b")?,
                    label,
                });
            }
            Task::Ranking => {
                let epoch = match v.get("epoch") {
                    None => None,
                    Some(e) => Some(e.as_u64().ok_or_else(|| {
                        at(format!(
                            "field \"epoch\": expected a non-negative integer, found {e}"
                        ))
                    })? as usize),
                };
                match first_epoch_line {
                    None => first_epoch_line = Some((epoch.is_some(), i + 1)),
                    Some((had, first)) if had != epoch.is_some() => {
                        return Err(at(format!(
                            "{}; either every line of a ranking file carries an \"epoch\" (as sample-negatives writes them) or none does",
                            if had {
                                format!("this line has no \"epoch\" but line {first} has one")
                            } else {
                                format!("this line has an \"epoch\" but line {first} has none")
                            }
                        )));
                    }
                    _ => {}
                }
                if let Some(e) = epoch {
                    epoch_lines.entry(e).or_insert(i + 1);
                }
                let query = s("query_text")?;
                let negatives = v
                    .get("negatives")
                    .and_then(Value::as_array)
                    .ok_or_else(|| at("expected an array \"negatives\"".into()))?;
                let negs = negatives.iter().map(text_of).collect::<Result<Vec<_>>>()?;
                if negs.is_empty() {
                    return Err(at("a ranking group needs at least one negative".into()));
                }
                match group_k {
                    None => group_k = Some(negs.len()),
                    Some(k) if k != negs.len() => {
                        return Err(at(format!(
                            "{} negatives; every group of a file must have the same number (first group: {k})",
                            negs.len()
                        )));
                    }
                    _ => {}
                }
                let positives: Vec<String> = match (v.get("positive"), v.get("positives")) {
                    (Some(p), _) => vec![text_of(p)?],
                    (None, Some(Value::Array(ps))) => {
                        ps.iter().map(text_of).collect::<Result<_>>()?
                    }
                    _ => return Err(at("expected \"positive\" or \"positives\"".into())),
                };
                // Several positives: one group per positive sharing the negatives
                // (multi-positive softmax = the mean of these groups' losses).
                for p in positives {
                    let mut docs = vec![p];
                    docs.extend(negs.iter().cloned());
                    items.push(Item::Group {
                        query: query.clone(),
                        docs,
                    });
                    item_epochs.push(epoch.unwrap_or(0));
                }
            }
        }
    }
    if items.is_empty() {
        return Err(MlError::Input(format!(
            "{}: no training items",
            path.display()
        )));
    }
    // Epochs must be 0..E: a gap means a truncated or hand-edited file.
    for (expected, (&e, &line)) in epoch_lines.iter().enumerate() {
        if e != expected {
            return Err(MlError::Input(format!(
                "{}:{line}: epoch {e}, but no line has epoch {expected}; the epochs of a ranking file must be 0, 1, … without gaps",
                path.display()
            )));
        }
    }
    let epochs = match first_epoch_line {
        Some((true, _)) => Some(item_epochs),
        _ => None,
    };
    Ok(TrainItems { items, epochs })
}

/// Which items each training epoch trains on (before its shuffle), from [`plan_epochs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochPlan {
    /// `epochs[e]` = item indices of training epoch `e`, in file order.
    pub epochs: Vec<Vec<usize>>,
    /// How many negative draws the file has (`None`: its lines carry no `epoch`).
    pub file_epochs: Option<usize>,
}

impl EpochPlan {
    /// The note to log when training and the file disagree on the number of epochs.
    pub fn mismatch_note(&self) -> Option<String> {
        let file = self.file_epochs?;
        let train = self.epochs.len();
        match train.cmp(&file) {
            std::cmp::Ordering::Equal => None,
            std::cmp::Ordering::Greater => Some(format!(
                "the training file has {file} epoch(s) of negatives and training runs {train}: training epoch e uses the file's epoch e mod {file}"
            )),
            std::cmp::Ordering::Less => Some(format!(
                "the training file has {file} epoch(s) of negatives but training runs only {train}: the file's epochs {train}..{} are unused",
                file - 1
            )),
        }
    }
}

/// Maps training epochs to items. Without per-item epochs every training epoch trains on
/// all `n_items`. With them (a `sample-negatives` file of `E` draws), training epoch `e`
/// trains on exactly the items whose line has `epoch == e mod E`, in file order. `limit`
/// keeps the first `limit` items of each training epoch.
pub fn plan_epochs(
    item_epochs: Option<&[usize]>,
    n_items: usize,
    train_epochs: usize,
    limit: Option<usize>,
) -> EpochPlan {
    let cap = |mut v: Vec<usize>| {
        if let Some(l) = limit {
            v.truncate(l);
        }
        v
    };
    match item_epochs {
        None => EpochPlan {
            epochs: (0..train_epochs)
                .map(|_| cap((0..n_items).collect()))
                .collect(),
            file_epochs: None,
        },
        Some(of) => {
            let file = of.iter().copied().max().map_or(1, |m| m + 1);
            let mut by_draw: Vec<Vec<usize>> = vec![Vec::new(); file];
            for (i, &e) in of.iter().enumerate() {
                by_draw[e].push(i);
            }
            EpochPlan {
                epochs: (0..train_epochs)
                    .map(|e| cap(by_draw[e % file].clone()))
                    .collect(),
                file_epochs: Some(file),
            }
        }
    }
}

/// Items tokenized once: pairs in item order (a group gives `1 + k` consecutive pairs).
struct Encoded {
    pairs: Vec<EncodedPair>,
    /// First pair of each item, and its number of pairs.
    spans: Vec<(usize, usize)>,
    labels: Vec<f64>,
}

fn encode_items(tok: &PairTokenizer, items: &[Item]) -> Result<Encoded> {
    let mut texts: Vec<(&str, &str)> = Vec::new();
    let mut spans = Vec::with_capacity(items.len());
    let mut labels = Vec::with_capacity(items.len());
    for it in items {
        match it {
            Item::Pair { a, b, label } => {
                spans.push((texts.len(), 1));
                texts.push((a, b));
                labels.push(*label);
            }
            Item::Group { query, docs } => {
                spans.push((texts.len(), docs.len()));
                texts.extend(docs.iter().map(|d| (query.as_str(), d.as_str())));
                labels.push(0.0);
            }
        }
    }
    Ok(Encoded {
        pairs: tok.encode_all(&texts)?,
        spans,
        labels,
    })
}

/// Everything a training run needs.
#[derive(Debug, Clone)]
pub struct TrainSpec {
    pub model_dir: PathBuf,
    pub train: PathBuf,
    pub dev: Option<PathBuf>,
    pub task: Task,
    pub loss: LossKind,
    pub num_labels: usize,
    pub lora: LoraSettings,
    pub optim: OptimSettings,
    pub max_length: usize,
    /// Where the adapter goes (the best one when there is a dev set).
    pub adapter_out: PathBuf,
    /// Resumable checkpoints (adapter + optimizer + step); resumed from when present.
    pub checkpoint_dir: Option<PathBuf>,
    /// Save a checkpoint every this many optimizer steps (and at every evaluation).
    pub checkpoint_every: Option<u64>,
    /// All dropout off (model and LoRA): for parity checks.
    pub dropout_off: bool,
    /// Split each micro-batch into shards of at least this many pairs (whole items), run
    /// on parallel threads with their gradients summed in shard order; `None`: one shard.
    /// For CPU backends, whose kernels leave cores idle on small batches (see
    /// [`CPU_SHARD_PAIRS`]). The sharding does not depend on the thread count, and each
    /// shard draws its rows' own dropout masks ([`crate::models::dropout`]), so a sharded
    /// run differs from an unsharded one by floating-point rounding only.
    pub shard_pairs: Option<usize>,
    /// The number type of the frozen linears' products ([`crate::precision`]); the trained
    /// tensors stay f32. f16 scales the loss ([`optim::LossScale`]).
    pub precision: Precision,
    /// Identifies the run's settings; a checkpoint written under another one is not
    /// resumed from (the run starts over and replaces it).
    pub fingerprint: String,
}

/// One logged optimizer step.
#[derive(Debug, Clone, Serialize)]
pub struct StepLog {
    pub step: u64,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

/// One dev evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalLog {
    pub step: u64,
    pub loss: f64,
    /// The selection metric (regression: Spearman, classification: accuracy, ranking: MRR).
    pub metric: f64,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    pub steps: u64,
    pub total_steps: u64,
    pub warmup_steps: u64,
    pub train_items: usize,
    pub train_pairs_seen: u64,
    pub train_seconds: f64,
    pub pairs_per_s: f64,
    pub history: Vec<StepLog>,
    pub evals: Vec<EvalLog>,
    pub best: Option<EvalLog>,
    pub metric_name: &'static str,
    pub stopped_early: bool,
    pub resumed_from: Option<u64>,
    pub final_loss: f64,
    /// f16 steps skipped because their gradients overflowed (the loss scale was halved).
    pub skipped_steps: u64,
}

/// The selection metric's name per task.
pub fn metric_name(task: Task) -> &'static str {
    match task {
        Task::Regression => "spearman",
        Task::Classification => "accuracy",
        Task::Ranking => "mrr",
    }
}

/// Logits of every pair, in order, with an inference (no-autodiff) model.
pub fn predict<B: Backend>(
    model: &LoraModel<B>,
    tok: &PairTokenizer,
    pairs: &[EncodedPair],
    batch: usize,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let lengths: Vec<usize> = pairs.iter().map(|p| p.ids.len()).collect();
    let mut out = vec![Vec::new(); pairs.len()];
    for b in length_batches(&lengths, batch) {
        let items: Vec<&EncodedPair> = b.iter().map(|&i| &pairs[i]).collect();
        let input = ModelInput::<B>::from_batch(&tok.pad(&items), device);
        let logits = model.forward(&input);
        let [_, k] = logits.dims();
        let v = peft::values(logits);
        for (row, &i) in b.iter().enumerate() {
            out[i] = v[row * k..(row + 1) * k].to_vec();
        }
    }
    out
}

/// Shard pairs for CPU training: 8 pairs (two shards of a batch of 16) keep two cores
/// busy while each shard's matrices stay large enough for the gemm kernels.
pub const CPU_SHARD_PAIRS: usize = 8;

/// The pairs of items `idx`, in order.
fn item_pairs<'a>(enc: &'a Encoded, idx: &[usize]) -> Vec<&'a EncodedPair> {
    let mut items: Vec<&EncodedPair> = Vec::new();
    for &i in idx {
        let (start, n) = enc.spans[i];
        items.extend(&enc.pairs[start..start + n]);
    }
    items
}

/// `idx` cut into consecutive shards of whole items with at least `min_pairs` pairs each
/// (the last may have fewer), with each shard's first row (pair) in the micro-batch.
fn shards<'a>(
    enc: &Encoded,
    idx: &'a [usize],
    min_pairs: Option<usize>,
) -> Vec<(usize, &'a [usize])> {
    let Some(min_pairs) = min_pairs.filter(|&m| m > 0) else {
        return vec![(0, idx)];
    };
    let mut out = Vec::new();
    let (mut start, mut first_row, mut pairs) = (0, 0, 0);
    for (k, &i) in idx.iter().enumerate() {
        pairs += enc.spans[i].1;
        if pairs >= min_pairs && k + 1 < idx.len() {
            out.push((first_row, &idx[start..=k]));
            first_row += pairs;
            (start, pairs) = (k + 1, 0);
        }
    }
    out.push((first_row, &idx[start..]));
    out
}

/// The loss of one micro-batch (or shard) of items `idx` (autodiff), padded to `seq`
/// tokens, and its number of pairs.
fn batch_loss<B: Backend>(
    model: &LoraModel<B>,
    tok: &PairTokenizer,
    enc: &Encoded,
    idx: &[usize],
    seq: usize,
    kind: LossKind,
    device: &B::Device,
) -> (Tensor<B, 1>, usize) {
    let items = item_pairs(enc, idx);
    let input = ModelInput::<B>::from_batch(&tok.pad_to(&items, seq), device);
    let logits = model.forward(&input);
    let [rows, k] = logits.dims();
    let labels = || {
        Tensor::<B, 1>::from_data(
            TensorData::new(
                idx.iter()
                    .map(|&i| enc.labels[i] as f32)
                    .collect::<Vec<_>>(),
                [idx.len()],
            ),
            device,
        )
    };
    let loss = match kind {
        LossKind::Mse => loss::mse(logits.reshape([rows]), labels()),
        LossKind::Bce => loss::bce_with_logits(logits.reshape([rows]), labels()),
        LossKind::CrossEntropy => {
            let l = Tensor::<B, 1, Int>::from_data(
                TensorData::new(
                    idx.iter()
                        .map(|&i| enc.labels[i] as i64)
                        .collect::<Vec<_>>(),
                    [idx.len()],
                ),
                device,
            );
            loss::cross_entropy(logits, l)
        }
        LossKind::Margin { margin } => {
            loss::margin_ranking(logits.reshape([idx.len(), rows * k / idx.len()]), margin)
        }
        LossKind::Listwise => {
            loss::listwise_softmax(logits.reshape([idx.len(), rows * k / idx.len()]))
        }
    };
    (loss, items.len())
}

/// Dev loss and selection metric with an inference model.
fn evaluate_dev<B: Backend>(
    model: &LoraModel<B>,
    tok: &PairTokenizer,
    enc: &Encoded,
    task: Task,
    kind: LossKind,
    device: &B::Device,
) -> Result<(f64, f64)> {
    let logits = predict(model, tok, &enc.pairs, 64, device);
    let as_f64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let n = enc.spans.len() as f64;
    let err = |e: crate::metrics::MetricError| MlError::Input(format!("dev metric: {e}"));
    Ok(match task {
        Task::Regression => {
            let p: Vec<f64> = logits.iter().map(|l| l[0] as f64).collect();
            let loss = match kind {
                LossKind::Bce => {
                    crate::losses::bce_with_logits(&p, &enc.labels)
                        .map_err(err)?
                        .value
                }
                _ => crate::losses::mse(&p, &enc.labels).map_err(err)?.value,
            };
            let s = if p.len() >= 2 {
                crate::metrics::regression::spearman(&enc.labels, &p).map_err(err)?
            } else {
                f64::NAN
            };
            (loss, s)
        }
        Task::Classification => {
            let k = logits[0].len();
            let flat: Vec<f64> = logits.iter().flat_map(|l| as_f64(l)).collect();
            let y: Vec<usize> = enc.labels.iter().map(|&l| l as usize).collect();
            let loss = crate::losses::cross_entropy(&flat, k, &y)
                .map_err(err)?
                .value;
            let pred = crate::metrics::report::argmax_rows(&flat, k);
            (
                loss,
                pred.iter().zip(&y).filter(|(a, b)| a == b).count() as f64 / n,
            )
        }
        Task::Ranking => {
            let mut loss = 0.0;
            let mut rr = 0.0;
            for &(start, len) in &enc.spans {
                let s: Vec<f64> = logits[start..start + len]
                    .iter()
                    .map(|l| l[0] as f64)
                    .collect();
                loss += crate::losses::listwise_softmax(&s, len).map_err(err)?.value;
                let rank = 1 + s[1..].iter().filter(|&&x| x >= s[0]).count();
                rr += 1.0 / rank as f64;
            }
            (loss / n, rr / n)
        }
    })
}

const STATE_FILE: &str = "train_state.json";
const OPTIM_FILE: &str = "optimizer.safetensors";

/// Writes a resumable checkpoint into `dir` (replaced as a whole: written beside it, then
/// renamed, so an interruption leaves the previous checkpoint intact).
fn save_checkpoint<B: AutodiffBackend>(
    dir: &Path,
    model: &LoraModel<B>,
    spec: &TrainSpec,
    state: &AdamWState<B::InnerBackend>,
    extra: Value,
) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    peft::save_adapter(
        model,
        &spec.lora,
        &spec.model_dir.display().to_string(),
        &tmp,
    )?;
    let mut set = TensorSet::default();
    for (i, m) in state.moments.iter().enumerate() {
        if let Some((m, v)) = m {
            set.vector(format!("m.{i}"), m.clone());
            set.vector(format!("v.{i}"), v.clone());
        }
    }
    write_atomic(&tmp.join(OPTIM_FILE), &set.to_bytes(None)?)?;
    let st = json!({"step": state.step, "fingerprint": spec.fingerprint, "optim": spec.optim, "extra": extra});
    write_atomic(
        &tmp.join(STATE_FILE),
        serde_json::to_string_pretty(&st).expect("JSON").as_bytes(),
    )?;
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| MlError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| MlError::io(dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

fn load_optimizer<B: Backend>(dir: &Path, device: &B::Device) -> Result<(AdamWState<B>, Value)> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| MlError::io(&path, e))?;
    let st: Value = serde_json::from_str(&text).map_err(|e| MlError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let step = st["step"].as_u64().ok_or_else(|| MlError::Config {
        path: path.clone(),
        message: "expected a number \"step\"".into(),
    })?;
    let set = TensorSet::read(&dir.join(OPTIM_FILE))?;
    let mut moments = Vec::new();
    for (key, (_, m)) in &set.0 {
        let Some(i) = key.strip_prefix("m.").and_then(|i| i.parse::<usize>().ok()) else {
            continue;
        };
        let (_, v) = set
            .0
            .get(&format!("v.{i}"))
            .ok_or_else(|| MlError::Weights {
                path: dir.join(OPTIM_FILE),
                message: format!("v.{i} missing"),
            })?;
        if moments.len() <= i {
            moments.resize(i + 1, None);
        }
        let t =
            |x: &Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(x.clone(), [x.len()]), device);
        moments[i] = Some((t(m), t(v)));
    }
    // Steps skipped under f16 (absent before they existed: none).
    let skipped = st["extra"]["skipped_steps"].as_u64().unwrap_or(0);
    Ok((
        AdamWState {
            step,
            skipped,
            moments,
        },
        st["extra"].clone(),
    ))
}

fn mix(seed: u64, a: u64) -> u64 {
    SplitMix(seed ^ a.wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
}

/// Trains a LoRA adapter as `spec` says, reporting progress and per-step metrics.
pub fn train<B: AutodiffBackend>(
    spec: &TrainSpec,
    device: &B::Device,
    report: &dyn Reporter,
) -> Result<TrainOutcome> {
    spec.optim.validate()?;
    spec.precision.check::<B>(device)?;
    let o = &spec.optim;
    let dir = ModelDir::open(&spec.model_dir)?;
    spec.lora.validate(dir.architecture.layer_linears())?;
    let tok = PairTokenizer::for_model(&dir, spec.max_length, Truncation::LongestFirst)?;
    let TrainItems { items, epochs } = read_train_items(&spec.train, spec.task, spec.num_labels)?;
    let mut plan = plan_epochs(epochs.as_deref(), items.len(), o.epochs, o.limit);
    if let Some(note) = plan.mismatch_note() {
        report.log(&note);
    }
    // Tokenize only the items some epoch trains on (unused draws are skipped), and number
    // them densely.
    let mut used = vec![usize::MAX; items.len()];
    let mut kept: Vec<Item> = Vec::new();
    for e in &mut plan.epochs {
        for i in e.iter_mut() {
            if used[*i] == usize::MAX {
                used[*i] = kept.len();
                kept.push(items[*i].clone());
            }
            *i = used[*i];
        }
    }
    drop(items);
    let items = kept;
    let enc = encode_items(&tok, &items)?;
    let dev = match &spec.dev {
        Some(p) => {
            let d = read_items(p, spec.task, spec.num_labels)?;
            Some(encode_items(&tok, &d)?)
        }
        None => None,
    };
    drop(items);
    // Items per epoch (the first epoch's; with per-epoch negatives every draw usually has
    // the same number of groups, but a hand-made file may not).
    let n = plan.epochs.first().map_or(0, Vec::len);

    // Optimizer steps of each epoch and the step each epoch starts at.
    let epoch_steps: Vec<u64> = plan
        .epochs
        .iter()
        .map(|e| e.len().div_ceil(o.batch).div_ceil(o.grad_accum) as u64)
        .collect();
    let epoch_start: Vec<u64> = epoch_steps
        .iter()
        .scan(0u64, |acc, &s| {
            let start = *acc;
            *acc += s;
            Some(start)
        })
        .collect();
    let total: u64 = epoch_steps.iter().sum();
    let warmup = o.warmup_steps.unwrap_or((o.warmup * total as f64) as u64);
    let last_step = o.max_steps.map_or(total, |m| m.min(total));

    let resume_dir = spec
        .checkpoint_dir
        .as_ref()
        .filter(|d| d.join(STATE_FILE).is_file())
        .filter(|d| {
            let same = std::fs::read_to_string(d.join(STATE_FILE))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| v["fingerprint"].as_str() == Some(spec.fingerprint.as_str()));
            if !same {
                report.log(&format!(
                    "{}: checkpoint of other settings, starting over",
                    d.display()
                ));
            }
            same
        });
    let (mut model, mut state, resumed_extra) = match resume_dir {
        Some(ck) => {
            let (m, settings) = peft::load_adapter::<B>(&dir, ck, device)?;
            if settings.r != spec.lora.r || settings.targets != spec.lora.targets {
                return Err(MlError::Input(format!(
                    "{}: checkpoint has other LoRA settings than this run; remove it to start over",
                    ck.display()
                )));
            }
            let (st, extra) = load_optimizer::<B::InnerBackend>(ck, device)?;
            report.log(&format!(
                "resuming from {} at step {}",
                ck.display(),
                st.step
            ));
            (m, st, Some(extra))
        }
        None => {
            let opts = LoadOptions {
                num_labels: Some(spec.num_labels),
                init_missing_head: true,
                init_seed: mix(o.seed, u64::MAX),
            };
            let (base, load) = CrossEncoder::<B>::load(&dir, &opts, device)?;
            if !load.initialized.is_empty() {
                report.log(&format!(
                    "new head weights: {}",
                    load.initialized.join(", ")
                ));
            }
            (
                LoraModel::new(base, &spec.lora, o.seed, device)?,
                AdamWState::default(),
                None,
            )
        }
    };
    if spec.dropout_off {
        model = model.without_dropout();
    }
    model.base = model.base.with_precision(spec.precision);
    let mut loss_scale = (spec.precision == Precision::F16).then(optim::LossScale::default);
    let metric = metric_name(spec.task);
    let mut history: Vec<StepLog> = Vec::new();
    let mut evals: Vec<EvalLog> = Vec::new();
    let mut best: Option<EvalLog> = None;
    let mut since_best = 0u64;
    if let Some(extra) = &resumed_extra {
        // f16: the loss scale where the interrupted run left it, so that the resumed run
        // skips the steps the uninterrupted one would.
        if let (Some(ls), Ok(saved)) = (
            loss_scale.as_mut(),
            serde_json::from_value::<optim::LossScale>(extra["loss_scale"].clone()),
        ) {
            *ls = saved;
        }
        history =
            serde_json::from_value::<Vec<(u64, usize, f64, f64, f64)>>(extra["history"].clone())
                .unwrap_or_default()
                .into_iter()
                .map(|(step, epoch, loss, lr, grad_norm)| StepLog {
                    step,
                    epoch,
                    loss,
                    lr,
                    grad_norm,
                })
                .collect();
        evals = serde_json::from_value::<Vec<(u64, f64, f64)>>(extra["evals"].clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(step, loss, metric)| EvalLog { step, loss, metric })
            .collect();
        best = evals
            .iter()
            .filter(|e| e.metric.is_finite())
            .max_by(|a, b| a.metric.total_cmp(&b.metric))
            .cloned();
        since_best = best.as_ref().map_or(0, |b| {
            evals.iter().filter(|e| e.step > b.step).count() as u64
        });
    }
    let resumed_from = resumed_extra.as_ref().map(|_| state.step);
    // Default: evaluate at the end of every epoch.
    let eval_every = o.eval_every.filter(|&k| k > 0);
    let started = Instant::now();
    let mut pairs_seen = 0u64;
    let mut stopped_early = false;
    let save_best = |model: &LoraModel<B>| {
        peft::save_adapter(
            model,
            &spec.lora,
            &spec.model_dir.display().to_string(),
            &spec.adapter_out,
        )
    };

    let extra = |history: &[StepLog],
                 evals: &[EvalLog],
                 loss_scale: &Option<optim::LossScale>,
                 skipped_steps: u64| {
        json!({
            "loss_scale": loss_scale,
            "skipped_steps": skipped_steps,
            "history": history.iter().map(|h| (h.step, h.epoch, h.loss, h.lr, h.grad_norm)).collect::<Vec<_>>(),
            "evals": evals.iter().map(|e| (e.step, e.loss, e.metric)).collect::<Vec<_>>(),
        })
    };

    'epochs: for (epoch, members) in plan.epochs.iter().enumerate() {
        // Epoch e's shuffle of its own items (all items, or its draw of negatives).
        let order: Vec<usize> = SplitMix(mix(o.seed, epoch as u64))
            .permutation(members.len())
            .into_iter()
            .map(|i| members[i])
            .collect();
        let micro: Vec<&[usize]> = order.chunks(o.batch).collect();
        let epoch_end = epoch_start[epoch] + epoch_steps[epoch];
        for (k_in_epoch, group) in micro.chunks(o.grad_accum).enumerate() {
            let step = epoch_start[epoch] + k_in_epoch as u64;
            if step < state.step {
                continue; // done before the checkpoint we resumed from
            }
            if step >= last_step {
                break 'epochs;
            }
            if report.cancelled() {
                return Err(MlError::Input("training cancelled".into()));
            }
            let step_items: usize = group.iter().map(|m| m.len()).sum();
            let mut grads: optim::Grads<B> = Vec::new();
            let mut step_loss = 0.0;
            let scale = loss_scale.as_ref().map_or(1.0, optim::LossScale::scale);
            for (micro, idx) in group.iter().enumerate() {
                // Each micro-batch's dropout masks, drawn on the host row by row: the same
                // on every backend and sharding, and untouched by other trainings in the
                // process (each thread its own stream).
                let mask_seed = mix(mix(o.seed, step), micro as u64);
                let seq = item_pairs(&enc, idx)
                    .iter()
                    .map(|p| p.ids.len())
                    .max()
                    .unwrap_or(0);
                let run = |m: &LoraModel<B>, first_row: usize, shard: &[usize]| {
                    let rows = item_pairs(&enc, shard).len();
                    let _masks = crate::models::dropout::seeded(mask_seed, first_row, rows);
                    let (loss, pairs) = batch_loss(m, &tok, &enc, shard, seq, spec.loss, device);
                    let loss = loss.mul_scalar(shard.len() as f64 / step_items as f64);
                    let value = loss.clone().into_scalar().elem::<f64>();
                    let g = if scale == 1.0 {
                        loss.backward()
                    } else {
                        loss.mul_scalar(scale).backward()
                    };
                    (value, optim::collect_grads(m, &g), pairs)
                };
                let parts = shards(&enc, idx, spec.shard_pairs);
                let results: Vec<(f64, optim::Grads<B>, usize)> = if parts.len() == 1 {
                    vec![run(&model, 0, idx)]
                } else {
                    // Each shard on its own copy of the trainable leaves, so that the shards'
                    // autodiff graphs are separate and their backward passes run in parallel.
                    use rayon::prelude::*;
                    let jobs: Vec<_> = parts
                        .into_iter()
                        .map(|(first, shard)| (optim::fresh_leaves(&model), first, shard))
                        .collect();
                    jobs.into_par_iter()
                        .map(|(m, first, shard)| run(&m, first, shard))
                        .collect()
                };
                for (value, g, pairs) in results {
                    step_loss += value;
                    optim::accumulate::<B>(&mut grads, g);
                    pairs_seen += pairs as u64;
                }
            }
            if !step_loss.is_finite() {
                let hint = match spec.precision {
                    Precision::F16 => {
                        "; with precision: f16 a product may exceed f16's range (±65504): try bf16 or f32"
                    }
                    _ => "",
                };
                return Err(MlError::Input(format!(
                    "step {}: the loss is {step_loss}; lower optim.lr or check the labels{hint}",
                    step + 1
                )));
            }
            if scale != 1.0 {
                optim::scale_grads::<B>(&mut grads, 1.0 / scale);
            }
            let grad_norm = match o.grad_clip.filter(|c| *c > 0.0) {
                Some(c) => optim::clip_grad_norm::<B>(&mut grads, c),
                None => optim::global_norm::<B>(&grads),
            };
            let lr = o.lr * optim::lr_factor(o.schedule, step, warmup, total);
            let apply = loss_scale
                .as_mut()
                .is_none_or(|s| s.update(grad_norm.is_finite()));
            if apply {
                model = optim::adamw_step(model, grads, lr, o.adamw(), &mut state);
            } else {
                // As GradScaler: no update, but the step counts in the schedule (and, so
                // that a resumed run finds its place, in the step count).
                optim::skip_step(&mut state);
                report.log(&format!(
                    "step {}: f16 gradients overflowed at loss scale {scale}; step skipped, scale now {}",
                    state.step,
                    loss_scale.as_ref().map_or(1.0, optim::LossScale::scale)
                ));
            }
            let done = state.step;
            if apply {
                history.push(StepLog {
                    step: done,
                    epoch,
                    loss: step_loss,
                    lr,
                    grad_norm,
                });
                report.metric("train/grad_norm", Some(done), grad_norm);
            }
            report.metric("train/loss", Some(done), step_loss);
            report.metric("train/lr", Some(done), lr);
            let rate = pairs_seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let recent: Vec<f64> = history.iter().rev().take(20).map(|h| h.loss).collect();
            let mean = recent.iter().sum::<f64>() / recent.len().max(1) as f64;
            report.progress(
                done,
                Some(last_step),
                &format!("epoch {} loss {mean:.4} {rate:.1} pairs/s", epoch + 1),
            );

            let at_eval =
                eval_every.map_or(done == epoch_end, |k| done % k == 0) || done == last_step;
            if let (Some(d), true) = (&dev, at_eval) {
                let (loss, m) =
                    evaluate_dev(&model.valid(), &tok, d, spec.task, spec.loss, device)?;
                report.metric(&format!("dev/{metric}"), Some(done), m);
                report.metric("dev/loss", Some(done), loss);
                report.log(&format!("step {done}: dev loss {loss:.4}, {metric} {m:.4}"));
                let e = EvalLog {
                    step: done,
                    loss,
                    metric: m,
                };
                evals.push(e.clone());
                if best.as_ref().is_none_or(|b| m.is_finite() && m > b.metric) {
                    best = Some(e);
                    since_best = 0;
                    save_best(&model)?;
                } else {
                    since_best += 1;
                }
            }
            let checkpoint_due = o.max_steps.is_some_and(|m| done == m)
                || spec.checkpoint_every.is_some_and(|c| done % c == 0)
                || (at_eval && dev.is_some());
            if let (Some(ck), true) = (&spec.checkpoint_dir, checkpoint_due) {
                save_checkpoint(
                    ck,
                    &model,
                    spec,
                    &state,
                    extra(&history, &evals, &loss_scale, state.skipped),
                )?;
            }
            if o.patience.is_some_and(|p| since_best >= p) {
                report.log(&format!(
                    "early stop at step {done}: no {metric} improvement in {since_best} evaluations"
                ));
                stopped_early = true;
                break 'epochs;
            }
        }
    }
    if dev.is_none() {
        save_best(&model)?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(TrainOutcome {
        steps: state.step,
        total_steps: total,
        warmup_steps: warmup,
        train_items: n,
        train_pairs_seen: pairs_seen,
        train_seconds: secs,
        pairs_per_s: pairs_seen as f64 / secs.max(1e-9),
        final_loss: history.last().map_or(f64::NAN, |h| h.loss),
        history,
        evals,
        best,
        metric_name: metric,
        stopped_early,
        resumed_from,
        skipped_steps: state.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranking_file(lines: &[&str]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.jsonl");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        (dir, path)
    }

    fn line(epoch: Option<u64>, q: &str, positives: usize) -> String {
        let mut v = json!({"query_text": q,
            "positives": (0..positives).map(|i| json!({"doc_id": format!("p{i}"), "text": format!("{q} pos {i}")})).collect::<Vec<_>>(),
            "negatives": [{"doc_id": "n", "text": format!("{q} neg e{}", epoch.unwrap_or(0))}]});
        if let Some(e) = epoch {
            // `epoch` first, as sample-negatives writes it.
            let mut m = serde_json::Map::new();
            m.insert("epoch".into(), json!(e));
            m.extend(v.as_object().unwrap().clone());
            v = Value::Object(m);
        }
        v.to_string()
    }

    #[test]
    fn each_training_epoch_takes_exactly_its_draw() {
        // Two draws of three queries; query b has two positives (two items).
        let lines: Vec<String> = (0..2)
            .flat_map(|e| [("a", 1), ("b", 2), ("c", 1)].map(|(q, p)| line(Some(e), q, p)))
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (_d, path) = ranking_file(&refs);
        let t = read_train_items(&path, Task::Ranking, 1).unwrap();
        assert_eq!(t.items.len(), 8);
        let of = t.epochs.clone().unwrap();
        assert_eq!(of, vec![0, 0, 0, 0, 1, 1, 1, 1]);

        let plan = plan_epochs(Some(&of), t.items.len(), 2, None);
        assert_eq!(plan.file_epochs, Some(2));
        assert_eq!(plan.epochs, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
        assert_eq!(plan.mismatch_note(), None);
        for (e, members) in plan.epochs.iter().enumerate() {
            for &i in members {
                let Item::Group { docs, .. } = &t.items[i] else {
                    panic!("a group")
                };
                assert!(docs[1].ends_with(&format!("neg e{e}")), "{docs:?}");
            }
        }
        // More training epochs than draws: e mod E, noted once.
        let plan = plan_epochs(Some(&of), 8, 5, None);
        assert_eq!(plan.epochs.len(), 5);
        assert_eq!(plan.epochs[2], plan.epochs[0]);
        assert_eq!(plan.epochs[3], plan.epochs[1]);
        assert!(plan.mismatch_note().unwrap().contains("e mod 2"));
        // Fewer: the later draws are unused.
        let plan = plan_epochs(Some(&of), 8, 1, None);
        assert_eq!(plan.epochs, vec![vec![0, 1, 2, 3]]);
        assert!(plan.mismatch_note().unwrap().contains("unused"));
        // `limit` applies per epoch.
        let plan = plan_epochs(Some(&of), 8, 2, Some(3));
        assert_eq!(plan.epochs, vec![vec![0, 1, 2], vec![4, 5, 6]]);
        // Without epochs: every item in every epoch, as before.
        let plan = plan_epochs(None, 4, 3, Some(3));
        assert_eq!(plan.epochs, vec![vec![0, 1, 2]; 3]);
        assert_eq!(plan.file_epochs, None);
        assert_eq!(plan.mismatch_note(), None);
    }

    #[test]
    fn lines_without_epoch_keep_every_item_every_epoch() {
        let (a, b) = (line(None, "a", 1), line(None, "b", 1));
        let (_d, path) = ranking_file(&[&a, &b]);
        let t = read_train_items(&path, Task::Ranking, 1).unwrap();
        assert_eq!((t.items.len(), t.epochs), (2, None));
    }

    #[test]
    fn mixed_or_gapped_epochs_are_errors_naming_the_line() {
        let err = |lines: &[String]| {
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let (_d, path) = ranking_file(&refs);
            read_train_items(&path, Task::Ranking, 1)
                .unwrap_err()
                .to_string()
        };
        let e = err(&[line(Some(0), "a", 1), line(None, "b", 1)]);
        assert!(
            e.contains("train.jsonl:2:") && e.contains("no \"epoch\" but line 1 has one"),
            "{e}"
        );
        let e = err(&[line(None, "a", 1), line(Some(0), "b", 1)]);
        assert!(
            e.contains("train.jsonl:2:") && e.contains("has an \"epoch\" but line 1 has none"),
            "{e}"
        );
        let e = err(&[
            line(Some(0), "a", 1),
            line(Some(2), "a", 1),
            line(Some(2), "b", 1),
        ]);
        assert!(
            e.contains("train.jsonl:2:") && e.contains("no line has epoch 1"),
            "{e}"
        );
        let e = err(&[line(Some(1), "a", 1)]);
        assert!(
            e.contains("train.jsonl:1:") && e.contains("no line has epoch 0"),
            "{e}"
        );
        let bad = line(Some(0), "a", 1).replace("\"epoch\":0", "\"epoch\":-1");
        let e = err(&[bad]);
        assert!(
            e.contains("train.jsonl:1:") && e.contains("non-negative integer"),
            "{e}"
        );
    }
}
