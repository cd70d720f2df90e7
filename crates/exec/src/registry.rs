//! The adapter registry: every exported adapter or model a stage marks with `register:` is
//! kept as a numbered version with its metrics, and one version per name is *current*.
//!
//! On disk, in the project root (git-ignored like `cache/` and `runs/`):
//!
//! ```text
//! adapters/<name>/v1/version.json   what the version is (see [`VersionInfo`])
//! adapters/<name>/v1/<artifact>     a copy of the output (file or directory), same base name
//! adapters/<name>/current -> v1     symlink to the promoted version
//! ```
//!
//! A version directory is built under `adapters/<name>/.tmp.*`, fsynced, and renamed into
//! place, so it exists whole or not at all. The artifact is a copy (a reflink where the file
//! system has them), never a hardlink into the cache, whose objects are read-only and shared.
//! `current` is a relative symlink replaced by rename, so a reader (a server loading
//! `adapters/nli/current/model`) sees the old or the new version, never neither.
//!
//! Versions are keyed by the artifact's content hash (the hash the engine computed for the
//! output): registering an artifact that is already a version of that name does nothing.
//! The run database mirrors the registry (`adapter_versions`) and keeps its history
//! (`adapter_events`); the executor and `tsumugi adapters` write them. The files are the
//! truth for what exists and what is current; the events are the truth for what happened.
//!
//! Callers hold the project lock: two processes never change one registry at once.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use tsumugi_base::atomic::fsync_dir;
use tsumugi_base::project::Project;
use tsumugi_pipeline::{Bound, Gate};

/// The registry directory under the project root.
pub const DIR: &str = "adapters";

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Where a version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The promoted version: `current` points at it.
    Current,
    /// Registered, never promoted (its gate did not pass).
    Candidate,
    /// Was current once; another version is now.
    Retired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Current => "current",
            Status::Candidate => "candidate",
            Status::Retired => "retired",
        }
    }
}

/// How the gate judged a version when it was registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateOutcome {
    /// The gate's metric and bound; `None` without `promote_if`.
    pub metric: Option<String>,
    /// `min` or `max`.
    pub bound: Option<String>,
    pub limit: Option<f64>,
    /// The version's value of the metric.
    pub value: Option<f64>,
    /// The version that was current, and its value, if the comparison was made.
    pub against: Option<u32>,
    pub against_value: Option<f64>,
    pub passed: bool,
    /// One line: why it passed or not.
    pub reason: String,
}

/// `adapters/<name>/v<N>/version.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub name: String,
    pub version: u32,
    /// Content hash of the artifact (SHA-256; a directory's is its manifest's).
    pub hash: String,
    /// The artifact's name inside the version directory (the output's base name).
    pub artifact: String,
    /// The output it was copied from, relative to the project root.
    pub source: String,
    pub pipeline: String,
    pub stage: String,
    pub run_id: Option<String>,
    pub created_at: String,
    /// The numbers of the metrics file (top-level keys only).
    pub metrics: BTreeMap<String, f64>,
    pub metrics_file: Option<String>,
    pub gate: GateOutcome,
    pub status: Status,
}

impl VersionInfo {
    /// `adapters/<name>/v<N>`, relative to the project root.
    pub fn rel_dir(&self) -> String {
        format!("{DIR}/{}/v{}", self.name, self.version)
    }
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A new version, now current.
    Promoted,
    /// A new version, kept as a candidate: the gate did not pass.
    Kept,
    /// The artifact already is a version of this name; nothing new.
    Unchanged,
}

/// The outcome of [`Registry::register`], as `run --json` reports it per stage.
#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    pub name: String,
    pub version: u32,
    pub action: Action,
    pub hash: String,
    /// The version directory, relative to the project root.
    pub path: String,
    /// The current version after the registration.
    pub current: Option<u32>,
    /// The version that was current before (only when a new version was promoted).
    pub previous: Option<u32>,
    pub gate: Option<GateOutcome>,
    /// `v3 promoted (accuracy 0.7520 ≥ 0.6, ≥ v2's 0.7415)`.
    pub message: String,
    /// The new version's record (not serialised: the run database gets it).
    #[serde(skip)]
    pub info: Option<VersionInfo>,
}

