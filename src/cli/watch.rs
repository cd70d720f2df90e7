//! `tsumugi watch FILE [--debounce 500ms]`: re-run the affected stages on file changes
//! (see docs/triggers.md).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;

use crate::graph::Dag;
use crate::project::Project;
use crate::spec;
use crate::trigger::runner::ExecutorRunner;
use crate::trigger::watch::{WatchOptions, watch};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Pipeline file (relative to the project root); default: the only one in pipelines/.
    #[arg(value_name = "FILE")]
    pub file: Option<String>,
    /// Quiet time after the last change before a run starts (e.g. 200ms, 2s).
    #[arg(long, default_value = "500ms", value_parser = tsumugi_base::duration::parse_arg)]
    pub debounce: Duration,
    /// Stages running at once in a run (default: number of cores).
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,
    /// After a stage fails keep running every stage that does not depend on it.
    #[arg(short = 'k', long)]
    pub keep_going: bool,
}

pub fn run(project: &Project, args: WatchArgs) -> anyhow::Result<ExitCode> {
    let (file, _) = super::run::split_file_and_stages(project, args.file.as_slice())?;
    let pipeline = match super::run::load(project, &file) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let mut runner = ExecutorRunner::new(project, file.clone());
    runner.jobs = args.jobs.unwrap_or(0);
    runner.keep_going = args.keep_going;
    let cancel = runner.cancel.clone();
    let runner = Arc::new(runner);
    let reload_project = project.clone();
    let reload = move || -> anyhow::Result<spec::Pipeline> {
        let p = spec::load(&file, &reload_project).map_err(|e| anyhow::anyhow!("{e}"))?;
        Dag::build(&p).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(p)
    };
    let rt = super::run::runtime()?;
    rt.block_on(async {
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            super::schedule::shutdown_signal().await;
            cancel.store(true, Ordering::SeqCst);
            let _ = stop_tx.send(true);
        });
        let stop = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        watch(
            project,
            pipeline,
            runner,
            WatchOptions::with_debounce(args.debounce),
            reload,
            stop,
        )
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}
