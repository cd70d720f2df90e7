//! `tsumugi watch`: file events → debounce → the affected sub-graph → one run at a time.
//!
//! * Events come from notify (inotify on Linux). A file dep is watched through its parent
//!   directory, so editors that save by writing a new file and renaming it are seen.
//! * What never counts: anything under `cache/`, `runs/` or `.git/`, every declared
//!   output of the pipeline — the run in progress writes those (and a cache restore puts
//!   them back), and re-running on them would loop — and tsumugi's own temporary files
//!   (`.tmp.<pid>.<n>.<name>`, `tsumugi_base::atomic::is_tmp_name`).
//! * A change counts when it touches a stage's dep (the file, something inside a dep
//!   directory, or a dep SQLite file and its `-wal`/`-journal`); the run's targets are those
//!   stages and everything downstream of them. A change to the pipeline file itself
//!   reloads it and runs the whole pipeline (the executor runs only what is stale).
//! * Debounce: a run starts once no relevant event has come for `debounce`, or at the
//!   latest `max_delay` after the first one, so a steady trickle cannot starve it.
//! * Changes during a run are queued (coalesced) into exactly one follow-up run.
//! * A failing run is recorded and watching goes on.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::history::{Decision, DecisionKind, History};
use super::spec::watch_paths;
use super::{Origin, PipelineRunner, RunOutcome, RunRequest};
use tsumugi_base::project::Project;
use tsumugi_pipeline::graph::Dag;
use tsumugi_pipeline::{Dep, Pipeline};

/// Directories of the project that are tsumugi's own and never trigger anything.
const OWN_DIRS: &[&str] = &["cache", "runs", ".git"];

/// What a changed path means for the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Not ours to react to, and why.
    Ignored(&'static str),
    /// The pipeline file itself.
    Pipeline,
    /// Deps of these stages changed.
    Stages(Vec<String>),
}

/// The static part of watching one pipeline: what to watch, what to ignore, what a change
/// affects. Rebuilt when the pipeline file changes.
#[derive(Debug, Clone)]
pub struct WatchPlan {
    pipeline_file: PathBuf,
    /// (stage, dep path, dep is a SQLite file)
    deps: Vec<(String, PathBuf, bool)>,
    outs: Vec<PathBuf>,
    /// Explicit `watch:` trigger paths; empty: every dep counts.
    scope: Vec<PathBuf>,
    dag: Dag,
}

impl WatchPlan {
    pub fn new(pipeline: &Pipeline) -> Result<WatchPlan> {
        let dag = Dag::build(pipeline).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut outs = Vec::new();
        for s in &pipeline.stages {
            outs.extend(
                s.outs
                    .values()
                    .map(|o| tsumugi_base::paths::normalize(&o.path)),
            );
            outs.extend(s.metrics.iter().map(|m| tsumugi_base::paths::normalize(m)));
        }
        let mut deps = Vec::new();
        for s in &pipeline.stages {
            for d in &s.deps {
                match d {
                    Dep::Path(p) => {
                        deps.push((s.name.clone(), tsumugi_base::paths::normalize(p), false))
                    }
                    Dep::Sqlite { db, .. } => {
                        deps.push((s.name.clone(), tsumugi_base::paths::normalize(db), true))
                    }
                }
            }
        }
        Ok(WatchPlan {
            pipeline_file: tsumugi_base::paths::normalize(&pipeline.file),
            deps,
            outs,
            scope: watch_paths(pipeline)
                .iter()
                .map(|p| tsumugi_base::paths::normalize(p))
                .collect(),
            dag,
        })
    }

