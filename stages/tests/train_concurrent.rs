//! Two `train-lora` stages running at once in one process (as the executor runs
//! independent stages) produce exactly the adapters they produce alone: a new head's
//! weights and the dropout masks come from each training's own host-side streams, not
//! from burn's process-wide generator (where their draws would interleave).
#![cfg(feature = "ml")]

mod support;

use std::path::Path;

use serde_json::json;
use support::Quiet;

fn write_pairs(path: &Path) {
    let words = [
        "cat", "dog", "sofa", "river", "guitar", "plays", "sleeps", "man",
    ];
    let mut out = String::new();
    for i in 0..24usize {
        let a: Vec<&str> = (0..4).map(|k| words[(i * 3 + k) % 8]).collect();
        let b: Vec<&str> = (0..4).map(|k| words[(i * 5 + k * 3) % 8]).collect();
        out += &json!({"text_a": a.join(" "), "text_b": b.join(" "), "label": i % 3}).to_string();
        out += "\n";
    }
    std::fs::write(path, out).unwrap();
}

/// A 3-class training with dropout.
fn train(root: &Path, name: &str, seed: u64) -> Vec<u8> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert-3");
    let with = json!({
        "base": base, "train": "pairs.jsonl", "task": "classification", "num_labels": 3,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "targets": ["query", "value"]},
        "optim": {"lr": 5e-3, "epochs": 2, "batch": 4, "seed": seed},
        "max_length": 32
    });
    let outs = support::run_kind("train-lora", root, name, &with, &Quiet).unwrap();
    std::fs::read(outs["adapter"].join("adapter_model.safetensors")).unwrap()
}

#[test]
fn parallel_trainings_give_the_bytes_they_give_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_pairs(&root.join("pairs.jsonl"));
    let alone_a = train(root, "alone-a", 7);
    let alone_b = train(root, "alone-b", 8);
    assert_ne!(alone_a, alone_b, "different seeds must train differently");
    for round in 0..2 {
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| train(root, &format!("a{round}"), 7));
            let b = s.spawn(|| train(root, &format!("b{round}"), 8));
            (a.join().unwrap(), b.join().unwrap())
        });
        assert!(
            a == alone_a,
            "round {round}: seed 7 trained differently beside another training"
        );
        assert!(
            b == alone_b,
            "round {round}: seed 8 trained differently beside another training"
        );
    }
}
