//! A file-system monitor, so that a no-op `status` need not stat every file of a large
//! input tree (the design of git's `fsmonitor--daemon`, Mercurial with Watchman and
//! Bazel's `--watchfs`).
//!
//! A daemon ([`daemon`], `tsumugi fsmonitor run|start`) watches the project tree with
//! inotify and numbers every change. A client (`status`) asks it "what changed since token
//! T?" over `cache/fsmonitor/sock` and gets a new token and either a list of changed paths
//! or "anything may have changed". A dependency or output whose path was hashed at token T,
//! with no change at, below or above its path since, keeps its hash without a single stat
//! call ([`Session::reuse`]). Hashes are remembered per top-level path (a dep or an output)
//! in `cache/fsmonitor/memo.json`, with the token they are valid at.
//!
//! Correctness rests on three things, each of which falls back to the full stat pass
//! (today's behaviour, and the behaviour without a daemon) when in doubt:
//!
//! - **Synchronisation (cookies).** Before answering, the daemon creates a uniquely named
//!   file in `cache/fsmonitor/cookies/` and waits until its own inotify queue delivers that
//!   file's creation. Events of one inotify instance are queued in order, so every change
//!   finished before the client asked has been counted by then. No cookie event within the
//!   timeout: no answer, full pass.
//! - **Continuity.** A token is `<daemon start id>:<sequence>`. A token of another daemon
//!   (restarted, killed), a token older than a queue overflow or a lost watch, or no
//!   daemon at all (nothing answers on the socket): "anything may have changed".
//! - **What a path's events can say.** A path is trusted only if it lies inside the watched
//!   tree under its own name (no symlink on the way, not under `cache/`, `runs/`, `.git/`)
//!   and, when hashed, held no symlink and no file with other hard links (a change made
//!   through another name is not reported for this one).
//!
//! See `docs/fsmonitor.md` for the user's view and the limits.

#[cfg(target_os = "linux")]
pub mod daemon;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use tsumugi_base::project::Project;

/// Top-level directories of the project that the daemon does not watch: tsumugi's own
/// store and run records (written on every run) and git's.
pub const IGNORED_TOP: &[&str] = &["cache", "runs", ".git"];

/// Above this many changed paths an answer names their parent directories instead (coarser,
/// still conservative: a changed directory invalidates everything at, above and below it).
pub const MAX_ANSWER_PATHS: usize = 20_000;

/// `cache/fsmonitor/`.
pub fn dir(project: &Project) -> PathBuf {
    project.cache_dir().join("fsmonitor")
}
pub fn socket_path(project: &Project) -> PathBuf {
    dir(project).join("sock")
}
pub fn lock_path(project: &Project) -> PathBuf {
    dir(project).join("daemon.lock")
}
pub fn cookie_dir(project: &Project) -> PathBuf {
    dir(project).join("cookies")
}
pub fn memo_path(project: &Project) -> PathBuf {
    dir(project).join("memo.json")
}
pub fn log_path(project: &Project) -> PathBuf {
    dir(project).join("daemon.log")
}

/// Whether the daemon watches `rel` (relative to the project root, `""` being the root).
pub fn is_watched(rel: &Path) -> bool {
    match rel.components().next() {
        None => true,
        Some(Component::Normal(first)) => !IGNORED_TOP.iter().any(|i| first == *i),
        Some(_) => false,
    }
}

/// A request line (JSON) on the socket.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// `query`, `status` or `stop`.
    pub op: String,
    /// For `query`: the token of the caller's last answer (empty: none).
    #[serde(default)]
    pub since: String,
}

/// The answer to a `query`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    /// Changes up to here are covered; pass it as `since` next time.
    pub token: String,
    /// The watched root (canonical).
    pub root: String,
    /// Anything may have changed since `since`: the caller must not trust old hashes.
    pub all: bool,
    /// Why `all` (first query, daemon restarted, queue overflow…).
    #[serde(default)]
    pub reason: String,
    /// Paths (relative to the root) changed since `since`; a directory stands for
    /// everything below it.
    #[serde(default)]
    pub changed: Vec<String>,
}

/// Environment variable: `0`/`off` makes clients ignore a running daemon.
pub const ENV_ENABLE: &str = "TSUMUGI_FSMONITOR";
/// Environment variable: how long a client waits for an answer (milliseconds, default 2000).
pub const ENV_TIMEOUT: &str = "TSUMUGI_FSMONITOR_TIMEOUT_MS";

fn timeout() -> Duration {
    let ms = std::env::var(ENV_TIMEOUT)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000u64);
    Duration::from_millis(ms)
}

