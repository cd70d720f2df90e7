//! The one freshness decision: is a stage's result already in the workspace (or in the
//! cache, ready to restore), or must it run, and why? `run`, `status` and `run --dry-run`
//! all ask [`Freshness::decide`]; they differ only in what they do with the answer (`run`
//! restores and executes, the other two report).
//!
//! A stage is **fresh** when the action cache has an entry for its fingerprint and every
//! output the entry does not hold (`cache: false` outputs) is in the workspace. Outputs the
//! entry holds but the workspace lacks or has modified are in the `restore` list of
//! [`Verdict::Fresh`]: `run` puts them back without executing, `status` says the stage is
//! stale with "restorable from cache". Otherwise the stage is **dirty**, with its
//! [`DirtyReason`]s: forced, no entry (and, when the run history is at hand, what changed
//! since the last recorded fingerprint), an uncached output missing, or an upstream stage
//! stale.
//!
//! The output manifest of a stage is its declared `outs` plus its metrics files: a metrics
//! file (a command's `metrics:` or a built-in kind's metrics output) is committed to the
//! store under the key [`METRICS_KEY`]`PATH`, verified and restored like any output, unless
//! it lies inside one of the stage's declared outputs, which then holds it.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use anyhow::Result;

use tsumugi_base::paths::path_str;
use tsumugi_base::project::Project;
use tsumugi_pipeline::{Dep, Stage};
use tsumugi_store::cache::{ActionEntry, Cache, OutRecord};
use tsumugi_store::dirty_reason::DirtyReason;
use tsumugi_store::fingerprint::{self, Components};
use tsumugi_store::hash::Hasher;

/// Prefix of a metrics file's key in an action entry's outputs. Output keys are names or,
/// for list-form outputs, the path as written; neither begins with `metrics:` in practice.
pub const METRICS_KEY: &str = "metrics:";

/// What to do with a stage.
#[derive(Debug)]
pub enum Verdict {
    /// The cached result stands. `restore`: outputs the workspace lacks or has modified,
    /// which the entry holds; empty when everything is already in place.
    Fresh {
        entry: Box<ActionEntry>,
        restore: Vec<Restore>,
    },
    /// The stage must run, for these reasons (never empty).
    Dirty(Vec<DirtyReason>),
}

/// One cached output to put back into the workspace.
#[derive(Debug)]
pub struct Restore {
    pub key: String,
    pub rec: OutRecord,
    /// [`DirtyReason::OutputMissing`] or [`DirtyReason::OutputModified`].
    pub reason: DirtyReason,
}

impl Verdict {
    /// Fresh with nothing to restore: the workspace already holds the stage's result.
    pub fn in_place(&self) -> bool {
        matches!(self, Verdict::Fresh { restore, .. } if restore.is_empty())
    }

    /// Why the stage is not in place: the reasons of a dirty stage, or the outputs a fresh
    /// one would restore. Empty when [`in_place`](Self::in_place).
    pub fn reasons(&self) -> Vec<DirtyReason> {
        match self {
            Verdict::Fresh { restore, .. } => restore.iter().map(|r| r.reason.clone()).collect(),
            Verdict::Dirty(r) => r.clone(),
        }
    }

    /// The verdict once the stages this one needs are known: a stage whose upstream is
    /// stale will run after it, so it is dirty too.
    pub fn after_upstream(self, stale_upstream: &[String]) -> Verdict {
        if stale_upstream.is_empty() {
            return self;
        }
        let mut reasons = self.reasons();
        reasons.extend(
            stale_upstream
                .iter()
                .map(|u| DirtyReason::UpstreamStale { stage: u.clone() }),
        );
        Verdict::Dirty(reasons)
    }
}

/// What the decision looks at: the workspace, the hasher (and its stat cache), the action
/// cache, and whether the run is forced.
pub struct Freshness<'a> {
    pub project: &'a Project,
    pub hasher: &'a Hasher<'a>,
    pub cache: &'a Cache,
    pub force: bool,
}

