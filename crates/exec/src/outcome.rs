//! What a run is asked ([`RunOptions`]) and what it answers ([`RunSummary`], one
//! [`StageOutcome`] per stage; [`StageStatus`] for `status`): the executor's vocabulary,
//! shared by the CLI, the triggers and the JSON output (docs/json-output.md).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::Serialize;

use tsumugi_store::dirty_reason::DirtyReason;

/// What started a run; recorded in the run database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    #[default]
    Manual,
    Watch,
    Cron,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Manual => "manual",
            TriggerKind::Watch => "watch",
            TriggerKind::Cron => "cron",
        }
    }
}

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// Live bars when stderr is a terminal, plain lines otherwise.
    #[default]
    Auto,
    Plain,
    Quiet,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stages to run (with everything they need); empty: all.
    pub targets: Vec<String>,
    /// Stages running at once; 0 means the number of cores.
    pub jobs: usize,
    pub keep_going: bool,
    /// Run stages even when fresh: with `targets`, only the named ones (their upstream
    /// stays cached unless `force_upstream`); without, every stage.
    pub force: bool,
    /// With `force` and `targets`: also force everything the targets need.
    pub force_upstream: bool,
    pub trigger: TriggerKind,
    /// Say what would run; run nothing, record nothing.
    pub dry_run: bool,
    /// GPU slots; `None`: count `CUDA_VISIBLE_DEVICES` or `nvidia-smi -L`.
    pub gpus: Option<u32>,
    /// Compute device passed to built-in stages (`cpu`, `cuda:0`, …).
    pub device: String,
    /// Wait for the project lock (otherwise fail with [`tsumugi_base::lock::Locked`]).
    pub wait_for_lock: bool,
    /// Catch Ctrl-C / SIGTERM and cancel the run. Long-running callers with their own
    /// handling set this false and use `cancel`.
    pub handle_signals: bool,
    /// Set to cancel the run from outside.
    pub cancel: Arc<AtomicBool>,
    pub progress: ProgressMode,
    /// When stderr is not a terminal: a line per running stage this often, with its progress
    /// and ETA (zero: none). Default 10 s.
    pub progress_interval: Duration,
    /// Remote cache to read through before running a stale stage and to write through after
    /// committing one (see `remote_cache`).
    pub remote: Option<Arc<tsumugi_remote::Remote>>,
    /// `--executor`: where stages without their own `executor:` run (default: the
    /// pipeline's `executor:`, else local).
    pub executor: Option<tsumugi_pipeline::ExecutorKind>,
    /// The GPU ids to hand out, instead of detecting them (`tsumugi exp run -j N` gives
    /// each experiment running at once its own share).
    pub gpu_ids: Option<Vec<String>>,
    /// `tsumugi exp run`: the experiment's name, recorded with the run.
    pub exp: Option<String>,
    /// The `-S` overrides the pipeline was loaded with (`{"KEY": value}`), recorded with
    /// the run.
    pub overrides: Option<serde_json::Value>,
}

impl RunOptions {
    /// The stages of `order` (a selection for `targets`) that `force` makes run.
    pub fn forced(&self, order: &[String]) -> std::collections::HashSet<String> {
        if !self.force {
            Default::default()
        } else if self.targets.is_empty() || self.force_upstream {
            order.iter().cloned().collect()
        } else {
            self.targets.iter().cloned().collect()
        }
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            targets: Vec::new(),
            jobs: 0,
            keep_going: false,
            force: false,
            force_upstream: false,
            trigger: TriggerKind::Manual,
            dry_run: false,
            gpus: None,
            device: "cpu".into(),
            wait_for_lock: true,
            handle_signals: true,
            cancel: Arc::new(AtomicBool::new(false)),
            progress: ProgressMode::Auto,
            progress_interval: Duration::from_secs(10),
            remote: None,
            executor: None,
            gpu_ids: None,
            exp: None,
            overrides: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    /// Executed and committed to the cache.
    Ran,
    /// Fresh; outputs already in place.
    Cached,
    /// Fresh; one or more outputs were put back from the cache.
    Restored,
    Failed,
    /// Not started: an upstream stage failed, or the run stopped.
    Skipped,
    /// Killed by Ctrl-C / cancellation.
    Cancelled,
    /// Dry run: would run.
    WouldRun,
}

impl StageState {
    pub fn as_str(self) -> &'static str {
        match self {
            StageState::Ran => "ran",
            StageState::Cached => "cached",
            StageState::Restored => "restored",
            StageState::Failed => "failed",
            StageState::Skipped => "skipped",
            StageState::Cancelled => "cancelled",
            StageState::WouldRun => "would_run",
        }
    }

    pub fn is_ok(self) -> bool {
        matches!(
            self,
            StageState::Ran | StageState::Cached | StageState::Restored | StageState::WouldRun
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StageOutcome {
    pub name: String,
    pub status: StageState,
    pub fingerprint: Option<String>,
    #[serde(serialize_with = "ser_secs")]
    pub duration: Duration,
    pub attempts: u32,
    pub exit_code: Option<i32>,
    pub log: Option<PathBuf>,
    /// Why it failed / was skipped, or which outputs were restored.
    pub message: Option<String>,
    /// What `register:` did, for a stage that has it and completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration: Option<crate::registry::Registration>,
}

pub(crate) fn ser_secs<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Empty for a dry run (nothing is recorded).
    pub run_id: String,
    pub pipeline: String,
    pub stages: Vec<StageOutcome>,
    pub success: bool,
    pub cancelled: bool,
    #[serde(serialize_with = "ser_secs")]
    pub duration: Duration,
}

/// A stage's freshness as `status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    pub name: String,
    pub fresh: bool,
    /// The sentences of `why`, as `status --json` shows them.
    pub reasons: Vec<String>,
    /// Why the stage is stale, typed; empty when fresh.
    #[serde(skip)]
    pub why: Vec<DirtyReason>,
    /// `None` when it cannot be computed yet (an input is missing).
    pub fingerprint: Option<String>,
    /// A `map:` stage's per-item counts when it is stale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<crate::map::ItemCounts>,
}
