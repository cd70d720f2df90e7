//! Per-item stages (`map:`): a stage that runs once per item of a glob, of the lines of a
//! file or of the rows of a JSONL file, instead of once — its command with the item's
//! `${item.…}` filled in, or a per-item built-in kind (`KindInfo::per_item`) with the item's
//! `with:`, whose per-item outputs concatenate into the kind's declared ones.
//!
//! Two levels of caching, so that the common case stays as cheap as any other stage:
//! - The stage as a whole has an ordinary fingerprint, in which the map source counts as
//!   one input whose hash is [`source_hash`]: the sorted list of (item key, item input hash)
//!   plus the map spec. If nothing changed, the executor finds the action entry and never
//!   gets here.
//! - Otherwise [`run`] compares every item's own fingerprint (the stage's fingerprint without
//!   the map source, + the item's key and input hash) with the stage's item manifest,
//!   `cache/map/<pipeline>/<stage>.json`: one file per mapped stage, key → (fingerprint,
//!   input hash, output records), written atomically. Only added and changed items run;
//!   removed items' outputs are deleted; the merged output is rebuilt from every item's
//!   outputs in key order, so it is byte-identical to a from-scratch run.
//!
//! One manifest file, not one action entry per item: a status over 100,000 items reads one
//! file and stats the inputs through the stat cache, with no per-item file or SQLite lookups.
//! The per-item outputs themselves are content-addressed objects in the ordinary store.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tsumugi_stages::{Reporter, Stage as StageImpl, StageInput};

use tsumugi_base::atomic::{remove_path, write_atomic};
use tsumugi_base::paths::path_str;
use tsumugi_base::project::Project;
use tsumugi_base::safepath;
use tsumugi_pipeline::{Action, Dep, MapSource, MapSpec, Stage};
use tsumugi_rundb::RunDb;
use tsumugi_store::cache::{Cache, OutKind, OutRecord};
use tsumugi_store::fingerprint::{self, hash_dep};
use tsumugi_store::hash::{Hasher, StatCache, sha256_hex};
use tsumugi_store::items::spec_bytes;
pub use tsumugi_store::items::{Item, items, source_hash};

use crate::process::CmdStage;

/// What every item's fingerprint shares: the stage's action, params, env, its other inputs
/// and the map spec — everything but the map source.
fn item_base(
    project: &Project,
    hasher: &Hasher<'_>,
    stage: &Stage,
    spec: &MapSpec,
) -> Result<String> {
    let mut deps = BTreeMap::new();
    for d in &stage.deps {
        if matches!(d, Dep::Path(p) if p == spec.source.path()) {
            continue;
        }
        let h = hash_dep(project, hasher, d).with_context(|| format!("stage {}", stage.name))?;
        deps.insert(fingerprint::dep_key(d), h);
    }
    let mut buf = fingerprint::components(stage, deps)
        .fingerprint()
        .into_bytes();
    buf.push(b'\n');
    buf.extend(spec_bytes(spec));
    Ok(sha256_hex(&buf))
}

fn item_fp(base: &str, it: &Item) -> String {
    sha256_hex(format!("tsumugi-item\n{base}\n{}\n{}", it.key, it.input).as_bytes())
}

/// `${item.NAME}` in `template` → the item's values; `quote` makes each one shell word.
pub fn fill(template: &str, it: &Item, quote: bool) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find("${item.") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 7..];
        let Some(end) = after.find('}') else {
            bail!("unterminated ${{item.…}} in {template}");
        };
        let name = &after[..end];
        let Some(v) = it.vars.get(name) else {
            bail!("item {} has no field '{name}'", it.key);
        };
        if quote {
            out.push('\'');
            out.push_str(&v.replace('\'', r"'\''"));
            out.push('\'');
        } else {
            out.push_str(v);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `${item.NAME}` in every string of a built-in kind's `with:` (keys stay as written).
fn fill_value(v: &Value, it: &Item) -> Result<Value> {
    Ok(match v {
        Value::String(s) if s.contains("${item.") => Value::String(fill(s, it, false)?),
        Value::Array(a) => {
            Value::Array(a.iter().map(|x| fill_value(x, it)).collect::<Result<_>>()?)
        }
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), fill_value(x, it)?)))
                .collect::<Result<_>>()?,
        ),
        other => other.clone(),
    })
}

