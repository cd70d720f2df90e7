//! DeBERTa-v2/v3 parity with transformers on the tiny random-weight fixtures made by
//! `scripts/make_deberta_fixtures.py` (sequences longer than the position buckets and the
//! v2 distance limit): token ids exactly, logits to 1e-4 in f32, with and without autodiff,
//! on flex and (`--features wgpu`, the `wgpu::` tests) on wgpu.
#![cfg(feature = "ml")]

mod support;

use std::path::{Path, PathBuf};
use tsumugi_stages::models::{Plain, SequenceClassifier};

use burn::backend::Autodiff;
use burn::prelude::Backend;
use serde_json::Value;
use tsumugi_stages::device::CpuBackend;
use tsumugi_stages::models::deberta_v2::DebertaV2ForSequenceClassification;
use tsumugi_stages::models::{Checkpoint, LoadOptions, ModelDir, ModelInput};
use tsumugi_stages::tokenize::{PairTokenizer, Truncation};

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn ints(v: &Value) -> Vec<Vec<i64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        })
        .collect()
}

fn floats(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn rows(flat: &[i64], seq: usize) -> Vec<Vec<i64>> {
    flat.chunks(seq).map(<[i64]>::to_vec).collect()
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

fn load<B: Backend>(dir: &ModelDir, device: &B::Device) -> DebertaV2ForSequenceClassification<B> {
    let mut ck = Checkpoint::open(&dir.path, dir.architecture.prefix()).unwrap();
    let model = DebertaV2ForSequenceClassification::<B>::load(
        &mut ck,
        &dir.config,
        &LoadOptions::default(),
        device,
    )
    .unwrap();
    let report = ck.finish().unwrap();
    assert!(
        report.unused.is_empty(),
        "unused weights {:?}",
        report.unused
    );
    model
}

fn check_on<B: Backend>(device: &B::Device, name: &str, labels: usize, what: &str) {
    let dir = ModelDir::open(&fixture(name)).unwrap();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("expected.json")).unwrap(),
    )
    .unwrap();
    let mut model = load::<B>(&dir, device);
    // Under autodiff burn's dropout is live (training); transformers' reference is eval.
    model.without_dropout();
    assert_eq!(model.num_labels(), labels);
    let batches = expected["batches"].as_array().unwrap();
    let mut longest = 0;
    for (bi, b) in batches.iter().enumerate() {
        let pairs: Vec<(String, String)> = b["text_a"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["text_b"].as_array().unwrap())
            .map(|(x, y)| (x.as_str().unwrap().into(), y.as_str().unwrap().into()))
            .collect();
        let max_length = b["max_length"].as_u64().unwrap() as usize;
        let truncation: Truncation = b["truncation"].as_str().unwrap().parse().unwrap();
        let tok = PairTokenizer::for_model(&dir, max_length, truncation).unwrap();
        let enc = tok.encode_batch(&pairs).unwrap();
        longest = longest.max(enc.seq);
        assert_eq!(
            rows(&enc.input_ids, enc.seq),
            ints(&b["input_ids"]),
            "{name} batch {bi}: input_ids"
        );
        assert_eq!(
            rows(&enc.attention_mask, enc.seq),
            ints(&b["attention_mask"]),
            "{name} batch {bi}: attention_mask"
        );
        match (&enc.token_type_ids, b["token_type_ids"].is_null()) {
            (Some(t), false) => assert_eq!(
                rows(t, enc.seq),
                ints(&b["token_type_ids"]),
                "{name} batch {bi}: token_type_ids"
            ),
            (None, true) => {}
            (got, _) => panic!("{name} batch {bi}: token_type_ids presence differs: got {got:?}"),
        }
        let want = floats(&b["logits"]);
        let logits = model.forward_with(&ModelInput::from_batch(&enc, device), &Plain);
        let got: Vec<Vec<f32>> = logits
            .into_data()
            .to_vec::<f32>()
            .unwrap()
            .chunks(labels)
            .map(<[f32]>::to_vec)
            .collect();
        let d = max_diff(&got, &want);
        println!(
            "{name} ({what}) batch {bi} ({} pairs, seq {}): max |Δ logits| = {d:.2e}",
            pairs.len(),
            enc.seq
        );
        assert!(
            d <= TOL,
            "{name} batch {bi}: max |Δ| {d} > {TOL}\n got {got:?}\nwant {want:?}"
        );
    }
    // The fixtures are meant to run past the buckets (8) and the v2 distance limit (12).
    assert!(longest > 16, "{name}: longest batch only {longest} tokens");
}

fn check<B: Backend>(device: &B::Device, name: &str, labels: usize) {
    check_on::<B>(device, name, labels, &support::backend_name::<B>());
    check_on::<Autodiff<B>>(
        device,
        name,
        labels,
        &support::backend_name::<Autodiff<B>>(),
    );
}

support::on_backends! {
    deberta_v3_1_label_log_buckets_shared_keys: check("deberta-v3-1", 1);
    deberta_v3_3_labels_embed_proj: check("deberta-v3-3", 3);
    deberta_v2_1_label_separate_position_projections: check("deberta-v2-1", 1);
    deberta_v2_3_labels_absolute_positions_and_token_types: check("deberta-v2-3", 3);
}

#[test]
fn deberta_v3_ignores_token_types_and_reports_bad_fields() {
    // DeBERTa-v3 has type_vocab_size 0: the tokenizer gives no segment ids.
    let dir = ModelDir::open(&fixture("deberta-v3-1")).unwrap();
    let tok = PairTokenizer::for_model(&dir, 64, Truncation::LongestFirst).unwrap();
    let enc = tok.encode_batch(&[("a", "b")]).unwrap();
    assert!(enc.token_type_ids.is_none());

    // A conv layer (DeBERTa-v2-xlarge) is refused with the file and the field named.
    let tmp = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("deberta-v3-1").join(f), tmp.path().join(f)).unwrap();
    }
    let mut cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("deberta-v3-1").join("config.json")).unwrap(),
    )
    .unwrap();
    cfg["conv_kernel_size"] = 3.into();
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let dir = ModelDir::open(tmp.path()).unwrap();
    let mut ck = Checkpoint::open(&dir.path, "deberta").unwrap();
    let err = DebertaV2ForSequenceClassification::<CpuBackend>::load(
        &mut ck,
        &dir.config,
        &LoadOptions::default(),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("conv_kernel_size") && err.contains("config.json"),
        "{err}"
    );
}
