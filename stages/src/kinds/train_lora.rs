//! `train-lora`: LoRA fine-tuning of a cross-encoder (see [`crate::train`]).
//!
//! ```yaml
//! train:
//!   uses: train-lora
//!   with:
//!     base: models/minilm-l6            # Hugging Face dir: config.json, *.safetensors, tokenizer.json
//!     train: ${stages.pairs.outs.train} # build-pairs JSONL (ranking: group JSONL)
//!     dev: ${stages.pairs.outs.dev}     # optional: evaluation, early stopping, best checkpoint
//!     task: regression                  # regression | classification | ranking
//!     loss: mse                         # mse | bce (regression), cross_entropy, margin | listwise (ranking)
//!     labels: [entailment, neutral, contradiction]   # classification: class names (or num_labels: 3)
//!     lora: {r: 16, alpha: 32, dropout: 0.1, targets: [query, key, value]}
//!     # or, instead of lora:, an orthogonal adapter (PEFT's OFT):
//!     # adapter: {type: oft, block_size: 32, rotation: cayley, targets: [query, value]}
//!     optim: {lr: 5e-4, epochs: 1, batch: 16, seed: 13, warmup: 0.1}
//!     max_length: 128
//!     checkpoint_dir: cache/checkpoints/train  # optional: resume an interrupted run from here
//! ```
//! Outputs: `adapter` (PEFT directory, the head included, and for a one-logit head its
//! activation — identity after MSE, sigmoid otherwise — in `config_sentence_transformers.json`,
//! see [`crate::head`]), `history` (per-step loss, lr,
//! gradient norm; dev evaluations), `metrics` (final numbers the engine records).
//!
//! A ranking `train` file from `sample-negatives` carries `epoch` on every line: training
//! epoch e then uses only the lines of epoch `e mod E` (E = the file's epochs), so the
//! negatives are re-drawn every epoch; `optim.limit` applies to each epoch's items. See
//! [`crate::train::plan_epochs`] and docs/data-formats.md.

// Without `ml` only the descriptor and the `with:` parsing are compiled.
#![cfg_attr(not(feature = "ml"), allow(dead_code, unused_imports))]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::contract::{Reporter, Stage, StageInput};
use crate::kinds::settings::{nullable, present};
use crate::kinds::{KindInfo, SettingsInfo};

pub struct TrainLora;

pub use crate::task::Task;

pub const INFO: KindInfo = KindInfo {
    name: "train-lora",
    // 2: ranking lines with `epoch` train epoch e on draw e mod E only (per-epoch negatives).
    // 3: the last layer runs for the first token only, so dropout draws fewer numbers and a
    //    seeded training takes a different (equally valid) path.
    // 4: a one-logit head's activation recorded in the adapter (config_sentence_transformers.json).
    // 5: dropout masks drawn row by row per micro-batch (the same for every sharding and
    //    backend), and CPU micro-batches split into shards trained on parallel threads.
    version: 5,
    summary: "LoRA fine-tuning of a cross-encoder (regression, classification, ranking); PEFT adapter out",
    input_fields: &["base", "train", "dev"],
    outputs: &[
        ("adapter", "adapter"),
        ("history", "history.json"),
        ("metrics", "metrics.json"),
    ],
    metrics: Some("metrics"),
    per_item: false,
    settings: SettingsInfo::of::<Config>(),
};

/// `lora:` of `train-lora`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoraWith {
    /// Rank (default 16).
    pub r: Option<usize>,
    /// Scaling numerator (default 2·r).
    pub alpha: Option<f64>,
    /// Default 0.1.
    pub dropout: Option<f64>,
    /// Module names to adapt (default: the attention projections of the architecture).
    pub targets: Option<Vec<String>>,
    /// rsLoRA scaling alpha/√r.
    pub rslora: Option<bool>,
    /// Train the pooler in full too.
    pub train_pooler: Option<bool>,
}

/// The kinds of `adapter: {type: …}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AdapterType {
    /// LoRA, as `lora:` configures it (the default).
    Lora,
    /// OFT: block-diagonal rotations of each targeted linear's input (PEFT's `OFTConfig`).
    Oft,
}

/// The rotations of `adapter: {type: oft, rotation: …}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RotationWith {
    /// PEFT's Cayley transform by a 5-term Neumann series: PEFT loads the adapter as is.
    Cayley,
    /// The matrix exponential (exact rotations; PEFT cannot read it, `export` merges it).
    Exp,
}

