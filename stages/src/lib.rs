//! tsumugi's stage contract and its built-in stage kinds.
//!
//! The engine (the `tsumugi` crate) runs every stage through [`contract::Stage`]: a shell
//! command stage and a built-in ML stage get the same resolved inputs, write the same kind
//! of declared outputs, and report progress and metrics through the same
//! [`contract::Reporter`]. The descriptors in [`kinds`] (name, version, inputs, outputs) are
//! always compiled, so the engine can validate and fingerprint a pipeline that uses a
//! built-in kind without building burn; the implementations need the `ml` feature.
//!
//! With `ml`: [`models`] (BERT, RoBERTa, XLM-R cross-encoders in burn, loaded from Hugging
//! Face directories), [`tokenize`] (pair tokenization and length bucketing), [`score`]
//! (scoring pairs), [`device`] (run-time backend choice).

pub mod contract;
pub mod head;
pub mod kinds;
// Issue 4 without burn: loss formulas, evaluation metrics, plots.
pub mod losses;
pub mod metrics;
pub mod plots;
pub mod precision;
pub mod rng;
pub mod task;

#[cfg(feature = "ml")]
pub mod device;
#[cfg(feature = "ml")]
pub mod error;
#[cfg(feature = "ml")]
pub mod model_scorer;
#[cfg(feature = "ml")]
pub mod models;
#[cfg(feature = "ml")]
pub mod score;
#[cfg(feature = "ml")]
pub mod tokenize;
// Issue 4 with burn: LoRA, PEFT adapter files, the trainer.
#[cfg(feature = "ml")]
pub mod lora;
#[cfg(feature = "ml")]
pub mod oft;
#[cfg(feature = "ml")]
pub mod peft;
#[cfg(feature = "ml")]
pub mod train;

// Issue 13: image captions (OCR with Tesseract at run time; no burn).
pub mod caption;

// Issue 5: reranker data, BM25, hard-negative mining (no burn).
pub mod ranking;

pub use contract::{Reporter, Stage, StageInput};
pub use kinds::{KindInfo, kind, kinds};
