//! Triggers: running a pipeline without a person typing `tsumugi run` (issue 6).
//!
//! | piece | module | what it does |
//! | --- | --- | --- |
//! | clock | [`clock`] | "now" and "sleep until", injected so the scheduler is tested without waiting |
//! | cron | [`cron`] | a cron expression in an explicit time zone → the ticks in a time window |
//! | spec | [`spec`] | a pipeline's `triggers:` entry → a checked [`spec::CronTrigger`] |
//! | conditions | [`conditions`] | `when:` — SQL on a SQLite file, time since a stage's last success, changed globs, `all`/`any` |
//! | state | [`state`] | per trigger: the last evaluated tick and the `changed:` snapshots, saved atomically |
//! | history | [`history`] | where decisions are recorded and where "last success of stage X" is read |
//! | scheduler | [`scheduler`] | `tsumugi schedule`: due ticks → catch-up policy → conditions → one run at a time |
//! | runner | [`runner`] | the real [`PipelineRunner`]: reloads the pipeline file and calls the executor |
//! | watch | [`watch`] | `tsumugi watch`: file events → debounce → affected sub-graph → one run at a time |
//!
//! Both the scheduler and the watcher start runs through [`PipelineRunner`], so the
//! decision logic does not depend on how a run is carried out.

use std::future::Future;

use serde::Serialize;

pub mod clock;
pub mod conditions;
pub mod cron;
pub mod history;
pub mod runner;
pub mod scheduler;
pub mod spec;
pub mod state;
pub mod watch;

/// What started a run; recorded with the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Manual,
    Watch,
    Cron,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Manual => "manual",
            Origin::Watch => "watch",
            Origin::Cron => "cron",
        })
    }
}

/// One run that a trigger asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    pub origin: Origin,
    /// Stages to bring up to date (with what they need). Empty: the whole pipeline.
    pub targets: Vec<String>,
    /// Why the run was started, for the log.
    pub reason: String,
}

/// What became of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    pub run_id: String,
    pub success: bool,
    /// Stages that finished successfully in this run (ran or restored from the cache).
    pub succeeded: Vec<String>,
    /// Stages that failed.
    pub failed: Vec<String>,
}

/// Starts one run of one pipeline and waits for it. The scheduler and the watcher never
/// call it twice at once; a runner may still refuse (another process holds the project).
pub trait PipelineRunner: Send + Sync {
    fn run(&self, request: RunRequest) -> impl Future<Output = anyhow::Result<RunOutcome>> + Send;
}
