//! `tsumugi exp`: experiments — runs of a pipeline with `-S` overrides, recorded with a
//! name, sharing the cache (docs/experiments.md).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::executor::{self, ProgressMode, RunOptions, RunSummary, TriggerKind};
use crate::graph::Dag;
use crate::project::Project;
use crate::rundb::{self, experiments};
use crate::spec::params_file::{self, Override};

mod show;
mod workspace;

const RUN_ABOUT: &str = "\
Run the pipeline with -S overrides, as a named experiment. Overrides replace values as the
pipeline and its params files are read: no file is edited. Every experiment shares the
cache, so only the stages an override reaches run again.

  -S KEY=V        an inline param (`params:` of the pipeline) if KEY's first segment is
                  one, else a key of params.yaml (`-S train.lr=3e-4`)
  -S FILE:KEY=V   a key of another params file (`-S other.toml:a.b=2`)
  -S KEY=a,b,c    a list: one experiment per value; several lists make a grid (the
                  cartesian product: `-S lr=1e-4,3e-4 -S r=8,16` is 4 experiments)

Values read as YAML scalars: 3e-4 and 16 are numbers, true a boolean, x a string, '\"16\"'
the string 16.

By default (-j 1) experiments run one after another in the project's workspace, which
ends with the last one's outputs. With -j N, up to N run at once, each in a copy of the
project under .tsumugi/exp/NAME/ (reflinked where the file system can) that shares the
cache and the run database and is removed afterwards: the workspace is left as it was.
GPUs are split between the experiments running at once, so two never share one.
`tsumugi exp apply NAME` brings any experiment's outputs into the workspace. Commands that
read params.yaml themselves get TSUMUGI_PARAMS: the path of a file holding the effective
values (docs/experiments.md).

Examples:
  tsumugi exp run pipelines/train.yaml -S train.lr=3e-4
  tsumugi exp run pipelines/train.yaml -S 'lr=1e-4,3e-4,1e-3' -S lora.r=8,16 -n sweep -j 3
  tsumugi exp run pipelines/train.yaml -S lr=1e-4,3e-4 --queue   # store; run later:
  tsumugi exp run --run-all
  tsumugi exp show --sort rmse";

#[derive(Debug, Subcommand)]
pub enum ExpCommand {
    /// Run experiments: the pipeline with -S overrides (a grid for lists), files untouched.
    #[command(long_about = RUN_ABOUT)]
    Run(ExpRunArgs),
    /// A table of experiments: name, run, status, overrides, params that differ, metrics.
    Show(show::ExpShowArgs),
    /// Write an experiment's overrides into the params files and check its outputs out.
    #[command(long_about = APPLY_ABOUT)]
    Apply(ExpNameArgs),
    /// Forget an experiment (its runs stay, as plain runs) or drop it from the queue.
    Remove(ExpNameArgs),
}

const APPLY_ABOUT: &str = "\
Write an experiment's overrides into the files they came from and bring the workspace to
that experiment's outputs: a following `tsumugi run` is all cached.

A params-file key is written into its file (params.yaml, or FILE of FILE:KEY); an inline
param into the pipeline file's `params:`. The file is replaced atomically and keeps its
other keys. In a YAML file a scalar is edited in place, so comments and layout stay; where
that is not possible (a value inside a flow list, say) the file is written anew and its
comments are lost. JSON and TOML files are always written anew (TOML comments are lost).

Then the pipeline runs: every stage the experiment ran is found in the cache and restored,
so nothing runs again unless the cache was collected (`tsumugi gc`) since.";

