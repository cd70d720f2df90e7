//! The model versions: the one serving, loading a new one beside it, the swap, and
//! following the registry.
//!
//! The serving version is an `Arc<Version>` behind a lock that is held only to clone or to
//! replace the pointer. A load builds the whole new [`Scorer`] first (seconds, no lock
//! held but the load mutex that keeps two loads from racing), then swaps; a request that
//! took the old `Arc` finishes on it. A failed load changes nothing but `last_error`.
//!
//! What a directory is decides how it is loaded: `adapter_config.json` marks a PEFT adapter
//! (merged into the base model's weights at load, so it scores at the base's speed);
//! `config.json` a full model (an `export` with `merge: true`), served instead of the base.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tsumugi_base::project::Project;
use tsumugi_exec::registry::Registry;
use tsumugi_stages::device::DeviceSpec;
use tsumugi_stages::score::{ScoreOptions, Scorer};

use crate::api::{ApiError, LoadTarget};
use crate::metrics::Metrics;

/// What sits on the base model.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterInfo {
    /// `registry` or `path`.
    pub source: &'static str,
    pub name: Option<String>,
    pub version: Option<u32>,
    /// The directory loaded.
    pub path: String,
    /// `peft` (merged into the base at load) or `model` (a full checkpoint).
    pub kind: &'static str,
    /// The registry's content hash of the artifact.
    pub hash: Option<String>,
    /// The registry version's metrics.
    pub metrics: BTreeMap<String, f64>,
}

/// A loaded model: the base, or the base with an adapter, or a full exported model.
pub struct Version {
    pub scorer: Scorer,
    pub adapter: Option<AdapterInfo>,
    pub loaded_at: String,
}

