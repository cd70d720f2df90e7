//! After a stage succeeds: its outputs go into the store and its action entry is written
//! (last, so an entry always has its objects); its metrics and artifacts are recorded and a
//! `register:` output is kept as an adapter version.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};

use tsumugi_base::paths::path_str;
use tsumugi_base::safepath;
use tsumugi_pipeline::Stage;
use tsumugi_rundb::{self, MetricRow};
use tsumugi_store::cache::ActionEntry;
use tsumugi_store::fingerprint::Components;
use tsumugi_store::hash::Hasher;

use crate::ctx::Ctx;
use crate::outcome::{StageOutcome, StageState};

use crate::freshness::{self};

/// After a successful attempt: every declared output must exist; cached ones go into the
/// store; then the action entry is written (last, so an entry always has its objects).
pub(crate) fn commit(
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
pub(crate) type RegisterResult = Result<Option<crate::registry::Registration>>;

pub(crate) fn register_outcome(
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
pub(crate) fn apply_registration(
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
pub(crate) fn register(
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
pub(crate) fn record_outputs(
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
pub(crate) fn merge_metric_rows(reported: &mut Vec<MetricRow>, from_files: Vec<MetricRow>) {
    reported.retain(|r| {
        !from_files
            .iter()
            .any(|f| f.name == r.name && f.step == r.step)
    });
    reported.extend(from_files);
}

/// Numbers of a metrics file (see [`tsumugi_base::metrics_file`]).
pub fn read_metrics(path: &Path) -> Result<Vec<MetricRow>> {
    tsumugi_base::metrics_file::read(path)
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
