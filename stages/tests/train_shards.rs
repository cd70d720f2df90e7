//! CPU training splits each micro-batch into shards trained on parallel threads. A user
//! must not be able to tell, beyond floating-point rounding: the sharded run trains the
//! adapter the unsharded one trains (the dropout masks are drawn row by row, so each shard
//! draws exactly its rows' masks), and the thread count changes nothing at all.
#![cfg(feature = "ml")]

mod support;

use std::path::{Path, PathBuf};

use serde_json::json;
use support::Quiet;
use tsumugi_stages::lora::LoraSettings;
use tsumugi_stages::peft::TensorSet;
use tsumugi_stages::train::loss::LossKind;
use tsumugi_stages::train::{OptimSettings, Task, TrainOutcome, TrainSpec, train};

type Ad = burn::backend::Autodiff<burn::backend::Flex>;

/// 40 pairs of varied lengths (so shards pad to the micro-batch's longest pair).
fn write_pairs(path: &Path) {
    let words = [
        "cat", "dog", "sofa", "river", "guitar", "plays", "sleeps", "man", "red", "slowly",
    ];
    let mut out = String::new();
    for i in 0..40usize {
        let a: Vec<&str> = (0..3 + i % 5).map(|k| words[(i * 3 + k) % 10]).collect();
        let b: Vec<&str> = (0..2 + i % 7)
            .map(|k| words[(i * 7 + k * 3) % 10])
            .collect();
        let label = (i % 6) as f64 / 5.0;
        out += &json!({"text_a": a.join(" "), "text_b": b.join(" "), "label": label}).to_string();
        out += "\n";
    }
    std::fs::write(path, out).unwrap();
}

fn spec(
    (fixture, targets): (&str, [&str; 2]),
    dir: &Path,
    name: &str,
    shard_pairs: Option<usize>,
) -> TrainSpec {
    let base = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    TrainSpec {
        model_dir: base,
        train: dir.join("pairs.jsonl"),
        dev: None,
        task: Task::Regression,
        loss: LossKind::Mse,
        num_labels: 1,
        lora: LoraSettings {
            r: 4,
            alpha: 8.0,
            dropout: 0.1,
            targets: targets.map(String::from).to_vec(),
            rslora: false,
            train_pooler: false,
            oft: None,
        },
        optim: OptimSettings {
            lr: 5e-3,
            epochs: 2,
            batch: 16,
            seed: 11,
            ..Default::default()
        },
        max_length: 48,
        adapter_out: dir.join(name),
        checkpoint_dir: None,
        checkpoint_every: None,
        dropout_off: false,
        shard_pairs,
        precision: Default::default(),
        fingerprint: String::new(),
    }
}

fn run(spec: &TrainSpec, threads: usize) -> (TrainOutcome, PathBuf) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let outcome = pool
        .install(|| train::<Ad>(spec, &Default::default(), &Quiet))
        .unwrap();
    (outcome, spec.adapter_out.join("adapter_model.safetensors"))
}

fn max_diff(a: &Path, b: &Path) -> f32 {
    let (a, b) = (TensorSet::read(a).unwrap(), TensorSet::read(b).unwrap());
    assert_eq!(
        a.0.keys().collect::<Vec<_>>(),
        b.0.keys().collect::<Vec<_>>()
    );
    let mut worst = 0f32;
    for (k, (shape, x)) in &a.0 {
        let (s, y) = &b.0[k];
        assert_eq!(shape, s, "{k}");
        for (x, y) in x.iter().zip(y) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

fn sharding_changes_only_rounding(model: (&str, [&str; 2])) {
    let fixture = model.0;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_pairs(&dir.join("pairs.jsonl"));
    let (whole, whole_file) = run(&spec(model, dir, "whole", None), 1);
    let (sharded, sharded_file) = run(&spec(model, dir, "sharded", Some(4)), 2);
    let (again, again_file) = run(&spec(model, dir, "one-thread", Some(4)), 1);
    assert_eq!(whole.steps, 6);
    assert_eq!(whole.train_pairs_seen, sharded.train_pairs_seen);
    let d = max_diff(&whole_file, &sharded_file);
    let losses = |o: &TrainOutcome| o.history.iter().map(|h| h.loss).collect::<Vec<_>>();
    let dl = losses(&whole)
        .iter()
        .zip(losses(&sharded))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "{fixture}: 4 shards vs 1, after 6 steps: max |Δ adapter| {d:.2e}, max |Δ loss| {dl:.2e}"
    );
    assert!(d < 1e-5, "{fixture}: sharded adapter differs by {d}");
    assert!(dl < 1e-5, "{fixture}: sharded losses differ by {dl}");
    // Dropout is on: a run without the row-wise masks would differ far more than rounding.
    assert!(losses(&whole).iter().all(|l| l.is_finite()));
    assert_eq!(
        std::fs::read(&sharded_file).unwrap(),
        std::fs::read(&again_file).unwrap(),
        "{fixture}: 1 and 2 threads must train the same bytes"
    );
    assert_eq!(losses(&sharded), losses(&again));
}

#[test]
fn bert_shards_train_what_the_whole_batch_trains() {
    sharding_changes_only_rounding(("bert-1", ["query", "value"]));
}

/// DeBERTa's relative position embeddings are shared by all rows: their dropout (and the
/// LoRA dropout where the shared query/key projections see them) is one mask per site.
#[test]
fn deberta_shards_train_what_the_whole_batch_trains() {
    sharding_changes_only_rounding(("deberta-v3-1", ["query_proj", "key_proj"]));
}
