//! Parity with Hugging Face transformers on the tiny random-weight fixtures made by
//! `scripts/make_fixtures.py`: token ids must match exactly and logits to 1e-4 (f32), on
//! flex and (`--features wgpu`, the `wgpu::` tests) on wgpu.
#![cfg(feature = "ml")]

mod support;

use std::path::{Path, PathBuf};
use tsumugi_stages::models::SequenceClassifier;

use burn::prelude::Backend;
use serde_json::Value;
use tsumugi_stages::device::CpuBackend;
use tsumugi_stages::models::{CrossEncoder, LoadOptions, ModelDir, ModelInput};
use tsumugi_stages::score::score_encoded;
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

fn check<B: Backend>(device: &B::Device, name: &str, labels: usize) {
    let dir = ModelDir::open(&fixture(name)).unwrap();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("expected.json")).unwrap(),
    )
    .unwrap();
    let backend = support::backend_name::<B>();
    let (model, report) = CrossEncoder::<B>::load(&dir, &LoadOptions::default(), device).unwrap();
    assert!(
        report.unused.is_empty(),
        "{name}: unused weights {:?}",
        report.unused
    );
    assert_eq!(model.num_labels(), labels);
    let batches = expected["batches"].as_array().unwrap();
    assert!(batches.len() >= 3);
    for (bi, b) in batches.iter().enumerate() {
        let pairs: Vec<(String, String)> = b["text_a"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["text_b"].as_array().unwrap())
            .map(|(x, y)| {
                (
                    x.as_str().unwrap().to_string(),
                    y.as_str().unwrap().to_string(),
                )
            })
            .collect();
        let max_length = b["max_length"].as_u64().unwrap() as usize;
        let truncation: Truncation = b["truncation"].as_str().unwrap().parse().unwrap();
        let tok = PairTokenizer::for_model(&dir, max_length, truncation).unwrap();
        let enc = tok.encode_batch(&pairs).unwrap();
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
        let logits = model.forward(&ModelInput::from_batch(&enc, device));
        let got: Vec<Vec<f32>> = logits
            .into_data()
            .to_vec::<f32>()
            .unwrap()
            .chunks(labels)
            .map(<[f32]>::to_vec)
            .collect();
        let d = max_diff(&got, &want);
        println!(
            "{name} [{backend}] batch {bi} ({} pairs, seq {}, {truncation:?}): max |Δ logits| = {d:.2e}",
            pairs.len(),
            enc.seq
        );
        assert!(
            d <= TOL,
            "{name} batch {bi}: max |Δ| {d} > {TOL}\n got {got:?}\nwant {want:?}"
        );

        // Same pairs through the bucketed scorer (batches of 2, other padding, sorted by
        // length): results must come back in input order with the same values.
        let encoded = tok.encode_all(&pairs).unwrap();
        let mut seen = 0;
        let bucketed = score_encoded(&model, &tok, &encoded, 2, device, &mut |n| seen = n);
        assert_eq!(seen, pairs.len());
        let d = max_diff(&bucketed, &want);
        assert!(d <= TOL, "{name} batch {bi} bucketed: max |Δ| {d} > {TOL}");
    }
}

#[test]
fn bert_1_skips_the_position_ids_buffer() {
    let dir = ModelDir::open(&fixture("bert-1")).unwrap();
    let (_, report) =
        CrossEncoder::<CpuBackend>::load(&dir, &LoadOptions::default(), &Default::default())
            .unwrap();
    assert_eq!(
        report.skipped_buffers,
        vec!["bert.embeddings.position_ids".to_string()]
    );
}

support::on_backends! {
    bert_1_label_f32_with_position_ids_buffer: check("bert-1", 1);
    bert_3_labels_bf16: check("bert-3", 3);
    roberta_1_label_f16: check("roberta-1", 1);
    roberta_3_labels_f16_sharded: check("roberta-3", 3);
    xlm_roberta_1_label_f16: check("xlm-roberta-1", 1);
    xlm_roberta_3_labels_f32_sharded: check("xlm-roberta-3", 3);
}

#[test]
fn roberta_3_is_sharded() {
    assert!(
        fixture("roberta-3")
            .join("model.safetensors.index.json")
            .is_file()
    );
}
