//! Where a project keeps things. Paths in pipeline files are relative to the project root,
//! which is `--project DIR` or, by default, the current directory.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Project {
    root: PathBuf,
    /// For an experiment's workspace: the project whose `cache/` and `runs/` it shares.
    store: Option<PathBuf>,
}

impl Project {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Project {
            root: root.into(),
            store: None,
        }
    }

    /// A separate workspace (`root`, where stages run and outputs go) that shares `main`'s
    /// cache and run database: how `tsumugi exp run -j N` runs experiments side by side.
    pub fn workspace(root: impl Into<PathBuf>, main: &Project) -> Self {
        Project {
            root: root.into(),
            store: Some(main.store_root().to_path_buf()),
        }
    }

    /// Whether this is an experiment's workspace (see [`Project::workspace`]).
    pub fn is_workspace(&self) -> bool {
        self.store.is_some()
    }

    fn store_root(&self) -> &Path {
        self.store.as_deref().unwrap_or(&self.root)
    }

    /// Where the project lock lives: `runs/`, or a workspace's own root (the command that
    /// made the workspaces holds the project's lock while they run).
    pub fn lock_dir(&self) -> PathBuf {
        match self.store {
            Some(_) => self.root.clone(),
            None => self.runs_dir(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `cache/`: the content-addressed store and the stage (action) cache.
    pub fn cache_dir(&self) -> PathBuf {
        self.store_root().join("cache")
    }

    /// `runs/`: the run database and per-run logs.
    pub fn runs_dir(&self) -> PathBuf {
        self.store_root().join("runs")
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