/// What to register.
pub struct Request<'a> {
    pub name: &'a str,
    /// The engine's content hash of the artifact.
    pub hash: &'a str,
    /// The output, relative to the project root.
    pub source: &'a Path,
    pub pipeline: &'a str,
    pub stage: &'a str,
    pub run_id: Option<&'a str>,
    pub metrics_file: Option<&'a Path>,
    pub gate: Option<&'a Gate>,
}

pub struct Registry {
    root: PathBuf,
}

/// Whole numbers as integers (`display`), the rest with four decimals as gates are written.
pub fn fmt_value(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 {
        tsumugi_base::metrics_file::display(v, false)
    } else {
        format!("{v:.4}")
    }
}

impl Registry {
    pub fn new(project: &Project) -> Registry {
        Registry {
            root: project.root().to_path_buf(),
        }
    }

    /// `adapters/` (absolute).
    pub fn base(&self) -> PathBuf {
        self.root.join(DIR)
    }

    /// `adapters/<name>` (absolute).
    pub fn dir(&self, name: &str) -> PathBuf {
        self.base().join(name)
    }

    /// Every registry name, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let rd = match fs::read_dir(self.base()) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(e).with_context(|| format!("cannot read {DIR}/")),
        };
        for e in rd {
            let e = e?;
            let n = e.file_name().to_string_lossy().into_owned();
            if !n.starts_with('.') && e.file_type()?.is_dir() {
                names.push(n);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Whether `name` has been registered at all.
    pub fn exists(&self, name: &str) -> bool {
        self.dir(name).is_dir()
    }

    /// The versions of `name`, oldest first (empty for an unknown name).
    pub fn versions(&self, name: &str) -> Result<Vec<VersionInfo>> {
        let dir = self.dir(name);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e?;
            let n = e.file_name().to_string_lossy().into_owned();
            let Some(num) = n.strip_prefix('v').and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if !e.file_type()?.is_dir() {
                continue;
            }
            let p = e.path().join("version.json");
            let text =
                fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
            let info: VersionInfo = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a version record", p.display()))?;
            if info.version != num {
                bail!("{} says version {}, not {num}", p.display(), info.version);
            }
            out.push(info);
        }
        out.sort_by_key(|v| v.version);
        Ok(out)
    }

    /// One version, or an error naming what exists.
    pub fn version(&self, name: &str, version: u32) -> Result<VersionInfo> {
        let all = self.known(name)?;
        let list: Vec<String> = all.iter().map(|v| format!("v{}", v.version)).collect();
        all.into_iter()
            .find(|v| v.version == version)
            .with_context(|| {
                format!(
                    "{name} has no version v{version} (versions: {})",
                    list.join(", ")
                )
            })
    }

    /// The versions of a name that must exist (an error lists the names there are).
    pub fn known(&self, name: &str) -> Result<Vec<VersionInfo>> {
        if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
            bail!("bad adapter registry name {name:?} (expected a name like nli)");
        }
        let v = self.versions(name)?;
        if v.is_empty() {
            let names = self.names()?;
            if names.is_empty() {
                bail!("no adapter registry named {name:?} (nothing has been registered yet)");
            }
            let hint = tsumugi_pipeline::did_you_mean(name, names.iter().map(String::as_str))
                .map(|s| format!("; did you mean {s:?}?"))
                .unwrap_or_default();
            bail!(
                "no adapter registry named {name:?} (names: {}{hint})",
                names.join(", ")
            );
        }
        Ok(v)
    }

    /// The version `current` points at.
    pub fn current(&self, name: &str) -> Result<Option<u32>> {
        let link = self.dir(name).join("current");
        match fs::read_link(&link) {
            Ok(t) => {
                let t = t.to_string_lossy().into_owned();
                let v = t
                    .strip_prefix('v')
                    .and_then(|s| s.parse::<u32>().ok())
                    .with_context(|| {
                        format!("{} points at {t:?}, not a version", link.display())
                    })?;
                Ok(Some(v))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", link.display())),
        }
    }

    /// Registers the artifact at `req.source`: nothing if a version of `req.name` has its
    /// hash; else version N+1, promoted if the gate passes (or there is none).
    pub fn register(&self, req: &Request<'_>) -> Result<Registration> {
        let dir = self.dir(req.name);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        self.remove_temps(&dir);
        let versions = self.versions(req.name)?;
        let current = self.current(req.name)?;
        if let Some(v) = versions.iter().find(|v| v.hash == req.hash) {
            return Ok(Registration {
                name: req.name.to_string(),
                version: v.version,
                action: Action::Unchanged,
                hash: v.hash.clone(),
                path: v.rel_dir(),
                current,
                previous: None,
                gate: None,
                message: format!("unchanged: the artifact is already v{}", v.version),
                info: None,
            });
        }
        let metrics = match req.metrics_file {
            Some(m) => tsumugi_base::metrics_file::read_final(&self.root.join(m))?,
            None => BTreeMap::new(),
        };
        let version = versions.last().map_or(1, |v| v.version + 1);
        let cur_info = current.and_then(|c| versions.iter().find(|v| v.version == c));
        let gate = evaluate_gate(req.gate, &metrics, req.metrics_file, cur_info)?;
        let promote = gate.passed;

        let src = self.root.join(req.source);
        let artifact = req
            .source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("output {} has no file name", req.source.display()))?;
        let info = VersionInfo {
            name: req.name.to_string(),
            version,
            hash: req.hash.to_string(),
            artifact: artifact.clone(),
            source: tsumugi_base::paths::path_str(req.source),
            pipeline: req.pipeline.to_string(),
            stage: req.stage.to_string(),
            run_id: req.run_id.map(str::to_string),
            created_at: tsumugi_base::time::ts(tsumugi_base::time::now()),
            metrics,
            metrics_file: req.metrics_file.map(tsumugi_base::paths::path_str),
            gate: gate.clone(),
            status: if promote {
                Status::Current
            } else {
                Status::Candidate
            },
        };

        // Build the version beside its final place, then rename it in.
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".tmp.v{version}.{}.{n}", std::process::id()));
        let build = (|| -> Result<()> {
            fs::create_dir_all(&tmp)?;
            copy_tree(&src, &tmp.join(&artifact))?;
            write_json_synced(&tmp.join("version.json"), &info)?;
            fsync_dir(&tmp)?;
            let dest = dir.join(format!("v{version}"));
            if dest.exists() {
                bail!("{} already exists", dest.display());
            }
            fs::rename(&tmp, &dest)
                .with_context(|| format!("cannot move the new version to {}", dest.display()))?;
            fsync_dir(&dir)?;
            Ok(())
        })();
        if let Err(e) = build {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e.context(format!(
                "cannot register {} as {}/v{version}",
                req.source.display(),
                req.name
            )));
        }

        let previous = if promote {
            self.point_current(req.name, version, current)?;
            current
        } else {
            None
        };
        let message = if promote {
            format!("v{version} promoted ({})", gate.reason)
        } else {
            format!("v{version} kept, not promoted: {}", gate.reason)
        };
        Ok(Registration {
            name: req.name.to_string(),
            version,
            action: if promote {
                Action::Promoted
            } else {
                Action::Kept
            },
            hash: req.hash.to_string(),
            path: info.rel_dir(),
            current: if promote { Some(version) } else { current },
            previous,
            gate: Some(gate),
            message,
            info: Some(info),
        })
    }

    /// Makes `version` current (manual promotion or rollback); returns the version that
    /// was current. The previous one becomes `retired`.
    pub fn set_current(&self, name: &str, version: u32) -> Result<Option<u32>> {
        self.version(name, version)?;
        let current = self.current(name)?;
        if current != Some(version) {
            self.point_current(name, version, current)?;
        }
        Ok(current)
    }

    /// Points `current` at `version` and updates the statuses in both version records.
    fn point_current(&self, name: &str, version: u32, old: Option<u32>) -> Result<()> {
        let dir = self.dir(name);
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".tmp.current.{}.{n}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("v{version}"), &tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        fs::rename(&tmp, dir.join("current")).with_context(|| {
            let _ = fs::remove_file(&tmp);
            format!("cannot update {}/current", dir.display())
        })?;
        fsync_dir(&dir)?;
        if let Some(o) = old.filter(|o| *o != version) {
            self.set_status(name, o, Status::Retired)?;
        }
        self.set_status(name, version, Status::Current)
    }

    fn set_status(&self, name: &str, version: u32, status: Status) -> Result<()> {
        let p = self.dir(name).join(format!("v{version}/version.json"));
        let text =
            fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let mut info: VersionInfo = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a version record", p.display()))?;
        if info.status == status {
            return Ok(());
        }
        info.status = status;
        let bytes = serde_json::to_vec_pretty(&info)?;
        tsumugi_base::atomic::write_atomic(&p, &bytes)
    }

    /// Leftovers of a registration that crashed (callers hold the project lock, so none is
    /// in progress).
    fn remove_temps(&self, dir: &Path) {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp.") {
                    let _ = tsumugi_base::atomic::remove_path(&e.path());
                }
            }
        }
    }
}

