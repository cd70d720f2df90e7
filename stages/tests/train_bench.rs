//! The tsumugi side of `benches/train/run.sh` (LoRA training throughput): not a timed test,
//! ignored by default. Trains on `$TSUMUGI_BENCH_PAIRS` (build-pairs JSONL) with the
//! quickstart recipe and prints one JSON line: pairs/s and the run's settings.
//!
//!     TSUMUGI_BENCH_MODEL=models/minilm-l6 TSUMUGI_BENCH_PAIRS=out/bench-train/train.jsonl \
//!       TSUMUGI_BENCH_LIMIT=160 cargo test -p tsumugi-stages --features ml --test train_bench -- --ignored --nocapture
#![cfg(feature = "ml")]

use std::path::PathBuf;

use tsumugi_stages::contract::Reporter;
use tsumugi_stages::lora::LoraSettings;
use tsumugi_stages::train::loss::LossKind;
use tsumugi_stages::train::{OptimSettings, Task, TrainSpec, train};

struct Quiet;
impl Reporter for Quiet {
    fn progress(&self, done: u64, total: Option<u64>, message: &str) {
        eprintln!("{done}/{} {message}", total.unwrap_or(0));
    }
    fn metric(&self, _: &str, _: Option<u64>, _: f64) {}
    fn log(&self, line: &str) {
        eprintln!("{line}");
    }
    fn cancelled(&self) -> bool {
        false
    }
}

#[test]
#[ignore = "benchmark: run by benches/train/run.sh"]
fn lora_training_throughput() {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("set {k}"));
    let limit: usize = env("TSUMUGI_BENCH_LIMIT").parse().unwrap();
    let batch: usize = std::env::var("TSUMUGI_BENCH_BATCH").ok().and_then(|b| b.parse().ok()).unwrap_or(16);
    let out = tempfile::tempdir().unwrap();
    let spec = TrainSpec {
        model_dir: PathBuf::from(env("TSUMUGI_BENCH_MODEL")),
        train: PathBuf::from(env("TSUMUGI_BENCH_PAIRS")),
        dev: None,
        task: Task::Regression,
        loss: LossKind::Mse,
        num_labels: 1,
        lora: LoraSettings {
            r: 16,
            alpha: 32.0,
            dropout: 0.1,
            targets: ["query", "key", "value"].map(String::from).to_vec(),
            rslora: false,
            train_pooler: false,
        },
        optim: OptimSettings { batch, limit: Some(limit), grad_clip: None, ..Default::default() },
        max_length: 128,
        adapter_out: out.path().join("adapter"),
        checkpoint_dir: None,
        checkpoint_every: None,
        dropout_off: false,
        fingerprint: String::new(),
    };
    let o = train::<burn::backend::Autodiff<burn::backend::Flex>>(&spec, &Default::default(), &Quiet).unwrap();
    println!(
        "{}",
        serde_json::json!({"pairs": o.train_pairs_seen, "seconds": o.train_seconds, "pairs_per_s": o.pairs_per_s,
                           "steps": o.steps, "batch": batch, "final_loss": o.final_loss})
    );
}
