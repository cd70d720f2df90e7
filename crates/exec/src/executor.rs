//! Runs a pipeline: the selected stages in topological order, independent ones in parallel
//! up to `jobs`, under `resources` slots; fresh stages are skipped or restored from cache.
//!
//! A stage is *fresh* iff its fingerprint has an action cache entry. Its fingerprint is
//! computed only when all its upstream stages are done, from the *content* of their
//! outputs, so an upstream re-run that wrote identical bytes leaves it fresh (early cutoff).
//!
//! Failure policy: without `--keep-going`, the first failure stops scheduling new stages;
//! stages already running are allowed to finish (their work is valid and gets cached), and
//! the rest are recorded as `skipped`. With `--keep-going`, only the failed stage's
//! dependents are skipped. Ctrl-C (or SIGTERM) kills every running stage's process group,
//! records those stages as `cancelled`, writes no cache entry for them, and returns with
//! `cancelled` set (the CLI exits 130).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tsumugi_stages::{Reporter, Stage as StageImpl, StageInput};

use tsumugi_base::atomic::remove_path;
use tsumugi_base::lock::{ProjectLock, Wait};
use tsumugi_base::paths::path_str;
use tsumugi_base::project::Project;
use tsumugi_base::safepath;
use tsumugi_pipeline::graph::{Dag, Selection};
use tsumugi_pipeline::{Action, Pipeline, Stage};
use tsumugi_rundb::{self, MetricRow, RunDb, StageRecord};
use tsumugi_store::cache::{ActionEntry, Cache, RestoreError};
use tsumugi_store::dirty_reason::DirtyReason;
use tsumugi_store::fingerprint::{self, Components};
use tsumugi_store::hash::{Hasher, StatCache};

use crate::freshness::{self, Freshness, Restore, Verdict};

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
    /// Run the selected stages even when fresh (their upstream stays cached).
    pub force: bool,
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
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            targets: Vec::new(),
            jobs: 0,
            keep_going: false,
            force: false,
            trigger: TriggerKind::Manual,
            dry_run: false,
            gpus: None,
            device: "cpu".into(),
            wait_for_lock: true,
            handle_signals: true,
            cancel: Arc::new(AtomicBool::new(false)),
            progress: ProgressMode::Auto,
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

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
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

/// The built-in stage implementations this build has: the `stages` crate's registry.
/// Kinds that need burn are absent from a build without the `ml` feature.
pub fn builtin_stage(kind: &str) -> Option<Box<dyn StageImpl>> {
    tsumugi_stages::kinds::implementation(kind)
}

fn stage_impl(stage: &Stage) -> Result<Box<dyn StageImpl>> {
    match &stage.action {
        Action::Cmd { cmd } => Ok(Box::new(CmdStage { cmd: cmd.clone() })),
        Action::Builtin { kind, .. } => builtin_stage(kind).with_context(|| {
            format!(
                "stage kind {kind} is not available in this build (stage {}); build with the `ml` feature (the default)",
                stage.name
            )
        }),
    }
}

/// A failed shell command.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct CommandFailed {
    pub code: Option<i32>,
    pub what: String,
}

/// A `cmd:` stage: `sh -c CMD` in the project root, in its own process group so the whole
/// tree can be killed on cancel or timeout, and recorded in `runs/.procs/` so the next
/// invocation can end what it left running if tsumugi dies ([`tsumugi_base::supervise`]).
pub struct CmdStage {
    pub cmd: String,
}

fn killpg(pgid: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory involved.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

impl StageImpl for CmdStage {
    fn run(&self, input: &StageInput<'_>, report: &dyn Reporter) -> Result<()> {
        let parent = std::process::id() as libc::pid_t;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&self.cmd)
            .current_dir(input.project_root)
            .envs(input.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl and getppid are async-signal-safe. If tsumugi dies (even by SIGKILL)
        // the shell is killed with it; its descendants are ended by the next invocation
        // (supervise::reap). This thread waits for the child, so it outlives it
        // (PDEATHSIG is per thread). A parent that died before prctl is caught by getppid.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(125);
                }
                Ok(())
            });
        }
        let (mut child, tracked) =
            tsumugi_base::supervise::spawn_recorded(&mut cmd, input.project_root, input.name)
                .context("cannot start sh")?;
        let pgid = child.id() as i32;
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let out = child.stdout.take().expect("piped");
            let err = child.stderr.take().expect("piped");
            let r1 = s.spawn(|| pump(out, report));
            let r2 = s.spawn(|| pump(err, report));
            let watcher = s.spawn(|| {
                let mut term_at: Option<Instant> = None;
                while !done.load(Ordering::Acquire) {
                    if report.cancelled() {
                        match term_at {
                            None => {
                                killpg(pgid, libc::SIGTERM);
                                term_at = Some(Instant::now());
                            }
                            Some(t) if t.elapsed() > Duration::from_secs(3) => {
                                killpg(pgid, libc::SIGKILL)
                            }
                            _ => {}
                        }
                    }
                    // Parked, not slept: the waiter unparks it the moment the child exits.
                    std::thread::park_timeout(Duration::from_millis(20));
                }
            });
            let status = child.wait();
            done.store(true, Ordering::Release);
            watcher.thread().unpark();
            // The stage is over: whatever it left running in its group goes too (and the
            // pipes close, so the readers finish).
            killpg(pgid, libc::SIGKILL);
            let _ = watcher.join();
            let _ = r1.join();
            let _ = r2.join();
            // Only once nothing of the group runs may its outputs be committed (and its
            // record go).
            if !tsumugi_base::supervise::wait_group_gone(pgid, Duration::from_secs(10)) {
                tracked.keep();
                bail!("processes of the command (group {pgid}) are still alive after SIGKILL");
            }
            drop(tracked);
            let status = status.context("cannot wait for sh")?;
            if status.success() {
                return Ok(());
            }
            use std::os::unix::process::ExitStatusExt;
            let what = match (status.code(), status.signal()) {
                (Some(c), _) => format!("command exited with status {c}"),
                (None, Some(sig)) => format!("command killed by signal {sig}"),
                _ => "command failed".to_string(),
            };
            Err(CommandFailed {
                code: status.code(),
                what,
            }
            .into())
        })
    }
}

fn pump(r: impl std::io::Read, report: &dyn Reporter) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                report.log(line.trim_end_matches(['\n', '\r']));
            }
        }
    }
}

/// The engine's side of [`Reporter`] for one stage attempt.
struct StageReporter {
    cancel: Arc<AtomicBool>,
    deadline: Option<Instant>,
    timed_out: AtomicBool,
    log: Mutex<Option<File>>,
    ui: Ui,
    name: String,
    metrics: Mutex<Vec<MetricRow>>,
}

