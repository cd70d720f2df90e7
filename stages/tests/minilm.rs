//! Real weights: all-MiniLM-L6-v2 encoder outputs against transformers on STS-B pairs.
//!
//! Needs the model (scripts/fetch_minilm.sh) and the reference made by
//! scripts/make_minilm_reference.py in `TSUMUGI_MINILM_DIR` (default: models/minilm-l6
//! under the repository); skipped with a message otherwise.
#![cfg(feature = "ml")]

use std::path::PathBuf;

use safetensors::SafeTensors;
use tsumugi_stages::device::CpuBackend;
use tsumugi_stages::models::{Encoder, ModelDir, ModelInput};
use tsumugi_stages::tokenize::{PairTokenizer, Truncation, length_batches};

fn model_dir() -> PathBuf {
    std::env::var_os("TSUMUGI_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/minilm-l6"))
}

fn ints(st: &SafeTensors<'_>, name: &str) -> (Vec<i64>, Vec<usize>) {
    let t = st.tensor(name).unwrap();
    (
        t.data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        t.shape().to_vec(),
    )
}

#[test]
fn minilm_encoder_matches_transformers_on_sts_b_pairs() {
    let dir = model_dir();
    let reference = dir.join("tsumugi_reference.safetensors");
    if !dir.join("model.safetensors").is_file() || !reference.is_file() {
        eprintln!(
            "SKIPPED minilm parity: {} has no model or reference; run scripts/fetch_minilm.sh and \
             scripts/make_minilm_reference.py (or set TSUMUGI_MINILM_DIR)",
            dir.display()
        );
        return;
    }
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tsumugi_reference.json")).unwrap())
            .unwrap();
    let pairs: Vec<(String, String)> = serde_json::from_value(meta["pairs"].clone()).unwrap();
    assert!(
        pairs.len() >= 100,
        "the reference must hold at least 100 pairs"
    );
    let bytes = std::fs::read(&reference).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (want_ids, shape) = ints(&st, "input_ids");
    let (want_mask, _) = ints(&st, "attention_mask");
    let (want_types, _) = ints(&st, "token_type_ids");
    let (n, l) = (shape[0], shape[1]);
    let hidden_view = st.tensor("last_hidden_state").unwrap();
    let h = hidden_view.shape()[2];
    let want_hidden: Vec<f32> = hidden_view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(n, pairs.len());

    let md = ModelDir::open(&dir).unwrap();
    let max_length = meta["max_length"].as_u64().unwrap() as usize;
    let tok = PairTokenizer::for_model(&md, max_length, Truncation::LongestFirst).unwrap();
    let encoded = tok.encode_all(&pairs).unwrap();
    for (i, e) in encoded.iter().enumerate() {
        let len = e.ids.len();
        let want: Vec<i64> = want_ids[i * l..i * l + len].to_vec();
        assert_eq!(
            e.ids.iter().map(|&x| x as i64).collect::<Vec<_>>(),
            want,
            "pair {i}: input_ids"
        );
        assert_eq!(
            e.type_ids.iter().map(|&x| x as i64).collect::<Vec<_>>(),
            want_types[i * l..i * l + len].to_vec(),
            "pair {i}: token types"
        );
        assert_eq!(
            want_mask[i * l..(i + 1) * l].iter().sum::<i64>() as usize,
            len,
            "pair {i}: length"
        );
    }

    let device = Default::default();
    let (encoder, report) = Encoder::<CpuBackend>::load(&md, &device).unwrap();
    assert_eq!(
        report.skipped_buffers,
        vec!["embeddings.position_ids".to_string()]
    );
    // Our own length-bucketed batches: different padding from the reference's.
    let lengths: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
    let mut worst = 0f32;
    for batch in length_batches(&lengths, 16) {
        let items: Vec<_> = batch.iter().map(|&i| &encoded[i]).collect();
        let padded = tok.pad(&items);
        let out = encoder.forward(&ModelInput::from_batch(&padded, &device));
        let got = out.into_data().to_vec::<f32>().unwrap();
        for (row, &i) in batch.iter().enumerate() {
            for t in 0..lengths[i] {
                for k in 0..h {
                    let g = got[(row * padded.seq + t) * h + k];
                    let w = want_hidden[(i * l + t) * h + k];
                    worst = worst.max((g - w).abs());
                }
            }
        }
    }
    println!("minilm: {n} STS-B pairs, max |Δ last_hidden_state| = {worst:.2e}");
    assert!(worst <= 1e-4, "max |Δ| {worst} > 1e-4");
}
