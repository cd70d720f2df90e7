use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use crate::executor::{self, ProgressMode, RunOptions, RunSummary, TriggerKind};
use crate::graph::Dag;
use crate::project::Project;
use crate::spec::{self, Pipeline};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pipeline file (relative to the project root), then stage names. Without a file, the
    /// only `*.yaml` in pipelines/ is used. Named stages run with everything they need.
    #[arg(value_name = "FILE|STAGE")]
    pub args: Vec<String>,
    /// Stages running at once (default: number of cores).
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,
    /// After a failure keep running every stage that does not depend on it.
    #[arg(short = 'k', long)]
    pub keep_going: bool,
    /// Run stages even if they are fresh: the named STAGEs only (what they need is still
    /// taken from the cache), or every stage when none is named.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// With --force and named STAGEs: also force every stage they need.
    #[arg(long, requires = "force")]
    pub force_upstream: bool,
    /// Say what would run; run and record nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Print the run summary as JSON on stdout (see docs/json-output.md).
    #[arg(long)]
    pub json: bool,
    /// GPU slots (default: CUDA_VISIBLE_DEVICES entries, else `nvidia-smi -L`, else 0).
    #[arg(long, value_name = "N")]
    pub gpus: Option<u32>,
    /// Compute device for built-in stages (cpu, wgpu, cuda:0, …).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// If another tsumugi holds the project lock, fail (exit 3) instead of waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// No progress output on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// When stderr is not a terminal (CI, a pipe, a log file): a line per running stage this
    /// often, with its progress (step/total, loss, pairs/s where the stage reports them) and
    /// ETA; `0` for none. On a terminal the live bar shows the same.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        env = "TSUMUGI_PROGRESS_INTERVAL",
        value_parser = parse_interval
    )]
    pub progress_interval: std::time::Duration,
    /// Remote cache to read through (restore a stale stage's result if the remote has it)
    /// and write through (upload what ran). Default: the project's default remote.
    #[arg(long, value_name = "NAME", conflicts_with = "no_remote")]
    pub remote: Option<String>,
    /// Use no remote cache, even a default one.
    #[arg(long)]
    pub no_remote: bool,
    /// Where stages without their own `executor:` run: local, or slurm (one sbatch job per
    /// stage; the project must be on a file system the nodes share, see docs/slurm.md).
    /// Default: the pipeline's `executor:`, else local.
    #[arg(long, value_name = "local|slurm", value_parser = parse_executor)]
    pub executor: Option<tsumugi_pipeline::ExecutorKind>,
}

/// Exit code when the project lock is held and `--no-wait` was given.
pub const EXIT_LOCKED: u8 = 3;

/// `[FILE] [STAGES…]`: the first argument is the file if it looks like one.
pub(super) fn split_file_and_stages(
    project: &Project,
    args: &[String],
) -> anyhow::Result<(PathBuf, Vec<String>)> {
    if let Some(first) = args.first() {
        let looks_like_file = first.ends_with(".yaml")
            || first.ends_with(".yml")
            || first.contains('/')
            || project.root().join(first).is_file();
        if looks_like_file {
            return Ok((PathBuf::from(first), args[1..].to_vec()));
        }
    }
    Ok((default_pipeline(project)?, args.to_vec()))
}