impl Freshness<'_> {
    /// The decision for `stage`, whose inputs hash to `components` (fingerprint `fp`).
    /// `previous`, when the caller has the run history, gives the stage's last recorded
    /// fingerprint; it is asked only when there is no entry, to say what changed.
    pub fn decide(
        &self,
        stage: &Stage,
        components: &Components,
        fp: &str,
        previous: Option<&dyn Fn() -> Option<String>>,
    ) -> Verdict {
        if self.force {
            return Verdict::Dirty(vec![DirtyReason::Forced]);
        }
        let Some(entry) = self.cache.get_action(fp) else {
            return Verdict::Dirty(self.why_no_entry(components, fp, previous));
        };
        let root = self.project.root();
        let declared_metrics: HashSet<String> =
            metrics_outputs(stage).into_iter().map(|(k, _)| k).collect();
        let mut restore = Vec::new();
        for (key, rec) in &entry.outs {
            if key.starts_with(METRICS_KEY) && !declared_metrics.contains(key) {
                // A metrics file the stage no longer declares is not put back.
                continue;
            }
            let abs = root.join(&rec.path);
            let reason = match self.hasher.hash(&abs) {
                Ok(h) if h == rec.hash => continue,
                Ok(h) => DirtyReason::OutputModified {
                    path: rec.path.clone(),
                    old: rec.hash.clone(),
                    new: h,
                },
                Err(_) => DirtyReason::OutputMissing {
                    path: rec.path.clone(),
                    restorable: true,
                },
            };
            restore.push(Restore {
                key: key.clone(),
                rec: rec.clone(),
                reason,
            });
        }
        // What the entry does not hold cannot be restored: if it is gone, the stage runs.
        let mut missing = Vec::new();
        for o in stage.outs.values().filter(|o| !o.cache) {
            if !root.join(&o.path).exists() {
                missing.push(DirtyReason::OutputMissing {
                    path: path_str(&o.path),
                    restorable: false,
                });
            }
        }
        // An entry written before metrics files were outputs does not hold them.
        for (key, p) in metrics_outputs(stage) {
            if !entry.outs.contains_key(&key) && !root.join(p).exists() {
                missing.push(DirtyReason::OutputMissing {
                    path: path_str(p),
                    restorable: false,
                });
            }
        }
        if missing.is_empty() {
            Verdict::Fresh {
                entry: Box::new(entry),
                restore,
            }
        } else {
            let mut reasons: Vec<DirtyReason> = restore.into_iter().map(|r| r.reason).collect();
            reasons.extend(missing);
            Verdict::Dirty(reasons)
        }
    }

    fn why_no_entry(
        &self,
        components: &Components,
        fp: &str,
        previous: Option<&dyn Fn() -> Option<String>>,
    ) -> Vec<DirtyReason> {
        let Some(previous) = previous else {
            return vec![DirtyReason::NoCacheEntry];
        };
        match previous() {
            None => vec![DirtyReason::NeverRun],
            Some(p) => match self.cache.get_action(&p) {
                Some(old) => {
                    let d = fingerprint::diff(&old.components, components);
                    if d.is_empty() {
                        vec![DirtyReason::NoCacheEntry]
                    } else {
                        d
                    }
                }
                None => vec![DirtyReason::EntryGone {
                    old: p,
                    new: fp.to_string(),
                }],
            },
        }
    }
}

/// Why a stage's inputs could not be hashed: the usual cause is an input that does not
/// exist (yet), so each missing one is named; otherwise the error itself.
pub fn input_reasons(project: &Project, stage: &Stage, err: &anyhow::Error) -> Vec<DirtyReason> {
    let missing: Vec<DirtyReason> = stage
        .deps
        .iter()
        .filter_map(|d| match d {
            Dep::Path(p) if !project.root().join(p).exists() => {
                Some(DirtyReason::DepMissing { dep: path_str(p) })
            }
            _ => None,
        })
        .collect();
    if missing.is_empty() {
        vec![DirtyReason::InputError {
            message: format!("{err:#}"),
        }]
    } else {
        missing
    }
}

/// The stage's metrics files that are outputs of their own, keyed `metrics:PATH`: all but
/// those inside one of its declared outputs (that output holds them).
pub fn metrics_outputs(stage: &Stage) -> Vec<(String, &Path)> {
    stage
        .metrics
        .iter()
        .filter(|m| !stage.outs.values().any(|o| m.starts_with(&o.path)))
        .map(|m| (format!("{METRICS_KEY}{}", path_str(m)), m.as_path()))
        .collect()
}

/// Fingerprints of the action entries whose results are in the workspace now: every output
/// the entry recorded is at its path with the recorded content. `gc` keeps them whatever
/// the run history says, so a lost history never costs the results the workspace is built
/// from. An entry that records no cached output is not counted (nothing of it is in the
/// store).
pub fn entries_in_workspace(
    project: &Project,
    hasher: &Hasher<'_>,
    cache: &Cache,
) -> Result<HashSet<String>> {
    let mut live = HashSet::new();
    let rd = match fs::read_dir(cache.actions_dir()) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(live),
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot read {}", cache.actions_dir().display())));
        }
    };
    for e in rd {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp.") {
            continue;
        }
        let Some(entry) = cache.get_action(&name) else {
            continue;
        };
        let in_place = !entry.outs.is_empty()
            && entry.outs.values().all(|rec| {
                hasher
                    .hash(&project.root().join(&rec.path))
                    .is_ok_and(|h| h == rec.hash)
            });
        if in_place {
            live.insert(name);
        }
    }
    Ok(live)
}