/// The folder of one item's outputs under a built-in stage's `items/`: the key itself when
/// it is a plain relative path (glob keys: `sub/a.png`), so a user can find an item's
/// files; otherwise (a row key with `..`, `:` or `\`, a key that could be another key's
/// folder) `@` and a hash of the key, which no plain key can be.
fn item_dir(spec: &MapSpec, key: &str) -> String {
    // Letters of any script (`写真.png`), digits and a few marks file names often have;
    // no `@`, so a hashed folder never looks like a key.
    let plain_seg = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | ' ' | ','))
    };
    // Glob keys are paths of files, so none is the folder of another; any other key may
    // be `a` next to `a/b`, so only single segments are used as they are.
    let nested = matches!(spec.source, MapSource::Glob { .. });
    let plain = key.len() <= 200
        && if nested {
            key.split('/').all(plain_seg)
        } else {
            plain_seg(key)
        };
    if plain {
        key.to_string()
    } else {
        format!("@{}", &sha256_hex(key.as_bytes())[..16])
    }
}

/// What an item runs: a command (`cmd:` with `${item.…}`), or a built-in kind through
/// its implementation with the item's `with:`.
enum Work<'a> {
    Cmd(&'a str),
    Builtin {
        imp: &'a dyn StageImpl,
        with: &'a Value,
        /// The stage's outputs (key, path), in key order: what the items' parts merge into.
        outs: Vec<(&'a str, &'a Path)>,
        /// `out/<pipeline>/<stage>/items`.
        items_dir: PathBuf,
    },
}

/// An item's output paths, relative to the project root; an item whose value would lead
/// outside the project is an error, not a write somewhere else.
fn item_out_paths(spec: &MapSpec, work: &Work<'_>, it: &Item) -> Result<Vec<String>> {
    if let Work::Builtin {
        outs, items_dir, ..
    } = work
    {
        let dir = items_dir.join(item_dir(spec, &it.key));
        return outs
            .iter()
            .map(|(k, p)| {
                let file = p
                    .file_name()
                    .with_context(|| format!("output {k} has no file name"))?;
                Ok(path_str(&dir.join(file)))
            })
            .collect();
    }
    spec.item_outs
        .iter()
        .map(|t| {
            let p = fill(t, it, false)?;
            let bad = Path::new(&p).components().any(|c| {
                !matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            });
            if bad || p.is_empty() {
                bail!("item {}: output path {p:?} leaves the project", it.key);
            }
            Ok(p)
        })
        .collect()
}

/// The per-item cache of one mapped stage.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    items: BTreeMap<String, ItemRec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ItemRec {
    fp: String,
    input: String,
    outs: Vec<OutRecord>,
    /// The list entry of a line or row item, for `TSUMUGI_REMOVED` once it is gone.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    entry: String,
}

pub fn manifest_path(project: &Project, pipeline: &str, stage: &str) -> PathBuf {
    project
        .cache_dir()
        .join("map")
        .join(pipeline)
        .join(format!("{stage}.json"))
}

/// Every object the item manifests under `cache_dir` refer to (for `tsumugi gc`): the
/// current outputs of every item of every mapped stage are kept.
pub fn live_objects(cache: &Cache, cache_dir: &Path) -> Vec<String> {
    let mut live = Vec::new();
    let files = walkdir::WalkDir::new(cache_dir.join("map"))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "json"));
    for f in files {
        for rec in load_manifest(f.path()).items.into_values() {
            for o in rec.outs {
                if o.kind == OutKind::Dir
                    && let Ok(m) = cache.manifest(&o.hash)
                {
                    live.extend(m.entries.into_iter().map(|x| x.hash));
                }
                live.push(o.hash);
            }
        }
    }
    live
}

fn load_manifest(path: &Path) -> Manifest {
    // A missing or unreadable manifest only costs re-runs: every item is then "added".
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
        .filter(|m| m.format == 1)
        .unwrap_or_default()
}

/// Items by what has to happen to them.
struct Plan {
    items: Vec<Item>,
    fps: Vec<String>,
    added: Vec<usize>,
    changed: Vec<usize>,
    cached: Vec<usize>,
    removed: Vec<String>,
    manifest: Manifest,
}

