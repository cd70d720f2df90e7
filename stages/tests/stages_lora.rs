//! train-lora → evaluate → export run through the engine's contract (`Stage::run` with a
//! `StageInput`, as `tsumugi run` calls them) on M's tiny BERT fixture: outputs where
//! `outs` says, progress and metrics reported, same seed ⇒ identical adapter bytes, an
//! interrupted run resumed from its checkpoint ⇒ the same adapter as an uninterrupted
//! one, gates failing the stage, a merged export that loads as a plain model with the
//! same logits, and a one-logit head's activation (identity after MSE, sigmoid after BCE)
//! carried from train-lora to evaluate, export and the scorer.
//!
//! One #[test]: the steps build on each other's outputs.
#![cfg(feature = "ml")]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use tsumugi_stages::contract::Reporter;

#[derive(Default)]
struct Recorder {
    progress: AtomicU64,
    metrics: Mutex<Vec<(String, Option<u64>, f64)>>,
    lines: Mutex<Vec<String>>,
    /// Report "cancelled" once this many progress calls were made (0 = never).
    cancel_after: u64,
}

impl Reporter for Recorder {
    fn progress(&self, _done: u64, _total: Option<u64>, _message: &str) {
        self.progress.fetch_add(1, Ordering::SeqCst);
    }
    fn metric(&self, name: &str, step: Option<u64>, value: f64) {
        self.metrics
            .lock()
            .unwrap()
            .push((name.into(), step, value));
    }
    fn log(&self, line: &str) {
        self.lines.lock().unwrap().push(line.into());
    }
    fn cancelled(&self) -> bool {
        self.cancel_after > 0 && self.progress.load(Ordering::SeqCst) >= self.cancel_after
    }
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert-1")
}

const WORDS: [&str; 12] = [
    "cat", "dog", "sofa", "river", "guitar", "plays", "sleeps", "runs", "a", "the", "man", "fox",
];

/// Pairs whose label is the word overlap: learnable, deterministic.
fn write_pairs(path: &Path, n: usize, offset: usize) {
    let mut out = String::new();
    for i in 0..n {
        let j = i + offset;
        let a: Vec<&str> = (0..4).map(|k| WORDS[(j * 5 + k * 3) % 12]).collect();
        let b: Vec<&str> = (0..4).map(|k| WORDS[(j * 7 + k) % 12]).collect();
        let overlap = a.iter().filter(|w| b.contains(w)).count() as f64 / 4.0;
        out += &json!({"text_a": a.join(" "), "text_b": b.join(" "), "label": overlap, "group": a.join(" ")}).to_string();
        out += "\n";
    }
    std::fs::write(path, out).unwrap();
}

fn run(
    kind: &str,
    root: &Path,
    name: &str,
    with: Value,
    rep: &Recorder,
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    support::run_kind(kind, root, name, &with, rep)
}