impl Reporter for StageReporter {
    fn progress(&self, done: u64, total: Option<u64>, message: &str) {
        let msg = match total {
            Some(t) => format!("{done}/{t} {message}"),
            None => format!("{done} {message}"),
        };
        self.ui.stage_line(&self.name, &msg);
    }

    fn metric(&self, name: &str, step: Option<u64>, value: f64) {
        self.metrics.lock().expect("metrics").push(MetricRow {
            name: name.into(),
            step: step.map(|s| s as i64),
            value,
        });
    }

    fn log(&self, line: &str) {
        if let Some(f) = self.log.lock().expect("log").as_mut() {
            let _ = writeln!(f, "{line}");
        }
        self.ui.stage_line(&self.name, line);
    }

    fn cancelled(&self) -> bool {
        if self.cancel.load(Ordering::Relaxed) {
            return true;
        }
        if let Some(d) = self.deadline
            && Instant::now() >= d
        {
            self.timed_out.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// Terminal output: live spinners on a TTY, plain lines otherwise, or nothing.
#[derive(Clone)]
struct Ui {
    inner: Arc<UiInner>,
}

struct UiInner {
    mode: ProgressMode,
    multi: Option<indicatif::MultiProgress>,
    bars: Mutex<HashMap<String, indicatif::ProgressBar>>,
}

impl Ui {
    fn new(mode: ProgressMode) -> Ui {
        let live = mode == ProgressMode::Auto && std::io::stderr().is_terminal();
        let mode = if mode == ProgressMode::Auto && !live {
            ProgressMode::Plain
        } else {
            mode
        };
        Ui {
            inner: Arc::new(UiInner {
                mode,
                multi: live.then(|| {
                    indicatif::MultiProgress::with_draw_target(
                        indicatif::ProgressDrawTarget::stderr(),
                    )
                }),
                bars: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn println(&self, line: &str) {
        match (&self.inner.mode, &self.inner.multi) {
            (ProgressMode::Quiet, _) => {}
            (_, Some(m)) => {
                let _ = m.println(line);
            }
            _ => eprintln!("{line}"),
        }
    }

    fn started(&self, name: &str) {
        if let Some(m) = &self.inner.multi {
            let pb = m.add(indicatif::ProgressBar::new_spinner());
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {prefix:.bold} {elapsed:>4} {wide_msg}",
                )
                .expect("template"),
            );
            pb.set_prefix(name.to_string());
            pb.enable_steady_tick(Duration::from_millis(120));
            self.inner
                .bars
                .lock()
                .expect("bars")
                .insert(name.to_string(), pb);
        } else {
            self.println(&format!("{name}: running"));
        }
    }

    fn stage_line(&self, name: &str, line: &str) {
        if let Some(pb) = self.inner.bars.lock().expect("bars").get(name) {
            pb.set_message(line.to_string());
        }
    }

    fn finished(&self, o: &StageOutcome) {
        if let Some(pb) = self.inner.bars.lock().expect("bars").remove(&o.name) {
            pb.finish_and_clear();
        }
        // Fresh stages are counted in the summary; a line each would drown the ones that ran.
        if o.status != StageState::Cached {
            let mut line = format!("{}: {}", o.name, o.status.as_str());
            if matches!(
                o.status,
                StageState::Ran | StageState::Failed | StageState::Cancelled
            ) {
                line.push_str(&format!(" ({:.1}s)", o.duration.as_secs_f64()));
            }
            if let Some(m) = &o.message {
                line.push_str(&format!(" — {m}"));
            }
            if let (StageState::Failed, Some(log)) = (o.status, &o.log) {
                line.push_str(&format!(" [log: {}]", log.display()));
            }
            self.println(&line);
        }
        if let Some(r) = &o.registration
            && r.action != crate::registry::Action::Unchanged
        {
            self.println(&format!("register {}: {}", r.name, r.message));
        }
    }
}

/// GPU slots: `--gpus`, else the entries of `CUDA_VISIBLE_DEVICES`, else `nvidia-smi -L`.
/// Returns the device ids to hand out.
pub fn detect_gpus(explicit: Option<u32>) -> Vec<String> {
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let listed: Option<Vec<String>> = visible.as_ref().map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "-1")
            .map(String::from)
            .collect()
    });
    if let Some(n) = explicit {
        // Map slot i to the parent's i-th visible device when there is one.
        return (0..n as usize)
            .map(|i| {
                listed
                    .as_ref()
                    .and_then(|l| l.get(i).cloned())
                    .unwrap_or_else(|| i.to_string())
            })
            .collect();
    }
    if let Some(l) = listed {
        return l;
    }
    match Command::new("nvidia-smi")
        .arg("-L")
        .stderr(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => {
            let n = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("GPU "))
                .count();
            (0..n).map(|i| i.to_string()).collect()
        }
        _ => Vec::new(),
    }
}

/// Stages of `pipeline` to consider: `targets` and all they need (every stage when there
/// are none), in the graph's one topological order (file order where the graph allows).
pub fn select(pipeline: &Pipeline, targets: &[String]) -> Result<Selection> {
    let dag = Dag::build(pipeline)?;
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    Ok(dag.select(&targets)?)
}

fn new_run_id() -> String {
    let t = chrono::Utc::now();
    let nanos = t.timestamp_subsec_nanos();
    let salt = (std::process::id() as u64).wrapping_mul(0x9E37_79B9) ^ nanos as u64;
    format!("{}-{:04x}", t.format("%Y%m%d-%H%M%S"), salt & 0xffff)
}

/// Shared state of one run.
struct Ctx {
    project: Project,
    pipeline_name: String,
    run_id: String,
    cache: Cache,
    stat: StatCache,
    db: RunDb,
    cancel: Arc<AtomicBool>,
    force: bool,
    device: String,
    /// Items of a `map:` stage running at once (`--jobs`).
    jobs: usize,
    ui: Ui,
    keep_going: bool,
    /// Set after a failure without --keep-going (or on cancel): start nothing new.
    stop: AtomicBool,
    stop_reason: Mutex<String>,
    /// One registration at a time (two stages may register under one name).
    registry: Mutex<()>,
}

/// Runs `pipeline` (or `opts.targets` and what they need). Takes the project lock for the
/// whole run. Errors are for things that stop the run from starting or recording (bad
/// targets, lock refused, unwritable database); stage failures are in the summary.
pub async fn run(project: &Project, pipeline: &Pipeline, opts: &RunOptions) -> Result<RunSummary> {
    let t0 = Instant::now();
    let selection = select(pipeline, &opts.targets)?;
    let order = selection.order();
    if opts.dry_run {
        let st = status_of(project, pipeline, order, opts.force)?;
        let stages = st
            .into_iter()
            .map(|s| StageOutcome {
                name: s.name,
                status: if s.fresh {
                    StageState::Cached
                } else {
                    StageState::WouldRun
                },
                fingerprint: s.fingerprint,
                duration: Duration::ZERO,
                attempts: 0,
                exit_code: None,
                log: None,
                message: (!s.reasons.is_empty()).then(|| s.reasons.join("; ")),
                registration: None,
            })
            .collect();
        return Ok(RunSummary {
            run_id: String::new(),
            pipeline: pipeline.name.clone(),
            stages,
            success: true,
            cancelled: false,
            duration: t0.elapsed(),
        });
    }

    let lock_desc = format!(
        "tsumugi {} {}",
        if opts.trigger == TriggerKind::Manual {
            "run"
        } else {
            opts.trigger.as_str()
        },
        pipeline.file.display()
    );
    let wait = if opts.wait_for_lock {
        Wait::Yes
    } else {
        Wait::No
    };
    let lp = project.clone();
    let _lock =
        tokio::task::spawn_blocking(move || ProjectLock::acquire(&lp, &lock_desc, wait)).await??;

    let run_id = new_run_id();
    tsumugi_base::supervise::set_current_run(&run_id);
    let db = RunDb::start(project)?;
    db.begin_run(
        &run_id,
        &pipeline.name,
        &path_str(&pipeline.file),
        opts.trigger.as_str(),
        &opts.targets,
    );
    let ctx = Arc::new(Ctx {
        project: project.clone(),
        pipeline_name: pipeline.name.clone(),
        run_id: run_id.clone(),
        cache: Cache::new(project.cache_dir()),
        stat: StatCache::load(&project.cache_dir().join("statcache.bin")),
        db,
        cancel: opts.cancel.clone(),
        force: opts.force,
        device: opts.device.clone(),
        jobs: match opts.jobs {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            j => j,
        },
        ui: Ui::new(opts.progress),
        keep_going: opts.keep_going,
        stop: AtomicBool::new(false),
        stop_reason: Mutex::new(String::new()),
        registry: Mutex::new(()),
    });

    let outcomes = schedule(&ctx, pipeline, &selection, opts).await;

    let cancelled = ctx.cancel.load(Ordering::SeqCst);
    let success = !cancelled && outcomes.iter().all(|o| o.status.is_ok());
    let status = if cancelled {
        "cancelled"
    } else if success {
        "success"
    } else {
        "failed"
    };
    if let Err(e) = ctx.stat.save() {
        tracing::warn!("could not save the stat cache: {e:#}");
    }
    ctx.db.end_run(&run_id, status);
    let ctx = Arc::into_inner(ctx).expect("all stage tasks have finished");
    ctx.db.close()?;
    Ok(RunSummary {
        run_id,
        pipeline: pipeline.name.clone(),
        stages: outcomes,
        success,
        cancelled,
        duration: t0.elapsed(),
    })
}

/// Execution slots: jobs, CPU and GPU. A stage takes them only once it knows it must
/// execute — checking freshness and restoring are not bounded by `--jobs`, so a run of
/// 1,000 fresh stages is not throttled to `jobs` at a time.
struct SlotPool {
    state: Mutex<SlotState>,
    notify: tokio::sync::Notify,
    cpu_total: u32,
    gpu_total: usize,
}

struct SlotState {
    jobs_free: usize,
    cpu_free: u32,
    gpus_free: Vec<String>,
    /// Stages (by topological index) still checking freshness: they may need slots, and an
    /// earlier stage goes first, so `-j 1` executes in topological order.
    deciding: std::collections::BTreeSet<usize>,
    /// Stages waiting for slots: index → (cpu, gpu).
    waiters: BTreeMap<usize, (u32, usize)>,
}

impl SlotState {
    fn fits(&self, cpu: u32, gpu: usize) -> bool {
        self.jobs_free > 0 && self.cpu_free >= cpu && self.gpus_free.len() >= gpu
    }
}

/// Held while a stage executes; gives its slots back when dropped.
struct Grant {
    pool: Arc<SlotPool>,
    cpu: u32,
    gpus: Vec<String>,
}

impl Drop for Grant {
    fn drop(&mut self) {
        let mut s = self.pool.state.lock().expect("slots");
        s.jobs_free += 1;
        s.cpu_free += self.cpu;
        s.gpus_free.append(&mut self.gpus);
        drop(s);
        self.pool.notify.notify_waiters();
    }
}

impl SlotPool {
    /// Waits for a job slot plus `cpu` CPU and `gpu` GPU slots; `None` if the run stops
    /// (failure without --keep-going, or cancel) before they are free.
    async fn acquire(
        self: &Arc<Self>,
        index: usize,
        cpu: u32,
        gpu: usize,
        ctx: &Ctx,
    ) -> Option<Grant> {
        let cpu = cpu.min(self.cpu_total);
        {
            let mut s = self.state.lock().expect("slots");
            s.deciding.remove(&index);
            s.waiters.insert(index, (cpu, gpu));
        }
        // Later stages may be waiting only because this one was still deciding: wake them
        // to look again now. Without this they saw the change at their next 50 ms poll, which
        // delayed most of a 16-wide layer's spawns by 50-300 ms (the diamond benchmark).
        self.notify.notify_waiters();
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a release between check and wait is not missed.
            notified.as_mut().enable();
            if ctx.stop.load(Ordering::SeqCst) || ctx.cancel.load(Ordering::SeqCst) {
                self.state.lock().expect("slots").waiters.remove(&index);
                self.notify.notify_waiters();
                return None;
            }
            {
                let mut s = self.state.lock().expect("slots");
                // An earlier stage that is still deciding, or waiting and able to start now,
                // goes first; one that cannot fit does not block later ones.
                let earlier_first = s.deciding.range(..index).next().is_some()
                    || s.waiters.range(..index).any(|(_, &(c, g))| s.fits(c, g));
                if !earlier_first && s.fits(cpu, gpu) {
                    s.waiters.remove(&index);
                    s.jobs_free -= 1;
                    s.cpu_free -= cpu;
                    let gpus: Vec<String> = s.gpus_free.drain(..gpu).collect();
                    drop(s);
                    // Later waiters that deferred to this one may fit in what is left.
                    self.notify.notify_waiters();
                    return Some(Grant {
                        pool: self.clone(),
                        cpu,
                        gpus,
                    });
                }
            }
            tokio::select! {
                _ = notified => {}
                // Stop and cancel are flags, not notifications: look again now and then.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    fn start_deciding(&self, index: usize) {
        self.state.lock().expect("slots").deciding.insert(index);
    }

    /// A stage that turned out fresh (or failed before needing slots) no longer holds up
    /// later ones.
    fn done_deciding(&self, index: usize) {
        let removed = self.state.lock().expect("slots").deciding.remove(&index);
        if removed {
            self.notify.notify_waiters();
        }
    }
}

async fn schedule(
    ctx: &Arc<Ctx>,
    pipeline: &Pipeline,
    selection: &Selection,
    opts: &RunOptions,
) -> Vec<StageOutcome> {
    let order = selection.order();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let gpus = detect_gpus(opts.gpus);
    let pool = Arc::new(SlotPool {
        cpu_total: cores as u32,
        gpu_total: gpus.len(),
        state: Mutex::new(SlotState {
            jobs_free: if opts.jobs == 0 { cores } else { opts.jobs },
            cpu_free: cores as u32,
            gpus_free: gpus,
            deciding: Default::default(),
            waiters: BTreeMap::new(),
        }),
        notify: tokio::sync::Notify::new(),
    });
    // Freshness checks hash inputs; a few at a time per core keeps the disk busy without
    // flooding the blocking pool.
    let checks = Arc::new(tokio::sync::Semaphore::new(4 * cores));
    let index: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    // Edges from the graph's selection: how many stages each waits for, and who waits.
    let mut waiting: HashMap<&str, usize> = order
        .iter()
        .map(|n| (n.as_str(), selection.needs(n).len()))
        .collect();
    let down: HashMap<&str, Vec<&str>> = order
        .iter()
        .map(|n| {
            let d = selection.needed_by(n).iter().map(String::as_str).collect();
            (n.as_str(), d)
        })
        .collect();
    let mut ready: VecDeque<&str> = order
        .iter()
        .map(String::as_str)
        .filter(|n| waiting[n] == 0)
        .collect();
    let mut done: HashMap<String, StageOutcome> = HashMap::new();
    let mut running = tokio::task::JoinSet::new();

    let ctrl_c = async {
        if opts.handle_signals {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        } else {
            std::future::pending::<()>().await
        }
    };
    tokio::pin!(ctrl_c);
    let mut signalled = false;
    let mut tick = tokio::time::interval(Duration::from_millis(50));

    loop {
        if ctx.cancel.load(Ordering::SeqCst) {
            ctx.stop.store(true, Ordering::SeqCst);
        }
        // Everything ready starts its check now; slots are taken inside, if it must execute.
        while let Some(n) = ready.pop_front() {
            if ctx.stop.load(Ordering::SeqCst) {
                break;
            }
            let st = pipeline.stage(n).expect("stage");
            let gpu_need = st.resources.gpu as usize;
            if gpu_need > pool.gpu_total {
                let o = outcome(
                    n,
                    StageState::Failed,
                    None,
                    format!(
                        "stage needs {gpu_need} GPU(s) but {} are available (none detected via CUDA_VISIBLE_DEVICES or nvidia-smi; pass --gpus N to override)",
                        pool.gpu_total
                    ),
                );
                ctx.ui.finished(&o);
                record_final(ctx, &o, None);
                finish(ctx, o, &mut done, &down, opts.keep_going);
                continue;
            }
            let st = st.clone();
            let (c, p, k) = (ctx.clone(), pool.clone(), checks.clone());
            let i = index[n];
            pool.start_deciding(i);
            running.spawn(async move {
                let o = run_stage(c, st, i, p.clone(), k).await;
                p.done_deciding(i);
                o
            });
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            joined = running.join_next() => {
                let Some(joined) = joined else { continue };
                let o = match joined {
                    Ok(o) => o,
                    Err(e) => {
                        // Only a panic gets here; its stage is recorded as skipped below.
                        tracing::error!("stage task panicked: {e}");
                        continue;
                    }
                };
                ctx.ui.finished(&o);
                let ok = o.status.is_ok();
                let name = o.name.clone();
                finish(ctx, o, &mut done, &down, opts.keep_going);
                if ok {
                    for d in down.get(name.as_str()).into_iter().flatten() {
                        let w = waiting.get_mut(d).expect("waiting");
                        *w -= 1;
                        if *w == 0 && !done.contains_key(*d) {
                            ready.push_back(d);
                        }
                    }
                }
            }
            _ = &mut ctrl_c, if !signalled => {
                signalled = true;
                ctx.cancel.store(true, Ordering::SeqCst);
                ctx.ui.println("interrupted: stopping running stages…");
            }
            _ = tick.tick() => {}
        }
    }
    // Whatever never started.
    let cancelled = ctx.cancel.load(Ordering::SeqCst);
    let reason = if cancelled {
        "run cancelled".to_string()
    } else {
        ctx.stop_reason.lock().expect("reason").clone()
    };
    for n in order {
        if !done.contains_key(n) {
            let o = outcome(
                n,
                StageState::Skipped,
                None,
                if reason.is_empty() {
                    "not started".into()
                } else {
                    reason.clone()
                },
            );
            ctx.ui.finished(&o);
            record_final(ctx, &o, None);
            done.insert(n.clone(), o);
        }
    }
    order
        .iter()
        .map(|n| done.remove(n).expect("every stage has an outcome"))
        .collect()
}

/// Records a finished stage; a failure stops the run (without --keep-going) and skips,
/// transitively, everything downstream of it.
fn finish(
    ctx: &Ctx,
    o: StageOutcome,
    done: &mut HashMap<String, StageOutcome>,
    down: &HashMap<&str, Vec<&str>>,
    keep_going: bool,
) {
    let ok = o.status.is_ok();
    let name = o.name.clone();
    let status = o.status;
    done.insert(name.clone(), o);
    if ok {
        return;
    }
    if !keep_going && !ctx.stop.swap(true, Ordering::SeqCst) {
        *ctx.stop_reason.lock().expect("reason") =
            format!("run stopped after stage {name} {}", status.as_str());
    }
    let mut q: VecDeque<(String, String)> = down
        .get(name.as_str())
        .into_iter()
        .flatten()
        .map(|d| (d.to_string(), name.clone()))
        .collect();
    while let Some((d, up)) = q.pop_front() {
        if done.contains_key(&d) {
            continue;
        }
        let up_status = done[&up].status.as_str();
        let o = outcome(
            &d,
            StageState::Skipped,
            None,
            format!("upstream stage {up} {up_status}"),
        );
        ctx.ui.finished(&o);
        record_final(ctx, &o, None);
        done.insert(d.clone(), o);
        q.extend(
            down.get(d.as_str())
                .into_iter()
                .flatten()
                .map(|x| (x.to_string(), d.clone())),
        );
    }
}

fn outcome(name: &str, status: StageState, fp: Option<String>, msg: String) -> StageOutcome {
    StageOutcome {
        name: name.to_string(),
        status,
        fingerprint: fp,
        duration: Duration::ZERO,
        attempts: 0,
        exit_code: None,
        log: None,
        message: Some(msg),
        registration: None,
    }
}

fn record_final(ctx: &Ctx, o: &StageOutcome, started: Option<chrono::DateTime<chrono::Utc>>) {
    let end = tsumugi_base::time::now();
    ctx.db.stage_finished(
        &ctx.run_id,
        StageRecord {
            stage: o.name.clone(),
            status: o.status.as_str().to_string(),
            fingerprint: o.fingerprint.clone(),
            started_at: started.map(tsumugi_base::time::ts),
            ended_at: Some(tsumugi_base::time::ts(end)),
            duration_ms: Some(o.duration.as_millis() as i64),
            exit_code: o.exit_code,
            log_path: o.log.as_ref().map(|p| p.display().to_string()),
            attempt: o.attempts.max(1),
            message: o.message.clone(),
        },
    );
}

/// Decides and does one stage: fingerprint, then cached / restore / run + commit.
async fn run_stage(
    ctx: Arc<Ctx>,
    stage: Stage,
    index: usize,
    pool: Arc<SlotPool>,
    checks: Arc<tokio::sync::Semaphore>,
) -> StageOutcome {
    let started = tsumugi_base::time::now();
    let t0 = Instant::now();
    let c = ctx.clone();
    let st = stage.clone();
    // Hashing and cache checks are blocking file work.
    let permit = checks
        .acquire_owned()
        .await
        .expect("semaphore is never closed");
    let decision = tokio::task::spawn_blocking(move || decide(&c, &st)).await;
    drop(permit);
    tracing::debug!("{}: checked in {:?}", stage.name, t0.elapsed());
    let decision = match decision {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            let o = outcome(&stage.name, StageState::Failed, None, format!("{e:#}"));
            record_final(&ctx, &o, Some(started));
            return o;
        }
        Err(e) => {
            let o = outcome(
                &stage.name,
                StageState::Failed,
                None,
                format!("internal error: {e}"),
            );
            record_final(&ctx, &o, Some(started));
            return o;
        }
    };
    let (components, fp) = match decision {
        Decision::Fresh { fp, restored, outs } => {
            pool.done_deciding(index);
            let mut o = outcome(
                &stage.name,
                if restored.is_empty() {
                    StageState::Cached
                } else {
                    StageState::Restored
                },
                Some(fp.clone()),
                String::new(),
            );
            o.message = (!restored.is_empty()).then(|| format!("restored {}", restored.join(", ")));
            let c = ctx.clone();
            let st = stage.clone();
            let reg = tokio::task::spawn_blocking(move || {
                let _ = record_outputs(&c, &st, &outs, Vec::new());
                register_outcome(&c, &st, &outs)
            })
            .await;
            apply_registration(&mut o, reg);
            o.duration = t0.elapsed();
            record_final(&ctx, &o, Some(started));
            return o;
        }
        Decision::Run {
            components,
            fp,
            note,
        } => {
            if let Some(n) = note {
                ctx.ui.println(&format!("warning: {n}"));
                ctx.db
                    .event(Some(&ctx.run_id), Some(&stage.name), "cache_corrupt", &n);
            }
            (components, fp)
        }
    };