fn plan(
    project: &Project,
    hasher: &Hasher<'_>,
    pipeline: &str,
    stage: &Stage,
    spec: &MapSpec,
) -> Result<Plan> {
    let items = items(project, hasher, spec)?;
    let base = item_base(project, hasher, stage, spec)?;
    let fps: Vec<String> = items.par_iter().map(|it| item_fp(&base, it)).collect();
    let manifest = load_manifest(&manifest_path(project, pipeline, &stage.name));
    let (mut added, mut changed, mut cached) = (Vec::new(), Vec::new(), Vec::new());
    for (i, it) in items.iter().enumerate() {
        match manifest.items.get(&it.key) {
            None => added.push(i),
            Some(r) if r.fp != fps[i] => changed.push(i),
            Some(_) => cached.push(i),
        }
    }
    let current: std::collections::HashSet<&str> = items.iter().map(|i| i.key.as_str()).collect();
    let removed = manifest
        .items
        .keys()
        .filter(|k| !current.contains(k.as_str()))
        .cloned()
        .collect();
    Ok(Plan {
        items,
        fps,
        added,
        changed,
        cached,
        removed,
        manifest,
    })
}

/// Per-item freshness of a mapped stage, for `tsumugi status`.
#[derive(Debug, Clone, Serialize)]
pub struct ItemCounts {
    pub total: usize,
    pub stale: usize,
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub cached: usize,
    /// The first few keys of each kind, for the message.
    #[serde(skip)]
    pub examples: BTreeMap<&'static str, Vec<String>>,
}

impl ItemCounts {
    /// `caption: 1 of 1000 items stale (added: img_0999.png)`.
    pub fn describe(&self, stage: &str) -> String {
        let mut parts = Vec::new();
        for (what, n) in [
            ("added", self.added),
            ("changed", self.changed),
            ("removed", self.removed),
        ] {
            if n == 0 {
                continue;
            }
            let ex = &self.examples[what];
            let more = if n > ex.len() {
                format!(" and {} more", n - ex.len())
            } else {
                String::new()
            };
            parts.push(format!("{what}: {}{more}", ex.join(", ")));
        }
        let mut s = format!("{stage}: {} of {} items stale", self.stale, self.total);
        if !parts.is_empty() {
            s.push_str(&format!(" ({})", parts.join("; ")));
        }
        s
    }
}

fn counts(p: &Plan) -> ItemCounts {
    const SHOWN: usize = 5;
    let keys = |ix: &[usize]| {
        ix.iter()
            .take(SHOWN)
            .map(|&i| p.items[i].key.clone())
            .collect()
    };
    let mut examples = BTreeMap::new();
    examples.insert("added", keys(&p.added));
    examples.insert("changed", keys(&p.changed));
    examples.insert("removed", p.removed.iter().take(SHOWN).cloned().collect());
    ItemCounts {
        total: p.items.len(),
        stale: p.added.len() + p.changed.len(),
        added: p.added.len(),
        changed: p.changed.len(),
        removed: p.removed.len(),
        cached: p.cached.len(),
        examples,
    }
}

/// Which items of a mapped stage are stale, without running anything.
pub fn status(
    project: &Project,
    hasher: &Hasher<'_>,
    pipeline: &str,
    stage: &Stage,
) -> Result<Option<ItemCounts>> {
    let Some(spec) = &stage.map else {
        return Ok(None);
    };
    let p = plan(project, hasher, pipeline, stage, spec)?;
    Ok(Some(counts(&p)))
}

/// What a mapped stage's run needs from the executor.
pub struct MapRun<'a> {
    pub project: &'a Project,
    pub cache: &'a Cache,
    pub stat: &'a StatCache,
    pub pipeline: &'a str,
    /// Items running at once.
    pub jobs: usize,
    /// `run --force`: every item runs, cached or not.
    pub force: bool,
    pub run_id: &'a str,
    pub db: &'a RunDb,
}