    /// What a change of `rel` (relative to the project root) means.
    pub fn classify(&self, rel: &Path) -> Effect {
        let rel = tsumugi_base::paths::normalize(rel);
        if let Some(Component::Normal(first)) = rel.components().next()
            && OWN_DIRS.iter().any(|d| first == *d)
        {
            return Effect::Ignored("tsumugi's own directory");
        }
        // A restore or atomic write goes through `.tmp.<pid>.<n>.<name>` beside its target
        // (a directory restore: a whole temporary tree); the rename that ends it is the event
        // that counts, under the real name.
        if rel
            .components()
            .any(|c| tsumugi_base::atomic::is_tmp_name(c.as_os_str()))
        {
            return Effect::Ignored("a temporary file of tsumugi");
        }
        if rel == self.pipeline_file {
            return Effect::Pipeline;
        }
        if self.outs.iter().any(|o| rel.starts_with(o)) {
            return Effect::Ignored("an output of the pipeline");
        }
        if !self.scope.is_empty() && !self.scope.iter().any(|s| rel.starts_with(s)) {
            return Effect::Ignored("outside the watch: paths");
        }
        let mut stages: Vec<String> = Vec::new();
        for (stage, dep, sqlite) in &self.deps {
            let hit = rel.starts_with(dep) || (*sqlite && sqlite_sidecar_of(&rel, dep));
            if hit && !stages.contains(stage) {
                stages.push(stage.clone());
            }
        }
        if stages.is_empty() {
            Effect::Ignored("no stage depends on it")
        } else {
            Effect::Stages(stages)
        }
    }

    /// The stages to run for changes in `changed`: those stages and everything downstream,
    /// in topological order.
    pub fn targets(&self, changed: &BTreeSet<String>) -> Vec<String> {
        let mut keep: BTreeSet<&str> = changed.iter().map(String::as_str).collect();
        for c in changed {
            if let Ok(down) = self.dag.downstream(c) {
                keep.extend(down);
            }
        }
        self.dag
            .topo_order()
            .into_iter()
            .filter(|n| keep.contains(n))
            .map(str::to_string)
            .collect()
    }

    /// Directories to hand to notify (relative), with whether to watch them recursively.
    /// A path that does not exist yet is watched through its nearest existing ancestor.
    pub fn watch_roots(&self, root: &Path) -> Vec<(PathBuf, RecursiveMode)> {
        let wanted: Vec<PathBuf> = if self.scope.is_empty() {
            self.deps.iter().map(|(_, d, _)| d.clone()).collect()
        } else {
            self.scope.clone()
        };
        let mut out: Vec<(PathBuf, RecursiveMode)> = Vec::new();
        let mut add = |p: PathBuf, m: RecursiveMode| {
            if !out
                .iter()
                .any(|(q, qm)| *q == p && (*qm == m || *qm == RecursiveMode::Recursive))
            {
                out.retain(|(q, _)| !(*q == p && m == RecursiveMode::Recursive));
                out.push((p, m));
            }
        };
        for w in wanted {
            let abs = root.join(&w);
            if abs.is_dir() {
                add(w, RecursiveMode::Recursive);
                continue;
            }
            // A file (or something not there yet): watch the directory that holds it.
            let mut parent = w.parent().map(Path::to_path_buf).unwrap_or_default();
            let mut mode = RecursiveMode::NonRecursive;
            while !root.join(&parent).is_dir() {
                parent = parent.parent().map(Path::to_path_buf).unwrap_or_default();
                mode = RecursiveMode::Recursive;
            }
            if parent.as_os_str().is_empty() && mode == RecursiveMode::Recursive {
                // Never watch the whole project recursively: cache/ alone can hold
                // millions of files. The root, non-recursively, sees the top-level dir
                // being created; the plan is rebuilt on the next pipeline reload.
                mode = RecursiveMode::NonRecursive;
            }
            add(parent, mode);
        }
        let pf = self
            .pipeline_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        add(pf, RecursiveMode::NonRecursive);
        out
    }
}

/// `app.db-wal`, `app.db-journal`, `app.db-shm` belong to `app.db`.
fn sqlite_sidecar_of(rel: &Path, db: &Path) -> bool {
    let (Some(r), Some(d)) = (rel.to_str(), db.to_str()) else {
        return false;
    };
    r.strip_prefix(d)
        .is_some_and(|rest| matches!(rest, "-wal" | "-journal" | "-shm"))
}

