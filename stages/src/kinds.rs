//! Descriptors of the built-in stage kinds (`uses:` in a pipeline file).
//!
//! A descriptor is what the engine needs without running the kind: its version (part of
//! every fingerprint, bumped whenever the kind's output for the same inputs may change),
//! which `with:` fields name input files or directories (hashed, and a DAG edge when they
//! reference another stage's output), which outputs it writes, and its `with:` settings
//! as a type ([`settings`]): the load-time check and the JSON Schema come from it.

pub mod build_pairs;
pub mod caption_images;
pub mod evaluate;
pub mod export;
pub mod sample_negatives;
pub mod settings;
pub mod train_lora;

use crate::contract::Stage;
pub use settings::{PathSeg, Problem, SettingsError, SettingsInfo};

/// A built-in stage kind, as the engine sees it.
#[derive(Debug, Clone, Copy)]
pub struct KindInfo {
    /// The name used in `uses:`.
    pub name: &'static str,
    /// Implementation version, part of the fingerprint.
    pub version: u32,
    /// One line for `--help` and the JSON Schema.
    pub summary: &'static str,
    /// Top-level `with:` fields whose values are paths of inputs (file or directory).
    pub input_fields: &'static [&'static str],
    /// Declared outputs: (output key, file or directory name inside the stage's output directory).
    pub outputs: &'static [(&'static str, &'static str)],
    /// The output key holding the stage's metrics JSON, if it writes one.
    pub metrics: Option<&'static str>,
    /// Whether `map:` may run the kind once per item: every output is a line-oriented file
    /// (JSONL) whose per-item parts concatenate, in item-key order, into the whole.
    pub per_item: bool,
    /// The `with:` settings: checked when the pipeline is loaded, and its JSON Schema.
    pub settings: SettingsInfo,
}

/// Every built-in kind this build knows about.
pub fn kinds() -> &'static [KindInfo] {
    KINDS
}

/// The kind called `name`, if there is one.
pub fn kind(name: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.name == name)
}

/// Kinds are listed here as their implementations land.
static KINDS: &[KindInfo] = &[
    build_pairs::INFO,
    sample_negatives::INFO,
    train_lora::INFO,
    evaluate::INFO,
    export::INFO,
    caption_images::INFO,
];

