//! Evaluation metrics as pure functions on slices, each matching a named reference
//! implementation (numpy / scipy / scikit-learn) to 1e-9; `scripts/make_metric_refs.py`
//! writes the reference values that `tests/metric_refs.rs` checks.
//!
//! Conventions, chosen once for the whole crate:
//! - Inputs are validated: lengths must agree, slices must not be empty, values must be
//!   finite. A violation is a [`MetricError`], never a panic.
//! - A metric that is mathematically undefined on valid input (Pearson of a constant
//!   vector) is `f64::NAN`, as scipy returns; callers that write JSON must handle it.
//! - Classes are `0..n_classes` (`usize`); probabilities are row-major `n × n_classes`.
//! - Ranking metrics take flat slices with a group (query) id per row and average over
//!   groups in order of first appearance.

pub mod classification;
pub mod ranking;
pub mod regression;
pub mod report;

pub use classification::{
    CalibrationBin, accuracy, brier_multiclass, calibration_bins, confusion_matrix, ece, macro_f1,
    per_class_prf,
};
pub use ranking::{average_precision, map, mrr_at_k, ndcg_at_k, recall_at_k};
pub use regression::{mae, mse, pearson, r2, rankdata, rmse, spearman};
pub use report::{
    argmax_rows, classification_report, ranking_report, regression_report, round_to_classes,
};

/// Why a metric could not be computed.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricError {
    /// Two inputs that must be parallel have different lengths.
    LengthMismatch {
        what: &'static str,
        left: usize,
        right: usize,
    },
    /// No samples at all.
    Empty,
    /// A value is NaN or infinite (index into the offending slice).
    NonFinite { what: &'static str, index: usize },
    /// A class index is not below the number of classes.
    ClassOutOfRange {
        index: usize,
        class: usize,
        n_classes: usize,
    },
    /// Anything else that makes the input invalid.
    Invalid(String),
}

impl std::fmt::Display for MetricError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricError::LengthMismatch { what, left, right } => {
                write!(f, "{what}: lengths differ ({left} vs {right})")
            }
            MetricError::Empty => write!(f, "no samples"),
            MetricError::NonFinite { what, index } => {
                write!(f, "{what}[{index}] is not a finite number")
            }
            MetricError::ClassOutOfRange {
                index,
                class,
                n_classes,
            } => write!(
                f,
                "sample {index}: class {class} is out of range (expected 0..{n_classes})"
            ),
            MetricError::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for MetricError {}

pub(crate) fn check_pair(what: &'static str, a: &[f64], b: &[f64]) -> Result<(), MetricError> {
    if a.len() != b.len() {
        return Err(MetricError::LengthMismatch {
            what,
            left: a.len(),
            right: b.len(),
        });
    }
    if a.is_empty() {
        return Err(MetricError::Empty);
    }
    check_finite(what, a)?;
    check_finite(what, b)
}

pub(crate) fn check_finite(what: &'static str, xs: &[f64]) -> Result<(), MetricError> {
    match xs.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(MetricError::NonFinite { what, index }),
        None => Ok(()),
    }
}