#[derive(Debug)]
pub struct WatchOptions {
    pub debounce: Duration,
    /// The longest a run waits after the first change of a burst.
    pub max_delay: Duration,
    /// Told once every watch is in place (changes from then on are seen).
    pub ready: Option<tokio::sync::oneshot::Sender<()>>,
}

impl WatchOptions {
    pub fn with_debounce(debounce: Duration) -> Self {
        WatchOptions {
            debounce,
            max_delay: (debounce * 20).max(Duration::from_secs(5)),
            ready: None,
        }
    }
}

/// What watching did, for tests and the exit message.
#[derive(Debug, Clone, Default)]
pub struct WatchReport {
    pub runs: Vec<(RunRequest, Result<RunOutcome, String>)>,
}

/// Pending work: stages whose deps changed (or all, after a pipeline edit) and example paths.
#[derive(Debug, Default)]
struct Pending {
    stages: BTreeSet<String>,
    all: bool,
    paths: BTreeSet<String>,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.stages.is_empty() && !self.all
    }
    fn describe(&self) -> String {
        let mut shown: Vec<&str> = self.paths.iter().map(String::as_str).take(5).collect();
        let more = self.paths.len().saturating_sub(shown.len());
        let extra = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        if shown.is_empty() {
            shown.push("(none)");
        }
        format!("{}{extra}", shown.join(", "))
    }
}

