//! `train-lora` on a ranking file with per-epoch negatives (`sample-negatives`' layout):
//! epoch e trains on the lines with `epoch == e` only, so two draws train differently from
//! one draw repeated; a file of one draw with `epoch: 0` trains exactly as the same lines
//! without `epoch`; an interrupted run resumes to the same bytes.
//!
//! One #[test] on purpose: burn's CPU backend has one process-wide RNG, so trainings in
//! parallel test threads would perturb each other's draws.
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
    lines: Mutex<Vec<String>>,
    /// Report "cancelled" once this many progress calls were made (0 = never).
    cancel_after: u64,
}

impl Reporter for Recorder {
    fn progress(&self, _: u64, _: Option<u64>, _: &str) {
        self.progress.fetch_add(1, Ordering::SeqCst);
    }
    fn metric(&self, _: &str, _: Option<u64>, _: f64) {}
    fn log(&self, line: &str) {
        self.lines.lock().unwrap().push(line.into());
    }
    fn cancelled(&self) -> bool {
        self.cancel_after > 0 && self.progress.load(Ordering::SeqCst) >= self.cancel_after
    }
}

const WORDS: [&str; 12] = [
    "cat", "dog", "sofa", "river", "guitar", "plays", "sleeps", "runs", "a", "the", "man", "fox",
];

fn text(seed: usize) -> String {
    (0..5)
        .map(|k| WORDS[(seed * 7 + k * 5 + seed / 3) % 12])
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line per (epoch, query) as sample-negatives writes them; `with_epoch: false`
/// leaves the field out. Epoch e's negatives differ from epoch e'.
fn write_groups(path: &Path, epochs: &[u64], with_epoch: bool) {
    let mut out = String::new();
    for &e in epochs {
        for q in 0..8usize {
            let mut line = serde_json::Map::new();
            if with_epoch {
                line.insert("epoch".into(), json!(e));
            }
            line.insert("query_text".into(), json!(text(q)));
            line.insert(
                "positives".into(),
                json!([{"doc_id": format!("p{q}"), "text": text(q + 1)}]),
            );
            let negs: Vec<Value> = (0..3)
                .map(|k| {
                    let d = 20 + q * 5 + k + 50 * e as usize;
                    json!({"doc_id": format!("n{d}"), "text": text(d)})
                })
                .collect();
            line.insert("negatives".into(), Value::Array(negs));
            out += &Value::Object(line).to_string();
            out += "\n";
        }
    }
    std::fs::write(path, out).unwrap();
}

fn train(
    root: &Path,
    name: &str,
    train: &str,
    checkpoint: Option<&str>,
    rep: &Recorder,
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert-1");
    let mut with = json!({
        "base": base, "train": train, "task": "ranking",
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "targets": ["query", "value"]},
        "optim": {"lr": 5e-3, "epochs": 2, "batch": 2, "seed": 5},
        "max_length": 32
    });
    if let Some(c) = checkpoint {
        with["checkpoint_dir"] = json!(c);
        with["checkpoint_every"] = json!(1);
    }
    support::run_kind("train-lora", root, name, &with, rep)
}

fn weights(o: &BTreeMap<String, PathBuf>) -> Vec<u8> {
    std::fs::read(o["adapter"].join("adapter_model.safetensors")).unwrap()
}

fn metrics(o: &BTreeMap<String, PathBuf>) -> Value {
    serde_json::from_str(&std::fs::read_to_string(&o["metrics"]).unwrap()).unwrap()
}

#[test]
fn each_epoch_trains_on_its_own_draw_of_negatives() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_groups(&root.join("two.jsonl"), &[0, 1], true);
    write_groups(&root.join("one.jsonl"), &[0], true);
    write_groups(&root.join("plain.jsonl"), &[0], false);

    // Two draws: 8 groups per epoch, batch 2 ⇒ 4 steps per epoch, 8 in all (training on
    // all 16 lines every epoch would make 16).
    let rep = Recorder::default();
    let two = train(root, "two", "two.jsonl", None, &rep).unwrap();
    let m = metrics(&two);
    assert_eq!(
        (m["steps"].as_f64(), m["train_items"].as_f64()),
        (Some(8.0), Some(8.0)),
        "{m}"
    );
    assert!(rep.lines.lock().unwrap().iter().all(|l| !l.contains("mod")));

    // One draw repeated (epoch e uses draw e mod 1, said in the log) ...
    let rep = Recorder::default();
    let one = train(root, "one", "one.jsonl", None, &rep).unwrap();
    assert_eq!(metrics(&one)["steps"].as_f64(), Some(8.0));
    assert!(
        rep.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("e mod 1")),
        "{:?}",
        rep.lines.lock().unwrap()
    );
    // ... is what the same lines without `epoch` train to, and not what two draws give.
    let plain = train(root, "plain", "plain.jsonl", None, &Recorder::default()).unwrap();
    assert!(weights(&one) == weights(&plain), "epoch 0 only vs no epoch");
    assert!(weights(&two) != weights(&one), "two draws train like one");

    // Interrupted in the second epoch, resumed: the same bytes as the uninterrupted run.
    let stop = Recorder {
        cancel_after: 6,
        ..Default::default()
    };
    let err = train(root, "two_ck", "two.jsonl", Some("ck"), &stop).unwrap_err();
    assert!(format!("{err:#}").contains("cancelled"), "{err:#}");
    let rep = Recorder::default();
    let resumed = train(root, "two_ck", "two.jsonl", Some("ck"), &rep).unwrap();
    assert!(
        rep.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("resuming from") && l.contains("step 6")),
        "{:?}",
        rep.lines.lock().unwrap()
    );
    assert!(weights(&two) == weights(&resumed), "resumed run differs");

    // A file mixing lines with and without `epoch` is refused, naming file:line.
    let mixed = std::fs::read_to_string(root.join("one.jsonl")).unwrap()
        + &std::fs::read_to_string(root.join("plain.jsonl")).unwrap();
    std::fs::write(root.join("mixed.jsonl"), mixed).unwrap();
    let err = train(root, "mixed", "mixed.jsonl", None, &Recorder::default()).unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("mixed.jsonl:9:") && err.contains("\"epoch\""),
        "{err}"
    );
}
