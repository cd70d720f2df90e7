//! `evaluate`: scores a test JSONL with a base model (+ a LoRA adapter), writes the task's
//! metrics (see [`crate::metrics::report`]), the predictions and plots, and applies gates.
//!
//! ```yaml
//! eval:
//!   uses: evaluate
//!   with:
//!     base: models/minilm-l6
//!     adapter: ${stages.train.outs.adapter}   # optional: the base model alone without it
//!     test: ${stages.pairs.outs.test}         # build-pairs JSONL, or ranking groups (sample-negatives' test)
//!     task: regression                        # regression | classification | ranking
//!     history: ${stages.train.outs.history}   # optional: adds the training-history plot
//!     fail_if: {metric: spearman, below: 0.7} # or a list; `above:` for lower-is-better metrics
//! ```
//! Gates may also compare with a baseline: `baseline:` names a metrics JSON (another
//! evaluate stage's `metrics`, e.g. of the base model or of the adapter in production), and
//! `fail_if: {metric: accuracy, below_baseline: 0.0}` fails when accuracy is below the
//! baseline's value plus the margin 0.0, i.e. when the new model is worse; a positive margin
//! demands that much improvement. `above_baseline: m` is the same for lower-is-better
//! metrics (fails when the value is above the baseline's minus m).
//!
//! Regression also takes `rounded_classes: K` (accuracy / macro-F1 over rounded scores),
//! classification `labels: [names…]` (default: the adapter's `labels.json`), ranking
//! `ks: [1, 5, 10]`. A gate that fails makes the stage fail, naming the metric, its value
//! and the threshold; the metrics are reported to the engine before that.

// Without `ml` only the descriptor and the `with:` parsing are compiled.
#![cfg_attr(not(feature = "ml"), allow(dead_code, unused_imports))]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::contract::{Reporter, Stage, StageInput};
use crate::kinds::train_lora::{out, parse, resolve, write_json};
use crate::kinds::{KindInfo, SettingsInfo};

pub struct Evaluate;

pub const INFO: KindInfo = KindInfo {
    name: "evaluate",
    // 2: one-logit predictions go through the head's recorded activation (metrics say which).
    version: 2,
    summary: "metrics, predictions and plots of a model (+ LoRA adapter) on a test set, with fail_if gates",
    input_fields: &["base", "adapter", "test", "history", "baseline"],
    outputs: &[
        ("metrics", "metrics.json"),
        ("predictions", "predictions.jsonl"),
        ("plots", "plots"),
    ],
    metrics: Some("metrics"),
    per_item: false,
    settings: SettingsInfo::of::<Config>(),
};

/// One `fail_if` gate: the stage fails when `metric` crosses a threshold.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Gate {
    /// A metric this evaluation computes.
    pub metric: String,
    /// Fails when the metric is below this (higher is better).
    pub below: Option<f64>,
    /// Fails when the metric is above this (lower is better).
    pub above: Option<f64>,
    /// Margin over the baseline's value of the same metric (higher is better).
    #[serde(default)]
    pub below_baseline: Option<f64>,
    /// Margin under the baseline's value of the same metric (lower is better).
    #[serde(default)]
    pub above_baseline: Option<f64>,
}

/// One gate or a list of them.
#[derive(Debug, Clone, JsonSchema)]
#[serde(untagged)]
enum Gates {
    One(Gate),
    Many(Vec<Gate>),
}

/// A mapping is one gate, a list several: each parsed as a [`Gate`] so that a mistake in
/// one is named (an untagged enum would only say that nothing matched).
impl<'de> Deserialize<'de> for Gates {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Gates;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a gate {metric, below | above | below_baseline | above_baseline} or a list of them")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Gates, A::Error> {
                Gate::deserialize(MapAccessDeserializer::new(map)).map(Gates::One)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Gates, A::Error> {
                Vec::<Gate>::deserialize(SeqAccessDeserializer::new(seq)).map(Gates::Many)
            }
        }
        d.deserialize_any(V)
    }
}