/// Watches `pipeline` until `stop` completes, running `runner` for each coalesced burst of
/// relevant changes. `reload` re-reads the pipeline file after it changed.
pub async fn watch<R, F>(
    project: &Project,
    pipeline: Pipeline,
    runner: Arc<R>,
    mut opts: WatchOptions,
    mut reload: F,
    stop: impl Future<Output = ()>,
) -> Result<WatchReport>
where
    R: PipelineRunner + 'static,
    F: FnMut() -> Result<Pipeline>,
{
    let root = std::fs::canonicalize(project.root())
        .with_context(|| format!("cannot find {}", project.root().display()))?;
    let history = History::new(project, &pipeline.name);
    let mut plan = WatchPlan::new(&pipeline)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
    let mut watcher: RecommendedWatcher = notify::recommended_watcher(move |ev| {
        // The receiver is gone only when watching has ended.
        let _ = tx.send(ev);
    })
    .context("cannot start the file watcher")?;
    let mut watched = add_watches(&mut watcher, &root, &plan, &[])?;

    let record = |kind: DecisionKind, detail: String, run_id: Option<String>| {
        history.record(&Decision {
            at: Utc::now(),
            origin: Origin::Watch,
            kind,
            source: "watch".into(),
            detail,
            run_id,
        });
    };
    eprintln!(
        "watching {} path(s) for pipeline {} (debounce {}); Ctrl-C stops",
        watched.len(),
        pipeline.name,
        humantime::format_duration(opts.debounce)
    );

    if let Some(ready) = opts.ready.take() {
        let _ = ready.send(());
    }
    let mut report = WatchReport::default();
    let mut pending = Pending::default();
    let mut running: Option<(RunRequest, tokio::task::JoinHandle<Result<RunOutcome>>)> = None;
    tokio::pin!(stop);
    loop {
        let deadline = match (pending.first, pending.last) {
            (Some(f), Some(l)) => Some((l + opts.debounce).min(f + opts.max_delay)),
            _ => None,
        };
        let can_start = running.is_none() && !pending.is_empty();
        tokio::select! {
            biased;
            _ = &mut stop => break,
            res = async { (&mut running.as_mut().expect("guarded").1).await }, if running.is_some() => {
                let (req, _) = running.take().expect("guarded");
                let res = match res {
                    Ok(r) => r.map_err(|e| format!("{e:#}")),
                    Err(join) => Err(format!("the run task ended abnormally: {join}")),
                };
                match &res {
                    Ok(o) if o.success => record(DecisionKind::RunOk, format!("run {} succeeded", o.run_id), Some(o.run_id.clone())),
                    Ok(o) => record(
                        DecisionKind::RunFailed,
                        format!("run {} failed (failed stages: {}); still watching", o.run_id, o.failed.join(", ")),
                        Some(o.run_id.clone()),
                    ),
                    Err(e) => record(DecisionKind::RunFailed, format!("run could not start: {e}; still watching"), None),
                }
                if !pending.is_empty() {
                    record(DecisionKind::Queued, format!("changes during the run: {}; one follow-up run", pending.describe()), None);
                }
                report.runs.push((req, res));
            }
            ev = rx.recv() => {
                let Some(ev) = ev else { anyhow::bail!("the file watcher stopped") };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        record(DecisionKind::Error, format!("file watcher error: {e}"), None);
                        continue;
                    }
                };
                if !counts(&ev.kind) {
                    continue;
                }
                let mut reloaded = false;
                for p in &ev.paths {
                    let Ok(rel) = p.strip_prefix(&root) else { continue };
                    match plan.classify(rel) {
                        Effect::Ignored(why) => tracing::trace!("ignored {}: {why}", rel.display()),
                        Effect::Pipeline => reloaded = true,
                        Effect::Stages(st) => {
                            pending.stages.extend(st);
                            pending.paths.insert(rel.display().to_string());
                            let now = Instant::now();
                            pending.first.get_or_insert(now);
                            pending.last = Some(now);
                        }
                    }
                }
                if reloaded {
                    match reload().and_then(|p| WatchPlan::new(&p).map(|plan| (p, plan))) {
                        Ok((_, new_plan)) => {
                            plan = new_plan;
                            watched = add_watches(&mut watcher, &root, &plan, &watched)?;
                            pending.all = true;
                            pending.paths.insert(plan.pipeline_file.display().to_string());
                            let now = Instant::now();
                            pending.first.get_or_insert(now);
                            pending.last = Some(now);
                        }
                        Err(e) => record(DecisionKind::Error, format!("the pipeline file no longer loads, keeping the previous version: {e:#}"), None),
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if can_start => {
                let targets = if pending.all { Vec::new() } else { plan.targets(&pending.stages) };
                let what = if targets.is_empty() { "the whole pipeline".to_string() } else { targets.join(", ") };
                let req = RunRequest { origin: Origin::Watch, targets, reason: format!("changed: {}", pending.describe()) };
                record(DecisionKind::Fired, format!("changed: {}; running {what}", pending.describe()), None);
                pending = Pending::default();
                let r = runner.clone();
                let req2 = req.clone();
                running = Some((req, tokio::spawn(async move { r.run(req2).await })));
            }
        }
    }
    // Let a run in progress finish (the caller cancels it through its runner first if it
    // should stop early), so its outcome is recorded.
    if let Some((req, handle)) = running.take() {
        let res = match handle.await {
            Ok(r) => r.map_err(|e| format!("{e:#}")),
            Err(join) => Err(format!("the run task ended abnormally: {join}")),
        };
        match &res {
            Ok(o) if o.success => record(
                DecisionKind::RunOk,
                format!("run {} succeeded", o.run_id),
                Some(o.run_id.clone()),
            ),
            Ok(o) => record(
                DecisionKind::RunFailed,
                format!(
                    "run {} did not complete ({})",
                    o.run_id,
                    o.failed.join(", ")
                ),
                Some(o.run_id.clone()),
            ),
            Err(e) => record(
                DecisionKind::RunFailed,
                format!("run could not start: {e}"),
                None,
            ),
        }
        report.runs.push((req, res));
    }
    Ok(report)
}

/// Opening or reading a file changes nothing; everything else might.
fn counts(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Adds the plan's watch roots that are not watched yet; returns all watched.
fn add_watches(
    w: &mut RecommendedWatcher,
    root: &Path,
    plan: &WatchPlan,
    already: &[PathBuf],
) -> Result<Vec<PathBuf>> {
    let mut out = already.to_vec();
    for (rel, mode) in plan.watch_roots(root) {
        if out.contains(&rel) {
            continue;
        }
        let abs = root.join(&rel);
        w.watch(&abs, mode)
            .with_context(|| format!("cannot watch {}", abs.display()))?;
        out.push(rel);
    }
    Ok(out)
}