#[derive(Debug, Args)]
pub struct ExpRunArgs {
    /// Pipeline file, then stage names (default: the only pipeline in pipelines/). Named
    /// stages run with everything they need.
    #[arg(value_name = "FILE|STAGE")]
    pub args: Vec<String>,
    /// Override: KEY=VALUE, FILE:KEY=VALUE, or KEY=a,b,c for one experiment per value.
    #[arg(short = 'S', long = "set-param", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Experiment name (a grid gets NAME-1, NAME-2, …). Default: exp-1, exp-2, … .
    #[arg(short = 'n', long = "name")]
    pub name: Option<String>,
    /// Experiments running at once, each in its own copy of the workspace (default 1: one
    /// after another, in the workspace itself).
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = 1)]
    pub jobs: usize,
    /// Stages running at once within an experiment (default: number of cores).
    #[arg(long = "stage-jobs", value_name = "N")]
    pub stage_jobs: Option<usize>,
    /// Store the experiments to run later (`tsumugi exp run --run-all`); run nothing now.
    #[arg(long, conflicts_with = "run_all")]
    pub queue: bool,
    /// Run every queued experiment, oldest first.
    #[arg(long)]
    pub run_all: bool,
    /// After a failure keep running every stage that does not depend on it.
    #[arg(short = 'k', long)]
    pub keep_going: bool,
    /// GPU slots (default: CUDA_VISIBLE_DEVICES entries, else `nvidia-smi -L`, else 0).
    #[arg(long, value_name = "N")]
    pub gpus: Option<u32>,
    /// Compute device for built-in stages (cpu, wgpu, cuda:0, …).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// No progress output on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ExpNameArgs {
    /// Experiment name (as `tsumugi exp show` lists it).
    pub name: String,
}

pub fn run(project: &Project, cmd: ExpCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ExpCommand::Run(a) => exp_run(project, a),
        ExpCommand::Show(a) => show::show(project, a),
        ExpCommand::Apply(a) => apply(project, a),
        ExpCommand::Remove(a) => remove(project, a),
    }
}

/// One experiment to run: its name and the overrides of one grid point (as given).
struct Point {
    name: String,
    file: PathBuf,
    targets: Vec<String>,
    set: Vec<String>,
}

/// The grid: every `-S KEY=a,b,c` list crossed with the others, in the order given.
fn grid(set: &[String]) -> anyhow::Result<Vec<Vec<String>>> {
    let mut points: Vec<Vec<String>> = vec![Vec::new()];
    for s in set {
        let (k, v) = s
            .split_once('=')
            .with_context(|| format!("invalid -S '{s}' (expected KEY=VALUE)"))?;
        let values: Vec<&str> = v.split(',').collect();
        points = points
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut p = p.clone();
                    p.push(format!("{k}={v}"));
                    p
                })
            })
            .collect();
    }
    Ok(points)
}

fn parse_overrides(set: &[String]) -> anyhow::Result<Vec<Override>> {
    set.iter()
        .map(|s| Override::parse(s).map_err(anyhow::Error::msg))
        .collect()
}

/// `{"KEY": value}` as recorded with the run.
fn overrides_json(o: &[Override]) -> Value {
    Value::Object(o.iter().map(|o| (o.target(), o.value.clone())).collect())
}

