//! ModernBERT parity with transformers on the tiny random checkpoints of
//! `scripts/make_modernbert_fixtures.py`: token ids exact, logits within 1e-4 (f32) on padded
//! batches longer than the local window, in inference and under autodiff; a padded batch
//! gives each pair's numbers alone.
#![cfg(feature = "ml")]

mod support;

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use serde_json::Value;
use tsumugi_stages::models::modernbert::ModernBertConfig;
use tsumugi_stages::models::{
    Architecture, CrossEncoder, LoadOptions, ModelConfig, ModelDir, ModelInput, SequenceClassifier,
};
use tsumugi_stages::tokenize::{EncodedBatch, PairTokenizer, Truncation};

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn config(name: &str) -> ModelConfig {
    let text = std::fs::read_to_string(fixture(name).join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load<B: Backend>(name: &str) -> CrossEncoder<B> {
    load_on::<B>(name, &Default::default())
}

fn load_on<B: Backend>(name: &str, device: &B::Device) -> CrossEncoder<B> {
    let dir = ModelDir::open(&fixture(name)).unwrap();
    assert_eq!(dir.architecture, Architecture::ModernBert);
    let (model, report) = CrossEncoder::load(&dir, &LoadOptions::default(), device).unwrap();
    assert!(
        report.unused.is_empty(),
        "{name}: unused {:?}",
        report.unused
    );
    assert!(report.initialized.is_empty());
    assert!(matches!(model, CrossEncoder::ModernBert(_)));
    model
}

/// The model directory's own tokenizer (a byte-level BPE `tokenizer.json`, no token types).
fn tokenizer(name: &str, max_length: usize, truncation: Truncation) -> PairTokenizer {
    let dir = ModelDir::open(&fixture(name)).unwrap();
    PairTokenizer::for_model(&dir, max_length, truncation).unwrap()
}

fn rows<T: Clone>(flat: &[T], width: usize) -> Vec<Vec<T>> {
    flat.chunks(width).map(<[T]>::to_vec).collect()
}

fn logits<B: Backend>(model: &CrossEncoder<B>, enc: &EncodedBatch) -> Vec<Vec<f32>> {
    logits_on(model, enc, &Default::default())
}

fn logits_on<B: Backend>(
    model: &CrossEncoder<B>,
    enc: &EncodedBatch,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let input = ModelInput::<B>::from_batch(enc, device);
    let out = model.forward(&input);
    let labels = out.dims()[1];
    rows(
        &out.into_data().convert::<f32>().to_vec::<f32>().unwrap(),
        labels,
    )
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

fn json_rows<T>(v: &Value, f: impl Fn(&Value) -> T + Copy) -> Vec<Vec<T>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(f).collect())
        .collect()
}

/// Every batch of the fixture: ids as transformers', logits within [`TOL`], and each pair
/// alone (no padding) as in the padded batch.
fn check<B: Backend>(device: &B::Device, name: &str, labels: usize) {
    let backend = support::backend_name::<B>();
    let mut model = load_on::<B>(name, device);
    // Under autodiff burn's dropout is live (training); transformers' reference is eval.
    model.without_dropout();
    assert_eq!(model.num_labels(), labels);
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("expected.json")).unwrap(),
    )
    .unwrap();
    for (bi, b) in expected["batches"].as_array().unwrap().iter().enumerate() {
        let pairs: Vec<(String, String)> = b["text_a"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["text_b"].as_array().unwrap())
            .map(|(x, y)| (x.as_str().unwrap().into(), y.as_str().unwrap().into()))
            .collect();
        let truncation: Truncation = b["truncation"].as_str().unwrap().parse().unwrap();
        let tok = tokenizer(name, b["max_length"].as_u64().unwrap() as usize, truncation);
        let enc = tok.encode_batch(&pairs).unwrap();
        assert_eq!(
            rows(&enc.input_ids, enc.seq),
            json_rows(&b["input_ids"], |x| x.as_i64().unwrap()),
            "{name} batch {bi}: input_ids"
        );
        assert_eq!(
            rows(&enc.attention_mask, enc.seq),
            json_rows(&b["attention_mask"], |x| x.as_i64().unwrap()),
        );
        assert!(enc.token_type_ids.is_none());
        let want = json_rows(&b["logits"], |x| x.as_f64().unwrap() as f32);
        let got = logits_on(&model, &enc, device);
        let d = max_diff(&got, &want);
        let alone: Vec<Vec<f32>> = pairs
            .iter()
            .flat_map(|p| {
                let alone = tok.encode_batch(std::slice::from_ref(p)).unwrap();
                logits_on(&model, &alone, device)
            })
            .collect();
        let d_alone = max_diff(&alone, &got);
        println!(
            "{name} [{backend}] batch {bi} ({} pairs, seq {}): max |Δ logits| vs transformers {d:.2e}, padded vs alone {d_alone:.2e}",
            pairs.len(),
            enc.seq
        );
        assert!(
            d <= TOL,
            "{name} batch {bi}: |Δ| {d}\n got {got:?}\nwant {want:?}"
        );
        assert!(
            d_alone <= TOL,
            "{name} batch {bi}: padded vs alone |Δ| {d_alone}"
        );
    }
}

