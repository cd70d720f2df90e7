//! tsumugi's stage contract and its built-in stage kinds.
//!
//! The engine (the `tsumugi` crate) runs every stage through [`contract::Stage`]: a shell
//! command stage and a built-in ML stage get the same resolved inputs, write the same kind
//! of declared outputs, and report progress and metrics through the same
//! [`contract::Reporter`]. The descriptors in [`kinds`] (name, version, inputs, outputs) are
//! always compiled, so the engine can validate and fingerprint a pipeline that uses a
//! built-in kind without building burn; the implementations need the `ml` feature.

pub mod contract;
pub mod kinds;
pub mod plots;
// Issue 4 without burn: loss formulas, evaluation metrics, plots.
pub mod losses;
pub mod metrics;
// Issue 5: reranker data, BM25, hard-negative mining (no burn).
pub mod ranking;

pub use contract::{Reporter, Stage, StageInput};
pub use kinds::{KindInfo, kind, kinds};
