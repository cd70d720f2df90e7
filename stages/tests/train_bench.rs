//! The tsumugi side of `benches/train/run.sh` (LoRA training throughput): not a timed test,
//! ignored by default. Trains on `$TSUMUGI_BENCH_PAIRS` (build-pairs JSONL) with the
//! quickstart recipe and prints one JSON line: pairs/s and the run's settings.
//!
//!     TSUMUGI_BENCH_MODEL=models/minilm-l6 TSUMUGI_BENCH_PAIRS=out/bench-train/train.jsonl \
//!       TSUMUGI_BENCH_LIMIT=160 cargo test --release -p tsumugi-stages --features ml --test train_bench -- --ignored --nocapture
#![cfg(feature = "ml")]

use std::path::PathBuf;

use tsumugi_stages::contract::Reporter;
use tsumugi_stages::device::DeviceSpec;
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
    let batch: usize = std::env::var("TSUMUGI_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(16);
    // TSUMUGI_BENCH_DEVICE: cpu (default), wgpu[:N] or cuda[:N] (builds with that feature).
    let device: DeviceSpec = std::env::var("TSUMUGI_BENCH_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .unwrap();
    device.check_compiled().unwrap();
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
            oft: None,
        },
        optim: OptimSettings {
            batch,
            limit: Some(limit),
            grad_clip: None,
            ..Default::default()
        },
        max_length: 128,
        adapter_out: out.path().join("adapter"),
        checkpoint_dir: None,
        checkpoint_every: None,
        dropout_off: false,
        // TSUMUGI_BENCH_SHARD=0: one shard per micro-batch (no data parallelism).
        shard_pairs: match std::env::var("TSUMUGI_BENCH_SHARD") {
            Ok(v) => Some(v.parse().expect("TSUMUGI_BENCH_SHARD: a number")).filter(|&n| n > 0),
            Err(_) => (device == DeviceSpec::Cpu).then_some(tsumugi_stages::train::CPU_SHARD_PAIRS),
        },
        // TSUMUGI_BENCH_PRECISION=bf16|f16: the frozen linears in that type (GPU bench).
        precision: std::env::var("TSUMUGI_BENCH_PRECISION")
            .map(|p| {
                p.parse()
                    .expect("TSUMUGI_BENCH_PRECISION: f32, bf16 or f16")
            })
            .unwrap_or_default(),
        fingerprint: String::new(),
    };
    use burn::backend::Autodiff;
    let o = match device {
        DeviceSpec::Cpu => {
            train::<Autodiff<burn::backend::Flex>>(&spec, &Default::default(), &Quiet)
        }
        #[cfg(feature = "wgpu")]
        DeviceSpec::Wgpu(_) => train::<Autodiff<tsumugi_stages::device::WgpuBackend>>(
            &spec,
            &device.wgpu_device(),
            &Quiet,
        ),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(_) => train::<Autodiff<tsumugi_stages::device::CudaBackend>>(
            &spec,
            &device.cuda_device(),
            &Quiet,
        ),
        #[allow(unreachable_patterns)]
        _ => unreachable!("check_compiled rejected backends this build lacks"),
    }
    .unwrap();
    // Optionally the test-set Spearman of the trained adapter ($TSUMUGI_BENCH_TEST: pairs JSONL).
    let spearman = std::env::var("TSUMUGI_BENCH_TEST").ok().map(|test| {
        use tsumugi_stages::models::ModelDir;
        use tsumugi_stages::tokenize::{PairTokenizer, Truncation};
        let dir = ModelDir::open(&spec.model_dir).unwrap();
        let d = Default::default();
        let (model, _) =
            tsumugi_stages::peft::load_adapter::<burn::backend::Flex>(&dir, &spec.adapter_out, &d)
                .unwrap();
        let tok = PairTokenizer::for_model(&dir, 128, Truncation::LongestFirst).unwrap();
        let rows: Vec<serde_json::Value> = std::fs::read_to_string(test)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let pairs: Vec<(String, String)> = rows
            .iter()
            .map(|r| {
                (
                    r["text_a"].as_str().unwrap().to_string(),
                    r["text_b"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let enc = tok.encode_all(&pairs).unwrap();
        let p: Vec<f64> = tsumugi_stages::train::predict(&model, &tok, &enc, 64, &d)
            .iter()
            .map(|l| l[0] as f64)
            .collect();
        let y: Vec<f64> = rows.iter().map(|r| r["label"].as_f64().unwrap()).collect();
        tsumugi_stages::metrics::spearman(&y, &p).unwrap()
    });
    println!(
        "{}",
        serde_json::json!({"device": device.to_string(), "pairs": o.train_pairs_seen, "seconds": o.train_seconds, "pairs_per_s": o.pairs_per_s,
                           "steps": o.steps, "batch": batch, "final_loss": o.final_loss, "test_spearman": spearman})
    );
}
