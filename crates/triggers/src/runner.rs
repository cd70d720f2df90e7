//! The [`PipelineRunner`] that really runs: the executor, on the pipeline file as it is now.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Result;

use super::{Origin, PipelineRunner, RunOutcome, RunRequest};
use tsumugi_base::project::Project;
use tsumugi_exec::executor::{self, ProgressMode, RunOptions, TriggerKind};
use tsumugi_pipeline::graph::Dag;

#[derive(Debug, Clone)]
pub struct ExecutorRunner {
    pub project: Project,
    /// The pipeline file, relative to the project root.
    pub file: PathBuf,
    /// Stages at once (0: number of cores).
    pub jobs: usize,
    pub keep_going: bool,
    /// Set by the signal handler: the executor stops the run's children and keeps the
    /// cache consistent.
    pub cancel: Arc<AtomicBool>,
    pub progress: ProgressMode,
}

impl ExecutorRunner {
    pub fn new(project: &Project, file: PathBuf) -> Self {
        ExecutorRunner {
            project: project.clone(),
            file,
            jobs: 0,
            keep_going: false,
            cancel: Arc::new(AtomicBool::new(false)),
            progress: ProgressMode::Plain,
        }
    }
}

impl PipelineRunner for ExecutorRunner {
    async fn run(&self, request: RunRequest) -> Result<RunOutcome> {
        // Load the file afresh for every run: edits to stages made while a daemon runs take
        // effect at its next run; a broken edit fails that run only.
        let pipeline = tsumugi_pipeline::load(&self.file, &self.project)?;
        Dag::build(&pipeline)?;
        let opts = RunOptions {
            targets: request.targets,
            jobs: self.jobs,
            keep_going: self.keep_going,
            trigger: match request.origin {
                Origin::Manual => TriggerKind::Manual,
                Origin::Watch => TriggerKind::Watch,
                Origin::Cron => TriggerKind::Cron,
            },
            // Wait for a manual run (or the other trigger daemon) to finish rather than fail:
            // the project lock is what keeps runs from overlapping across processes.
            wait_for_lock: true,
            handle_signals: false,
            cancel: self.cancel.clone(),
            progress: self.progress,
            ..RunOptions::default()
        };
        let s = executor::run(&self.project, &pipeline, &opts).await?;
        Ok(RunOutcome {
            run_id: s.run_id,
            success: s.success,
            succeeded: s
                .stages
                .iter()
                .filter(|o| o.status.is_ok())
                .map(|o| o.name.clone())
                .collect(),
            failed: s
                .stages
                .iter()
                .filter(|o| !o.status.is_ok())
                .map(|o| o.name.clone())
                .collect(),
        })
    }
}