/// `with:` of `evaluate`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "ml"), allow(dead_code))]
pub(crate) struct Config {
    /// The base model: a Hugging Face directory.
    base: PathBuf,
    /// A PEFT adapter directory (default: the base model alone).
    adapter: Option<PathBuf>,
    /// Test data: build-pairs JSONL, or ranking groups (sample-negatives' test).
    test: PathBuf,
    task: crate::kinds::train_lora::Task,
    /// classification: class names (default: the adapter's labels.json).
    labels: Option<Vec<String>>,
    /// train-lora's history: adds the training-history plot.
    history: Option<PathBuf>,
    /// A metrics JSON to compare with (`below_baseline` / `above_baseline` gates).
    baseline: Option<PathBuf>,
    /// Tokens per pair.
    max_length: Option<usize>,
    /// Pairs per forward pass.
    batch: Option<usize>,
    /// f32 (default) | bf16 | f16: the number type of the encoder layers' products
    /// (see train-lora's `precision`).
    precision: Option<crate::precision::Precision>,
    /// ranking: cut-offs of the metrics (e.g. [1, 5, 10]).
    ks: Option<Vec<usize>>,
    /// regression: accuracy / macro-F1 over scores rounded to this many classes.
    rounded_classes: Option<usize>,
    /// Gates: one or a list.
    fail_if: Option<Gates>,
}

/// Checks `gates` against `metrics`: `Err` with every failed gate named.
pub(crate) fn check_gates(
    stage: &str,
    gates: &[Gate],
    metrics: &Map<String, Value>,
    baseline: Option<&Map<String, Value>>,
) -> Result<()> {
    let mut failed = Vec::new();
    for g in gates {
        if g.below.is_none()
            && g.above.is_none()
            && g.below_baseline.is_none()
            && g.above_baseline.is_none()
        {
            bail!(
                "stage {stage}: fail_if on {:?} needs `below:`, `above:`, `below_baseline:` or `above_baseline:`",
                g.metric
            );
        }
        let v = metrics.get(&g.metric).ok_or_else(|| {
            let known: Vec<&str> = metrics.keys().map(String::as_str).collect();
            anyhow!("stage {stage}: fail_if names metric {:?}, which this evaluation does not compute (it has: {})", g.metric, known.join(", "))
        })?;
        let v = v.as_f64().unwrap_or(f64::NAN);
        if let Some(t) = g.below
            && (v.is_nan() || v < t)
        {
            failed.push(format!("{} = {v:.4} is below {t}", g.metric));
        }
        if let Some(t) = g.above
            && (v.is_nan() || v > t)
        {
            failed.push(format!("{} = {v:.4} is above {t}", g.metric));
        }
        if g.below_baseline.is_some() || g.above_baseline.is_some() {
            let b = baseline
                .ok_or_else(|| {
                    anyhow!(
                        "stage {stage}: fail_if on {:?} compares with a baseline, but `with.baseline` (a metrics JSON) is not given",
                        g.metric
                    )
                })?
                .get(&g.metric)
                .and_then(Value::as_f64)
                .ok_or_else(|| {
                    anyhow!(
                        "stage {stage}: the baseline metrics have no number for {:?}",
                        g.metric
                    )
                })?;
            if let Some(m) = g.below_baseline
                && (v.is_nan() || v < b + m)
            {
                failed.push(format!(
                    "{} = {v:.4} is below the baseline's {b:.4} + {m}",
                    g.metric
                ));
            }
            if let Some(m) = g.above_baseline
                && (v.is_nan() || v > b - m)
            {
                failed.push(format!(
                    "{} = {v:.4} is above the baseline's {b:.4} - {m}",
                    g.metric
                ));
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "stage {stage}: evaluation gate failed: {}",
            failed.join("; ")
        );
    }
    Ok(())
}

impl Stage for Evaluate {
    fn run(&self, input: &StageInput<'_>, report: &dyn Reporter) -> Result<()> {
        let cfg: Config = parse(input, INFO.name)?;
        run(cfg, input, report)
    }
}

#[cfg(not(feature = "ml"))]
fn run(_: Config, input: &StageInput<'_>, _: &dyn Reporter) -> Result<()> {
    bail!(
        "stage {}: evaluate needs a build with the `ml` feature",
        input.name
    )
}

#[derive(Debug)]
#[cfg(feature = "ml")]
struct Row {
    a: String,
    b: String,
    label: f64,
    group: String,
}

#[cfg(feature = "ml")]
fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start_matches('\u{feff}');
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        if v.get("query_text").is_some() {
            rows.extend(group_rows(&v).with_context(at)?);
            continue;
        }
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| anyhow!("{}: expected a string field {k:?}", at()))
        };
        let label = v
            .get("label")
            .and_then(Value::as_f64)
            .ok_or_else(|| anyhow!("{}: expected a number field \"label\"", at()))?;
        let a = s("text_a")?;
        let group = v
            .get("group")
            .and_then(Value::as_str)
            .map_or_else(|| a.clone(), str::to_string);
        rows.push(Row {
            b: s("text_b")?,
            a,
            label,
            group,
        });
    }
    if rows.is_empty() {
        bail!("{}: no rows to evaluate", path.display());
    }
    Ok(rows)
}

