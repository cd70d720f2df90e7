//! The command line. Each subcommand's handler lives in its own file beside this one.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::project::Project;

mod adapters;
mod dag;
mod exp;
mod fsmonitor;
mod gc;
mod metrics;
#[cfg(feature = "ml")]
mod models;
mod plots;
mod remote;
mod results;
mod run;
mod runref;
mod runs;
mod schedule;
mod schema;
#[cfg(feature = "ml")]
mod score;
#[cfg(feature = "ml")]
mod serve;
mod show;
mod status;
mod ui;
mod validate;
mod watch;

/// tsumugi — declarative pipelines for fine-tuning and evaluating cross-encoders with LoRA.
///
/// Every stage of a pipeline file is content-hashed and cached: a re-run does only the work
/// that a change of data, parameters or code invalidates. Runs are recorded in
/// runs/tsumugi.db.
#[derive(Debug, Parser)]
#[command(
    name = "tsumugi",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Project root: pipeline paths, cache/ and runs/ are relative to it.
    #[arg(
        short = 'C',
        long = "project",
        global = true,
        default_value = ".",
        value_name = "DIR"
    )]
    pub project: PathBuf,
    /// More diagnostics on stderr (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline: stale stages run (in parallel), fresh ones are skipped or restored.
    Run(run::RunArgs),
    /// Say which stages are stale and exactly why, without running anything.
    Status(status::StatusArgs),
    /// Check a pipeline file and report every error with file:line:column.
    Validate(validate::ValidateArgs),
    /// Print the JSON Schema of the pipeline file format (for editors).
    Schema(schema::SchemaArgs),
    /// Print a pipeline's stage graph (text, Mermaid or Graphviz dot).
    Dag(dag::DagArgs),
    /// List recorded runs, newest first.
    Runs(runs::RunsArgs),
    /// Show one run: its stages, their status, timings, logs and metrics.
    Show(show::ShowArgs),
    /// Compare the metrics of runs.
    #[command(subcommand)]
    Metrics(metrics::MetricsCommand),
    /// Draw a run's declared plots (`plots:`) as SVG/PNG + index.html; overlay several runs.
    #[command(subcommand, long_about = plots::LONG_ABOUT)]
    Plots(plots::PlotsCommand),
    /// Remove cache objects and entries that no kept run and no workspace output references.
    #[command(long_about = gc::LONG_ABOUT)]
    Gc(gc::GcArgs),
    /// Run the pipeline's cron triggers: a daemon, or `--once` from crontab.
    Schedule(schedule::ScheduleArgs),
    /// Re-run the stages affected by file changes, as they happen.
    Watch(watch::WatchArgs),
    /// Registered adapter/model versions: list, promote, rollback, history.
    #[command(subcommand)]
    Adapters(adapters::AdaptersCommand),
    /// Keep a file-system monitor running so `status` need not stat unchanged inputs.
    #[command(long_about = fsmonitor::LONG_ABOUT)]
    Fsmonitor(fsmonitor::FsmonitorArgs),
    /// Score text pairs (JSONL) with a cross-encoder model directory.
    #[cfg(feature = "ml")]
    Score(score::ScoreArgs),
    /// Model directories: `check` says which architecture, tokenizer and head one holds and
    /// whether tsumugi loads it.
    #[cfg(feature = "ml")]
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Remote caches on object storage (S3, a shared directory): add, list, remove, verify.
    #[command(subcommand, long_about = remote::LONG_ABOUT)]
    Remote(remote::RemoteCommand),
    /// Upload the cached results the workspace is built from to a remote.
    Push(remote::SyncArgs),
    /// Fetch the selected stages' results from a remote (verified) and check them out.
    Pull(remote::SyncArgs),
    /// Run one built-in stage from a hashed request file (what a Slurm job runs).
    #[command(name = "__stage-exec", hide = true)]
    StageExec { request: PathBuf },
    /// Serve a cross-encoder over HTTP, following the adapter registry (hot-swap).
    #[cfg(feature = "ml")]
    #[command(long_about = serve::LONG_ABOUT)]
    Serve(serve::ServeArgs),
    /// A local web UI: runs, comparisons, timelines and logs, the DAG, adapter versions.
    #[command(long_about = ui::LONG_ABOUT)]
    Ui(ui::UiArgs),
    /// Experiments: runs with -S overrides and grids, compared in a table (docs/experiments.md).
    #[command(subcommand)]
    Exp(exp::ExpCommand),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.global.verbose);
    let project = Project::new(&cli.global.project);
    if prints_for_a_reader(&cli.command) {
        quiet_on_closed_stdout();
    }
    let result = match cli.command {
        Command::Run(a) => run::run(&project, a),
        Command::Status(a) => status::run(&project, a),
        Command::Validate(a) => validate::run(&project, a),
        Command::Schema(a) => schema::run(a),
        Command::Dag(a) => dag::run(&project, a),
        Command::Runs(a) => runs::run(&project, a),
        Command::Show(a) => show::run(&project, a),
        Command::Metrics(a) => metrics::run(&project, a),
        Command::Plots(a) => plots::run(&project, a),
        Command::Gc(a) => gc::run(&project, a),
        Command::Schedule(a) => schedule::run(&project, a),
        Command::Watch(a) => watch::run(&project, a),
        Command::Adapters(a) => adapters::run(&project, a),
        Command::Fsmonitor(a) => fsmonitor::run(&project, a),
        #[cfg(feature = "ml")]
        Command::Score(a) => score::run(a),
        #[cfg(feature = "ml")]
        Command::Models(c) => models::run(c),
        Command::Remote(a) => remote::run(&project, a),
        Command::Push(a) => remote::sync(&project, a, false),
        Command::Pull(a) => remote::sync(&project, a, true),
        Command::StageExec { request } => {
            tsumugi_exec::executor::run_stage_request(&request).map(|()| ExitCode::SUCCESS)
        }
        #[cfg(feature = "ml")]
        Command::Serve(a) => serve::run(&project, a),
        Command::Ui(a) => ui::run(&project, a),
        Command::Exp(a) => exp::run(&project, a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Commands that print a report and hold nothing open: `tsumugi runs | head` should end
/// them quietly, as it ends `ls` or `git log`. Not the daemons (`watch`, `schedule`,
/// `fsmonitor`) or `run`/`gc`, which must finish their work (and a daemon's socket peer
/// going away must not kill it).
fn prints_for_a_reader(command: &Command) -> bool {
    match command {
        Command::Status(_)
        | Command::Validate(_)
        | Command::Schema(_)
        | Command::Dag(_)
        | Command::Runs(_)
        | Command::Show(_)
        | Command::Metrics(_)
        | Command::Adapters(_) => true,
        #[cfg(feature = "ml")]
        Command::Score(_) | Command::Models(_) => true,
        _ => false,
    }
}

/// Rust ignores SIGPIPE, so writing to a closed pipe is an error (`println!` panics on it):
/// restore the default action, which ends the process silently.
fn quiet_on_closed_stdout() {
    // SAFETY: resetting a signal disposition to its default, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "tsumugi=debug",
        _ => "tsumugi=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    /// clap checks a command's definition only when it is parsed; check them all at once
    /// (two arguments with one id, as `version` beside `--version`, fail here).
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