    let log_path = ctx.project.log_path(&ctx.run_id, &stage.name);
    // Shown and recorded relative to the project root, as every other path is.
    let log_shown = log_path
        .strip_prefix(ctx.project.root())
        .unwrap_or(&log_path)
        .to_path_buf();
    let Some(grant) = pool
        .acquire(
            index,
            stage.resources.cpu,
            stage.resources.gpu as usize,
            &ctx,
        )
        .await
    else {
        let reason = if ctx.cancel.load(Ordering::SeqCst) {
            "run cancelled".to_string()
        } else {
            ctx.stop_reason.lock().expect("reason").clone()
        };
        let o = outcome(&stage.name, StageState::Skipped, Some(fp), reason);
        record_final(&ctx, &o, Some(started));
        return o;
    };
    let mut env = stage.env.clone();
    if !grant.gpus.is_empty() {
        env.insert("CUDA_VISIBLE_DEVICES".into(), grant.gpus.join(","));
    }
    let max_attempts = 1 + stage.retry.attempts;
    let mut attempt = 0;
    let mut last_err: Option<(String, Option<i32>, bool, bool)> = None; // (msg, code, cancelled, timed_out)
    ctx.ui.started(&stage.name);
    while attempt < max_attempts {
        if ctx.cancel.load(Ordering::SeqCst) {
            break;
        }
        attempt += 1;
        if attempt > 1 {
            let wait = stage
                .retry
                .backoff
                .saturating_mul(1 << (attempt - 2).min(16));
            ctx.ui.println(&format!(
                "{}: retrying in {:.1}s (attempt {attempt}/{max_attempts})",
                stage.name,
                wait.as_secs_f64()
            ));
            let until = Instant::now() + wait;
            while Instant::now() < until && !ctx.cancel.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50).min(until - Instant::now())).await;
            }
            if ctx.cancel.load(Ordering::SeqCst) {
                break;
            }
        }
        ctx.db
            .stage_started(&ctx.run_id, &stage.name, Some(&log_shown), attempt);
        let c = ctx.clone();
        let st = stage.clone();
        let env2 = env.clone();
        let lp = log_path.clone();
        let res =
            tokio::task::spawn_blocking(move || execute_once(&c, &st, &env2, &lp, attempt)).await;
        tracing::debug!("{}: executed by {:?}", stage.name, t0.elapsed());
        match res {
            Ok(Ok(metrics)) => {
                // Commit: verify and store outputs, then the action entry.
                let c = ctx.clone();
                let st = stage.clone();
                let comps = components.clone();
                let fp2 = fp.clone();
                let commit = tokio::task::spawn_blocking(move || {
                    commit(&c, &st, &comps, &fp2, metrics)
                        .map(|recs| register_outcome(&c, &st, &recs))
                })
                .await;
                let mut o = outcome(
                    &stage.name,
                    StageState::Ran,
                    Some(fp.clone()),
                    String::new(),
                );
                o.message = None;
                o.attempts = attempt;
                o.exit_code = Some(0);
                o.log = Some(log_shown.clone());
                o.duration = t0.elapsed();
                tracing::debug!("{}: committed by {:?}", stage.name, t0.elapsed());
                match commit {
                    Ok(Ok(reg)) => apply_registration(&mut o, Ok(reg)),
                    Ok(Err(e)) => {
                        o.status = StageState::Failed;
                        o.message = Some(format!("{e:#}"));
                    }
                    Err(e) => {
                        o.status = StageState::Failed;
                        o.message = Some(format!("internal error: {e}"));
                    }
                }
                record_final(&ctx, &o, Some(started));
                return o;
            }
            Ok(Err(failure)) => {
                let cancelled = failure.cancelled;
                last_err = Some((failure.message, failure.code, cancelled, failure.timed_out));
                if cancelled {
                    break;
                }
            }
            Err(e) => {
                last_err = Some((format!("internal error: {e}"), None, false, false));
            }
        }
    }
    let (msg, code, cancelled, _timed_out) = last_err.unwrap_or_else(|| {
        (
            "run cancelled before the stage started".into(),
            None,
            true,
            false,
        )
    });
    // Nothing half-written stays behind as if it were an output.
    // (Through no symlink out of the project: such an output is left where it is.)
    for o in stage.outs.values() {
        let _ = safepath::remove(ctx.project.root(), &o.path);
    }
    let mut o = outcome(
        &stage.name,
        if cancelled {
            StageState::Cancelled
        } else {
            StageState::Failed
        },
        Some(fp),
        if max_attempts > 1 && !cancelled {
            format!("{msg} (after {attempt} attempts)")
        } else {
            msg
        },
    );
    o.attempts = attempt.max(1);
    o.exit_code = code;
    o.log = Some(log_shown);
    o.duration = t0.elapsed();
    record_final(&ctx, &o, Some(started));
    // Stop before the slots are given back, so no waiting stage slips in after a failure.
    if !ctx.keep_going && !ctx.stop.swap(true, Ordering::SeqCst) {
        *ctx.stop_reason.lock().expect("reason") =
            format!("run stopped after stage {} {}", o.name, o.status.as_str());
    }
    drop(grant);
    o
}