/// A ranking group line (`sample-negatives`' valid/test files, seed 003's JSONL:
/// `query_text`, `positives`, `negatives`) as pair rows: every positive with label 1 and
/// every negative with label 0, grouped by the query, so the positives are always reranked.
#[cfg(feature = "ml")]
fn group_rows(v: &Value) -> Result<Vec<Row>> {
    let query = v["query_text"]
        .as_str()
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| anyhow!("field `query_text`: expected a non-empty string"))?;
    let passages = |key: &str, required: bool| -> Result<Vec<String>> {
        let list = match v.get(key) {
            Some(Value::Array(a)) => a.as_slice(),
            None | Some(Value::Null) if !required => &[],
            _ => bail!("field `{key}`: expected an array of {{doc_id, text}}"),
        };
        list.iter()
            .enumerate()
            .map(|(i, p)| {
                p.get("text")
                    .and_then(Value::as_str)
                    .or_else(|| p.as_str())
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("field `{key}[{i}].text`: expected a string"))
            })
            .collect()
    };
    let positives = passages("positives", true)?;
    if positives.is_empty() {
        bail!("field `positives`: a query needs at least one positive");
    }
    let negatives = passages("negatives", false)?;
    let row = |b: String, label: f64| Row {
        a: query.to_string(),
        b,
        label,
        group: query.to_string(),
    };
    Ok(positives
        .into_iter()
        .map(|p| row(p, 1.0))
        .chain(negatives.into_iter().map(|n| row(n, 0.0)))
        .collect())
}