support::on_backends! {
    one_label_cls_pooling_legacy_config_matches_transformers: check("modernbert-1", 1);
    three_labels_mean_pooling_with_biases_matches_transformers: check("modernbert-3", 3);
    under_autodiff_the_same_logits: check_autodiff();
}

fn check_autodiff<B: Backend>(device: &B::Device) {
    check::<Autodiff<B>>(device, "modernbert-1", 1);
    check::<Autodiff<B>>(device, "modernbert-3", 3);
}

#[test]
fn both_config_formats_give_the_same_layer_types_and_thetas() {
    let legacy = ModernBertConfig::from_config(&config("modernbert-1")).unwrap();
    assert_eq!(legacy.global_layers, vec![true, false, false, true]);
    assert_eq!(legacy.local_attention, 8);
    assert_eq!(
        (legacy.global_rope_theta, legacy.local_rope_theta),
        (160_000.0, 10_000.0)
    );
    assert!(!legacy.norm_bias);
    let new = ModernBertConfig::from_config(&config("modernbert-3")).unwrap();
    assert_eq!(new.global_layers, vec![true, false, true]);
    assert_eq!(
        (new.global_rope_theta, new.local_rope_theta),
        (160_000.0, 10_000.0)
    );
    assert!(new.norm_bias && new.attention_bias && new.mlp_bias && new.classifier_bias);
}

#[test]
fn bad_config_fields_are_named() {
    let mut cfg = config("modernbert-3");
    cfg.extra
        .insert("layer_types".into(), serde_json::json!(["full_attention"]));
    let err = ModernBertConfig::from_config(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("layer_types has 1 entries for num_hidden_layers 3"),
        "{err}"
    );
    let mut cfg = config("modernbert-3");
    cfg.extra
        .insert("classifier_pooling".into(), serde_json::json!("max"));
    let err = ModernBertConfig::from_config(&cfg).unwrap_err().to_string();
    assert!(err.contains("classifier_pooling \"max\""), "{err}");
    let mut cfg = config("modernbert-3");
    cfg.extra["rope_parameters"]["sliding_attention"]["rope_type"] = serde_json::json!("yarn");
    let err = ModernBertConfig::from_config(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("rope_parameters.sliding_attention.rope_type \"yarn\""),
        "{err}"
    );
}

#[test]
fn the_local_window_matters_on_these_fixtures() {
    // Guards the fixtures: were every layer global, the logits would move far beyond TOL.
    let mut model = load::<Flex>("modernbert-1");
    let tok = tokenizer("modernbert-1", 64, Truncation::LongestFirst);
    let enc = tok
        .encode_batch(&[(
            "The quick brown fox jumps over the lazy dog near the river bank today.",
            "A fox.",
        )])
        .unwrap();
    assert!(enc.seq > 8, "longer than the window");
    let local = logits(&model, &enc);
    let CrossEncoder::ModernBert(m) = &mut model else {
        unreachable!()
    };
    for l in &mut m.model.layers {
        l.attn.window = None;
    }
    let global = logits(&model, &enc);
    assert!(max_diff(&local, &global) > 1e-2, "{local:?} vs {global:?}");
}

#[test]
fn a_bad_field_fails_when_the_directory_is_opened() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("modernbert-1").join(f), tmp.path().join(f)).unwrap();
    }
    let path = tmp.path().join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["local_attention"] = serde_json::json!("wide");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let err = ModelDir::open(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("local_attention"),
        "{err}"
    );
}

#[test]
fn encoder_gives_the_classifier_hidden_states() {
    use tsumugi_stages::models::Encoder;
    let dir = ModelDir::open(&fixture("modernbert-3")).unwrap();
    let (enc_model, report) = Encoder::<Flex>::load(&dir, &Default::default()).unwrap();
    // The head's weights are all that is left over.
    let mut unused = report.unused.clone();
    unused.sort();
    assert_eq!(
        unused,
        [
            "classifier.bias",
            "classifier.weight",
            "head.dense.bias",
            "head.dense.weight",
            "head.norm.bias",
            "head.norm.weight"
        ]
    );
    let model = load::<Flex>("modernbert-3");
    let tok = tokenizer("modernbert-3", 64, Truncation::LongestFirst);
    let enc = tok
        .encode_batch(&[(
            "A man is playing a guitar.",
            "A person plays an instrument.",
        )])
        .unwrap();
    let x = ModelInput::<Flex>::from_batch(&enc, &Default::default());
    let a = enc_model.forward(&x).into_data().to_vec::<f32>().unwrap();
    let b = model.encode(&x).into_data().to_vec::<f32>().unwrap();
    assert_eq!(a, b);
}
