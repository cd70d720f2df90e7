//! What a cross-encoder learns: the one vocabulary the trainer, `evaluate` and the kinds'
//! settings share (a module of its own, so the trainer need not import the kinds).

use schemars::JsonSchema;
use serde::Deserialize;

/// What the model learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Regression,
    Classification,
    Ranking,
}