fn default_pipeline(project: &Project) -> anyhow::Result<PathBuf> {
    let dir = project.root().join("pipelines");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("no pipeline file given and cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(Path::new("pipelines").join(found[0].file_name().expect("file name"))),
        0 => anyhow::bail!("no pipeline file given and none in pipelines/"),
        _ => anyhow::bail!(
            "no pipeline file given and pipelines/ holds several: {}",
            found
                .iter()
                .map(|p| p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Loads and checks a pipeline; on error prints every diagnostic and returns exit code 2.
pub(super) fn load(project: &Project, file: &Path) -> Result<Pipeline, ExitCode> {
    match spec::load(file, project).and_then(|p| Dag::build(&p).map(|_| p)) {
        Ok(p) => Ok(p),
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(2))
        }
    }
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn run(project: &Project, args: RunArgs) -> anyhow::Result<ExitCode> {
    let (file, targets) = split_file_and_stages(project, &args.args)?;
    let pipeline = match load(project, &file) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let remote = if args.no_remote || args.dry_run {
        None
    } else {
        super::remote::open_for_run(project, args.remote.as_deref())?
    };
    let opts = RunOptions {
        remote,
        targets,
        jobs: args.jobs.unwrap_or(0),
        keep_going: args.keep_going,
        force: args.force,
        force_upstream: args.force_upstream,
        trigger: TriggerKind::Manual,
        dry_run: args.dry_run,
        gpus: args.gpus,
        device: args.device,
        wait_for_lock: !args.no_wait,
        progress: if args.quiet {
            ProgressMode::Quiet
        } else {
            ProgressMode::Auto
        },
        executor: args.executor,
        progress_interval: args.progress_interval,
        ..RunOptions::default()
    };
    if let Err(e) = executor::select(&pipeline, &opts.targets) {
        eprintln!("error: {e:#}");
        return Ok(ExitCode::from(2));
    }
    let summary = match runtime()?.block_on(executor::run(project, &pipeline, &opts)) {
        Ok(s) => s,
        Err(e) if e.downcast_ref::<crate::lock::Locked>().is_some() => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(EXIT_LOCKED));
        }
        Err(e) => return Err(e),
    };
    let results = if args.dry_run {
        Vec::new()
    } else {
        super::results::collect(project, &pipeline, &summary)
    };
    if args.json {
        let mut v = summary_json(&summary);
        if let Some(stages) = v["stages"].as_array_mut() {
            super::results::add_json(stages, &results);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if !args.quiet {
        print_summary(&summary, args.dry_run);
        super::results::print(&results, &file);
    }
    Ok(exit_code(&summary))
}

pub fn exit_code(s: &RunSummary) -> ExitCode {
    if s.cancelled {
        ExitCode::from(130)
    } else if s.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_summary(s: &RunSummary, dry_run: bool) {
    let count = |st: &str| s.stages.iter().filter(|o| o.status.as_str() == st).count();
    if dry_run {
        for o in &s.stages {
            println!(
                "{:<10} {}{}",
                o.status.as_str(),
                o.name,
                o.message
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            );
        }
        println!(
            "dry run: {} would run, {} fresh",
            count("would_run"),
            count("cached")
        );
        return;
    }
    println!("{}", summary_line(s));
}

/// `run ID ok in 1.2s: 2 ran, 3 cached`: the last line of a run.
pub fn summary_line(s: &RunSummary) -> String {
    let mut parts = Vec::new();
    for st in [
        "ran",
        "cached",
        "restored",
        "failed",
        "skipped",
        "cancelled",
    ] {
        let n = s.stages.iter().filter(|o| o.status.as_str() == st).count();
        if n > 0 {
            parts.push(format!("{n} {st}"));
        }
    }
    let verdict = if s.cancelled {
        "cancelled"
    } else if s.success {
        "ok"
    } else {
        "failed"
    };
    format!(
        "run {} {verdict} in {:.1}s: {}",
        s.run_id,
        s.duration.as_secs_f64(),
        if parts.is_empty() {
            "nothing to do".into()
        } else {
            parts.join(", ")
        }
    )
}

/// The stable `--json` shape of a run (docs/json-output.md).
pub fn summary_json(s: &RunSummary) -> serde_json::Value {
    json!({
        "run_id": if s.run_id.is_empty() { serde_json::Value::Null } else { s.run_id.clone().into() },
        "pipeline": s.pipeline,
        "success": s.success,
        "cancelled": s.cancelled,
        "duration_s": secs(s.duration),
        "stages": s.stages.iter().map(|o| {
            let mut v = json!({
                "name": o.name,
                "status": o.status.as_str(),
                "fingerprint": o.fingerprint,
                "duration_s": secs(o.duration),
                "attempts": o.attempts,
                "exit_code": o.exit_code,
                "log": o.log.as_ref().map(|p| p.display().to_string()),
                "message": o.message,
            });
            // Only on stages with `register:` that completed (docs/adapters.md).
            if let Some(r) = &o.registration {
                v["register"] = serde_json::to_value(r).unwrap_or_default();
            }
            v
        }).collect::<Vec<_>>(),
    })
}

fn secs(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn parse_executor(s: &str) -> Result<tsumugi_pipeline::ExecutorKind, String> {
    tsumugi_pipeline::ExecutorKind::parse(s)
        .ok_or_else(|| format!("invalid executor '{s}' (expected local or slurm)"))
}

/// `--progress-interval`: a duration (`30s`, `1m`), or `0` for no periodic lines.
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    if s.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    tsumugi_base::duration::parse_arg(s)
}
