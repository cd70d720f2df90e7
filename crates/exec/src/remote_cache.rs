//! The remote cache in a run, and `tsumugi push` / `pull`.
//!
//! During `run --remote NAME` (or with a default remote):
//! - **read-through**: a stale stage's fingerprint is looked up on the remote before the
//!   stage runs; if the remote has it, its objects are fetched (each verified) into the local
//!   cache, and the ordinary freshness decision then restores the outputs. The stage's
//!   outcome says "restored from remote NAME".
//! - **write-through**: after a stage is committed locally, its objects and then its entry
//!   are uploaded.
//!
//! The remote can only save work, never change a result: a corrupt or missing remote object
//! leaves the stage to run (with a warning naming the object), and an unreachable remote
//! (network down, server stopped) is said once, as a warning, after which the run goes on
//! locally without it. `--force` does not read through (it asks for a re-run).

use std::sync::Arc;

use anyhow::Result;

use tsumugi_base::lock::{ProjectLock, Wait};
use tsumugi_base::project::Project;
use tsumugi_pipeline::graph::{Dag, Selection};
use tsumugi_pipeline::{Pipeline, Stage};
use tsumugi_remote::{Remote, RemoteError, Transfer};
use tsumugi_store::cache::{Cache, RestoreError};
use tsumugi_store::fingerprint;
use tsumugi_store::hash::{Hasher, StatCache};

use crate::ctx::Ctx;

/// `targets` and what they need, in the graph's order (as a run selects them).
fn select(pipeline: &Pipeline, targets: &[String]) -> Result<Selection> {
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    Ok(Dag::build(pipeline)?.select(&targets)?)
}

/// Read-through: fetches `fp`'s result from the run's remote into the local cache. Returns
/// the remote's name when the local cache now holds the entry.
pub(crate) async fn read_through(ctx: &Ctx, stage: &Stage, fp: &str) -> Option<String> {
    let remote = ctx.remote.as_ref()?;
    if ctx.forced.contains(&stage.name) || remote.is_offline() {
        return None;
    }
    let fetched = remote.fetch(&ctx.cache, fp, &|_| {}).await;
    match fetched {
        Ok(Some(_)) => {
            if stage.map.is_some() {
                let dest = crate::map::manifest_path(&ctx.project, &ctx.pipeline_name, &stage.name);
                if let Err(e) = remote
                    .fetch_map_manifest(&ctx.cache, &ctx.pipeline_name, &stage.name, &dest, &|_| {})
                    .await
                {
                    warn(
                        ctx,
                        remote,
                        &stage.name,
                        e,
                        "its items will run when they change",
                    );
                }
            }
            Some(remote.name().to_string())
        }
        Ok(None) => None,
        Err(e) => {
            warn(
                ctx,
                remote,
                &stage.name,
                e,
                &format!("running {}", stage.name),
            );
            None
        }
    }
}

/// Write-through: uploads the committed result `fp` of `stage`.
pub(crate) async fn write_through(ctx: &Ctx, stage: &Stage, fp: &str) {
    let Some(remote) = ctx.remote.as_ref() else {
        return;
    };
    if remote.is_offline() {
        return;
    }
    let Some(entry) = ctx.cache.get_action(fp) else {
        return;
    };
    let mut res = remote.push(&ctx.cache, &entry, &|_| {}).await.map(|_| ());
    if res.is_ok() && stage.map.is_some() {
        let m = crate::map::manifest_path(&ctx.project, &ctx.pipeline_name, &stage.name);
        res = remote
            .push_map_manifest(&ctx.cache, &ctx.pipeline_name, &stage.name, &m, &|_| {})
            .await
            .map(|_| ());
    }
    if let Err(e) = res {
        warn(ctx, remote, &stage.name, e, "not uploaded");
    }
}

/// One warning per problem; for an unreachable remote, one per run.
fn warn(ctx: &Ctx, remote: &Remote, stage: &str, e: RemoteError, then: &str) {
    let (kind, line) = match &e {
        RemoteError::Unavailable { .. } => {
            if !remote.go_offline() {
                return;
            }
            (
                "remote_unavailable",
                format!("{e}; running locally without it for the rest of this run"),
            )
        }
        RemoteError::Local(err) => (
            "remote_error",
            format!("remote {}: stage {stage}: {err:#}; {then}", remote.name()),
        ),
        _ => ("remote_corrupt", format!("{e}; not restored, {then}")),
    };
    ctx.ui.println(&format!("warning: {line}"));
    ctx.db.event(Some(&ctx.run_id), Some(stage), kind, &line);
}

/// What `push` or `pull` did with one stage.
#[derive(Debug, Clone)]
pub struct SyncLine {
    pub stage: String,
    pub state: SyncState,
    pub transfer: Transfer,
    /// Why a stage was left out, or what went wrong.
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// Uploaded or fetched (or already there).
    Done,
    /// Pull: the remote has no result for the stage's current inputs.
    NotOnRemote,
    /// Push: the workspace result is not in the local cache (the stage is stale); pull: the
    /// fingerprint cannot be computed (an input is missing).
    Stale,
    Failed,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Done => "ok",
            SyncState::NotOnRemote => "not on remote",
            SyncState::Stale => "stale",
            SyncState::Failed => "failed",
        }
    }
}

fn line(stage: &str, state: SyncState, transfer: Transfer, message: Option<String>) -> SyncLine {
    SyncLine {
        stage: stage.to_string(),
        state,
        transfer,
        message,
    }
}