enum Decision {
    Fresh {
        fp: String,
        restored: Vec<String>,
        outs: BTreeMap<String, tsumugi_store::cache::OutRecord>,
    },
    Run {
        components: Box<Components>,
        fp: String,
        note: Option<String>,
    },
}

fn decide(ctx: &Ctx, stage: &Stage) -> Result<Decision> {
    let hasher = Hasher::new(&ctx.stat);
    let components = Box::new(fingerprint::compute(&ctx.project, &hasher, stage)?);
    let fp = components.fingerprint();
    let check = Freshness {
        project: &ctx.project,
        hasher: &hasher,
        cache: &ctx.cache,
        force: ctx.force,
    };
    let (entry, restore) = match check.decide(stage, &components, &fp, None) {
        Verdict::Dirty(reasons) => {
            if tracing::enabled!(tracing::Level::DEBUG) {
                let why: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
                tracing::debug!("{}: running ({})", stage.name, why.join("; "));
            }
            return Ok(Decision::Run {
                components,
                fp,
                note: None,
            });
        }
        Verdict::Fresh { entry, restore } => (entry, restore),
    };
    let mut restored = Vec::new();
    for Restore { key, rec, .. } in &restore {
        let abs = ctx.project.root().join(&rec.path);
        let current = hasher.hash(&abs).ok();
        if current.as_deref() == Some(rec.hash.as_str()) {
            continue;
        }
        match ctx.cache.restore(ctx.project.root(), rec) {
            Ok(_) => restored.push(rec.path.clone()),
            Err(e @ (RestoreError::Corrupt { .. } | RestoreError::NotAFile { .. })) => {
                let (object, actual) = match e {
                    RestoreError::Corrupt { object, actual } => (object, actual),
                    RestoreError::NotAFile { object, kind } => (object, format!("a {kind}")),
                    _ => unreachable!("matched above"),
                };
                ctx.cache.discard_object(&object);
                ctx.cache.remove_action(&fp);
                let note = format!(
                    "cache object {object} (output {key} of stage {}) is corrupt (content hashes to {}); re-running {}",
                    stage.name,
                    &actual[..12.min(actual.len())],
                    stage.name
                );
                return Ok(Decision::Run {
                    components,
                    fp,
                    note: Some(note),
                });
            }
            Err(RestoreError::Missing { object }) => {
                ctx.cache.remove_action(&fp);
                let note = format!(
                    "cache object {object} (output {key} of stage {}) is missing; re-running {}",
                    stage.name, stage.name
                );
                return Ok(Decision::Run {
                    components,
                    fp,
                    note: Some(note),
                });
            }
            Err(RestoreError::Io(e)) => {
                return Err(e.context(format!(
                    "cannot restore {} of stage {}",
                    rec.path, stage.name
                )));
            }
        }
    }
    Ok(Decision::Fresh {
        fp,
        restored,
        outs: entry.outs,
    })
}