/// Judges a new version. Without a gate it passes. With one, the metric must be in the
/// metrics file; the value must meet the bound and, with `not_worse`, be at least as good
/// as the current version's (when that version has the metric).
pub fn evaluate_gate(
    gate: Option<&Gate>,
    metrics: &BTreeMap<String, f64>,
    file: Option<&Path>,
    current: Option<&VersionInfo>,
) -> Result<GateOutcome> {
    let Some(g) = gate else {
        return Ok(GateOutcome {
            metric: None,
            bound: None,
            limit: None,
            value: None,
            against: None,
            against_value: None,
            passed: true,
            reason: "no gate".into(),
        });
    };
    let shown = file.map_or("(none)".to_string(), |f| f.display().to_string());
    let Some(&value) = metrics.get(&g.metric) else {
        let have: Vec<&str> = metrics.keys().map(String::as_str).collect();
        bail!(
            "metric '{}' is not in the metrics file {shown} (it has: {})",
            g.metric,
            if have.is_empty() {
                "no numbers".to_string()
            } else {
                have.join(", ")
            }
        );
    };
    let (bound_name, limit) = match g.bound {
        Bound::Min(x) => ("min", x),
        Bound::Max(x) => ("max", x),
    };
    let m = &g.metric;
    let v = fmt_value(value);
    let meets = !value.is_nan() && g.bound.at_least_as_good(value, limit);
    let mut ok_parts = Vec::new();
    let mut fail_parts = Vec::new();
    if meets {
        ok_parts.push(format!("{m} {v} {} {limit}", g.bound.ok_sign()));
    } else {
        fail_parts.push(format!(
            "{m} {v} {} {bound_name} {limit}",
            g.bound.fail_sign()
        ));
    }
    let mut against = None;
    let mut against_value = None;
    if g.not_worse
        && let Some(cur) = current
        && let Some(&cv) = cur.metrics.get(m)
    {
        against = Some(cur.version);
        against_value = Some(cv);
        if g.bound.at_least_as_good(value, cv) {
            ok_parts.push(format!(
                "{} v{}'s {}",
                g.bound.ok_sign(),
                cur.version,
                fmt_value(cv)
            ));
        } else if meets {
            fail_parts.push(format!(
                "{m} {v} {} current v{}'s {}",
                g.bound.fail_sign(),
                cur.version,
                fmt_value(cv)
            ));
        } else {
            fail_parts.push(format!(
                "and {} current v{}'s {}",
                g.bound.fail_sign(),
                cur.version,
                fmt_value(cv)
            ));
        }
    }
    let passed = fail_parts.is_empty();
    let reason = if passed {
        ok_parts.join(", ")
    } else {
        fail_parts.join(" ")
    };
    Ok(GateOutcome {
        metric: Some(m.clone()),
        bound: Some(bound_name.into()),
        limit: Some(limit),
        value: Some(value),
        against,
        against_value,
        passed,
        reason,
    })
}