#[test]
fn train_evaluate_export_through_the_stage_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_pairs(&root.join("train.jsonl"), 24, 0);
    write_pairs(&root.join("dev.jsonl"), 8, 100);
    write_pairs(&root.join("test.jsonl"), 10, 200);
    let base = fixture();
    let train_with = |seed: u64, checkpoint: Option<&str>| {
        let mut w = json!({
            "base": base, "train": "train.jsonl", "dev": "dev.jsonl", "task": "regression",
            "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "targets": ["query", "value"]},
            "optim": {"lr": 5e-3, "epochs": 2, "batch": 4, "seed": seed, "eval_every": 3, "grad_accum": 2, "schedule": "cosine"},
            "max_length": 32
        });
        if let Some(c) = checkpoint {
            w["checkpoint_dir"] = json!(c);
            w["checkpoint_every"] = json!(1);
        }
        w
    };
    let rep = Recorder::default();
    let a = run("train-lora", root, "train_a", train_with(7, None), &rep).unwrap();
    let weights = |o: &BTreeMap<String, PathBuf>| {
        std::fs::read(o["adapter"].join("adapter_model.safetensors")).unwrap()
    };

    // Reported: progress per step and per-step loss; 24 pairs / (4 × 2) = 3 steps per epoch.
    assert!(rep.progress.load(Ordering::SeqCst) >= 6);
    let m = rep.metrics.lock().unwrap().clone();
    assert_eq!(
        m.iter()
            .filter(|(n, s, _)| n == "train/loss" && s.is_some())
            .count(),
        6
    );
    assert!(
        m.iter()
            .any(|(n, s, _)| n == "dev/spearman" && *s == Some(3))
    );
    let history: Value =
        serde_json::from_str(&std::fs::read_to_string(&a["history"]).unwrap()).unwrap();
    assert_eq!(history["steps"].as_array().unwrap().len(), 6);
    assert_eq!(history["evals"].as_array().unwrap().len(), 2);
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(&a["metrics"]).unwrap()).unwrap();
    assert_eq!(metrics["steps"], 6.0);
    assert!(metrics["best_dev_spearman"].is_number(), "{metrics}");

    // Same seed ⇒ identical bytes; another seed ⇒ other bytes.
    let b = run(
        "train-lora",
        root,
        "train_b",
        train_with(7, None),
        &Recorder::default(),
    )
    .unwrap();
    assert!(
        weights(&a) == weights(&b),
        "same seed, different adapter bytes"
    );
    let c = run(
        "train-lora",
        root,
        "train_c",
        train_with(8, None),
        &Recorder::default(),
    )
    .unwrap();
    assert!(weights(&a) != weights(&c));

    // Interrupted after 4 steps, resumed from the checkpoint: the same adapter.
    let stop = Recorder {
        cancel_after: 4,
        ..Default::default()
    };
    let err = run(
        "train-lora",
        root,
        "train_d",
        train_with(7, Some("ck")),
        &stop,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("cancelled"), "{err:#}");
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("ck/train_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], 4);
    let rep = Recorder::default();
    let d = run(
        "train-lora",
        root,
        "train_d",
        train_with(7, Some("ck")),
        &rep,
    )
    .unwrap();
    assert!(
        rep.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("resuming from") && l.contains("step 4"))
    );
    assert!(
        weights(&a) == weights(&d),
        "resumed run differs from the uninterrupted one"
    );

    // evaluate: metrics, predictions, plots; a gate that passes and one that fails.
    let eval_with = |below: f64| {
        json!({"base": base, "adapter": a["adapter"], "test": "test.jsonl", "task": "regression",
               "history": a["history"], "max_length": 32, "fail_if": {"metric": "spearman", "below": below}})
    };
    let rep = Recorder::default();
    let e = run("evaluate", root, "eval", eval_with(-2.0), &rep).unwrap();
    let em: Value = serde_json::from_str(&std::fs::read_to_string(&e["metrics"]).unwrap()).unwrap();
    for k in ["rmse", "mse", "r2", "pearson", "spearman"] {
        assert!(em.get(k).is_some(), "{k} in {em}");
    }
    assert_eq!(
        std::fs::read_to_string(&e["predictions"])
            .unwrap()
            .lines()
            .count(),
        10
    );
    for f in [
        "predicted_vs_true.png",
        "predicted_vs_true.svg",
        "training_history.png",
        "training_history.svg",
    ] {
        assert!(e["plots"].join(f).is_file(), "{f}");
    }
    assert!(
        rep.metrics
            .lock()
            .unwrap()
            .iter()
            .any(|(n, s, _)| n == "spearman" && s.is_none())
    );
    let err = run(
        "evaluate",
        root,
        "eval_gate",
        eval_with(1.5),
        &Recorder::default(),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("evaluation gate failed: spearman =") && msg.contains("is below 1.5"),
        "{msg}"
    );

    // export, merged: a plain checkpoint with the adapter's logits.
    let x = run(
        "export",
        root,
        "export",
        json!({"base": base, "adapter": a["adapter"], "merge": true}),
        &Recorder::default(),
    )
    .unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "export.json",
    ] {
        assert!(x["model"].join(f).is_file(), "{f}");
    }
    use burn::backend::Flex;
    use tsumugi_stages::models::{CrossEncoder, LoadOptions, ModelDir, ModelInput};
    use tsumugi_stages::tokenize::{PairTokenizer, Truncation};
    let dir = ModelDir::open(&base).unwrap();
    let tok = PairTokenizer::for_model(&dir, 32, Truncation::LongestFirst).unwrap();
    let batch = tok
        .encode_batch(&[
            ("a cat sleeps", "the dog runs"),
            ("a man plays guitar", "the fox"),
        ])
        .unwrap();
    let dev = Default::default();
    let input = ModelInput::<Flex>::from_batch(&batch, &dev);
    let (lora, _) = tsumugi_stages::peft::load_adapter::<Flex>(&dir, &a["adapter"], &dev).unwrap();
    let want = tsumugi_stages::peft::values(lora.forward(&input));
    let (merged, report) = CrossEncoder::<Flex>::load(
        &ModelDir::open(&x["model"]).unwrap(),
        &LoadOptions::default(),
        &dev,
    )
    .unwrap();
    assert!(report.unused.is_empty(), "{:?}", report.unused);
    let got = tsumugi_stages::peft::values(merged.forward(&input));
    let diff = want
        .iter()
        .zip(&got)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max);
    assert!(diff <= 1e-5, "merged export vs base + adapter: {diff}");
    // For scripts/check_export.py (transformers loads the merged export): keep copies.
    if let Some(keep) = std::env::var_os("TSUMUGI_EXPORT_CHECK_DIR").map(PathBuf::from) {
        for (from, to) in [(&x["model"], "model"), (&a["adapter"], "adapter")] {
            std::fs::create_dir_all(keep.join(to)).unwrap();
            for f in std::fs::read_dir(from).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, keep.join(to).join(f.file_name().unwrap())).unwrap();
            }
        }
    }
    // Adapter-only export: the PEFT files, untouched.
    let y = run(
        "export",
        root,
        "export_adapter",
        json!({"base": base, "adapter": a["adapter"]}),
        &Recorder::default(),
    )
    .unwrap();
    assert!(std::fs::read(y["model"].join("adapter_model.safetensors")).unwrap() == weights(&a));

    // The head's activation travels with the adapter: MSE → identity, BCE → sigmoid.
    use tsumugi_stages::head::{self, HeadActivation};
    use tsumugi_stages::score::{ScoreOptions, Scorer};
    assert_eq!(
        head::read(&a["adapter"]).unwrap(),
        Some(HeadActivation::Identity)
    );
    assert_eq!(em["activation"], "identity");
    let mut bce_with = train_with(7, None);
    bce_with["loss"] = json!("bce");
    let bce = run(
        "train-lora",
        root,
        "train_bce",
        bce_with,
        &Recorder::default(),
    )
    .unwrap();
    let st: Value = serde_json::from_str(
        &std::fs::read_to_string(bce["adapter"].join(head::ST_CONFIG_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(st["activation_fn"], "torch.nn.modules.activation.Sigmoid");
    let eb = run(
        "evaluate",
        root,
        "eval_bce",
        json!({"base": base, "adapter": bce["adapter"], "test": "test.jsonl", "task": "regression", "max_length": 32}),
        &Recorder::default(),
    )
    .unwrap();
    let ebm: Value =
        serde_json::from_str(&std::fs::read_to_string(&eb["metrics"]).unwrap()).unwrap();
    assert_eq!(ebm["activation"], "sigmoid");
    // Predictions (and so RMSE/R²) are sigmoid(logit): in (0, 1), equal to the sigmoid of
    // the adapter's own logits.
    let (bce_model, _) =
        tsumugi_stages::peft::load_adapter::<Flex>(&dir, &bce["adapter"], &dev).unwrap();
    let test_rows: Vec<Value> = std::fs::read_to_string(root.join("test.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first: Vec<(&str, &str)> = test_rows[..2]
        .iter()
        .map(|r| (r["text_a"].as_str().unwrap(), r["text_b"].as_str().unwrap()))
        .collect();
    let logits = tsumugi_stages::peft::values(bce_model.forward(&ModelInput::<Flex>::from_batch(
        &tok.encode_batch(&first).unwrap(),
        &dev,
    )));
    let preds: Vec<f64> = std::fs::read_to_string(&eb["predictions"])
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["score"]
                .as_f64()
                .unwrap()
        })
        .collect();
    for (p, l) in preds.iter().zip(&logits) {
        let want = 1.0 / (1.0 + (-f64::from(*l)).exp());
        assert!((p - want).abs() < 1e-5, "prediction {p} vs sigmoid({l})");
    }
    let rmse_sigmoid = (preds
        .iter()
        .zip(&test_rows)
        .map(|(p, r)| (p - r["label"].as_f64().unwrap()).powi(2))
        .sum::<f64>()
        / preds.len() as f64)
        .sqrt();
    assert!(
        (ebm["rmse"].as_f64().unwrap() - rmse_sigmoid).abs() < 1e-9,
        "{ebm}"
    );
    // The merged export records it for sentence-transformers, and the scorer applies it.
    let xb = run(
        "export",
        root,
        "export_bce",
        json!({"base": base, "adapter": bce["adapter"], "merge": true}),
        &Recorder::default(),
    )
    .unwrap();
    assert_eq!(
        head::read(&xb["model"]).unwrap(),
        Some(HeadActivation::Sigmoid)
    );
    let scorer = Scorer::load(
        &xb["model"],
        tsumugi_stages::device::DeviceSpec::Cpu,
        ScoreOptions::default(),
    )
    .unwrap();
    assert_eq!(scorer.activation(), HeadActivation::Sigmoid);
    let mse_scorer = Scorer::load(
        &x["model"],
        tsumugi_stages::device::DeviceSpec::Cpu,
        ScoreOptions::default(),
    )
    .unwrap();
    assert_eq!(mse_scorer.activation(), HeadActivation::Identity);
    let raw = mse_scorer
        .score(&[("a cat sleeps", "the dog runs")], &mut |_| {})
        .unwrap();
    assert_eq!(
        mse_scorer.interpret(&raw[0]),
        tsumugi_stages::score::Interpreted::Score(raw[0][0])
    );

    // Bad input: a clear error naming the field.
    let err = run(
        "train-lora",
        root,
        "bad",
        json!({"base": base, "train": "train.jsonl", "task": "regresion"}),
        &Recorder::default(),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("regresion"), "{err:#}");

    // An OFT adapter through the same stages: trained (the loss falls), saved in PEFT's
    // OFT format, merged on export with the adapter's logits.
    let oft_with = |adapter: Value| {
        json!({
            "base": base, "train": "train.jsonl", "task": "regression", "adapter": adapter,
            "optim": {"lr": 2e-2, "epochs": 3, "batch": 4, "seed": 7},
            "max_length": 32
        })
    };
    let rep = Recorder::default();
    let o = run(
        "train-lora",
        root,
        "train_oft",
        oft_with(
            json!({"type": "oft", "block_size": 8, "targets": ["query", "value", "output.dense"]}),
        ),
        &rep,
    )
    .unwrap();
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(o["adapter"].join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "OFT");
    assert_eq!(config["oft_block_size"], 8);
    let losses: Vec<f64> = rep
        .metrics
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, s, _)| n == "train/loss" && s.is_some())
        .map(|(_, _, v)| *v)
        .collect();
    let third = losses.len() / 3;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&losses[losses.len() - third..]) < mean(&losses[..third]),
        "OFT training lowers the loss: {losses:?}"
    );
    let (oft, _) = tsumugi_stages::peft::load_adapter::<Flex>(&dir, &o["adapter"], &dev).unwrap();
    let want = tsumugi_stages::peft::values(oft.forward(&input));
    let xo = run(
        "export",
        root,
        "export_oft",
        json!({"base": base, "adapter": o["adapter"], "merge": true}),
        &Recorder::default(),
    )
    .unwrap();
    let (merged, _) = CrossEncoder::<Flex>::load(
        &ModelDir::open(&xo["model"]).unwrap(),
        &LoadOptions::default(),
        &dev,
    )
    .unwrap();
    let got = tsumugi_stages::peft::values(merged.forward(&input));
    let diff = want
        .iter()
        .zip(&got)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max);
    assert!(diff <= 1e-5, "merged OFT export vs base + adapter: {diff}");
    let mut both = oft_with(json!({"type": "oft"}));
    both["lora"] = json!({"r": 4});
    let err = run("train-lora", root, "bad_oft", both, &Recorder::default()).unwrap_err();
    assert!(
        format!("{err:#}").contains("with.adapter is type oft, so with.lora does not apply"),
        "{err:#}"
    );
    let err = run(
        "train-lora",
        root,
        "bad_block",
        oft_with(json!({"type": "oft", "block_size": 5})),
        &Recorder::default(),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("block_size 5 does not divide the 32 input features"),
        "{err:#}"
    );
}