struct Failure {
    message: String,
    code: Option<i32>,
    cancelled: bool,
    timed_out: bool,
}

/// One attempt: clear outputs, run the stage with its log, return metrics it reported.
fn execute_once(
    ctx: &Ctx,
    stage: &Stage,
    env: &BTreeMap<String, String>,
    log_path: &Path,
    attempt: u32,
) -> std::result::Result<Vec<MetricRow>, Failure> {
    let fail = |m: String| Failure {
        message: m,
        code: None,
        cancelled: false,
        timed_out: false,
    };
    let imp = stage_impl(stage).map_err(|e| fail(format!("{e:#}")))?;
    let root = ctx.project.root();
    // Outputs are removed first (as DVC does): a stage never appends to a stale output, and
    // never writes through a hardlink into the cache.
    // Each path is resolved now, refusing a symlink out of the project that an earlier
    // stage may have made since the pipeline was loaded.
    let mut outs = BTreeMap::new();
    for (k, o) in &stage.outs {
        let abs = safepath::resolve(root, &o.path, false, safepath::Op::RemoveOrWrite)
            .map_err(|e| fail(e.to_string()))?;
        if !o.persist {
            remove_path(&abs).map_err(|e| fail(format!("{e:#}")))?;
        }
        if let Some(p) = abs.parent() {
            fs::create_dir_all(p)
                .map_err(|e| fail(format!("cannot create {}: {e}", p.display())))?;
        }
        outs.insert(k.clone(), abs);
    }
    for m in &stage.metrics {
        safepath::remove(root, m).map_err(|e| fail(format!("{e:#}")))?;
        if let Some(p) = root.join(m).parent() {
            let _ = fs::create_dir_all(p);
        }
    }
    // A built-in kind writes its metrics output like any other output: the loader files it
    // under `metrics` (so the run database records it), and the kind needs its path by key.
    if let Action::Builtin { kind, .. } = &stage.action
        && let Some(info) = tsumugi_stages::kind(kind)
        && let Some(key) = info.metrics
        && let Some((_, file)) = info.outputs.iter().find(|(k, _)| *k == key)
        && let Some(m) = stage.metrics.iter().find(|m| m.ends_with(file))
    {
        outs.insert(key.to_string(), root.join(m));
    }
    if let Some(p) = log_path.parent() {
        fs::create_dir_all(p).map_err(|e| fail(format!("cannot create {}: {e}", p.display())))?;
    }
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| fail(format!("cannot open log {}: {e}", log_path.display())))?;
    if attempt > 1 {
        let _ = writeln!(log, "--- tsumugi: attempt {attempt} ---");
    }
    let with = match &stage.action {
        Action::Builtin { with, .. } => with.clone(),
        Action::Cmd { .. } => serde_json::Value::Null,
    };
    let reporter = StageReporter {
        cancel: ctx.cancel.clone(),
        deadline: stage.timeout.map(|t| Instant::now() + t),
        timed_out: AtomicBool::new(false),
        log: Mutex::new(Some(log)),
        ui: ctx.ui.clone(),
        name: stage.name.clone(),
        metrics: Mutex::new(Vec::new()),
    };
    let input = StageInput {
        name: &stage.name,
        project_root: root,
        with: &with,
        outs: &outs,
        env,
        device: &ctx.device,
    };
    let res = match &stage.map {
        Some(_) => crate::map::run(
            &crate::map::MapRun {
                project: &ctx.project,
                cache: &ctx.cache,
                stat: &ctx.stat,
                pipeline: &ctx.pipeline_name,
                jobs: ctx.jobs,
                force: ctx.force,
                run_id: &ctx.run_id,
                db: &ctx.db,
            },
            stage,
            &input,
            &reporter,
        ),
        None => imp.run(&input, &reporter),
    };
    let timed_out = reporter.timed_out.load(Ordering::Relaxed);
    let cancelled = ctx.cancel.load(Ordering::SeqCst);
    match res {
        Ok(()) => Ok(reporter.metrics.into_inner().expect("metrics")),
        Err(e) => {
            let code = e.downcast_ref::<CommandFailed>().and_then(|c| c.code);
            let message = if timed_out {
                format!(
                    "timed out after {:.1}s",
                    stage.timeout.unwrap_or_default().as_secs_f64()
                )
            } else if cancelled {
                "cancelled".to_string()
            } else {
                format!("{e:#}")
            };
            if let Some(f) = reporter.log.lock().expect("log").as_mut() {
                let _ = writeln!(f, "--- tsumugi: {message} ---");
            }
            Err(Failure {
                message,
                code,
                cancelled: cancelled && !timed_out,
                timed_out,
            })
        }
    }
}