/// `adapter:` of `train-lora`: which adapter to train. Without it (or with `type: lora`),
/// LoRA as `lora:` says.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdapterWith {
    #[serde(rename = "type")]
    pub kind: AdapterType,
    /// OFT: input features per rotated block (default 32, PEFT's); it must divide the
    /// input size of every targeted linear.
    pub block_size: Option<usize>,
    /// OFT: how a block's rotation is computed (default cayley).
    pub rotation: Option<RotationWith>,
    /// OFT: module names to adapt (default: the architecture's LoRA defaults).
    pub targets: Option<Vec<String>>,
    /// OFT: train the pooler in full too.
    pub train_pooler: Option<bool>,
}

/// `with:` of `train-lora`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The base model: a Hugging Face directory (config.json, *.safetensors, tokenizer.json).
    base: PathBuf,
    /// Training data: build-pairs JSONL (ranking: sample-negatives groups).
    train: PathBuf,
    /// Optional dev data: evaluation, early stopping, best checkpoint.
    dev: Option<PathBuf>,
    task: Task,
    /// regression: mse | bce; classification: cross_entropy; ranking: listwise | margin.
    #[schemars(extend("enum" = ["mse", "bce", "cross_entropy", "listwise", "margin"]))]
    loss: Option<String>,
    /// The margin of the ranking `margin` loss (default 1.0).
    margin: Option<f64>,
    /// classification: the class names (or `num_labels`).
    labels: Option<Vec<String>>,
    num_labels: Option<usize>,
    lora: Option<LoraWith>,
    /// The adapter kind: `{type: oft, …}` trains an orthogonal adapter instead of LoRA.
    adapter: Option<AdapterWith>,
    /// Optimisation settings; each absent key has the trainer's default.
    optim: Option<OptimWith>,
    /// Tokens per pair (default 128).
    max_length: Option<usize>,
    /// Resume an interrupted run from here.
    checkpoint_dir: Option<PathBuf>,
    /// Optimizer steps between checkpoints.
    checkpoint_every: Option<u64>,
    /// f32 (default) | bf16 | f16: the number type of the frozen base linears' products
    /// (half their memory; tensor-core speed on a GPU). The adapter and head train in f32;
    /// f16 scales the loss. wgpu has no bf16.
    precision: Option<crate::precision::Precision>,
}

/// `optim:` of `train-lora` exactly as written: the keys of the trainer's `OptimSettings`
/// (`crate::train`, `ml` builds), each absent key there taking its default. Serializing it
/// gives back the keys that were given, so the trainer reads the same mapping.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OptimWith {
    /// Peak learning rate (default 5e-4).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "f64")]
    pub lr: Option<f64>,
    /// Default 1.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "usize")]
    pub epochs: Option<usize>,
    /// Items (pairs, or ranking groups) per micro-batch (default 16).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "usize")]
    pub batch: Option<usize>,
    /// Default 13.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "u64")]
    pub seed: Option<u64>,
    /// Warmup as a fraction of all optimizer steps (default 0.1).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "f64")]
    pub warmup: Option<f64>,
    /// Warmup in optimizer steps; overrides `warmup`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<u64>")]
    pub warmup_steps: Option<Option<u64>>,
    /// The learning rate's decay after warmup (default linear).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Schedule")]
    pub schedule: Option<Schedule>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "f64")]
    pub beta1: Option<f64>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "f64")]
    pub beta2: Option<f64>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "f64")]
    pub eps: Option<f64>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "f64")]
    pub weight_decay: Option<f64>,
    /// Global gradient-norm limit; null or 0: no clipping (default 1.0).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<f64>")]
    pub grad_clip: Option<Option<f64>>,
    /// Micro-batches per optimizer step (default 1).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "usize")]
    pub grad_accum: Option<usize>,
    /// Evaluate on dev every this many optimizer steps (default: at each epoch's end).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<u64>")]
    pub eval_every: Option<Option<u64>>,
    /// Stop after this many evaluations without improvement.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<u64>")]
    pub patience: Option<Option<u64>>,
    /// Train on the first N items of each epoch only.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<usize>")]
    pub limit: Option<Option<usize>>,
    /// Stop after this many optimizer steps (the schedule still spans all epochs).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<u64>")]
    pub max_steps: Option<Option<u64>>,
}

/// The learning-rate multiplier's shape after warmup (`crate::train::optim::Decay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Schedule {
    Linear,
    Cosine,
    Constant,
}

/// A `with:` path relative to the project root.
pub(crate) fn resolve(root: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

/// The output path of `key`, which the engine must provide.
pub(crate) fn out<'a>(input: &'a StageInput<'_>, key: &str) -> Result<&'a PathBuf> {
    input.outs.get(key).ok_or_else(|| {
        anyhow!(
            "stage {}: the engine gave no path for output {key:?}",
            input.name
        )
    })
}

pub(crate) fn parse<T: for<'de> Deserialize<'de>>(input: &StageInput<'_>, kind: &str) -> Result<T> {
    crate::kinds::settings::parse(input.with)
        .map_err(|e| anyhow!("stage {} ({kind}): with: {e}", input.name))
}

/// Writes JSON atomically.
pub(crate) fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)? + "\n";
    tsumugi_base::atomic::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

