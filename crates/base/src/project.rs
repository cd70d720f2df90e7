//! Where a project keeps things. Paths in pipeline files are relative to the project root,
//! which is `--project DIR` or, by default, the current directory.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Project {
    root: PathBuf,
}

impl Project {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Project { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `cache/`: the content-addressed store and the stage (action) cache.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// `runs/`: the run database and per-run logs.
    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// `runs/tsumugi.db`.
    pub fn db_path(&self) -> PathBuf {
        self.runs_dir().join("tsumugi.db")
    }

    /// `runs/<run-id>/<stage>.log`.
    pub fn log_path(&self, run_id: &str, stage: &str) -> PathBuf {
        self.runs_dir().join(run_id).join(format!("{stage}.log"))
    }

    /// Where a built-in stage's outputs live: `out/<pipeline>/<stage>/`.
    pub fn builtin_out_dir(&self, pipeline: &str, stage: &str) -> PathBuf {
        Path::new("out").join(pipeline).join(stage)
    }
}