/// After a successful attempt: every declared output must exist; cached ones go into the
/// store; then the action entry is written (last, so an entry always has its objects).
fn commit(
    ctx: &Ctx,
    stage: &Stage,
    components: &Components,
    fp: &str,
    metrics: Vec<MetricRow>,
) -> Result<BTreeMap<String, tsumugi_store::cache::OutRecord>> {
    let root = ctx.project.root();
    let mut recs = BTreeMap::new();
    for (k, o) in &stage.outs {
        // The stage may have made a symlink out of the project on an output's way.
        let abs = safepath::resolve(root, &o.path, true, safepath::Op::Commit)?;
        if !abs.exists() {
            bail!(
                "the stage succeeded but did not write its declared output {} ({k})",
                path_str(&o.path)
            );
        }
        if o.cache {
            recs.insert(k.clone(), ctx.cache.store_output(root, &path_str(&o.path))?);
        }
    }
    for m in &stage.metrics {
        if !safepath::resolve(root, m, true, safepath::Op::Commit)?.exists() {
            bail!(
                "the stage succeeded but did not write its metrics file {}",
                path_str(m)
            );
        }
    }
    // Metrics files are outputs too: committed, verified and restored (see `freshness`).
    for (k, m) in freshness::metrics_outputs(stage) {
        recs.insert(k, ctx.cache.store_output(root, &path_str(m))?);
    }
    let entry = ActionEntry {
        format: 1,
        fingerprint: fp.to_string(),
        pipeline: ctx.pipeline_name.clone(),
        stage: stage.name.clone(),
        created_at: tsumugi_base::time::ts(tsumugi_base::time::now()),
        components: components.clone(),
        outs: recs,
    };
    ctx.cache.put_action(&entry)?;
    record_outputs(ctx, stage, &entry.outs, metrics)?;
    Ok(entry.outs)
}

