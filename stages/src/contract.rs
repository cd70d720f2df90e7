//! The one contract every stage honours, built-in or shell command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Everything a stage may read. Paths are absolute.
#[derive(Debug, Clone)]
pub struct StageInput<'a> {
    /// The stage's name in its pipeline.
    pub name: &'a str,
    /// The project root; relative paths in the pipeline are relative to it.
    pub project_root: &'a Path,
    /// Resolved `with:` parameters (built-in kinds) — `${…}` already interpolated.
    pub with: &'a serde_json::Value,
    /// Where the stage must write each declared output, by output key. The engine commits
    /// these into the cache only after the stage returns `Ok`, so a failed or cancelled
    /// stage never leaves a cache entry behind.
    pub outs: &'a BTreeMap<String, PathBuf>,
    /// Extra environment for the stage (declared `env:`, `CUDA_VISIBLE_DEVICES` of its GPU slots).
    pub env: &'a BTreeMap<String, String>,
    /// The compute device the run asked for (`cpu`, `wgpu`, `cuda:0`, …).
    pub device: &'a str,
}

/// How a running stage talks back to the engine. Implementations are cheap to call often.
pub trait Reporter: Send + Sync {
    /// Progress of the stage's main loop; `total` is `None` when unknown.
    fn progress(&self, done: u64, total: Option<u64>, message: &str);
    /// A metric value; `step` is `Some` for per-step values (training loss), `None` for final ones.
    fn metric(&self, name: &str, step: Option<u64>, value: f64);
    /// One line for the stage's log file (and, live, the terminal).
    fn log(&self, line: &str);
    /// True once the run was cancelled (Ctrl-C, timeout): the stage should stop promptly and
    /// return an error. Nothing it wrote is committed.
    fn cancelled(&self) -> bool;
}

/// A unit of work with declared inputs and outputs.
pub trait Stage: Send + Sync {
    /// Runs the stage to completion, writing every declared output.
    fn run(&self, input: &StageInput<'_>, report: &dyn Reporter) -> anyhow::Result<()>;
}
