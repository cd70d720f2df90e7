//! Descriptors of the built-in stage kinds (`uses:` in a pipeline file).
//!
//! A descriptor is what the engine needs without running the kind: its version (part of
//! every fingerprint, bumped whenever the kind's output for the same inputs may change),
//! which `with:` fields name input files or directories (hashed, and a DAG edge when they
//! reference another stage's output), and which outputs it writes.

pub mod build_pairs;
pub mod evaluate;
pub mod export;
pub mod sample_negatives;
pub mod train_lora;

use crate::contract::Stage;

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
];

/// The implementation of kind `name`, for the engine to run. `None` for an unknown kind, and
/// for kinds that need burn in a build without the `ml` feature.
pub fn implementation(name: &str) -> Option<Box<dyn Stage>> {
    match name {
        "build-pairs" => Some(Box::new(build_pairs::BuildPairs)),
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
        assert_eq!(kind("build-pairs").map(|k| k.version), Some(1));
        assert!(implementation("no-such-kind").is_none() && kind("no-such-kind").is_none());
    }
}