impl Stage for TrainLora {
    fn run(&self, input: &StageInput<'_>, report: &dyn Reporter) -> Result<()> {
        let cfg: Config = parse(input, INFO.name)?;
        run(cfg, input, report)
    }
}

#[cfg(not(feature = "ml"))]
fn run(_: Config, input: &StageInput<'_>, _: &dyn Reporter) -> Result<()> {
    bail!(
        "stage {}: train-lora needs a build with the `ml` feature",
        input.name
    )
}

#[cfg(feature = "ml")]
fn run(cfg: Config, input: &StageInput<'_>, report: &dyn Reporter) -> Result<()> {
    use crate::device::DeviceSpec;
    use crate::lora::LoraSettings;
    use crate::models::ModelDir;
    use crate::train::loss::LossKind;
    use crate::train::{OptimSettings, TrainSpec};

    let root = input.project_root;
    let base = resolve(root, &cfg.base);
    let dir = ModelDir::open(&base).with_context(|| format!("stage {}: with.base", input.name))?;
    let num_labels = match (cfg.task, &cfg.labels, cfg.num_labels) {
        (Task::Classification, Some(l), _) => l.len(),
        (Task::Classification, None, Some(n)) => n,
        (Task::Classification, None, None) => bail!(
            "stage {}: task classification needs `labels: [names…]` or `num_labels`",
            input.name
        ),
        _ => 1,
    };
    if num_labels < 1 {
        bail!("stage {}: no labels", input.name);
    }
    let loss = match (cfg.task, cfg.loss.as_deref()) {
        (Task::Regression, None | Some("mse")) => LossKind::Mse,
        (Task::Regression, Some("bce")) => LossKind::Bce,
        (Task::Classification, None | Some("cross_entropy")) => LossKind::CrossEntropy,
        (Task::Ranking, None | Some("listwise")) => LossKind::Listwise,
        (Task::Ranking, Some("margin")) => LossKind::Margin {
            margin: cfg.margin.unwrap_or(1.0),
        },
        (t, Some(other)) => bail!(
            "stage {}: loss {other:?} does not fit task {t:?} (regression: mse | bce; classification: cross_entropy; ranking: listwise | margin)",
            input.name
        ),
    };
    let lw = cfg.lora.clone().unwrap_or(LoraWith {
        r: None,
        alpha: None,
        dropout: None,
        targets: None,
        rslora: None,
        train_pooler: None,
    });
    let r = lw.r.unwrap_or(16);
    let lora = LoraSettings {
        r,
        alpha: lw.alpha.unwrap_or(2.0 * r as f64),
        dropout: lw.dropout.unwrap_or(0.1),
        targets: lw
            .targets
            .unwrap_or_else(|| dir.architecture.default_lora_targets()),
        rslora: lw.rslora.unwrap_or(false),
        train_pooler: lw.train_pooler.unwrap_or(false),
        oft: None,
    };
    let lora = match &cfg.adapter {
        None => lora,
        Some(a) if a.kind == AdapterType::Lora => {
            if a.block_size.is_some() || a.rotation.is_some() || a.targets.is_some() {
                bail!(
                    "stage {}: with.adapter: type lora takes no other keys; LoRA settings go under `lora:`",
                    input.name
                );
            }
            lora
        }
        Some(a) => {
            if cfg.lora.is_some() {
                bail!(
                    "stage {}: with.adapter is type oft, so with.lora does not apply; remove one of them",
                    input.name
                );
            }
            LoraSettings {
                targets: a
                    .targets
                    .clone()
                    .unwrap_or_else(|| dir.architecture.default_lora_targets()),
                train_pooler: a.train_pooler.unwrap_or(false),
                oft: Some(crate::oft::OftSettings {
                    block_size: a.block_size.unwrap_or(32),
                    rotation: match a.rotation.unwrap_or(RotationWith::Cayley) {
                        RotationWith::Cayley => crate::oft::Rotation::Cayley { terms: 5 },
                        RotationWith::Exp => crate::oft::Rotation::Exp,
                    },
                }),
                ..lora
            }
        }
    };
    let optim: OptimSettings = match &cfg.optim {
        // The keys as given (`OptimWith` serializes back to them); absent ones default.
        Some(v) => serde_json::to_value(v)
            .and_then(serde_json::from_value::<OptimSettings>)
            .map_err(|e| anyhow!("stage {}: with.optim: {e}", input.name))?,
        None => OptimSettings::default(),
    };
    let device: DeviceSpec = input.device.parse()?;
    device.check_compiled()?;
    let spec = TrainSpec {
        model_dir: base.clone(),
        train: resolve(root, &cfg.train),
        dev: cfg.dev.as_ref().map(|d| resolve(root, d)),
        task: cfg.task,
        loss,
        num_labels,
        lora,
        optim,
        max_length: cfg.max_length.unwrap_or(128),
        adapter_out: out(input, "adapter")?.clone(),
        checkpoint_dir: cfg.checkpoint_dir.as_ref().map(|d| resolve(root, d)),
        checkpoint_every: cfg.checkpoint_every,
        dropout_off: false,
        shard_pairs: (device == DeviceSpec::Cpu).then_some(crate::train::CPU_SHARD_PAIRS),
        precision: cfg.precision.unwrap_or_default(),
        fingerprint: serde_json::to_string(input.with)?,
    };
    let outcome =
        match device {
            DeviceSpec::Cpu => crate::train::train::<
                burn::backend::Autodiff<crate::device::CpuBackend>,
            >(&spec, &Default::default(), report),
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu(_) => {
                let d = device.wgpu_device();
                crate::device::probe::<crate::device::WgpuBackend>(&device, &d)?;
                crate::train::train::<burn::backend::Autodiff<crate::device::WgpuBackend>>(
                    &spec, &d, report,
                )
            }
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(_) => {
                let d = device.cuda_device();
                crate::device::probe::<crate::device::CudaBackend>(&device, &d)?;
                crate::train::train::<burn::backend::Autodiff<crate::device::CudaBackend>>(
                    &spec, &d, report,
                )
            }
            #[allow(unreachable_patterns)]
            _ => unreachable!("check_compiled rejected backends this build lacks"),
        }
        .with_context(|| format!("stage {} (train-lora)", input.name))?;

    // Class names travel with the adapter so that export and evaluate can name them, and a
    // one-logit head's activation so that evaluate, score, serve and export predict with it.
    if let Some(labels) = &cfg.labels {
        write_json(&spec.adapter_out.join("labels.json"), &json!(labels))?;
    }
    let activation =
        (spec.num_labels == 1).then(|| crate::head::HeadActivation::for_loss(spec.loss.name()));
    if let Some(act) = activation {
        crate::head::write(&spec.adapter_out, act)?;
    }
    let history = json!({
        "task": spec.task,
        "loss": spec.loss.name(),
        "activation": activation.map(|a| a.name()),
        "metric": outcome.metric_name,
        "steps": outcome.history,
        "evals": outcome.evals,
        "best": outcome.best,
        "stopped_early": outcome.stopped_early,
        "resumed_from": outcome.resumed_from,
        "lora": spec.lora,
        "optim": spec.optim,
        "total_steps": outcome.total_steps,
        "warmup_steps": outcome.warmup_steps,
        "precision": spec.precision,
        "skipped_steps": outcome.skipped_steps,
    });
    write_json(out(input, "history")?, &history)?;
    let mut metrics = serde_json::Map::new();
    let mut put = |k: &str, v: f64| {
        report.metric(k, None, v);
        metrics.insert(
            k.to_string(),
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
        );
    };
    put("steps", outcome.steps as f64);
    put("train_items", outcome.train_items as f64);
    put("final_loss", outcome.final_loss);
    let tail: Vec<f64> = outcome
        .history
        .iter()
        .rev()
        .take(20)
        .map(|h| h.loss)
        .collect();
    if !tail.is_empty() {
        put(
            "final_loss_mean_last_20",
            tail.iter().sum::<f64>() / tail.len() as f64,
        );
    }
    put("train_seconds", outcome.train_seconds);
    put("pairs_per_s", outcome.pairs_per_s);
    if spec.precision == crate::precision::Precision::F16 {
        // Steps whose f16 gradients overflowed (skipped, the loss scale halved).
        put("skipped_steps", outcome.skipped_steps as f64);
    }
    if let Some(b) = &outcome.best {
        put(&format!("best_dev_{}", outcome.metric_name), b.metric);
        put("best_step", b.step as f64);
    }
    write_json(out(input, "metrics")?, &Value::Object(metrics))?;
    Ok(())
}

// Compiled with `ml` only: the trainer's `OptimSettings` lives there.
#[cfg(all(test, feature = "ml"))]
mod ml_tests {
    use super::*;

    /// `OptimWith` has exactly the keys of the trainer's `OptimSettings`: every key of the
    /// defaults is accepted, and going through it changes nothing.
    #[test]
    fn optim_with_mirrors_optim_settings() {
        let defaults = crate::train::OptimSettings::default();
        let v = serde_json::to_value(&defaults).unwrap();
        let with: OptimWith = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&with).unwrap(), v);
        let back: crate::train::OptimSettings =
            serde_json::from_value(serde_json::to_value(&with).unwrap()).unwrap();
        assert_eq!(back, defaults);
    }
}