/// Sends one request to the project's daemon and reads one JSON line back.
pub fn request(project: &Project, req: &Request, wait: Duration) -> Result<serde_json::Value> {
    let sock = socket_path(project);
    let mut s = UnixStream::connect(&sock)
        .with_context(|| format!("no fsmonitor daemon answers on {}", sock.display()))?;
    s.set_read_timeout(Some(wait))?;
    s.set_write_timeout(Some(wait))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut out = String::new();
    BufReader::new(&s)
        .read_line(&mut out)
        .context("the fsmonitor daemon did not answer in time")?;
    if out.is_empty() {
        bail!("the fsmonitor daemon closed the connection without an answer");
    }
    let v: serde_json::Value = serde_json::from_str(&out).context("bad answer from fsmonitor")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("fsmonitor: {e}");
    }
    Ok(v)
}

/// Hashes remembered per path, valid at `token`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Memo {
    token: String,
    root: String,
    entries: BTreeMap<String, String>,
}

/// One client's use of the daemon's answer, for the life of one `status`.
#[derive(Debug)]
pub struct Session {
    /// The project root as the caller joins paths to it (maybe relative).
    lexical_root: PathBuf,
    /// The canonical root the daemon watches.
    root: PathBuf,
    answer: Answer,
    changed: Vec<PathBuf>,
    old: Memo,
    memo_path: PathBuf,
    /// Hashes to remember at the new token: reused or freshly computed.
    recorded: Mutex<BTreeMap<String, String>>,
    reused: AtomicU64,
    rehashed: AtomicU64,
}

/// What the monitor did for one `status`: shown by `status --json` and `-v`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// A daemon answered and its answer was used.
    pub used: bool,
    /// Why not, or why everything was re-checked (`all`).
    pub reason: String,
    /// The answer was "anything may have changed": a full pass.
    pub full_pass: bool,
    /// Deps and outputs whose hash was reused without a stat.
    pub reused: u64,
    /// Deps and outputs hashed (stat'ed) because of a change, doubt, or no record.
    pub rehashed: u64,
    /// Changed paths in the daemon's answer.
    pub changed_paths: usize,
    /// Files the hasher stat'ed in this process (0 on a no-op status served by the daemon).
    pub files_statted: u64,
}

static LAST_REPORT: Mutex<Option<Report>> = Mutex::new(None);

/// Keeps `report` as the last one of this process (see [`last_report`]).
fn record_report(report: Report) {
    *LAST_REPORT.lock().expect("report") = Some(report);
}

/// Saves what the session learnt (if one was used) and records the [`Report`].
pub fn finish(session: Option<&Session>, reason: Option<String>, files_statted: u64) {
    let mut report = Report {
        reason: reason.unwrap_or_default(),
        files_statted,
        ..Report::default()
    };
    if let Some(s) = session {
        report.used = true;
        report.full_pass = s.answer.all;
        report.reused = s.reused.load(Ordering::Relaxed);
        report.rehashed = s.rehashed.load(Ordering::Relaxed);
        report.changed_paths = s.changed.len();
        if let Err(e) = s.save() {
            tracing::debug!("could not save the fsmonitor memo: {e:#}");
        }
    }
    tracing::debug!(
        "fsmonitor: used {} ({}), {} reused, {} rehashed, {} changed paths, {} files stat'ed",
        report.used,
        report.reason,
        report.reused,
        report.rehashed,
        report.changed_paths,
        report.files_statted
    );
    record_report(report);
}

/// The report of the last [`finish`] in this process.
pub fn last_report() -> Option<Report> {
    LAST_REPORT.lock().expect("report").clone()
}

impl Session {
    /// Why the daemon's answer is "anything may have changed", if it is.
    pub fn full_pass_reason(&self) -> Option<String> {
        self.answer.all.then(|| self.answer.reason.clone())
    }

    /// Queries the daemon. `Err` says why the monitor cannot be used (then: full pass).
    pub fn open(project: &Project) -> std::result::Result<Session, String> {
        if let Ok(v) = std::env::var(ENV_ENABLE)
            && matches!(v.as_str(), "0" | "off" | "false" | "no")
        {
            return Err(format!("{ENV_ENABLE}={v}"));
        }
        let sock = socket_path(project);
        if !sock.exists() {
            return Err("no fsmonitor daemon (tsumugi fsmonitor start)".into());
        }
        let memo_path = memo_path(project);
        let old: Memo = std::fs::read(&memo_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let root = std::fs::canonicalize(project.root()).map_err(|e| e.to_string())?;
        let req = Request {
            op: "query".into(),
            since: old.token.clone(),
        };
        let v = request(project, &req, timeout()).map_err(|e| format!("{e:#}"))?;
        let answer: Answer = serde_json::from_value(v).map_err(|e| e.to_string())?;
        if Path::new(&answer.root) != root {
            return Err(format!(
                "the daemon watches {}, not {}",
                answer.root,
                root.display()
            ));
        }
        let old = if old.root == answer.root {
            old
        } else {
            Memo::default()
        };
        let changed = answer.changed.iter().map(PathBuf::from).collect();
        Ok(Session {
            lexical_root: project.root().to_path_buf(),
            root,
            answer,
            changed,
            old,
            memo_path,
            recorded: Mutex::new(BTreeMap::new()),
            reused: AtomicU64::new(0),
            rehashed: AtomicU64::new(0),
        })
    }

    /// The key under which `abs` may be remembered: its path relative to the root, if the
    /// daemon's events for that path describe it (inside the watched tree, reached without
    /// a symlink, not under an ignored directory). `None`: hash it as usual, every time.
    pub fn key(&self, abs: &Path) -> Option<String> {
        let lexical = abs.strip_prefix(&self.lexical_root).ok()?;
        if lexical
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return None;
        }
        let canon = std::fs::canonicalize(abs).ok()?;
        let rel = canon.strip_prefix(&self.root).ok()?;
        let lexical: PathBuf = lexical
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        if rel.as_os_str().is_empty() || rel != lexical || !is_watched(rel) {
            return None;
        }
        rel.to_str().map(str::to_string)
    }