fn write_json_synced(p: &Path, v: &impl Serialize) -> Result<()> {
    use std::io::Write;
    let mut f = File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
    f.write_all(&serde_json::to_vec_pretty(v)?)?;
    f.sync_all()?;
    Ok(())
}

/// Copies a file or directory tree (following symlinks, as the cache does), each file by
/// reflink where possible, else by bytes; fsyncs what it wrote. Files are made writable
/// (0644, or 0755 if executable): a restored output may be a read-only (0444) copy of a cache object.
fn copy_tree(src: &Path, dest: &Path) -> Result<()> {
    let md = fs::metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
    if md.is_file() {
        return copy_file(src, dest, md.permissions().mode() & 0o111 != 0);
    }
    if !md.is_dir() {
        bail!("{} is neither a file nor a directory", src.display());
    }
    let mut dirs = Vec::new();
    for e in walkdir::WalkDir::new(src).follow_links(true) {
        let e = e.with_context(|| format!("cannot walk {}", src.display()))?;
        let rel = e.path().strip_prefix(src).expect("under the root");
        let to = dest.join(rel);
        if e.file_type().is_dir() {
            fs::create_dir_all(&to).with_context(|| format!("cannot create {}", to.display()))?;
            dirs.push(to);
        } else if e.file_type().is_file() {
            let exec = e.metadata()?.permissions().mode() & 0o111 != 0;
            copy_file(e.path(), &to, exec)?;
        }
    }
    for d in dirs.iter().rev() {
        fsync_dir(d)?;
    }
    Ok(())
}