/// `tsumugi push`: uploads the cache entries of the selected stages' current results (the
/// fingerprints of the workspace as it is). An unreachable remote is an error here.
pub async fn push(
    project: &Project,
    pipeline: &Pipeline,
    targets: &[String],
    remote: &Remote,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<Vec<SyncLine>> {
    let selection = select(pipeline, targets)?;
    let cache = Cache::new(project.cache_dir());
    let stat = StatCache::load(&project.cache_dir().join("statcache.bin"));
    let mut out = Vec::new();
    for name in selection.order() {
        let stage = pipeline.stage(name).expect("selected stage");
        let Some(fp) = stage_fingerprint(project, &stat, stage, &mut out) else {
            continue;
        };
        let Some(entry) = cache.get_action(&fp) else {
            out.push(line(
                name,
                SyncState::Stale,
                Transfer::default(),
                Some("its current result is not in the local cache (run it first)".into()),
            ));
            continue;
        };
        let each = |n: u64| progress(name, n);
        let mut res = remote.push(&cache, &entry, &each).await;
        if let Ok(t) = res
            && stage.map.is_some()
        {
            let m = crate::map::manifest_path(project, &pipeline.name, name);
            res = remote
                .push_map_manifest(&cache, &pipeline.name, name, &m, &each)
                .await
                .map(|t2| {
                    let mut t = t;
                    t.add(t2);
                    t
                });
        }
        match res {
            Ok(t) => out.push(line(name, SyncState::Done, t, None)),
            Err(e @ RemoteError::Unavailable { .. }) => return Err(e.into()),
            Err(e) => out.push(line(
                name,
                SyncState::Failed,
                Transfer::default(),
                Some(e.to_string()),
            )),
        }
    }
    let _ = stat.save();
    Ok(out)
}

/// `tsumugi pull`: fetches the selected stages' results for the workspace's current inputs
/// (verified) and puts their outputs in the workspace, stage after stage, so that a
/// downstream stage's fingerprint sees its upstream outputs. A later `run` finds them all
/// cached. Takes the project lock.
pub async fn pull(
    project: &Project,
    pipeline: &Pipeline,
    targets: &[String],
    remote: &Remote,
    wait: Wait,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<Vec<SyncLine>> {
    let selection = select(pipeline, targets)?;
    let lp = project.clone();
    let desc = format!("tsumugi pull {}", pipeline.file.display());
    let _lock =
        tokio::task::spawn_blocking(move || ProjectLock::acquire(&lp, &desc, wait)).await??;
    let cache = Arc::new(Cache::new(project.cache_dir()));
    let stat = StatCache::load(&project.cache_dir().join("statcache.bin"));
    let mut out = Vec::new();
    for name in selection.order() {
        let stage = pipeline.stage(name).expect("selected stage");
        let Some(fp) = stage_fingerprint(project, &stat, stage, &mut out) else {
            continue;
        };
        let each = |n: u64| progress(name, n);
        let mut t = Transfer::default();
        let entry = match cache.get_action(&fp) {
            Some(e) => e,
            None => match remote.fetch(&cache, &fp, &each).await {
                Ok(Some((e, moved))) => {
                    t = moved;
                    e
                }
                Ok(None) => {
                    out.push(line(name, SyncState::NotOnRemote, t, None));
                    continue;
                }
                Err(e @ RemoteError::Unavailable { .. }) => return Err(e.into()),
                Err(e) => {
                    out.push(line(name, SyncState::Failed, t, Some(e.to_string())));
                    continue;
                }
            },
        };
        if stage.map.is_some() {
            let dest = crate::map::manifest_path(project, &pipeline.name, name);
            match remote
                .fetch_map_manifest(&cache, &pipeline.name, name, &dest, &each)
                .await
            {
                Ok(t2) => t.add(t2),
                Err(e @ RemoteError::Unavailable { .. }) => return Err(e.into()),
                Err(_) => {} // only costs item re-runs later
            }
        }
        // Outputs into the workspace where they differ (restores verify every object).
        let mut problem = None;
        for rec in entry.outs.values() {
            let hasher = Hasher::new(&stat);
            let current = hasher.hash(&project.root().join(&rec.path)).ok();
            if current.as_deref() == Some(rec.hash.as_str()) {
                continue;
            }
            let (c, root, r) = (cache.clone(), project.root().to_path_buf(), rec.clone());
            let res = tokio::task::spawn_blocking(move || c.restore(&root, &r)).await?;
            if let Err(e) = res {
                if let RestoreError::Corrupt { object, .. }
                | RestoreError::NotAFile { object, .. } = &e
                {
                    cache.discard_object(object);
                    cache.remove_action(&fp);
                }
                problem = Some(format!("cannot restore {}: {e}", rec.path));
                break;
            }
        }
        match problem {
            None => out.push(line(name, SyncState::Done, t, None)),
            Some(m) => out.push(line(name, SyncState::Failed, t, Some(m))),
        }
    }
    let _ = stat.save();
    Ok(out)
}

/// The stage's fingerprint now; a stage that cannot be fingerprinted (an input missing) is
/// reported stale in `out` and skipped by push and pull alike.
fn stage_fingerprint(
    project: &Project,
    stat: &StatCache,
    stage: &Stage,
    out: &mut Vec<SyncLine>,
) -> Option<String> {
    let hasher = Hasher::new(stat);
    match fingerprint::compute(project, &hasher, stage) {
        Ok(c) => Some(c.fingerprint()),
        Err(e) => {
            out.push(line(
                &stage.name,
                SyncState::Stale,
                Transfer::default(),
                Some(format!("{e:#}")),
            ));
            None
        }
    }
}