/// The implementation of kind `name`, for the engine to run. `None` for an unknown kind, and
/// for kinds that need burn in a build without the `ml` feature.
pub fn implementation(name: &str) -> Option<Box<dyn Stage>> {
    match name {
        "build-pairs" => Some(Box::new(build_pairs::BuildPairs)),
        // OCR needs no burn: every build captions (a VLM method says when it is absent).
        "caption-images" => Some(Box::new(caption_images::CaptionImages)),
        #[cfg(not(feature = "ml"))]
        "sample-negatives" => Some(Box::new(sample_negatives::SampleNegatives::default())),
        #[cfg(feature = "ml")]
        "sample-negatives" => Some(Box::new(sample_negatives::SampleNegatives::with_scorer(
            sample_negatives::model_scorer,
        ))),
        #[cfg(feature = "ml")]
        "train-lora" => Some(Box::new(train_lora::TrainLora)),
        #[cfg(feature = "ml")]
        "evaluate" => Some(Box::new(evaluate::Evaluate)),
        #[cfg(feature = "ml")]
        "export" => Some(Box::new(export::Export)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_kind_is_consistent() {
        for k in kinds() {
            assert_eq!(kind(k.name).map(|i| i.name), Some(k.name));
            if let Some(m) = k.metrics {
                assert!(
                    k.outputs.iter().any(|(key, _)| *key == m),
                    "{}: metrics key is an output",
                    k.name
                );
            }
        }
        assert!(implementation("build-pairs").is_some());
        assert!(implementation("sample-negatives").is_some());
        assert_eq!(kind("build-pairs").map(|k| k.version), Some(2));
        assert!(implementation("no-such-kind").is_none() && kind("no-such-kind").is_none());
    }

    /// The JSON Schema of each kind's `with:` accepts exactly what its settings type does
    /// (on these cases: a number given for a usize as `1.0` is one the schema would pass).
    #[test]
    fn schema_and_settings_type_agree() {
        use serde_json::json;
        let pairs = json!({"input": "a.csv", "text_a": 0, "text_b": "b", "label": 2});
        let with = |base: &serde_json::Value, k: &str, v: serde_json::Value| {
            let mut w = base.clone();
            w[k] = v;
            w
        };
        let train = json!({"base": "m", "train": "t.jsonl", "task": "regression"});
        let eval = json!({"base": "m", "test": "t.jsonl", "task": "ranking"});
        let cases: Vec<(&str, serde_json::Value, bool)> = vec![
            ("build-pairs", pairs.clone(), true),
            ("build-pairs", with(&pairs, "lable", json!(2)), false),
            ("build-pairs", with(&pairs, "text_a", json!([0])), false),
            ("build-pairs", with(&pairs, "text_a", json!(-1)), false),
            (
                "build-pairs",
                json!({"input": "a.csv", "text_a": 0, "text_b": 1}),
                false,
            ),
            (
                "build-pairs",
                with(
                    &pairs,
                    "input",
                    json!({"sqlite": {"db": "a.db", "query": "SELECT 1"}}),
                ),
                true,
            ),
            (
                "build-pairs",
                with(
                    &pairs,
                    "input",
                    json!({"sqlite": {"db": "a.db", "qury": "SELECT 1"}}),
                ),
                false,
            ),
            (
                "build-pairs",
                with(&pairs, "input", json!({"sqlite": {"db": "a.db"}})),
                false,
            ),
            ("build-pairs", with(&pairs, "input", json!(5)), false),
            ("build-pairs", with(&pairs, "format", json!("xml")), false),
            (
                "build-pairs",
                with(&pairs, "split", json!({"dev": 0.1})),
                true,
            ),
            (
                "build-pairs",
                with(&pairs, "split", json!({"valid": 0.1})),
                false,
            ),
            ("build-pairs", with(&pairs, "labels", json!(["a", 1])), true),
            (
                "build-pairs",
                with(&pairs, "captions", json!("out/p/caption/captions.jsonl")),
                true,
            ),
            (
                "build-pairs",
                with(&pairs, "caption_for", json!("text_b")),
                true,
            ),
            (
                "build-pairs",
                with(&pairs, "caption_for", json!("prompt")),
                false,
            ),
            (
                "build-pairs",
                with(&pairs, "missing_captions", json!("drop")),
                true,
            ),
            (
                "build-pairs",
                with(&pairs, "missing_captions", json!("skip")),
                false,
            ),
            ("caption-images", json!({"images": "data/images"}), true),
            (
                "caption-images",
                json!({"images": "d", "method": "vlm+ocr", "model": "m", "prompt": "p",
                       "language": "jpn", "max_new_tokens": 64, "batch_size": 2,
                       "on_error": "fallback", "psm": 6,
                       "preprocess": {"grayscale": true, "contrast": false, "denoise": true,
                                      "binarize": "none", "deskew": true, "max_skew_degrees": 3.0,
                                      "upscale_min_height": 0}}),
                true,
            ),
            ("caption-images", json!({"method": "ocr"}), false),
            (
                "caption-images",
                json!({"images": "d", "method": "tesseract"}),
                false,
            ),
            (
                "caption-images",
                json!({"images": "d", "on_error": "ignore"}),
                false,
            ),
            (
                "caption-images",
                json!({"images": "d", "batch_size": 0}),
                false,
            ),
            (
                "caption-images",
                json!({"images": "d", "preprocess": {"binarize": "sauvola"}}),
                false,
            ),
            (
                "caption-images",
                json!({"images": "d", "preprocess": {"deskw": true}}),
                false,
            ),
            ("train-lora", train.clone(), true),
            (
                "train-lora",
                with(&train, "optim", json!({"lr": "fast"})),
                false,
            ),
            (
                "train-lora",
                with(&train, "optim", json!({"lr": null})),
                false,
            ),
            (
                "train-lora",
                with(
                    &train,
                    "optim",
                    json!({"lr": 1e-3, "grad_clip": null, "max_steps": 0, "schedule": "cosine"}),
                ),
                true,
            ),
            (
                "train-lora",
                with(&train, "optim", json!({"schedule": "cosin"})),
                false,
            ),
            (
                "train-lora",
                with(&train, "optim", json!({"lr": 1, "epoch": 2})),
                false,
            ),
            (
                "train-lora",
                with(
                    &train,
                    "lora",
                    json!({"r": 8, "alpha": 16, "targets": ["query"]}),
                ),
                true,
            ),
            (
                "train-lora",
                with(&train, "lora", json!({"rank": 8})),
                false,
            ),
            (
                "train-lora",
                with(&train, "task", json!("regresion")),
                false,
            ),
            (
                "train-lora",
                json!({"base": "m", "train": "t.jsonl"}),
                false,
            ),
            ("evaluate", eval.clone(), true),
            (
                "evaluate",
                with(&eval, "fail_if", json!({"metric": "mrr", "below": 0.5})),
                true,
            ),
            (
                "evaluate",
                with(
                    &eval,
                    "fail_if",
                    json!([{"metric": "mrr", "below": 0.5}, {"metric": "x", "above_baseline": 0}]),
                ),
                true,
            ),
            (
                "evaluate",
                with(&eval, "fail_if", json!([{"metric": "mrr", "belw": 0.5}])),
                false,
            ),
            ("evaluate", with(&eval, "fail_if", json!(0.5)), false),
            ("evaluate", with(&eval, "ks", json!([1, 5, 10])), true),
            (
                "export",
                json!({"base": "m", "adapter": "a", "merge": true}),
                true,
            ),
            ("export", json!({"base": "m", "merge": true}), false),
            (
                "export",
                json!({"base": "m", "adapter": "a", "merge": "yes"}),
                false,
            ),
            ("sample-negatives", json!({"input": "q.jsonl"}), true),
            (
                "sample-negatives",
                json!({"input": "q.jsonl", "model": "m", "batch": 4, "label": 1}),
                true,
            ),
            (
                "sample-negatives",
                json!({"input": "q.jsonl", "model": "m", "batch": 0}),
                false,
            ),
            (
                "sample-negatives",
                json!({"input": "q.jsonl", "model": 5}),
                false,
            ),
            (
                "sample-negatives",
                json!({"input": "q.jsonl", "method": "bm26"}),
                false,
            ),
            (
                "sample-negatives",
                json!({"input": "q.jsonl", "bm25": {"k1": 1.2, "b": 0.75}}),
                true,
            ),
        ];
        let mut checked = std::collections::BTreeSet::new();
        for (name, with, ok) in cases {
            let k = kind(name).unwrap();
            let schema = (k.settings.schema)().to_value();
            let validator = jsonschema::validator_for(&schema)
                .unwrap_or_else(|e| panic!("{name}: the schema does not compile: {e}"));
            let by_type = (k.settings.validate)(&with);
            assert_eq!(
                by_type.is_ok(),
                ok,
                "{name} {with}: settings type says {by_type:?}"
            );
            assert_eq!(
                validator.is_valid(&with),
                ok,
                "{name} {with}: the schema disagrees"
            );
            checked.insert(name);
        }
        assert_eq!(checked.len(), kinds().len(), "every kind has cases");
    }
}