/// `precision: bf16` through the stage contract (on the CPU, where flex has bf16): the
/// adapter trains and evaluates; it is not the f32 run's (the products round in bf16) but
/// scores the test set like it. A misspelt precision is refused naming the choices.
#[test]
fn train_and_evaluate_in_bf16() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_pairs(&root.join("train.jsonl"), 24, 0);
    write_pairs(&root.join("test.jsonl"), 10, 200);
    let base = fixture();
    let train_with = |precision: &str| {
        json!({
            "base": base, "train": "train.jsonl", "task": "regression",
            "lora": {"r": 4, "alpha": 8, "targets": ["query", "value"]},
            "optim": {"lr": 5e-3, "epochs": 2, "batch": 4}, "max_length": 32,
            "precision": precision
        })
    };
    let rep = Recorder::default();
    let half = run("train-lora", root, "half", train_with("bf16"), &rep).unwrap();
    let full = run("train-lora", root, "full", train_with("f32"), &rep).unwrap();
    let weights = |o: &BTreeMap<String, PathBuf>| {
        std::fs::read(o["adapter"].join("adapter_model.safetensors")).unwrap()
    };
    assert!(
        weights(&half) != weights(&full),
        "bf16 trained the f32 bytes"
    );
    let spearman = |name: &str, adapter: &Path, precision: &str| -> f64 {
        let with = json!({"base": base, "adapter": adapter, "test": "test.jsonl",
                          "task": "regression", "max_length": 32, "precision": precision});
        let e = run("evaluate", root, name, with, &Recorder::default()).unwrap();
        let m: Value =
            serde_json::from_str(&std::fs::read_to_string(&e["metrics"]).unwrap()).unwrap();
        m["spearman"].as_f64().unwrap()
    };
    let (h, f) = (
        spearman("eval_half", &half["adapter"], "bf16"),
        spearman("eval_full", &full["adapter"], "f32"),
    );
    println!("test Spearman: bf16 {h:.4}, f32 {f:.4}");
    assert!((h - f).abs() <= 0.1, "bf16 {h} vs f32 {f}");

    let err = run("train-lora", root, "bad", train_with("fp16"), &rep).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("precision") && msg.contains("f16"), "{msg}");
}