fn exp_run(project: &Project, args: ExpRunArgs) -> anyhow::Result<ExitCode> {
    let conn = rundb::open(&project.db_path())?;
    let points: Vec<Point> = if args.run_all {
        if !args.args.is_empty() || !args.set.is_empty() {
            bail!("--run-all runs the queue as stored; give no FILE or -S with it");
        }
        experiments::queued(&conn)?
            .into_iter()
            .map(|q| Point {
                name: q.name,
                file: PathBuf::from(q.pipeline_file),
                targets: q.targets,
                set: q.overrides,
            })
            .collect()
    } else {
        let (file, targets) = super::run::split_file_and_stages(project, &args.args)?;
        let grid = grid(&args.set)?;
        let names = names(&conn, args.name.as_deref(), grid.len())?;
        grid.into_iter()
            .zip(names)
            .map(|(set, name)| Point {
                name,
                file: file.clone(),
                targets: targets.clone(),
                set,
            })
            .collect()
    };
    if points.is_empty() {
        println!("no queued experiments");
        return Ok(ExitCode::SUCCESS);
    }
    // Every point loads before any runs: a typo in the last one must not cost the others.
    let mut loaded = Vec::new();
    for p in &points {
        let ov = parse_overrides(&p.set)?;
        let pipeline = match crate::spec::load_with_overrides(&p.file, project, &ov)
            .and_then(|pl| Dag::build(&pl).map(|_| pl))
        {
            Ok(pl) => pl,
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::from(2));
            }
        };
        if let Err(e) = executor::select(&pipeline, &p.targets) {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
        loaded.push((pipeline, ov));
    }
    if args.queue {
        for p in &points {
            experiments::enqueue(
                &conn,
                &experiments::Queued {
                    name: p.name.clone(),
                    pipeline_file: p.file.display().to_string(),
                    targets: p.targets.clone(),
                    overrides: p.set.clone(),
                    queued_at: rundb::ts(rundb::now()),
                },
            )?;
            println!("queued {} ({})", p.name, p.set.join(" "));
        }
        println!(
            "{} experiment(s) queued; run them with: tsumugi exp run --run-all",
            points.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    drop(conn);

    let total = points.len();
    let work: Vec<Job> = points
        .into_iter()
        .zip(loaded)
        .map(|(p, (pipeline, ov))| Job { p, pipeline, ov })
        .collect();
    let (failed, cancelled) = if args.jobs > 1 && total > 1 {
        side_by_side(project, &args, work)?
    } else {
        one_by_one(project, &args, work)?
    };
    if let Some(code) = cancelled {
        return Ok(code);
    }
    if total > 1 {
        println!(
            "{total} experiments, {} ok, {failed} failed; compare them: tsumugi exp show",
            total - failed
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One experiment, loaded with its overrides.
struct Job {
    p: Point,
    pipeline: crate::spec::Pipeline,
    ov: Vec<Override>,
}

fn options(args: &ExpRunArgs, job: &Job, progress: ProgressMode) -> RunOptions {
    RunOptions {
        targets: job.p.targets.clone(),
        jobs: args.stage_jobs.unwrap_or(0),
        keep_going: args.keep_going,
        trigger: TriggerKind::Manual,
        gpus: args.gpus,
        device: args.device.clone(),
        progress,
        exp: Some(job.p.name.clone()),
        overrides: (!job.ov.is_empty()).then(|| overrides_json(&job.ov)),
        ..RunOptions::default()
    }
}

fn describe(p: &Point) -> String {
    if p.set.is_empty() {
        "no overrides".into()
    } else {
        p.set.join(" ")
    }
}

/// `-j 1`: in the workspace, one after another. Returns (failed, exit code if cancelled).
fn one_by_one(
    project: &Project,
    args: &ExpRunArgs,
    work: Vec<Job>,
) -> anyhow::Result<(usize, Option<ExitCode>)> {
    let rt = super::run::runtime()?;
    let total = work.len();
    let mut failed = 0;
    for (i, job) in work.into_iter().enumerate() {
        if args.run_all {
            experiments::dequeue(&rundb::open(&project.db_path())?, &job.p.name)?;
        }
        eprintln!(
            "experiment {}/{total}: {} ({})",
            i + 1,
            job.p.name,
            describe(&job.p)
        );
        let progress = if args.quiet {
            ProgressMode::Quiet
        } else {
            ProgressMode::Auto
        };
        let opts = options(args, &job, progress);
        let summary = rt.block_on(executor::run(project, &job.pipeline, &opts))?;
        if !summary.success {
            failed += 1;
        }
        println!("{}: {}", job.p.name, super::run::summary_line(&summary));
        if summary.cancelled {
            return Ok((failed, Some(super::run::exit_code(&summary))));
        }
    }
    Ok((failed, None))
}

/// `-j N`: up to N experiments at once, each in its own copy of the project under
/// `.tsumugi/exp/NAME/` sharing `cache/` and `runs/`. This command holds the project lock
/// meanwhile (so no `run` or `gc` comes between); each experiment locks its own copy.
fn side_by_side(
    project: &Project,
    args: &ExpRunArgs,
    work: Vec<Job>,
) -> anyhow::Result<(usize, Option<ExitCode>)> {
    let _lock =
        crate::lock::ProjectLock::acquire(project, "tsumugi exp run", crate::lock::Wait::Yes)?;
    // GPUs: each experiment running at once gets its own, as many as its hungriest stage
    // asks for; fewer GPUs than that means fewer experiments at once.
    let gpus = executor::detect_gpus(args.gpus);
    let need = work
        .iter()
        .flat_map(|j| j.pipeline.stages.iter().map(|s| s.resources.gpu as usize))
        .max()
        .unwrap_or(0);
    let mut workers = args.jobs.min(work.len());
    if let Some(fit) = gpus.len().checked_div(need).map(|f| f.max(1))
        && fit < workers
    {
        eprintln!(
            "{} GPU(s), {need} per experiment: running {fit} experiment(s) at once, not {workers}",
            gpus.len()
        );
        workers = fit;
    }
    let shares: Vec<Vec<String>> = (0..workers)
        .map(|w| {
            gpus.iter()
                .enumerate()
                .filter(|(i, _)| i % workers == w)
                .map(|(_, g)| g.clone())
                .collect()
        })
        .collect();
    let total = work.len();
    let queue = std::sync::Mutex::new(work.into_iter().enumerate().collect::<Vec<_>>());
    queue.lock().expect("queue").reverse();
    let failed = std::sync::atomic::AtomicUsize::new(0);
    // After a Ctrl-C no experiment starts.
    let cancelled = std::sync::atomic::AtomicBool::new(false);
    let errors = std::sync::Mutex::new(Vec::<String>::new());
    std::thread::scope(|sc| {
        for share in &shares {
            sc.spawn(|| {
                let rt = match super::run::runtime() {
                    Ok(rt) => rt,
                    Err(e) => {
                        errors.lock().expect("errors").push(format!("{e:#}"));
                        return;
                    }
                };
                loop {
                    if cancelled.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let Some((i, job)) = queue.lock().expect("queue").pop() else {
                        break;
                    };
                    let r = in_workspace(project, args, &rt, &job, share.clone(), i, total);
                    match r {
                        Ok(s) if s.success => {}
                        Ok(s) => {
                            failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            if s.cancelled {
                                cancelled.store(true, std::sync::atomic::Ordering::SeqCst);
                            }
                        }
                        Err(e) => {
                            failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            eprintln!("{}: error: {e:#}", job.p.name);
                            errors.lock().expect("errors").push(format!("{e:#}"));
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = errors.into_inner().expect("errors").into_iter().next()
        && failed.load(std::sync::atomic::Ordering::SeqCst) == total
    {
        bail!("{e}");
    }
    let code = cancelled.into_inner().then(|| ExitCode::from(130));
    Ok((failed.into_inner(), code))
}

/// Runs one experiment in `.tsumugi/exp/NAME/`.
fn in_workspace(
    project: &Project,
    args: &ExpRunArgs,
    rt: &tokio::runtime::Runtime,
    job: &Job,
    gpus: Vec<String>,
    i: usize,
    total: usize,
) -> anyhow::Result<RunSummary> {
    if args.run_all {
        experiments::dequeue(&rundb::open(&project.db_path())?, &job.p.name)?;
    }
    let dir = project.root().join(".tsumugi/exp").join(&job.p.name);
    let t0 = std::time::Instant::now();
    let copied = workspace::populate(project.root(), &dir)?;
    eprintln!(
        "experiment {}/{total}: {} ({}) in {}: {} files, {:.1} MiB copied in {:.2}s",
        i + 1,
        job.p.name,
        describe(&job.p),
        dir.strip_prefix(project.root()).unwrap_or(&dir).display(),
        copied.files,
        copied.bytes as f64 / (1024.0 * 1024.0),
        t0.elapsed().as_secs_f64()
    );
    let ws = Project::workspace(&dir, project);
    let mut opts = options(args, job, ProgressMode::Quiet);
    opts.gpu_ids = Some(gpus);
    let res = rt.block_on(executor::run(&ws, &job.pipeline, &opts));
    // The results are in the cache (and `exp apply` brings them back): the copy goes.
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("warning: cannot remove {}: {e}", dir.display());
    }
    let summary = res?;
    println!("{}: {}", job.p.name, super::run::summary_line(&summary));
    Ok(summary)
}

/// Names for `n` new experiments: NAME (or NAME-1…NAME-n), else the next free exp-N.
fn names(conn: &rusqlite::Connection, name: Option<&str>, n: usize) -> anyhow::Result<Vec<String>> {
    let out: Vec<String> = match name {
        Some(base) if n == 1 => vec![base.to_owned()],
        Some(base) => (1..=n).map(|i| format!("{base}-{i}")).collect(),
        None => {
            let mut out = Vec::new();
            let mut i = 1;
            while out.len() < n {
                let cand = format!("exp-{i}");
                if !experiments::name_taken(conn, &cand)? {
                    out.push(cand);
                }
                i += 1;
            }
            return Ok(out);
        }
    };
    for nm in &out {
        if nm.is_empty() || nm.contains(char::is_whitespace) {
            bail!("invalid experiment name '{nm}' (no spaces)");
        }
        if experiments::name_taken(conn, nm)? {
            bail!(
                "an experiment named '{nm}' exists (remove it with `tsumugi exp remove {nm}`, or choose another -n)"
            );
        }
    }
    Ok(out)
}

fn apply(project: &Project, args: ExpNameArgs) -> anyhow::Result<ExitCode> {
    let Some(conn) = rundb::open_read(project)? else {
        bail!(
            "no experiment '{}' (nothing has run in this project)",
            args.name
        );
    };
    let Some(exp) = experiments::find(&conn, &args.name)? else {
        let known: Vec<String> = experiments::list(&conn, None)?
            .into_iter()
            .map(|e| e.name)
            .collect();
        bail!(
            "no experiment '{}' (experiments: {})",
            args.name,
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
    };
    let targets: Vec<String> = rundb::find_run(&conn, &exp.run_id)?
        .targets
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    drop(conn);
    let file = PathBuf::from(&exp.pipeline_file);
    let pipeline = match super::run::load(project, &file) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    // Each override to the file it came from.
    let mut by_file: BTreeMap<PathBuf, Vec<(String, Value)>> = BTreeMap::new();
    for (k, v) in exp.overrides.as_object().into_iter().flatten() {
        let o = Override::parse(&format!("{k}=x")).map_err(anyhow::Error::msg)?;
        let first = o.key.split('.').next().unwrap_or_default();
        let (f, key) = match o.file {
            Some(f) => (f, o.key.clone()),
            None if pipeline.params.contains_key(first) => {
                (file.clone(), format!("params.{}", o.key))
            }
            None => (PathBuf::from(params_file::DEFAULT_FILE), o.key.clone()),
        };
        by_file.entry(f).or_default().push((key, v.clone()));
    }
    for (f, values) in &by_file {
        // The pipeline file is only ever edited in place: never rewritten whole.
        params_file::write_back(project.root(), f, values, f != &file)
            .with_context(|| format!("cannot write the overrides into {}", f.display()))?;
        let shown: Vec<String> = values
            .iter()
            .map(|(k, v)| format!("{k}={}", show::scalar(v)))
            .collect();
        println!("{}: {}", f.display(), shown.join(" "));
    }
    // Now the files say what the experiment ran with: the run restores its outputs.
    let pipeline = match super::run::load(project, &file) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let opts = RunOptions {
        targets,
        progress: ProgressMode::Quiet,
        ..RunOptions::default()
    };
    let summary = super::run::runtime()?.block_on(executor::run(project, &pipeline, &opts))?;
    println!(
        "applied {}: {}",
        exp.name,
        super::run::summary_line(&summary)
    );
    Ok(super::run::exit_code(&summary))
}

fn remove(project: &Project, args: ExpNameArgs) -> anyhow::Result<ExitCode> {
    let conn = rundb::open(&project.db_path())?;
    let n = experiments::remove(&conn, &args.name)?;
    if n == 0 {
        bail!("no experiment or queued experiment named '{}'", args.name);
    }
    println!(
        "removed experiment {} (its runs stay in `tsumugi runs`)",
        args.name
    );
    Ok(ExitCode::SUCCESS)
}
