//! Errors of the ML side: every one names the file, key or value at fault.

use std::path::{Path, PathBuf};

/// Result of the model, tokenizer and scoring functions.
pub type Result<T, E = MlError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum MlError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error(
        "model_type {0:?} is not supported (supported: {types})",
        types = crate::models::Architecture::MODEL_TYPES.join(", ")
    )]
    UnsupportedModel(String),
    #[error("{0} is not supported")]
    Unsupported(String),
    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("{path}: missing {} weight(s): {}", .keys.len(), .keys.join(", "))]
    MissingWeights { path: PathBuf, keys: Vec<String> },
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("pair {index}: {message}")]
    Encode { index: usize, message: String },
    #[error("device {spec:?}: {message}")]
    Device { spec: String, message: String },
    #[error("{0}")]
    Input(String),
}

impl MlError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        MlError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