/// `register:` of a completed stage, if it has one; an error is the stage's failure.
type RegisterResult = Result<Option<crate::registry::Registration>>;

fn register_outcome(
    ctx: &Ctx,
    stage: &Stage,
    outs: &BTreeMap<String, tsumugi_store::cache::OutRecord>,
) -> RegisterResult {
    let Some(reg) = &stage.register else {
        return Ok(None);
    };
    register(ctx, stage, reg, outs)
        .map(Some)
        .with_context(|| format!("register {}", reg.name))
}

/// Puts a registration into the stage's outcome: the result, or the stage fails.
fn apply_registration(
    o: &mut StageOutcome,
    reg: std::result::Result<RegisterResult, tokio::task::JoinError>,
) {
    match reg {
        Ok(Ok(r)) => o.registration = r,
        Ok(Err(e)) => {
            o.status = StageState::Failed;
            o.message = Some(format!("{e:#}"));
        }
        Err(e) => {
            o.status = StageState::Failed;
            o.message = Some(format!("internal error: {e}"));
        }
    }
}

/// Keeps the stage's artifact as a version (see [`crate::registry`]) and records it.
fn register(
    ctx: &Ctx,
    stage: &Stage,
    reg: &tsumugi_pipeline::Register,
    outs: &BTreeMap<String, tsumugi_store::cache::OutRecord>,
) -> Result<crate::registry::Registration> {
    use crate::registry::{Action as RegAction, Registry, Request};
    let out = stage
        .outs
        .get(&reg.out)
        .with_context(|| format!("stage {} has no output {}", stage.name, reg.out))?;
    // The hash the engine committed or restored; a `cache: false` output is hashed here.
    let hash = match outs.get(&reg.out) {
        Some(r) => r.hash.clone(),
        None => Hasher::new(&ctx.stat).hash(&ctx.project.root().join(&out.path))?,
    };
    let _one = ctx.registry.lock().expect("registry");
    let r = Registry::new(&ctx.project).register(&Request {
        name: &reg.name,
        hash: &hash,
        source: &out.path,
        pipeline: &ctx.pipeline_name,
        stage: &stage.name,
        run_id: Some(&ctx.run_id),
        metrics_file: reg.metrics.as_deref(),
        gate: reg.promote_if.as_ref(),
    })?;
    if let Some(info) = &r.info {
        let run = Some(ctx.run_id.as_str());
        ctx.db.adapter_version(tsumugi_rundb::AdapterVersionRow {
            name: info.name.clone(),
            version: info.version,
            hash: info.hash.clone(),
            path: info.rel_dir(),
            metrics: serde_json::to_string(&info.metrics)?,
            run_id: info.run_id.clone(),
            pipeline: Some(info.pipeline.clone()),
            stage: Some(info.stage.clone()),
            created_at: info.created_at.clone(),
            status: info.status.as_str().into(),
        });
        ctx.db.adapter_event(
            &r.name,
            r.version,
            "registered",
            &format!("{} of stage {} ({})", info.source, stage.name, &hash[..12]),
            run,
        );
        let reason = r.gate.as_ref().map(|g| g.reason.as_str()).unwrap_or("");
        match r.action {
            RegAction::Promoted => {
                if let Some(p) = r.previous {
                    ctx.db.adapter_status(&r.name, p, "retired");
                }
                ctx.db
                    .adapter_event(&r.name, r.version, "promoted", reason, run);
            }
            RegAction::Kept => ctx
                .db
                .adapter_event(&r.name, r.version, "kept", reason, run),
            RegAction::Unchanged => {}
        }
    }
    Ok(r)
}

