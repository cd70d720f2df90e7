//! `pipelines/humor-images.yaml` end to end, as a user runs it: the model and the humor data
//! from PyPI, prompts drawn as images (Pillow + Noto CJK), OCR (Tesseract), captions joined
//! into pairs, LoRA training and evaluation. Needs the network to PyPI, Tesseract with the
//! English pack, Pillow and fonts-noto-cjk (.ci/run installs them).
#![cfg(feature = "ml")]

mod engine_support;

use std::collections::BTreeMap;
use std::path::Path;

use engine_support::Proj;
use tsumugi_stages::caption::render::char_error_rate;

#[test]
fn humor_images_pipeline_captions_pairs_trains_and_evaluates() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = Proj::new("");
    let yaml = std::fs::read_to_string(repo.join("pipelines/humor-images.yaml")).unwrap();
    p.set_pipeline(&yaml);
    for f in ["humor_pairs.py", "render_prompts.py"] {
        p.write(
            &format!("pipelines/prep/{f}"),
            &std::fs::read_to_string(repo.join("pipelines/prep").join(f)).unwrap(),
        );
    }
    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}\n{v}");
    assert_eq!(Proj::with_status(&v, "ran").len(), 8, "{v}");

    // The captions read the drawn prompts back: image i is the i-th prompt in sorted order.
    let mut prompts: Vec<String> = p
        .read("data/humor/pairs.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|r| {
            r["prompt"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(String::from)
        })
        .collect();
    prompts.sort();
    prompts.dedup();
    let rows: Vec<serde_json::Value> = p
        .read("out/humor-images/caption/captions.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), prompts.len());
    let mut cers = Vec::new();
    for (i, (row, prompt)) in rows.iter().zip(&prompts).enumerate() {
        assert_eq!(
            row["image"],
            format!("data/humor-images/images/prompt-{:03}.png", i + 1)
        );
        assert_eq!(row["status"], "ok", "{row}");
        cers.push(char_error_rate(row["caption"].as_str().unwrap(), prompt));
    }
    let mean = cers.iter().sum::<f64>() / cers.len() as f64;
    assert!(
        mean <= 0.03,
        "mean CER {mean:.3} over {} images",
        cers.len()
    );

    // Every pair's prompt is a caption now, none a path.
    let stats: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&p.read("out/humor-images/pairs/stats.json")).unwrap();
    assert_eq!(stats["captioned"], stats["rows"], "{stats:?}");
    assert_eq!(stats["dropped_no_caption"], 0);
    let train = p.read("out/humor-images/pairs/train.jsonl");
    assert!(!train.contains(".png"), "a prompt kept its image path");

    let metrics: serde_json::Value =
        serde_json::from_str(&p.read("out/humor-images/evaluate/metrics.json")).unwrap();
    assert!(
        metrics["rmse"].as_f64().is_some_and(f64::is_finite),
        "{metrics}"
    );
}
