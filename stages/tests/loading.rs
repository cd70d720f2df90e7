//! Loading edge cases: prefix-less keys, missing weights named, unsupported model types,
//! head initialisation, truncation that cannot fit.
#![cfg(feature = "ml")]
// The Ok side of a load is a model, which has no Debug: `expect_err` cannot print it.
#![allow(clippy::err_expect)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tsumugi_stages::models::SequenceClassifier;

use burn::prelude::*;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use tsumugi_stages::device::CpuBackend;
use tsumugi_stages::models::{CrossEncoder, Encoder, LoadOptions, ModelDir, ModelInput};
use tsumugi_stages::tokenize::{PairTokenizer, Truncation};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Copies fixture `name` to a temp dir, rewriting its weights with `edit` (key → new key,
/// or None to drop) and its config with `config`.
fn variant(
    name: &str,
    edit: impl Fn(&str) -> Option<String>,
    config: impl Fn(&mut serde_json::Value),
) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture(name);
    std::fs::copy(
        src.join("tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config(&mut cfg);
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: HashMap<String, TensorView<'_>> = HashMap::new();
    for (k, v) in st.tensors() {
        if let Some(nk) = edit(&k) {
            out.insert(nk, v);
        }
    }
    safetensors::serialize_to_file(out, None, &tmp.path().join("model.safetensors")).unwrap();
    tmp
}

fn logits(dir: &Path) -> Vec<f32> {
    let dir = ModelDir::open(dir).unwrap();
    let device = Default::default();
    let (model, _) =
        CrossEncoder::<CpuBackend>::load(&dir, &LoadOptions::default(), &device).unwrap();
    let tok = PairTokenizer::for_model(&dir, 64, Truncation::LongestFirst).unwrap();
    let enc = tok
        .encode_batch(&[("A man is playing a guitar.", "猫が寝ている。")])
        .unwrap();
    model
        .forward(&ModelInput::from_batch(&enc, &device))
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

#[test]
fn keys_without_the_architecture_prefix_load_the_same_model() {
    let bare = variant(
        "bert-1",
        |k| Some(k.strip_prefix("bert.").unwrap_or(k).to_string()),
        |_| {},
    );
    assert_eq!(logits(bare.path()), logits(&fixture("bert-1")));
}

#[test]
fn missing_weights_are_all_named() {
    let dir = variant(
        "bert-1",
        |k| {
            (!k.contains("layer.1.attention.self.key") && k != "classifier.bias")
                .then(|| k.to_string())
        },
        |_| {},
    );
    let err = CrossEncoder::<CpuBackend>::load(
        &ModelDir::open(dir.path()).unwrap(),
        &LoadOptions::default(),
        &Default::default(),
    )
    .err()
    .expect("loading must fail");
    let msg = err.to_string();
    for key in [
        "bert.encoder.layer.1.attention.self.key.weight",
        "bert.encoder.layer.1.attention.self.key.bias",
        "classifier.bias",
    ] {
        assert!(msg.contains(key), "{msg}");
    }
    assert!(msg.contains("missing 3 weight(s)"), "{msg}");
}

#[test]
fn wrong_shapes_name_the_key() {
    let dir = variant(
        "bert-1",
        |k| Some(k.to_string()),
        |c| c["intermediate_size"] = 48.into(),
    );
    let err = CrossEncoder::<CpuBackend>::load(
        &ModelDir::open(dir.path()).unwrap(),
        &LoadOptions::default(),
        &Default::default(),
    )
    .err()
    .expect("loading must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("bert.encoder.layer.0.intermediate.dense.weight") && msg.contains("[48, 32]"),
        "{msg}"
    );
}

#[test]
fn unsupported_model_type_is_a_clear_error() {
    let dir = variant(
        "bert-1",
        |k| Some(k.to_string()),
        |c| c["model_type"] = "qwen2_vl".into(),
    );
    let err = ModelDir::open(dir.path())
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("\"qwen2_vl\"") && err.contains("supported"),
        "{err}"
    );
}

#[test]
fn a_missing_head_is_initialised_only_when_asked_and_unused_keys_are_reported() {
    // A bare encoder checkpoint (as MiniLM ships): no pooler, no classifier.
    let dir = variant(
        "bert-1",
        |k| {
            (k.starts_with("bert.embeddings") || k.starts_with("bert.encoder"))
                .then(|| k.to_string())
        },
        |_| {},
    );
    let md = ModelDir::open(dir.path()).unwrap();
    let device = Default::default();
    assert!(CrossEncoder::<CpuBackend>::load(&md, &LoadOptions::default(), &device).is_err());
    let opts = LoadOptions {
        num_labels: Some(2),
        init_missing_head: true,
        init_seed: 5,
    };
    let (model, report) = CrossEncoder::<CpuBackend>::load(&md, &opts, &device).unwrap();
    assert_eq!(model.num_labels(), 2);
    assert_eq!(report.initialized.len(), 4, "{report:?}");
    // The new head is drawn on the host from the seed: the same seed, the same head
    // (on any backend); another seed, another head; N(0, initializer_range²) weights.
    let head = |seed: u64| {
        let (m, _) = CrossEncoder::<CpuBackend>::load(
            &md,
            &LoadOptions {
                init_seed: seed,
                ..opts.clone()
            },
            &device,
        )
        .unwrap();
        let mut set = tsumugi_stages::models::tensors::TensorSet::default();
        m.head_tensors(true, &mut set, "");
        set.0
    };
    let (a, b, c) = (head(5), head(5), head(6));
    assert_eq!(a, b);
    assert_ne!(a, c);
    // The encoder alone leaves the head of a full checkpoint unused.
    let (_, report) =
        Encoder::<CpuBackend>::load(&ModelDir::open(&fixture("bert-3")).unwrap(), &device).unwrap();
    assert_eq!(
        report.unused,
        vec![
            "bert.pooler.dense.bias",
            "bert.pooler.dense.weight",
            "classifier.bias",
            "classifier.weight"
        ]
    );
}

#[test]
fn int_weights_where_floats_are_needed_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture("bert-1").join(f), tmp.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(fixture("bert-1").join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ints = vec![0u8; 32 * 8];
    let mut out: HashMap<String, TensorView<'_>> = st.tensors().into_iter().collect();
    out.insert(
        "bert.embeddings.LayerNorm.bias".into(),
        TensorView::new(Dtype::I64, vec![32], &ints).unwrap(),
    );
    safetensors::serialize_to_file(out, None, &tmp.path().join("model.safetensors")).unwrap();
    let err = CrossEncoder::<CpuBackend>::load(
        &ModelDir::open(tmp.path()).unwrap(),
        &LoadOptions::default(),
        &Default::default(),
    )
    .err()
    .expect("must fail")
    .to_string();
    assert!(
        err.contains("bert.embeddings.LayerNorm.bias") && err.contains("I64"),
        "{err}"
    );
}

#[test]
fn only_second_truncation_that_cannot_fit_names_the_pair() {
    let dir = ModelDir::open(&fixture("bert-1")).unwrap();
    let tok = PairTokenizer::for_model(&dir, 8, Truncation::OnlySecond).unwrap();
    let long = "the quick brown fox jumps over the lazy dog near the river";
    let err = tok
        .encode_batch(&[("a", "b"), (long, "c")])
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("pair 1:"), "{err}");
}

#[test]
fn max_length_is_capped_by_the_position_table() {
    let dir = ModelDir::open(&fixture("roberta-1")).unwrap();
    // 66 positions, padding index 1: at most 64 tokens.
    assert_eq!(
        PairTokenizer::for_model(&dir, 4096, Truncation::LongestFirst)
            .unwrap()
            .max_length(),
        64
    );
}

#[test]
fn roberta_positions_skip_padding() {
    let device = Default::default();
    let ids = Tensor::<CpuBackend, 2, Int>::from_data(
        TensorData::new(vec![0i64, 5, 2, 1, 0, 7, 8, 2], [2, 4]),
        &device,
    );
    let pos = tsumugi_stages::models::roberta::position_ids(ids, 1);
    assert_eq!(
        pos.into_data().to_vec::<i32>().unwrap(),
        vec![2, 3, 4, 1, 2, 3, 4, 5]
    );
}
