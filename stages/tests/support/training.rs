//! A small training setup shared by the tests that train (`backends_agree`, `precision`):
//! bert-1 without its head, eight labelled pairs, LoRA on every linear, and a run that
//! shards on the CPU as `train-lora` does there.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::AutodiffBackend;
use tsumugi_stages::lora::LoraSettings;
use tsumugi_stages::peft::{self, TensorSet};
use tsumugi_stages::train::loss::LossKind;
use tsumugi_stages::train::{OptimSettings, Task, TrainOutcome, TrainSpec, train};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// bert-1 without its pooler and classifier (the head a training run has to create),
/// written to `dir`.
pub fn headless_bert(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let src = fixture("bert-1");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let body: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("classifier.") && !k.contains("pooler."))
        .collect();
    assert!(body.len() < st.len(), "bert-1 has a head to drop");
    safetensors::serialize_to_file(body, None, &dir.join("model.safetensors")).unwrap();
    dir.to_path_buf()
}

/// Eight pairs with distinct labels, so that each batch has a loss of its own.
pub fn train_file(dir: &Path) -> PathBuf {
    let rows = [
        ("a man plays a guitar", "someone plays music", 0.9),
        ("a cat sleeps on the sofa", "the dog runs outside", 0.1),
        ("two kids play football", "children are playing a game", 0.8),
        ("the market fell sharply", "stocks dropped today", 0.7),
        ("a woman slices an onion", "a person is cooking", 0.6),
        (
            "it is raining in tokyo",
            "the sun is shining in paris",
            0.05,
        ),
        ("the train was late", "the bus arrived on time", 0.3),
        ("he reads a book", "a man is reading", 0.95),
    ];
    let text: String = rows
        .iter()
        .map(|(a, b, l)| {
            format!(
                "{}\n",
                serde_json::json!({"text_a": a, "text_b": b, "label": l})
            )
        })
        .collect();
    let path = dir.join("train.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn lora() -> LoraSettings {
    LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: ["query", "key", "value", "dense"]
            .map(String::from)
            .to_vec(),
        rslora: false,
        train_pooler: true,
        oft: None,
    }
}

pub fn spec(model: &Path, train: &Path, out: &Path, optim: OptimSettings) -> TrainSpec {
    TrainSpec {
        model_dir: model.to_path_buf(),
        train: train.to_path_buf(),
        dev: None,
        task: Task::Regression,
        loss: LossKind::Mse,
        num_labels: 1,
        lora: lora(),
        optim,
        max_length: 32,
        adapter_out: out.to_path_buf(),
        checkpoint_dir: None,
        checkpoint_every: None,
        dropout_off: false,
        shard_pairs: None,
        precision: Default::default(),
        fingerprint: String::new(),
    }
}

/// Trains as `spec` says on backend `B`; returns the outcome and the saved adapter. On the
/// CPU the micro-batches are split into shards on parallel threads, as `train-lora` runs
/// there (2 pairs a shard, so that the batches of 4 split); wgpu runs them whole.
pub fn run<B: AutodiffBackend>(spec: &TrainSpec, device: &B::Device) -> (TrainOutcome, TensorSet) {
    let mut spec = spec.clone();
    if std::any::TypeId::of::<B>() == std::any::TypeId::of::<Autodiff<Flex>>() {
        spec.shard_pairs = Some(2);
    }
    let spec = &spec;
    let outcome = train::<B>(spec, device, &super::Quiet).unwrap();
    let saved = TensorSet::read(&spec.adapter_out.join(peft::WEIGHTS_FILE)).unwrap();
    (outcome, saved)
}

/// max |a − b| over every tensor, and the tensor where it is; both sets must have the same
/// keys and shapes.
pub fn max_diff(a: &TensorSet, b: &TensorSet) -> (f64, String) {
    assert_eq!(
        a.0.keys().collect::<Vec<_>>(),
        b.0.keys().collect::<Vec<_>>()
    );
    a.0.iter()
        .map(|(k, (shape, v))| {
            let (s, w) = &b.0[k];
            assert_eq!(shape, s, "{k}");
            let d = v
                .iter()
                .zip(w)
                .map(|(x, y)| f64::from((x - y).abs()))
                .fold(0.0, f64::max);
            (d, k.clone())
        })
        .fold((0.0, String::new()), |m, x| if x.0 > m.0 { x } else { m })
}
