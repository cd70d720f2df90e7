//! `tsumugi schedule FILE [--once]`: the cron daemon (see docs/triggers.md).

use std::process::ExitCode;
use std::sync::atomic::Ordering;

use clap::Args;

use crate::project::Project;
use crate::trigger::clock::SystemClock;
use crate::trigger::runner::ExecutorRunner;
use crate::trigger::scheduler::Scheduler;
use crate::trigger::spec::cron_triggers;
use crate::trigger::state::SchedulerLock;

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Pipeline file (relative to the project root); default: the only one in pipelines/.
    #[arg(value_name = "FILE")]
    pub file: Option<String>,
    /// Evaluate the triggers that are due now, run once if one fires, and exit (for a
    /// crontab line such as `* * * * * tsumugi -C /srv/proj schedule FILE --once`).
    #[arg(long)]
    pub once: bool,
    /// Stages running at once in a run (default: number of cores).
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,
    /// After a stage fails keep running every stage that does not depend on it.
    #[arg(short = 'k', long)]
    pub keep_going: bool,
}

/// Exit code when another scheduler of the pipeline holds its lock.
const EXIT_LOCKED: u8 = 3;

pub fn run(project: &Project, args: ScheduleArgs) -> anyhow::Result<ExitCode> {
    let (file, _) = super::run::split_file_and_stages(project, args.file.as_slice())?;
    let pipeline = match super::run::load(project, &file) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let triggers = match cron_triggers(&pipeline) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    if triggers.is_empty() {
        eprintln!(
            "error: {}: the pipeline has no cron triggers (expected e.g. triggers: [{{cron: \"0 3 * * *\"}}])",
            file.display()
        );
        return Ok(ExitCode::from(2));
    }
    let what = if args.once {
        "tsumugi schedule --once"
    } else {
        "tsumugi schedule"
    };
    let _lock = match SchedulerLock::acquire(project, &pipeline.name, what) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(EXIT_LOCKED));
        }
    };
    let mut runner = ExecutorRunner::new(project, file.clone());
    runner.jobs = args.jobs.unwrap_or(0);
    runner.keep_going = args.keep_going;
    let cancel = runner.cancel.clone();
    let rt = super::run::runtime()?;
    let mut sched = Scheduler::new(project, &pipeline.name, triggers, SystemClock, runner)?;

    if args.once {
        let ev = rt.block_on(sched.evaluate_due())?;
        if ev.decisions.is_empty() {
            eprintln!("nothing due for pipeline {}", pipeline.name);
        }
        return Ok(if ev.run_failed() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }

    for t in sched.triggers() {
        let next = t.schedule.next_after(chrono::Utc::now());
        eprintln!(
            "{} catchup={} next tick: {}",
            t.label(),
            t.catchup,
            next.map(|n| format!(
                "{} ({})",
                n.with_timezone(&t.schedule.tz()).to_rfc3339(),
                n.to_rfc3339()
            ))
            .unwrap_or_else(|| "never".into())
        );
    }
    rt.block_on(async {
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            eprintln!(
                "stopping: the run in progress (if any) is cancelled, then tsumugi schedule exits"
            );
            // Cancel the run in progress; the executor stops its children and keeps the
            // cache consistent. The scheduler exits once that run has been recorded.
            cancel.store(true, Ordering::SeqCst);
            let _ = stop_tx.send(true);
        });
        sched
            .run_until(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM (what `systemctl stop` sends).
pub(super) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
