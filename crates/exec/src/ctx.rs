//! The shared state of one run, handed to every stage it runs.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tsumugi_base::project::Project;
use tsumugi_rundb::{self, RunDb};
use tsumugi_store::cache::Cache;
use tsumugi_store::hash::StatCache;

use tsumugi_pipeline::ExecutorKind;

use crate::ui::Ui;

/// Shared state of one run.
pub(crate) struct Ctx {
    pub(crate) project: Project,
    pub(crate) pipeline_name: String,
    pub(crate) run_id: String,
    pub(crate) cache: Cache,
    pub(crate) stat: StatCache,
    pub(crate) db: RunDb,
    pub(crate) cancel: Arc<AtomicBool>,
    /// Stages that run even when fresh (`run --force`).
    pub(crate) forced: std::collections::HashSet<String>,
    pub(crate) device: String,
    /// Items of a `map:` stage running at once (`--jobs`).
    pub(crate) jobs: usize,
    pub(crate) ui: Ui,
    /// `--executor`, if given (a stage's own `executor:` still wins).
    pub(crate) executor: Option<ExecutorKind>,
    /// Job states of the run's Slurm jobs (one `squeue` per interval for all).
    pub(crate) slurm: crate::slurm::Queue,
    pub(crate) keep_going: bool,
    /// Set after a failure without --keep-going (or on cancel): start nothing new.
    pub(crate) stop: AtomicBool,
    pub(crate) stop_reason: Mutex<String>,
    /// One registration at a time (two stages may register under one name).
    pub(crate) registry: Mutex<()>,
    /// Read-through / write-through remote cache (`run --remote`).
    pub(crate) remote: Option<Arc<tsumugi_remote::Remote>>,
    /// `runs/<run>/params.yaml`: the effective values of the params-file keys the run
    /// uses, for stages that list file params (`TSUMUGI_PARAMS`); None if none.
    pub(crate) params_yaml: Option<std::path::PathBuf>,
}
