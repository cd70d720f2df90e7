//! Shared helpers for the trigger tests: temporary projects and a runner that really runs a
//! process per run.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use chrono::{DateTime, Utc};
use tsumugi::project::Project;
use tsumugi::spec::{self, Pipeline};
use tsumugi::trigger::clock::ManualClock;
use tsumugi::trigger::{PipelineRunner, RunOutcome, RunRequest};

pub fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A temporary project with `files` (path, contents) written into it.
pub fn project(files: &[(&str, &str)]) -> (tempfile::TempDir, Project) {
    let d = tempfile::tempdir().unwrap();
    for (p, c) in files {
        let path = d.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, c).unwrap();
    }
    let pr = Project::new(d.path());
    (d, pr)
}

pub fn load(pr: &Project, file: &str) -> Pipeline {
    spec::load(Path::new(file), pr).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `sh -c` once per run, appending a line to `runs.log` in the project: the count of
/// runs is observable on disk, not only in memory. Tracks how many runs are in flight at
/// once, and can let (manual) time pass during a run, fail, or refuse to start.
#[derive(Clone)]
pub struct ProcessRunner {
    pub root: PathBuf,
    pub requests: Arc<Mutex<Vec<RunRequest>>>,
    in_flight: Arc<AtomicUsize>,
    pub max_in_flight: Arc<AtomicUsize>,
    /// Exit code 1: the run fails.
    pub fail: Arc<AtomicBool>,
    /// Return an error: the run cannot start.
    pub refuse: Arc<AtomicBool>,
    /// Time that passes during each run.
    pub run_takes: Option<(ManualClock, chrono::Duration)>,
    /// Real seconds each run's process takes (`sleep`), for tests of changes during a run.
    pub sleep_secs: f64,
    /// Sent the number of runs so far when a run starts.
    pub started: Option<tokio::sync::mpsc::UnboundedSender<usize>>,
    /// Sent the number of runs so far after each run.
    pub done: Option<tokio::sync::mpsc::UnboundedSender<usize>>,
}

impl ProcessRunner {
    pub fn new(root: &Path) -> Self {
        ProcessRunner {
            root: root.to_path_buf(),
            requests: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
            fail: Arc::default(),
            refuse: Arc::default(),
            run_takes: None,
            sleep_secs: 0.0,
            started: None,
            done: None,
        }
    }

    /// Lines in runs.log: how many runs really executed.
    pub fn runs_on_disk(&self) -> usize {
        std::fs::read_to_string(self.root.join("runs.log"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    pub fn calls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl PipelineRunner for ProcessRunner {
    async fn run(&self, request: RunRequest) -> Result<RunOutcome> {
        let n = {
            let mut r = self.requests.lock().unwrap();
            r.push(request.clone());
            r.len()
        };
        if self.refuse.load(Ordering::SeqCst) {
            anyhow::bail!("the project is locked by pid 1 (a test)");
        }
        if let Some(tx) = &self.started {
            let _ = tx.send(n);
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let code = if self.fail.load(Ordering::SeqCst) {
            1
        } else {
            0
        };
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "sleep {}; echo \"run {n}: $REASON\" >> runs.log; exit {code}",
                self.sleep_secs
            ))
            .env("REASON", &request.reason)
            .current_dir(&self.root)
            .status()
            .await?;
        if let Some((clock, d)) = &self.run_takes {
            clock.advance(*d);
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(tx) = &self.done {
            let _ = tx.send(n);
        }
        Ok(RunOutcome {
            run_id: format!("test-{n}"),
            success: status.success(),
            succeeded: if status.success() {
                vec!["all".into()]
            } else {
                vec![]
            },
            failed: if status.success() {
                vec![]
            } else {
                vec!["all".into()]
            },
        })
    }
}

/// Event rows (kind, message) recorded in the project's run database.
pub fn events(pr: &Project) -> Vec<(String, String)> {
    let Some(conn) = tsumugi::rundb::open_read(pr).unwrap() else {
        return vec![];
    };
    let mut st = conn
        .prepare("SELECT kind, message FROM events ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

pub fn kinds(pr: &Project) -> Vec<String> {
    events(pr).into_iter().map(|(k, _)| k).collect()
}
