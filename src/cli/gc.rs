use std::process::ExitCode;

use clap::Args;

use crate::cache::Cache;
use crate::freshness;
use crate::hash::{Hasher, StatCache};
use crate::lock::{ProjectLock, Wait};
use crate::project::Project;
use crate::rundb;

/// `tsumugi gc --help`: what is kept.
pub const LONG_ABOUT: &str = "Remove cache entries and objects nothing needs.

Kept: every stage's latest completed result in the run history (runs/tsumugi.db), the \
results of the --keep-last N newest runs of each pipeline (or of the N newest runs of the \
project with --keep-last-global N), and every cache entry whose outputs are all in \
the workspace now, byte for byte. The last rule means a lost, truncated or replaced run \
database never costs the results the workspace is built from (tsumugi says when the \
history is lost).";

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Also keep everything the N newest runs of each pipeline reference, counted per
    /// pipeline so that runs of one cannot push out another's (the latest result of every
    /// stage of every pipeline is always kept).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: usize,
    /// Also keep everything the N newest runs of the project reference, whatever their
    /// pipeline (the meaning --keep-last had before it counted per pipeline).
    #[arg(long, value_name = "N", conflicts_with = "keep_last")]
    pub keep_last_global: Option<usize>,
    /// Say what would be removed; remove nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// If another tsumugi holds the project lock, fail (exit 3) instead of waiting.
    #[arg(long)]
    pub no_wait: bool,
}

pub fn run(project: &Project, args: GcArgs) -> anyhow::Result<ExitCode> {
    let wait = if args.no_wait { Wait::No } else { Wait::Yes };
    let _lock = match ProjectLock::acquire(project, "tsumugi gc", wait) {
        Ok(l) => l,
        Err(e) if e.downcast_ref::<crate::lock::Locked>().is_some() => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(super::run::EXIT_LOCKED));
        }
        Err(e) => return Err(e),
    };
    let mut keep = match rundb::open_read(project)? {
        Some(c) => rundb::kept_fingerprints_by(
            &c,
            match args.keep_last_global {
                Some(n) => rundb::KeepLast::Global(n),
                None => rundb::KeepLast::PerPipeline(args.keep_last),
            },
        )?,
        None => Default::default(),
    };
    // What the workspace is built from stays, whatever the history says (it may be lost).
    let cache = Cache::new(project.cache_dir());
    let stat = StatCache::load(&project.cache_dir().join("statcache.bin"));
    keep.extend(freshness::entries_in_workspace(
        project,
        &Hasher::new(&stat),
        &cache,
    )?);
    // Per-item outputs of `map:` stages live in their stage's item manifest.
    let per_item = crate::map::live_objects(&cache, &project.cache_dir());
    let r = cache.gc(&keep, per_item, args.dry_run)?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    println!(
        "gc: {verb} {} cache entries and {} objects ({:.1} MiB){}; kept {} entries, {} objects",
        r.actions_removed,
        r.objects_removed,
        r.bytes_freed as f64 / (1024.0 * 1024.0),
        if r.temps_removed > 0 {
            format!(" and {} temporary files", r.temps_removed)
        } else {
            String::new()
        },
        r.actions_kept,
        r.objects_kept
    );
    Ok(ExitCode::SUCCESS)
}