impl Version {
    /// `{"name": …, "version": …}` of a registry adapter, for responses; null otherwise.
    pub fn brief(&self) -> Value {
        match &self.adapter {
            None => Value::Null,
            Some(a) => json!({"name": a.name, "version": a.version, "path": a.path}),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct LoadFailure {
    at: String,
    /// What was asked for: `nli v3` or a path.
    target: String,
    message: String,
}

#[derive(Default)]
struct SwapState {
    following: Option<String>,
    last_error: Option<LoadFailure>,
    swaps: u64,
}

pub struct Engine {
    base: PathBuf,
    device: DeviceSpec,
    options: ScoreOptions,
    project: Project,
    /// Canonical adapter roots: a load by path must resolve inside one.
    roots: Vec<PathBuf>,
    current: RwLock<Arc<Version>>,
    /// One load at a time (a follow switch and a manual load must not interleave).
    loading: Mutex<()>,
    state: Mutex<SwapState>,
    metrics: Arc<Metrics>,
}

fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Loads the base model (with `adapter` if given: a directory, trusted as the operator's
    /// own command line) and is ready to serve.
    pub fn start(
        base: PathBuf,
        adapter: Option<PathBuf>,
        device: DeviceSpec,
        options: ScoreOptions,
        project: Project,
        roots: Vec<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Engine> {
        let mut canonical = Vec::new();
        for r in roots {
            canonical.push(
                r.canonicalize()
                    .map_err(|e| anyhow::anyhow!("--adapter-root {}: {e}", r.display()))?,
            );
        }
        let first = load_dir(&base, adapter.as_deref(), device, options, None)?;
        let first = Arc::new(first);
        Ok(Engine {
            base,
            device,
            options,
            project,
            roots: canonical,
            current: RwLock::new(first),
            loading: Mutex::new(()),
            state: Mutex::new(SwapState::default()),
            metrics,
        })
    }

    /// The version serving now; a request keeps it until it is answered.
    pub fn current(&self) -> Arc<Version> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn swap(&self, v: Version) -> Arc<Version> {
        let v = Arc::new(v);
        let registry = v
            .adapter
            .as_ref()
            .and_then(|a| Some((a.name.clone()?, a.version?)));
        // The lock is held for the pointer store only; the old version is dropped after
        // it is released, when its last request lets go of it.
        let old = {
            let mut g = self.current.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *g, v.clone())
        };
        drop(old);
        lock(&self.state).swaps += 1;
        self.metrics.swapped(registry);
        v
    }

    /// Loads `target` beside the serving version and swaps it in. A manual load stops
    /// following the registry unless it asks to follow.
    pub fn load(&self, target: &LoadTarget) -> Result<Arc<Version>, ApiError> {
        let _one = lock(&self.loading);
        // A request naming nothing loadable is the client's error, not a failed load:
        // it leaves status and the failure count alone.
        let (dir, info) = self.resolve(target)?;
        let result = load_dir(&self.base, Some(&dir), self.device, self.options, info)
            .map_err(|e| ApiError::invalid(format!("{}: {e:#}", dir.display())));
        match result {
            Ok(v) => {
                let v = self.swap(v);
                let mut st = lock(&self.state);
                st.following = match target {
                    LoadTarget::Registry {
                        name, follow: true, ..
                    } => Some(name.clone()),
                    _ => None,
                };
                st.last_error = None;
                tracing::info!("serving {}", describe(&v));
                Ok(v)
            }
            Err(e) => {
                self.failed(&target_text(target), &e.message);
                Err(e)
            }
        }
    }

    /// Back to the base model alone; stops following.
    pub fn unload(&self) -> Arc<Version> {
        let _one = lock(&self.loading);
        let cur = self.current();
        let mut st = lock(&self.state);
        st.following = None;
        drop(st);
        if cur.adapter.is_none() {
            return cur;
        }
        match load_dir(&self.base, None, self.device, self.options, None) {
            Ok(v) => self.swap(v),
            // The base loaded at start; failing now (a file removed under us) keeps serving.
            Err(e) => {
                self.failed("unload", &format!("{e:#}"));
                cur
            }
        }
    }

    fn failed(&self, target: &str, message: &str) {
        tracing::error!("loading {target} failed, the serving version stays: {message}");
        self.metrics.load_failed();
        lock(&self.state).last_error = Some(LoadFailure {
            at: now(),
            target: target.to_string(),
            message: message.to_string(),
        });
    }

    /// The directory of `target` and what is known of it; 404 for an unknown name or
    /// version, 403 for a path outside the adapter roots.
    fn resolve(&self, target: &LoadTarget) -> Result<(PathBuf, Option<AdapterInfo>), ApiError> {
        match target {
            LoadTarget::Registry { name, version, .. } => {
                let reg = Registry::new(&self.project);
                if !valid_name(name) {
                    return Err(ApiError::invalid(format!(
                        "name {name:?}: a registry name has only letters, digits, '_', '-', '.'"
                    )));
                }
                if !reg.exists(name) {
                    return Err(ApiError::new(
                        404,
                        format!("no adapter named {name:?} in {}", reg.base().display()),
                    ));
                }
                let v = match version {
                    Some(v) => *v,
                    None => reg
                        .current(name)
                        .map_err(|e| ApiError::new(500, format!("{e:#}")))?
                        .ok_or_else(|| {
                            ApiError::new(404, format!("{name} has no current version"))
                        })?,
                };
                let info = reg
                    .version(name, v)
                    .map_err(|e| ApiError::new(404, format!("{e:#}")))?;
                let dir = self
                    .project
                    .root()
                    .join(info.rel_dir())
                    .join(&info.artifact);
                Ok((
                    dir.clone(),
                    Some(AdapterInfo {
                        source: "registry",
                        name: Some(name.clone()),
                        version: Some(v),
                        path: dir.display().to_string(),
                        kind: "peft",
                        hash: Some(info.hash),
                        metrics: info.metrics,
                    }),
                ))
            }
            LoadTarget::Path(p) => {
                let dir = self.inside_roots(p)?;
                Ok((
                    dir.clone(),
                    Some(AdapterInfo {
                        source: "path",
                        name: None,
                        version: None,
                        path: dir.display().to_string(),
                        kind: "peft",
                        hash: None,
                        metrics: BTreeMap::new(),
                    }),
                ))
            }
        }
    }

    /// `p` (absolute, or relative to an adapter root) resolved with symlinks, if it lies
    /// inside a root: a load request can never name an arbitrary file.
    fn inside_roots(&self, p: &str) -> Result<PathBuf, ApiError> {
        if self.roots.is_empty() {
            return Err(ApiError::new(
                403,
                "loading by path is off: start the server with --adapter-root DIR",
            ));
        }
        let given = Path::new(p);
        let candidates: Vec<PathBuf> = if given.is_absolute() {
            vec![given.to_path_buf()]
        } else {
            self.roots.iter().map(|r| r.join(given)).collect()
        };
        let mut outside = false;
        for c in candidates {
            let Ok(real) = c.canonicalize() else { continue };
            if self.roots.iter().any(|r| real.starts_with(r)) {
                return Ok(real);
            }
            outside = true;
        }
        let roots = self
            .roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if outside {
            Err(ApiError::new(
                403,
                format!("{p}: outside the adapter roots ({roots})"),
            ))
        } else {
            Err(ApiError::new(
                404,
                format!("{p}: no such directory in the adapter roots ({roots})"),
            ))
        }
    }

    /// Polls `adapters/<name>/current` (a readlink, cheap) every `every`, and loads the
    /// version it points to when it changes, until `stop` says so. A version that fails
    /// to load is not retried until the link moves again.
    pub fn follow(&self, every: Duration, stop: &dyn Fn() -> bool) {
        let mut seen: Option<(String, PathBuf)> = None;
        while !stop() {
            let following = lock(&self.state).following.clone();
            if let Some(name) = following {
                let link = Registry::new(&self.project).dir(&name).join("current");
                if let Ok(target) = std::fs::read_link(&link) {
                    let key = (name.clone(), target.clone());
                    let serving = self.current();
                    let serving_this = serving.adapter.as_ref().is_some_and(|a| {
                        a.name.as_deref() == Some(&name)
                            && Some(format!("v{}", a.version.unwrap_or(0)))
                                == target.to_str().map(str::to_string)
                    });
                    let version = target
                        .to_str()
                        .and_then(|t| t.strip_prefix('v'))
                        .and_then(|n| n.parse::<u32>().ok());
                    if seen.as_ref() != Some(&key)
                        && !serving_this
                        && let Some(v) = version
                    {
                        // A failure is recorded in status; `seen` keeps it from repeating.
                        let _ = self.load(&LoadTarget::Registry {
                            name: name.clone(),
                            version: Some(v),
                            follow: true,
                        });
                    }
                    seen = Some(key);
                }
            } else {
                seen = None;
            }
            std::thread::sleep(every);
        }
    }

    /// `GET {prefix}/adapter/status`.
    pub fn status(&self) -> Value {
        let v = self.current();
        let st = lock(&self.state);
        json!({
            "base_model": self.base.display().to_string(),
            "device": self.device.to_string(),
            "num_labels": v.scorer.num_labels(),
            "adapter": v.adapter,
            "loaded_at": v.loaded_at,
            "following": st.following,
            "swaps": st.swaps,
            "last_error": st.last_error,
            "adapter_roots": self.roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>(),
        })
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n != "."
        && n != ".."
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn target_text(t: &LoadTarget) -> String {
    match t {
        LoadTarget::Registry {
            name,
            version: Some(v),
            ..
        } => format!("{name} v{v}"),
        LoadTarget::Registry { name, .. } => format!("{name} (current)"),
        LoadTarget::Path(p) => p.clone(),
    }
}

fn describe(v: &Version) -> String {
    match &v.adapter {
        None => "the base model".into(),
        Some(a) => match (&a.name, a.version) {
            (Some(n), Some(ver)) => format!("{n} v{ver} ({})", a.path),
            _ => a.path.clone(),
        },
    }
}

/// Loads `base` alone, or `adapter` on it (a PEFT adapter directory), or `adapter` as the
/// whole model (a directory with `config.json`).
fn load_dir(
    base: &Path,
    adapter: Option<&Path>,
    device: DeviceSpec,
    options: ScoreOptions,
    info: Option<AdapterInfo>,
) -> anyhow::Result<Version> {
    let (scorer, kind) = match adapter {
        None => (Scorer::load(base, device, options)?, None),
        Some(dir) if dir.join("adapter_config.json").is_file() => (
            Scorer::load_with_adapter(base, Some(dir), device, options)?,
            Some("peft"),
        ),
        Some(dir) if dir.join("config.json").is_file() => {
            (Scorer::load(dir, device, options)?, Some("model"))
        }
        Some(dir) if dir.is_dir() => anyhow::bail!(
            "neither a PEFT adapter (adapter_config.json) nor a model directory (config.json)"
        ),
        Some(dir) => anyhow::bail!("{}: not a directory", dir.display()),
    };
    let adapter = match (adapter, kind) {
        (Some(dir), Some(kind)) => {
            let mut a = info.unwrap_or(AdapterInfo {
                source: "path",
                name: None,
                version: None,
                path: dir.display().to_string(),
                kind,
                hash: None,
                metrics: BTreeMap::new(),
            });
            a.kind = kind;
            Some(a)
        }
        _ => None,
    };
    Ok(Version {
        scorer,
        adapter,
        loaded_at: now(),
    })
}
