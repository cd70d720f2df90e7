//! LoRA fine-tuning of a cross-encoder on an autodiff backend: the engine of `train-lora`.
//!
//! One optimizer step = `grad_accum` micro-batches of `batch` items, each padded to its
//! longest pair; gradients are summed with weights `items / step items`, so a step's loss
//! is the mean over all its items whatever the accumulation. Then global-norm clipping,
//! AdamW and the schedule of [`optim`].
//!
//! Determinism and resuming: every random draw is derived from `(seed, position)`: the
//! LoRA init from `seed`, epoch `e`'s shuffle from `(seed, e)`, and the backend's RNG
//! (dropout masks) is re-seeded at every optimizer step `k` from `(seed, k)`. A checkpoint
//! therefore needs no RNG state beyond the step: it holds the adapter, AdamW's moments and
//! the step count, and a resumed run continues bit for bit as the uninterrupted one.

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
use crate::lora::{LoraModel, LoraSettings, SplitMix};
use crate::models::{CrossEncoder, LoadOptions, ModelDir, ModelInput};
use crate::peft::{self, TensorSet, write_atomic};
use crate::tokenize::{EncodedPair, PairTokenizer, Truncation, length_batches};
use loss::LossKind;
use optim::{AdamWConfig, AdamWState, Decay};

pub use crate::kinds::train_lora::Task;

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
    /// Train on the first N items of the training file only.
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
/// `positives[]`, `negatives[]`) for ranking. Errors name the file and line.
pub fn read_items(path: &Path, task: Task, num_labels: usize) -> Result<Vec<Item>> {
    let text = std::fs::read_to_string(path).map_err(|e| MlError::io(path, e))?;
    let mut items = Vec::new();
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
    Ok(items)
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

/// The loss of one micro-batch of items `idx` (autodiff) and its number of pairs.
fn batch_loss<B: Backend>(
    model: &LoraModel<B>,
    tok: &PairTokenizer,
    enc: &Encoded,
    idx: &[usize],
    kind: LossKind,
    device: &B::Device,
) -> (Tensor<B, 1>, usize) {
    let mut items: Vec<&EncodedPair> = Vec::new();
    for &i in idx {
        let (start, n) = enc.spans[i];
        items.extend(&enc.pairs[start..start + n]);
    }
    let input = ModelInput::<B>::from_batch(&tok.pad(&items), device);
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
    arch: crate::models::Architecture,
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
        arch,
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
    Ok((AdamWState { step, moments }, st["extra"].clone()))
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
    spec.lora.validate()?;
    let o = &spec.optim;
    let dir = ModelDir::open(&spec.model_dir)?;
    let tok = PairTokenizer::for_model(&dir, spec.max_length, Truncation::LongestFirst)?;
    let mut items = read_items(&spec.train, spec.task, spec.num_labels)?;
    if let Some(limit) = o.limit {
        items.truncate(limit);
    }
    let enc = encode_items(&tok, &items)?;
    let dev = match &spec.dev {
        Some(p) => {
            let d = read_items(p, spec.task, spec.num_labels)?;
            Some(encode_items(&tok, &d)?)
        }
        None => None,
    };
    let n = items.len();
    drop(items);

    let micro_per_epoch = n.div_ceil(o.batch);
    let steps_per_epoch = micro_per_epoch.div_ceil(o.grad_accum) as u64;
    let total = steps_per_epoch * o.epochs as u64;
    let warmup = o.warmup_steps.unwrap_or((o.warmup * total as f64) as u64);
    let last_step = o.max_steps.map_or(total, |m| m.min(total));

    // The backend RNG initialises a missing head; seed it so that is reproducible too.
    B::seed(device, mix(o.seed, u64::MAX));
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
    let arch = dir.architecture;
    let metric = metric_name(spec.task);
    let mut history: Vec<StepLog> = Vec::new();
    let mut evals: Vec<EvalLog> = Vec::new();
    let mut best: Option<EvalLog> = None;
    let mut since_best = 0u64;
    if let Some(extra) = &resumed_extra {
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
    let eval_every = o.eval_every.unwrap_or(steps_per_epoch);
    let started = Instant::now();
    let mut pairs_seen = 0u64;
    let mut stopped_early = false;
    let save_best = |model: &LoraModel<B>| {
        peft::save_adapter(
            model,
            &spec.lora,
            arch,
            &spec.model_dir.display().to_string(),
            &spec.adapter_out,
        )
    };

    let extra = |history: &[StepLog], evals: &[EvalLog]| {
        json!({
            "history": history.iter().map(|h| (h.step, h.epoch, h.loss, h.lr, h.grad_norm)).collect::<Vec<_>>(),
            "evals": evals.iter().map(|e| (e.step, e.loss, e.metric)).collect::<Vec<_>>(),
        })
    };

    'epochs: for epoch in 0..o.epochs {
        let order = SplitMix(mix(o.seed, epoch as u64)).permutation(n);
        let micro: Vec<&[usize]> = order.chunks(o.batch).collect();
        for (k_in_epoch, group) in micro.chunks(o.grad_accum).enumerate() {
            let step = epoch as u64 * steps_per_epoch + k_in_epoch as u64;
            if step < state.step {
                continue; // done before the checkpoint we resumed from
            }
            if step >= last_step {
                break 'epochs;
            }
            if report.cancelled() {
                return Err(MlError::Input("training cancelled".into()));
            }
            B::seed(device, mix(o.seed, step));
            let step_items: usize = group.iter().map(|m| m.len()).sum();
            let mut grads: optim::Grads<B> = Vec::new();
            let mut step_loss = 0.0;
            for idx in group {
                let (loss, pairs) = batch_loss(&model, &tok, &enc, idx, spec.loss, device);
                let w = idx.len() as f64 / step_items as f64;
                let loss = loss.mul_scalar(w);
                step_loss += loss.clone().into_scalar().elem::<f64>();
                let g = loss.backward();
                optim::accumulate::<B>(&mut grads, optim::collect_grads(&model, &g));
                pairs_seen += pairs as u64;
            }
            if !step_loss.is_finite() {
                return Err(MlError::Input(format!(
                    "step {}: the loss is {step_loss}; lower optim.lr or check the labels",
                    step + 1
                )));
            }
            let grad_norm = match o.grad_clip.filter(|c| *c > 0.0) {
                Some(c) => optim::clip_grad_norm::<B>(&mut grads, c),
                None => optim::global_norm::<B>(&grads),
            };
            let lr = o.lr * optim::lr_factor(o.schedule, step, warmup, total);
            model = optim::adamw_step(model, grads, lr, o.adamw(), &mut state);
            let done = state.step;
            history.push(StepLog {
                step: done,
                epoch,
                loss: step_loss,
                lr,
                grad_norm,
            });
            report.metric("train/loss", Some(done), step_loss);
            report.metric("train/lr", Some(done), lr);
            report.metric("train/grad_norm", Some(done), grad_norm);
            let rate = pairs_seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let recent: Vec<f64> = history.iter().rev().take(20).map(|h| h.loss).collect();
            let mean = recent.iter().sum::<f64>() / recent.len() as f64;
            report.progress(
                done,
                Some(last_step),
                &format!("epoch {} loss {mean:.4} {rate:.1} pairs/s", epoch + 1),
            );

            let at_eval = done % eval_every == 0 || done == last_step;
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
                save_checkpoint(ck, &model, spec, arch, &state, extra(&history, &evals))?;
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
    })
}
