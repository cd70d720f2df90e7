//! `tsumugi status` and `run --dry-run`: which stages are stale and why, through the same
//! freshness decision a run makes, without running or recording anything.

use std::collections::HashSet;

use anyhow::Result;

use tsumugi_base::project::Project;
use tsumugi_pipeline::Pipeline;
use tsumugi_pipeline::graph::Dag;

use tsumugi_store::cache::Cache;
use tsumugi_store::dirty_reason::DirtyReason;
use tsumugi_store::fingerprint::{self, Components};
use tsumugi_store::hash::{Hasher, StatCache};

use crate::outcome::StageStatus;

use crate::freshness::{self, Freshness, Verdict};

/// Which stages are stale and why, without running or recording anything.
pub fn status(project: &Project, pipeline: &Pipeline) -> Result<Vec<StageStatus>> {
    let selection = Dag::build(pipeline)?.select(&[])?;
    status_of(project, pipeline, selection.order(), &HashSet::new())
}

pub(crate) fn status_of(
    project: &Project,
    pipeline: &Pipeline,
    order: &[String],
    forced: &HashSet<String>,
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
    for (n, comps) in order.iter().zip(comps) {
        let stage = pipeline.stage(n).expect("stage");
        let check = Freshness {
            project,
            hasher: &hasher,
            cache: &cache,
            force: forced.contains(n),
        };
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