    /// Whether a change since the old token touches `rel`: at it, below it, or above it.
    fn invalidated(&self, rel: &str) -> bool {
        let rel = Path::new(rel);
        self.changed
            .iter()
            .any(|c| c.starts_with(rel) || rel.starts_with(c))
    }

    /// The remembered hash of `key` if nothing touched it since it was remembered.
    pub fn reuse(&self, key: &str) -> Option<String> {
        if self.answer.all {
            return None;
        }
        let h = self.old.entries.get(key)?;
        if self.invalidated(key) {
            return None;
        }
        self.reused.fetch_add(1, Ordering::Relaxed);
        self.recorded
            .lock()
            .expect("memo")
            .insert(key.to_string(), h.clone());
        Some(h.clone())
    }

    /// A hash computed now for `key` (`trustworthy`: the hashed tree held no symlink and no
    /// multiply linked file). Remembered at the new token if trustworthy.
    pub fn record(&self, key: &str, hash: &str, trustworthy: bool) {
        self.rehashed.fetch_add(1, Ordering::Relaxed);
        let mut rec = self.recorded.lock().expect("memo");
        if trustworthy {
            rec.insert(key.to_string(), hash.to_string());
        } else {
            rec.remove(key);
        }
    }

    /// Writes the memo at the new token, if it says anything the old one did not. Entries
    /// not looked at by this process stay if no change touched them (still valid at the
    /// new token); touched ones go.
    fn save(&self) -> Result<()> {
        let rec = self.recorded.lock().expect("memo");
        let mut entries: BTreeMap<String, String> = if self.answer.all {
            BTreeMap::new()
        } else {
            self.old
                .entries
                .iter()
                .filter(|(k, _)| !self.invalidated(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        entries.extend(rec.iter().map(|(k, v)| (k.clone(), v.clone())));
        if !self.answer.all && self.changed.is_empty() && entries == self.old.entries {
            // Nothing new: the old token still covers every entry; no write, no fsync.
            return Ok(());
        }
        let memo = Memo {
            token: self.answer.token.clone(),
            root: self.answer.root.clone(),
            entries,
        };
        tsumugi_base::atomic::write_atomic(&self.memo_path, &serde_json::to_vec_pretty(&memo)?)
    }

    /// The canonical root the daemon watches.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// `changed` with paths replaced by their parents until at most `max` remain (sorted).
pub fn coarsen(mut changed: Vec<PathBuf>, max: usize) -> Vec<PathBuf> {
    changed.sort();
    changed.dedup();
    while changed.len() > max {
        let mut next: Vec<PathBuf> = changed
            .iter()
            .map(|p| p.parent().map(Path::to_path_buf).unwrap_or_default())
            .collect();
        next.sort();
        next.dedup();
        // Drop paths below another one in the list: the ancestor covers them.
        let mut out: Vec<PathBuf> = Vec::with_capacity(next.len());
        for p in next {
            if out.last().is_some_and(|l: &PathBuf| p.starts_with(l)) {
                continue;
            }
            out.push(p);
        }
        if out.len() == changed.len() {
            break;
        }
        changed = out;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_top_level_directories() {
        assert!(is_watched(Path::new("")));
        assert!(is_watched(Path::new("data/files")));
        assert!(is_watched(Path::new("out/cache")));
        assert!(!is_watched(Path::new("cache/objects")));
        assert!(!is_watched(Path::new("runs")));
        assert!(!is_watched(Path::new(".git/index")));
    }

    #[test]
    fn coarsening_keeps_every_change_covered() {
        let paths: Vec<PathBuf> = (0..50)
            .map(|i| PathBuf::from(format!("d/{}/f{i}", i % 5)))
            .chain([PathBuf::from("top.txt")])
            .collect();
        let c = coarsen(paths.clone(), 10);
        assert!(c.len() <= 10, "{c:?}");
        for p in &paths {
            assert!(
                c.iter().any(|a| p.starts_with(a)),
                "{p:?} not covered by {c:?}"
            );
        }
        // A root-level change coarsens to the root itself: everything.
        let c = coarsen(paths, 1);
        assert_eq!(c, [PathBuf::new()]);
    }
}