/// Runs the stale items of a mapped stage (or its batch), restores cached ones, drops removed
/// ones, writes the manifest and the merged output. Called by the executor in place of
/// running the stage's implementation `imp` once: a command stage runs its command per item,
/// a built-in kind runs `imp` per item, with the item's `with:` and per-item outputs under
/// `out/<pipeline>/<stage>/items/`, and its declared outputs become every item's parts in
/// key order. It returns Ok only when every item succeeded.
pub fn run(
    mr: &MapRun<'_>,
    stage: &Stage,
    imp: &dyn StageImpl,
    input: &StageInput<'_>,
    report: &dyn Reporter,
) -> Result<()> {
    let spec = stage.map.as_ref().context("not a mapped stage")?;
    let work = match &stage.action {
        Action::Cmd { cmd } => Work::Cmd(cmd),
        Action::Builtin { with, .. } => Work::Builtin {
            imp,
            with,
            outs: stage
                .outs
                .iter()
                .map(|(k, o)| (k.as_str(), o.path.as_path()))
                .collect(),
            items_dir: mr
                .project
                .builtin_out_dir(mr.pipeline, &stage.name)
                .join("items"),
        },
    };
    let root = mr.project.root();
    let hasher = Hasher::new(mr.stat);
    let mut p = plan(mr.project, &hasher, mr.pipeline, stage, spec)?;
    if mr.force {
        p.changed.append(&mut p.cached);
        p.changed.sort_unstable();
    }
    let n = counts(&p);
    let mpath = manifest_path(mr.project, mr.pipeline, &stage.name);

    // Removed items: their outputs go, so the output folder matches the items.
    for k in &p.removed {
        if let Some(r) = p.manifest.items.get(k) {
            for o in &r.outs {
                safepath::remove(root, Path::new(&o.path))?;
            }
            // A built-in's item folder goes too (and its parents, once empty), so that
            // `items/` lists the current items only.
            if let Work::Builtin { items_dir, .. } = &work {
                let mut d = items_dir.join(item_dir(spec, k));
                while d.starts_with(items_dir) && d != *items_dir {
                    if fs::remove_dir(root.join(&d)).is_err() {
                        break;
                    }
                    d.pop();
                }
            }
        }
    }
    // Cached items: put back any output that is missing or was edited; an item whose
    // objects are gone from the store runs again.
    let restore_failed: Vec<usize> = p
        .cached
        .par_iter()
        .filter(|&&i| {
            let rec = &p.manifest.items[&p.items[i].key];
            rec.outs.iter().any(|o| {
                let abs = root.join(&o.path);
                let ok = hasher
                    .path(&abs)
                    .map(|h| h.hash() == o.hash)
                    .unwrap_or(false);
                !ok && mr.cache.restore(root, o).is_err()
            })
        })
        .copied()
        .collect();
    let restored_again = restore_failed.len();
    p.cached.retain(|i| !restore_failed.contains(i));
    p.changed.extend(restore_failed);
    p.changed.sort_unstable();

    let mut todo: Vec<usize> = p.added.iter().chain(&p.changed).copied().collect();
    todo.sort_unstable();
    let done: Mutex<Vec<(usize, Vec<OutRecord>)>> = Mutex::new(Vec::new());
    let mut failure: Option<anyhow::Error> = None;

    if spec.batch {
        let Work::Cmd(cmd) = work else {
            bail!("stage {}: 'batch' needs a command", stage.name);
        };
        let res = run_batch(mr, stage, spec, cmd, &p, &todo, input, report);
        match res {
            Ok(recs) => *done.lock().expect("done") = recs,
            Err(e) => failure = Some(e),
        }
    } else if !todo.is_empty() {
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let first_err: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        let workers = mr.jobs.max(1).min(todo.len());
        let started = std::time::Instant::now();
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        if failed.load(Ordering::SeqCst) || report.cancelled() {
                            break;
                        }
                        let j = next.fetch_add(1, Ordering::SeqCst);
                        let Some(&i) = todo.get(j) else { break };
                        match run_item(mr, spec, &work, &p.items[i], input, report) {
                            Ok(recs) => {
                                let mut d = done.lock().expect("done");
                                d.push((i, recs));
                                // The UI adds the share and the ETA: `12/200 (6%) a.png 3.1 items/s`.
                                let rate = d.len() as f64 / started.elapsed().as_secs_f64();
                                report.progress(
                                    d.len() as u64,
                                    Some(todo.len() as u64),
                                    &format!("{} {rate:.1} items/s", p.items[i].key),
                                );
                            }
                            Err(e) => {
                                failed.store(true, Ordering::SeqCst);
                                first_err.lock().expect("err").get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        failure = first_err.into_inner().expect("err");
        if failure.is_none() && report.cancelled() {
            failure = Some(anyhow::anyhow!("cancelled"));
        }
    }

    // The manifest keeps what is true now: cached items, items that just ran; not removed
    // items, nor stale items that did not run (they must run next time).
    let done = done.into_inner().expect("done");
    let ran = done.len();
    let mut m = Manifest {
        format: 1,
        items: BTreeMap::new(),
    };
    let entry_of = |it: &Item| {
        if it.vars.contains_key("path") {
            String::new()
        } else {
            it.entry().to_string()
        }
    };
    for &i in &p.cached {
        let k = &p.items[i].key;
        m.items.insert(k.clone(), p.manifest.items[k].clone());
    }
    for (i, outs) in done {
        let it = &p.items[i];
        m.items.insert(
            it.key.clone(),
            ItemRec {
                fp: p.fps[i].clone(),
                input: it.input.clone(),
                outs,
                entry: entry_of(it),
            },
        );
    }
    let bytes = serde_json::to_vec(&m).context("cannot encode the item manifest")?;
    write_atomic(&mpath, &bytes)?;

    let summary = format!(
        "{}: {ran} of {} items ran, {} cached, {} removed{}",
        stage.name,
        n.total,
        p.cached.len(),
        p.removed.len(),
        if restored_again > 0 {
            format!(" ({restored_again} re-run: their cached outputs were gone)")
        } else {
            String::new()
        }
    );
    report.log(&summary);
    mr.db.event(
        Some(mr.run_id),
        Some(&stage.name),
        "map_items",
        &serde_json::json!({
            "total": n.total, "ran": ran, "cached": p.cached.len(), "added": n.added,
            "changed": n.changed, "removed": n.removed, "failed": usize::from(failure.is_some()),
        })
        .to_string(),
    );
    if let Some(e) = failure {
        return Err(e);
    }
    let recs: Vec<&ItemRec> = p.items.iter().map(|it| &m.items[&it.key]).collect();
    if let Some(merge) = &spec.merge {
        // Every output of every item, in key order.
        let parts = recs.iter().flat_map(|r| &r.outs);
        write_merged(root, merge, parts)?;
    }
    if let Work::Builtin { outs, .. } = &work {
        // Output j of the kind is the j-th part of every item (both in output-key order).
        for (j, (_, dest)) in outs.iter().enumerate() {
            let parts = recs.iter().filter_map(|r| r.outs.get(j));
            write_merged(root, dest, parts)?;
        }
    }
    Ok(())
}

/// `dest` := the files `parts` concatenated, written atomically.
fn write_merged<'r>(
    root: &Path,
    dest: &Path,
    parts: impl Iterator<Item = &'r OutRecord>,
) -> Result<()> {
    let mut out = Vec::new();
    for o in parts {
        if o.kind != OutKind::File {
            bail!("merge needs file outputs; {} is a directory", o.path);
        }
        let b = fs::read(root.join(&o.path)).with_context(|| format!("cannot read {}", o.path))?;
        let ends = b.last().is_none_or(|&c| c == b'\n');
        out.extend(b);
        // Items are records: one that lacks a final newline must not run into the next.
        if !ends {
            out.push(b'\n');
        }
    }
    // The items ran since the stage's outputs were checked: check the path again.
    let dest = safepath::resolve(root, dest, false, safepath::Op::RemoveOrWrite)?;
    write_atomic(&dest, &out)
}

/// Clears an item's outputs and makes their folders.
fn prepare_outs(root: &Path, rels: &[String]) -> Result<()> {
    for r in rels {
        let abs = safepath::resolve(root, Path::new(r), false, safepath::Op::RemoveOrWrite)?;
        remove_path(&abs)?;
        if let Some(d) = abs.parent() {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
    }
    Ok(())
}

fn store_outs(mr: &MapRun<'_>, it: &Item, rels: &[String]) -> Result<Vec<OutRecord>> {
    rels.iter()
        .map(|r| {
            let abs =
                safepath::resolve(mr.project.root(), Path::new(r), true, safepath::Op::Commit)?;
            if !abs.exists() {
                bail!("item {} succeeded but did not write its output {r}", it.key);
            }
            mr.cache.store_output(mr.project.root(), r)
        })
        .collect()
}

fn run_item(
    mr: &MapRun<'_>,
    spec: &MapSpec,
    work: &Work<'_>,
    it: &Item,
    input: &StageInput<'_>,
    report: &dyn Reporter,
) -> Result<Vec<OutRecord>> {
    let rels = item_out_paths(spec, work, it)?;
    prepare_outs(mr.project.root(), &rels)?;
    let mut env = input.env.clone();
    env.insert("TSUMUGI_ITEM_KEY".into(), it.key.clone());
    let root = mr.project.root();
    let res = match work {
        Work::Cmd(cmd) => {
            let outs: BTreeMap<String, PathBuf> =
                rels.iter().map(|r| (r.clone(), root.join(r))).collect();
            let imp = CmdStage {
                cmd: fill(cmd, it, true)?,
            };
            let item_input = StageInput {
                outs: &outs,
                env: &env,
                ..input.clone()
            };
            imp.run(&item_input, report)
        }
        Work::Builtin {
            imp, with, outs, ..
        } => {
            // The kind writes each output key at the item's path for it.
            let outs: BTreeMap<String, PathBuf> = outs
                .iter()
                .zip(&rels)
                .map(|((k, _), r)| (k.to_string(), root.join(r)))
                .collect();
            let with = fill_value(with, it)?;
            let item_input = StageInput {
                with: &with,
                outs: &outs,
                env: &env,
                ..input.clone()
            };
            imp.run(
                &item_input,
                &ItemReporter {
                    inner: report,
                    key: &it.key,
                },
            )
        }
    };
    if let Err(e) = res {
        for r in &rels {
            let _ = safepath::remove(mr.project.root(), Path::new(r));
        }
        return Err(e.context(format!("item {}", it.key)));
    }
    store_outs(mr, it, &rels)
}

#[allow(clippy::too_many_arguments)]
fn run_batch(
    mr: &MapRun<'_>,
    stage: &Stage,
    spec: &MapSpec,
    cmd: &str,
    p: &Plan,
    todo: &[usize],
    input: &StageInput<'_>,
    report: &dyn Reporter,
) -> Result<Vec<(usize, Vec<OutRecord>)>> {
    if cmd.contains("${item.") {
        bail!(
            "stage {}: a batch command gets its items from TSUMUGI_ADDED/CHANGED/REMOVED, not ${{item.…}}",
            stage.name
        );
    }
    if todo.is_empty() && p.removed.is_empty() {
        return Ok(Vec::new());
    }
    let root = mr.project.root();
    let mut rels = Vec::with_capacity(todo.len());
    for &i in todo {
        let r = item_out_paths(spec, &Work::Cmd(cmd), &p.items[i])?;
        prepare_outs(root, &r)?;
        rels.push(r);
    }
    fs::create_dir_all(mr.project.cache_dir())
        .with_context(|| format!("cannot create {}", mr.project.cache_dir().display()))?;
    let dir = tempfile::Builder::new()
        .prefix("map-batch-")
        .tempdir_in(mr.project.cache_dir())
        .context("cannot create the batch lists")?;
    let list = |ix: &[usize]| -> String {
        ix.iter()
            .map(|&i| format!("{}\n", p.items[i].entry()))
            .collect()
    };
    let removed: String = p
        .removed
        .iter()
        .map(|k| {
            let r = &p.manifest.items[k];
            match &spec.source {
                MapSource::Glob { base, .. } if r.entry.is_empty() => {
                    format!("{}/{k}\n", path_str(base))
                }
                _ => format!("{}\n", if r.entry.is_empty() { k } else { &r.entry }),
            }
        })
        .collect();
    let mut env = input.env.clone();
    for (name, text) in [
        ("ADDED", list(&p.added)),
        ("CHANGED", list(&p.changed)),
        ("REMOVED", removed),
    ] {
        let f = dir.path().join(name.to_lowercase());
        fs::write(&f, text).with_context(|| format!("cannot write {}", f.display()))?;
        env.insert(format!("TSUMUGI_{name}"), f.display().to_string());
    }
    let imp = CmdStage {
        cmd: cmd.to_string(),
    };
    imp.run(
        &StageInput {
            env: &env,
            ..input.clone()
        },
        report,
    )?;
    // Storing hashes and copies every output: in parallel, as per-item runs do.
    todo.par_iter()
        .zip(rels)
        .map(|(&i, r)| Ok((i, store_outs(mr, &p.items[i], &r)?)))
        .collect()
}

/// What a built-in kind sees of the stage's reporter while it runs one item: progress is
/// the stage's (items done of total, reported by the map loop), so an item's own
/// "1 of 1 images" would only overwrite it; its log lines are prefixed with the item.
/// Per-item metrics are dropped: a stage-level metric cannot have one value per item.
struct ItemReporter<'a> {
    inner: &'a dyn Reporter,
    key: &'a str,
}

impl Reporter for ItemReporter<'_> {
    fn progress(&self, _done: u64, _total: Option<u64>, _message: &str) {}
    fn metric(&self, _name: &str, _step: Option<u64>, _value: f64) {}
    fn log(&self, line: &str) {
        self.inner.log(&format!("[{}] {line}", self.key));
    }
    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
}