/// Artifacts and metrics of a completed (run or fresh) stage into the run database.
fn record_outputs(
    ctx: &Ctx,
    stage: &Stage,
    outs: &BTreeMap<String, tsumugi_store::cache::OutRecord>,
    mut metrics: Vec<MetricRow>,
) -> Result<()> {
    for (k, r) in outs {
        ctx.db
            .artifact(&ctx.run_id, &stage.name, k, &r.path, &r.hash);
    }
    let mut from_files = Vec::new();
    for m in &stage.metrics {
        let abs = ctx.project.root().join(m);
        match read_metrics(&abs) {
            Ok(rows) => from_files.extend(rows),
            Err(e) => ctx
                .ui
                .println(&format!("warning: stage {}: {e:#}", stage.name)),
        }
    }
    merge_metric_rows(&mut metrics, from_files);
    if !metrics.is_empty() {
        ctx.db.metrics(&ctx.run_id, &stage.name, metrics);
    }
    Ok(())
}

/// Adds the rows of the stage's metrics files to those it reported while running. A built-in
/// stage both reports its final metrics and writes them to its metrics file: the file is the
/// record, so a reported row with the same name and step is dropped rather than kept twice.
fn merge_metric_rows(reported: &mut Vec<MetricRow>, from_files: Vec<MetricRow>) {
    reported.retain(|r| {
        !from_files
            .iter()
            .any(|f| f.name == r.name && f.step == r.step)
    });
    reported.extend(from_files);
}

#[cfg(test)]
mod metric_merge_tests {
    use super::*;

    fn row(name: &str, step: Option<i64>, value: f64) -> MetricRow {
        MetricRow {
            name: name.into(),
            step,
            value,
        }
    }

    #[test]
    fn a_metric_in_both_the_report_and_the_file_is_kept_once() {
        let mut reported = vec![row("train/loss", Some(1), 0.5), row("spearman", None, 0.7)];
        merge_metric_rows(
            &mut reported,
            vec![row("spearman", None, 0.7), row("rmse", None, 0.2)],
        );
        let got: Vec<_> = reported.iter().map(|r| (r.name.as_str(), r.step)).collect();
        assert_eq!(
            got,
            vec![("train/loss", Some(1)), ("spearman", None), ("rmse", None)]
        );
    }
}

/// Numbers of a metrics file (see [`tsumugi_base::metrics_file`]).
pub fn read_metrics(path: &Path) -> Result<Vec<MetricRow>> {
    tsumugi_base::metrics_file::read(path)
}

/// Which stages are stale and why, without running or recording anything.
pub fn status(project: &Project, pipeline: &Pipeline) -> Result<Vec<StageStatus>> {
    let selection = select(pipeline, &[])?;
    status_of(project, pipeline, selection.order(), false)
}

fn status_of(
    project: &Project,
    pipeline: &Pipeline,
    order: &[String],
    force: bool,
) -> Result<Vec<StageStatus>> {
    let cache = Cache::new(project.cache_dir());
    let mut stat = StatCache::load(&project.cache_dir().join("statcache.bin"));
    // A running file-system monitor spares the stat calls of paths with no events.
    let fsmon = tsumugi_store::hash::use_fsmonitor(project, &mut stat);
    let hasher = Hasher::new(&stat);
    let db = tsumugi_rundb::open_read(project).ok().flatten();
    let mut stale: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(order.len());
    // Stages are independent given the workspace, so hash them in parallel, then reason in order.
    use rayon::prelude::*;
    let comps: Vec<Result<Components>> = order
        .par_iter()
        .map(|n| fingerprint::compute(project, &hasher, pipeline.stage(n).expect("stage")))
        .collect();
    let check = Freshness {
        project,
        hasher: &hasher,
        cache: &cache,
        force,
    };
    for (n, comps) in order.iter().zip(comps) {
        let stage = pipeline.stage(n).expect("stage");
        let upstream_stale: Vec<String> = stage
            .needs
            .iter()
            .filter(|u| stale.contains(*u))
            .cloned()
            .collect();
        let (verdict, fp) = match comps {
            Err(e) => (
                Verdict::Dirty(freshness::input_reasons(project, stage, &e)),
                None,
            ),
            Ok(c) => {
                let fp = c.fingerprint();
                let previous = || {
                    db.as_ref().and_then(|c| {
                        tsumugi_rundb::last_fingerprint(c, &pipeline.name, n)
                            .ok()
                            .flatten()
                    })
                };
                let v = check.decide(stage, &c, &fp, Some(&previous));
                (v, Some(fp))
            }
        };
        let verdict = verdict.after_upstream(&upstream_stale);
        let fresh = verdict.in_place();
        let mut why = verdict.reasons();
        let mut items = None;
        if !fresh && fp.is_some() && stage.map.is_some() {
            match crate::map::status(project, &hasher, &pipeline.name, stage) {
                Ok(c) => {
                    items = c;
                    why.extend(items.as_ref().map(|c| DirtyReason::Items {
                        summary: c.describe(n),
                    }));
                }
                Err(e) => why.push(DirtyReason::InputError {
                    message: format!("{e:#}"),
                }),
            }
        }
        if !fresh {
            stale.insert(n.clone());
        }
        out.push(StageStatus {
            name: n.clone(),
            fresh,
            reasons: why.iter().map(|r| r.to_string()).collect(),
            why,
            fingerprint: fp,
            items,
        });
    }
    if let Err(e) = stat.save() {
        tracing::debug!("could not save the stat cache: {e:#}");
    }
    tsumugi_store::hash::finish_fsmonitor(&stat, fsmon);
    Ok(out)
}