fn copy_file(src: &Path, dest: &Path, exec: bool) -> Result<()> {
    let what = || format!("cannot copy {} to {}", src.display(), dest.display());
    let from = File::open(src).with_context(what)?;
    let mut to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .with_context(what)?;
    if tsumugi_base::atomic::reflink(&from, &to).is_err() {
        let mut from = from;
        io::copy(&mut from, &mut to).with_context(what)?;
    }
    to.set_permissions(fs::Permissions::from_mode(if exec { 0o755 } else { 0o644 }))?;
    to.sync_all().with_context(what)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(bound: Bound, not_worse: bool) -> Gate {
        Gate {
            metric: "accuracy".into(),
            bound,
            not_worse,
        }
    }

    fn version(v: u32, acc: f64) -> VersionInfo {
        VersionInfo {
            name: "nli".into(),
            version: v,
            hash: "h".into(),
            artifact: "model".into(),
            source: "out/model".into(),
            pipeline: "p".into(),
            stage: "export".into(),
            run_id: None,
            created_at: String::new(),
            metrics: [("accuracy".to_string(), acc)].into(),
            metrics_file: None,
            gate: evaluate_gate(None, &BTreeMap::new(), None, None).unwrap(),
            status: Status::Current,
        }
    }

    #[test]
    fn gate_messages_name_metric_values_and_versions() {
        let m: BTreeMap<String, f64> = [("accuracy".to_string(), 0.752)].into();
        let f = Path::new("m.json");
        let g = gate(Bound::Min(0.6), true);
        let cur = version(2, 0.7415);
        let o = evaluate_gate(Some(&g), &m, Some(f), Some(&cur)).unwrap();
        assert!(o.passed);
        assert_eq!(o.reason, "accuracy 0.7520 ≥ 0.6, ≥ v2's 0.7415");

        let worse: BTreeMap<String, f64> = [("accuracy".to_string(), 0.7012)].into();
        let o = evaluate_gate(Some(&g), &worse, Some(f), Some(&cur)).unwrap();
        assert!(!o.passed);
        assert_eq!(o.reason, "accuracy 0.7012 < current v2's 0.7415");

        let low: BTreeMap<String, f64> = [("accuracy".to_string(), 0.5)].into();
        let o = evaluate_gate(Some(&g), &low, Some(f), None).unwrap();
        assert_eq!(
            (o.passed, o.reason.as_str()),
            (false, "accuracy 0.5000 < min 0.6")
        );

        // Lower is better.
        let g = gate(Bound::Max(0.3), true);
        let o = evaluate_gate(Some(&g), &low, Some(f), None).unwrap();
        assert_eq!(
            (o.passed, o.reason.as_str()),
            (false, "accuracy 0.5000 > max 0.3")
        );

        // Not compared with the current version when not_worse is false.
        let g = gate(Bound::Min(0.6), false);
        let o = evaluate_gate(Some(&g), &worse, Some(f), Some(&cur)).unwrap();
        assert_eq!(
            (o.passed, o.reason.as_str()),
            (true, "accuracy 0.7012 ≥ 0.6")
        );

        let e = evaluate_gate(Some(&g), &BTreeMap::new(), Some(f), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "metric 'accuracy' is not in the metrics file m.json (it has: no numbers)"
        );
    }
}