/// Logits of `pairs` with base + adapter (or the base alone) on backend `B`.
#[cfg(feature = "ml")]
fn logits<B: burn::prelude::Backend>(
    base: &Path,
    adapter: Option<&Path>,
    pairs: &[(String, String)],
    opts: &crate::score::ScoreOptions,
    device: &B::Device,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Vec<f32>>> {
    use crate::models::{CrossEncoder, LoadOptions, ModelDir};
    use crate::tokenize::PairTokenizer;
    let (batch, precision) = (opts.batch_size, opts.precision);
    precision.check::<B>(device)?;
    let dir = ModelDir::open(base)?;
    let tok = PairTokenizer::for_model(&dir, opts.max_length, opts.truncation)?;
    let enc = tok.encode_all(pairs)?;
    Ok(match adapter {
        Some(a) => {
            let (mut model, _) = crate::peft::load_adapter::<B>(&dir, a, device)?;
            model.base = model.base.with_precision(precision);
            let mut out = Vec::with_capacity(enc.len());
            for chunk in enc.chunks(batch * 8) {
                out.extend(crate::train::predict(&model, &tok, chunk, batch, device));
                progress(out.len());
            }
            out
        }
        None => {
            let (model, _) = CrossEncoder::<B>::load(&dir, &LoadOptions::default(), device)?;
            let model = model.with_precision(precision);
            crate::score::score_encoded(&model, &tok, &enc, batch, device, progress)
        }
    })
}

#[cfg(feature = "ml")]
fn run(cfg: Config, input: &StageInput<'_>, report: &dyn Reporter) -> Result<()> {
    use crate::device::DeviceSpec;
    use crate::kinds::train_lora::Task;

    let root = input.project_root;
    let base = resolve(root, &cfg.base);
    let adapter = cfg.adapter.as_ref().map(|a| resolve(root, a));
    let rows = read_rows(&resolve(root, &cfg.test))?;
    let pairs: Vec<(String, String)> = rows.iter().map(|r| (r.a.clone(), r.b.clone())).collect();
    let opts = crate::score::ScoreOptions {
        batch_size: cfg.batch.unwrap_or(64).max(1),
        max_length: cfg.max_length.unwrap_or(128),
        truncation: crate::tokenize::Truncation::LongestFirst,
        precision: cfg.precision.unwrap_or_default(),
    };
    let total = pairs.len() as u64;
    let mut progress = |done: usize| report.progress(done as u64, Some(total), "scoring");
    let device: DeviceSpec = input.device.parse()?;
    device.check_compiled()?;
    let ad = adapter.as_deref();
    let logits = match device {
        DeviceSpec::Cpu => logits::<crate::device::CpuBackend>(
            &base,
            ad,
            &pairs,
            &opts,
            &Default::default(),
            &mut progress,
        ),
        #[cfg(feature = "wgpu")]
        DeviceSpec::Wgpu(_) => logits::<crate::device::WgpuBackend>(
            &base,
            ad,
            &pairs,
            &opts,
            &device.wgpu_device(),
            &mut progress,
        ),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(_) => logits::<crate::device::CudaBackend>(
            &base,
            ad,
            &pairs,
            &opts,
            &device.cuda_device(),
            &mut progress,
        ),
        #[allow(unreachable_patterns)]
        _ => unreachable!("check_compiled rejected backends this build lacks"),
    }
    .with_context(|| format!("stage {} (evaluate)", input.name))?;

    let plots = out(input, "plots")?;
    std::fs::create_dir_all(plots).with_context(|| format!("creating {}", plots.display()))?;
    let both = |name: &str, f: &dyn Fn(&Path) -> Result<()>| -> Result<()> {
        for ext in ["png", "svg"] {
            f(&plots.join(format!("{name}.{ext}")))?;
        }
        Ok(())
    };
    let y: Vec<f64> = rows.iter().map(|r| r.label).collect();
    let mut predictions = String::new();
    let metrics = match cfg.task {
        Task::Regression | Task::Ranking => {
            if logits.iter().any(|l| l.len() != 1) {
                bail!(
                    "stage {}: task {:?} needs a one-logit head; this model has {}",
                    input.name,
                    cfg.task,
                    logits[0].len()
                );
            }
            // The head's own prediction: sigmoid(logit) for a BCE-trained head. Without a
            // record (adapters from before it was kept, plain models) the logit, as before.
            let act = crate::head::resolve(&base, adapter.as_deref())?
                .unwrap_or(crate::head::HeadActivation::Identity);
            let p: Vec<f64> = logits.iter().map(|l| act.apply(l[0] as f64)).collect();
            for (r, s) in rows.iter().zip(&p) {
                predictions += &(json!({"text_a": r.a, "text_b": r.b, "label": r.label, "score": s})
                    .to_string() + "\n");
            }
            let mut m = if cfg.task == Task::Regression {
                both("predicted_vs_true", &|path| {
                    crate::plots::predicted_vs_true(path, &y, &p)
                })?;
                crate::metrics::report::regression_report(&y, &p, cfg.rounded_classes)?
            } else {
                let ids: Vec<&str> = rows.iter().map(|r| r.group.as_str()).collect();
                crate::metrics::report::ranking_report(
                    &ids,
                    &y,
                    &p,
                    cfg.ks.as_deref().unwrap_or(&[1, 5, 10]),
                )?
            };
            m.insert("activation".into(), json!(act.name()));
            m
        }
        Task::Classification => {
            let k = logits[0].len();
            let labels = match &cfg.labels {
                Some(l) => l.clone(),
                None => adapter
                    .as_ref()
                    .and_then(|a| std::fs::read_to_string(a.join("labels.json")).ok())
                    .and_then(|t| serde_json::from_str::<Vec<String>>(&t).ok())
                    .unwrap_or_else(|| (0..k).map(|i| format!("class_{i}")).collect()),
            };
            if labels.len() != k {
                bail!(
                    "stage {}: {} label names for a head of {k} logits",
                    input.name,
                    labels.len()
                );
            }
            let mut probs = Vec::with_capacity(k * rows.len());
            for (r, l) in rows.iter().zip(&logits) {
                let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f64> = l.iter().map(|x| ((x - m) as f64).exp()).collect();
                let s: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|x| x / s).collect();
                predictions += &(json!({"text_a": r.a, "text_b": r.b, "label": r.label, "probs": p})
                    .to_string() + "\n");
                probs.extend(p);
            }
            let yi: Vec<usize> = y.iter().map(|&v| v as usize).collect();
            if y.iter()
                .any(|&v| v < 0.0 || v.fract() != 0.0 || v as usize >= k)
            {
                bail!(
                    "stage {}: classification labels must be class indices in 0..{k}",
                    input.name
                );
            }
            let pred = crate::metrics::report::argmax_rows(&probs, k);
            let cm = crate::metrics::confusion_matrix(&yi, &pred, k)?;
            let cm_rows = cm;
            both("confusion_matrix", &|path| {
                crate::plots::confusion_matrix(path, &cm_rows, &labels)
            })?;
            let bins = crate::metrics::calibration_bins(&probs, k, &yi, 15)?;
            both("reliability", &|path| {
                crate::plots::reliability_diagram(path, &bins)
            })?;
            let mut m = crate::metrics::report::classification_report(&yi, &probs, &labels)?;
            m.insert("confusion_matrix".into(), json!(cm_rows));
            m
        }
    };
    if let Some(h) = &cfg.history {
        let h = resolve(root, h);
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(&h).with_context(|| format!("reading {}", h.display()))?,
        )
        .with_context(|| format!("{}: not JSON", h.display()))?;
        let loss: Vec<(u64, f64)> = v["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s["step"].as_u64()?, s["loss"].as_f64()?)))
            .collect();
        let dev: Vec<(u64, f64)> = v["evals"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s["step"].as_u64()?, s["metric"].as_f64()?)))
            .collect();
        let name = v["metric"].as_str().unwrap_or("dev").to_string();
        if !loss.is_empty() {
            both("training_history", &|path| {
                crate::plots::training_history(path, &loss, &dev, &name)
            })?;
        }
    }
    for (k, v) in &metrics {
        if let Some(x) = v.as_f64() {
            report.metric(k, None, x);
        }
    }
    tsumugi_base::atomic::write_atomic(out(input, "predictions")?, predictions.as_bytes())?;
    write_json(out(input, "metrics")?, &Value::Object(metrics.clone()))?;
    let gates = match cfg.fail_if {
        None => vec![],
        Some(Gates::One(g)) => vec![g],
        Some(Gates::Many(g)) => g,
    };
    let baseline = match &cfg.baseline {
        None => None,
        Some(p) => {
            let p = resolve(root, p);
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("reading the baseline metrics {}", p.display()))?;
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: expected a JSON object of metrics", p.display()))?;
            match v {
                Value::Object(m) => Some(m),
                _ => bail!("{}: expected a JSON object of metrics", p.display()),
            }
        }
    };
    check_gates(input.name, &gates, &metrics, baseline.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "ml")]
    #[test]
    fn ranking_group_lines_become_labelled_pairs_of_one_group() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("test.jsonl");
        std::fs::write(
            &p,
            concat!(
                r#"{"epoch":0,"query_text":"q1","positives":[{"doc_id":"a","text":"A"},{"doc_id":"b","text":"B"}],"negatives":[{"doc_id":"n","text":"N"}]}"#,
                "\n",
                r#"{"text_a":"x","text_b":"y","label":0.5}"#,
                "\n"
            ),
        )
        .unwrap();
        let rows = read_rows(&p).unwrap();
        let got: Vec<(&str, &str, f64, &str)> = rows
            .iter()
            .map(|r| (r.a.as_str(), r.b.as_str(), r.label, r.group.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("q1", "A", 1.0, "q1"),
                ("q1", "B", 1.0, "q1"),
                ("q1", "N", 0.0, "q1"),
                ("x", "y", 0.5, "x")
            ]
        );
        std::fs::write(&p, r#"{"query_text":"q","positives":[],"negatives":[]}"#).unwrap();
        let e = format!("{:#}", read_rows(&p).unwrap_err());
        assert!(e.contains("test.jsonl:1") && e.contains("positives"), "{e}");
    }

    #[test]
    fn gates_pass_fail_and_name_unknown_metrics() {
        let m: Map<String, Value> =
            serde_json::from_value(json!({"spearman": 0.65, "rmse": 0.3, "pearson": null}))
                .unwrap();
        let g = |metric: &str, below: Option<f64>, above: Option<f64>| Gate {
            metric: metric.into(),
            below,
            above,
            below_baseline: None,
            above_baseline: None,
        };
        assert!(
            check_gates(
                "eval",
                &[g("spearman", Some(0.6), None), g("rmse", None, Some(0.5))],
                &m,
                None
            )
            .is_ok()
        );
        let e = check_gates("eval", &[g("spearman", Some(0.7), None)], &m, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "stage eval: evaluation gate failed: spearman = 0.6500 is below 0.7"
        );
        let e = check_gates("eval", &[g("rmse", None, Some(0.2))], &m, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rmse = 0.3000 is above 0.2"), "{e}");
        // An undefined metric (null) fails a gate rather than passing it.
        assert!(check_gates("eval", &[g("pearson", Some(0.1), None)], &m, None).is_err());
        let e = check_gates("eval", &[g("accuracy", Some(0.8), None)], &m, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not compute") && e.contains("spearman"),
            "{e}"
        );
    }

    #[test]
    fn baseline_gates_compare_with_the_baseline_metrics() {
        let m: Map<String, Value> =
            serde_json::from_value(json!({"accuracy": 0.86, "ece": 0.05})).unwrap();
        let base: Map<String, Value> =
            serde_json::from_value(json!({"accuracy": 0.84, "ece": 0.04})).unwrap();
        let gate = |metric: &str, below_baseline, above_baseline| Gate {
            metric: metric.into(),
            below: None,
            above: None,
            below_baseline,
            above_baseline,
        };
        // Better than the baseline: passes; demanding +0.05 over it: fails.
        assert!(
            check_gates(
                "eval",
                &[gate("accuracy", Some(0.0), None)],
                &m,
                Some(&base)
            )
            .is_ok()
        );
        let e = check_gates(
            "eval",
            &[gate("accuracy", Some(0.05), None)],
            &m,
            Some(&base),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "stage eval: evaluation gate failed: accuracy = 0.8600 is below the baseline's 0.8400 + 0.05"
        );
        // Lower is better: a worse ECE than the baseline fails.
        let e = check_gates("eval", &[gate("ece", None, Some(0.0))], &m, Some(&base))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ece = 0.0500 is above the baseline's 0.0400 - 0"),
            "{e}"
        );
        // A baseline gate without a baseline is a clear error, not a pass.
        let e = check_gates("eval", &[gate("accuracy", Some(0.0), None)], &m, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`with.baseline`"), "{e}");
    }
}
