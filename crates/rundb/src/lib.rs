//! The run database, `runs/tsumugi.db`: SQLite (bundled) in WAL mode with
//! synchronous=FULL, so a committed row survives a crash or power loss.
//!
//! All writes of a process go through one writer thread ([`RunDb`]), fed by a channel:
//! the executor never blocks on SQLite, and there is one connection that writes. Between
//! processes the project lock (see `tsumugi_base::lock`) keeps writers apart; `busy_timeout`
//! covers the short overlap of readers and a checkpoint, so users never see
//! "database is locked".

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use tsumugi_base::project::Project;

pub mod browse;
pub mod experiments;
pub mod identity;

/// Schema migrations, in order; `schema_version` holds how many have been applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    pipeline TEXT NOT NULL,
    pipeline_file TEXT NOT NULL,
    trigger TEXT NOT NULL,
    targets TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    status TEXT NOT NULL,
    pid INTEGER NOT NULL
);
CREATE INDEX runs_pipeline ON runs(pipeline, seq);
CREATE TABLE stage_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(id),
    stage TEXT NOT NULL,
    status TEXT NOT NULL,
    fingerprint TEXT,
    started_at TEXT,
    ended_at TEXT,
    duration_ms INTEGER,
    exit_code INTEGER,
    log_path TEXT,
    attempt INTEGER NOT NULL DEFAULT 1,
    message TEXT,
    UNIQUE(run_id, stage)
);
CREATE INDEX stage_runs_stage ON stage_runs(stage, status);
CREATE TABLE metrics (
    run_id TEXT NOT NULL REFERENCES runs(id),
    stage TEXT NOT NULL,
    name TEXT NOT NULL,
    step INTEGER,
    value REAL NOT NULL
);
CREATE INDEX metrics_run ON metrics(run_id);
CREATE TABLE artifacts (
    run_id TEXT NOT NULL REFERENCES runs(id),
    stage TEXT NOT NULL,
    out_key TEXT NOT NULL,
    path TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX artifacts_run ON artifacts(run_id);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    run_id TEXT,
    stage TEXT,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
-- The event log is append-only.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
"#,
    // 2: the adapter registry (src/registry.rs): its versions, and what happened to them.
    r#"
CREATE TABLE adapter_versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    hash TEXT NOT NULL,
    path TEXT NOT NULL,
    metrics TEXT NOT NULL,
    run_id TEXT,
    pipeline TEXT,
    stage TEXT,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE adapter_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    run_id TEXT
);
CREATE INDEX adapter_events_name ON adapter_events(name, id);
CREATE TRIGGER adapter_events_no_update BEFORE UPDATE ON adapter_events BEGIN SELECT RAISE(ABORT, 'adapter events are append-only'); END;
CREATE TRIGGER adapter_events_no_delete BEFORE DELETE ON adapter_events BEGIN SELECT RAISE(ABORT, 'adapter events are append-only'); END;
"#,
    // 3: experiments (`runs.exp`, `runs.overrides`), params per stage, the queue.
    experiments::MIGRATION,
    // 4: indexes for `tsumugi ui`'s pages (browse.rs): the run list in run order and by
    // status without a sort of the whole table, and a run's final metrics (sort by metric,
    // the metric columns of a page) without reading its per-step series.
    r#"
CREATE INDEX IF NOT EXISTS runs_seq ON runs(seq);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status, seq);
CREATE INDEX IF NOT EXISTS metrics_final ON metrics(run_id, stage, name) WHERE step IS NULL;
"#,
];

pub use tsumugi_base::time::{now, ts};

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(Duration::from_secs(60))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Opens (creating and migrating) the database for reading and writing.
pub fn open(path: &Path) -> Result<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut conn = Connection::open(path)
        .with_context(|| format!("cannot open run database {}", path.display()))?;
    configure(&conn)
        .with_context(|| format!("cannot configure run database {}", path.display()))?;
    migrate(&mut conn)
        .with_context(|| format!("cannot migrate run database {}", path.display()))?;
    Ok(conn)
}

/// Opens for reading; `None` when there is no database yet (nothing has run).
pub fn open_read(project: &Project) -> Result<Option<Connection>> {
    let path = project.db_path();
    if !path.exists() {
        crate::identity::check_read(project, None)?;
        return Ok(None);
    }
    let conn = open(&path).map_err(|e| crate::identity::damaged(project, e))?;
    crate::identity::check_read(project, Some(&conn))
        .map_err(|e| crate::identity::damaged(project, e))?;
    Ok(Some(conn))
}

fn schema_version(conn: &Connection) -> Result<usize> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        return Ok(0);
    }
    let v: Option<i64> =
        conn.query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))?;
    Ok(v.unwrap_or(0) as usize)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    // Readers (status, runs, show) must not take the write lock when nothing is to migrate.
    if schema_version(conn)? == MIGRATIONS.len() {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let v: Option<i64> =
        tx.query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))?;
    let v = v.unwrap_or(0) as usize;
    if v > MIGRATIONS.len() {
        bail!(
            "the run database has schema version {v}, newer than this tsumugi knows ({})",
            MIGRATIONS.len()
        );
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(v) {
        tx.execute_batch(m)?;
        tx.execute(
            "INSERT INTO schema_version(version) VALUES (?1)",
            [i as i64 + 1],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// One stage's final record in a run.
#[derive(Debug, Clone, Serialize)]
pub struct StageRecord {
    pub stage: String,
    pub status: String,
    pub fingerprint: Option<String>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub exit_code: Option<i32>,
    pub log_path: Option<String>,
    pub attempt: u32,
    pub message: Option<String>,
}

/// A metric as recorded: the same value a metrics file holds.
pub use tsumugi_base::metrics_file::Metric as MetricRow;

enum Msg {
    BeginRun {
        id: String,
        pipeline: String,
        file: String,
        trigger: String,
        targets: String,
        at: String,
    },
    StageStarted {
        run: String,
        stage: String,
        at: String,
        log: Option<String>,
        attempt: u32,
    },
    StageFinished {
        run: String,
        rec: StageRecord,
    },
    Metrics {
        run: String,
        stage: String,
        rows: Vec<MetricRow>,
    },
    Artifact {
        run: String,
        stage: String,
        key: String,
        path: String,
        hash: String,
    },
    Event {
        run: Option<String>,
        stage: Option<String>,
        kind: String,
        message: String,
    },
    EndRun {
        id: String,
        status: String,
        at: String,
    },
    AdapterVersion(AdapterVersionRow),
    AdapterStatus {
        name: String,
        version: u32,
        status: String,
    },
    AdapterEvent {
        name: String,
        version: u32,
        action: String,
        reason: String,
        run: Option<String>,
    },
    RunParams {
        run: String,
        p: experiments::RunParams,
    },
    Flush(mpsc::Sender<()>),
}

/// A row of `adapter_versions`.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterVersionRow {
    pub name: String,
    pub version: u32,
    pub hash: String,
    pub path: String,
    /// JSON object of the version's metrics.
    pub metrics: String,
    pub run_id: Option<String>,
    pub pipeline: Option<String>,
    pub stage: Option<String>,
    pub created_at: String,
    /// current | candidate | retired
    pub status: String,
}

/// A row of `adapter_events`.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterEventRow {
    pub id: i64,
    pub at: String,
    pub name: String,
    pub version: u32,
    /// registered | promoted | kept | rollback | manual_promote
    pub action: String,
    pub reason: String,
    pub run_id: Option<String>,
}

/// The single writer: a dedicated thread owning the write connection.
pub struct RunDb {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<Result<()>>>,
    path: PathBuf,
}

impl RunDb {
    /// Opens the database and starts the writer thread. Runs left `running` by a process
    /// that died (SIGKILL, power loss) are closed as `interrupted`; call this only while
    /// holding the project lock, which proves no other run is live.
    pub fn start(project: &Project) -> Result<RunDb> {
        let path = project.db_path();
        let conn = open(&path).map_err(|e| crate::identity::damaged(project, e))?;
        let at = ts(now());
        // A database that is not the one the cache goes with is said, then adopted.
        if let Some(lost) = crate::identity::adopt(project, &conn)
            .map_err(|e| crate::identity::damaged(project, e))?
        {
            conn.execute(
                "INSERT INTO events(at, kind, message) VALUES (?1, 'history_lost', ?2)",
                params![at, lost],
            )?;
        }
        // An experiment's workspace runs beside its siblings: their runs are live.
        if !project.is_workspace() {
            conn.execute(
                "UPDATE stage_runs SET status = 'cancelled', ended_at = ?1, message = 'tsumugi was killed while this stage ran' WHERE status = 'running'",
                [&at],
            )?;
            conn.execute(
                "UPDATE runs SET status = 'interrupted', ended_at = ?1 WHERE status = 'running'",
                [&at],
            )?;
        }
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread = std::thread::Builder::new()
            .name("tsumugi-rundb".into())
            .spawn(move || writer(conn, rx))?;
        Ok(RunDb {
            tx: Some(tx),
            thread: Some(thread),
            path,
        })
    }

    fn send(&self, m: Msg) {
        if let Some(tx) = &self.tx {
            // A send fails only if the writer died; its error surfaces from `close`.
            let _ = tx.send(m);
        }
    }

    pub fn begin_run(
        &self,
        id: &str,
        pipeline: &str,
        file: &str,
        trigger: &str,
        targets: &[String],
    ) {
        self.send(Msg::BeginRun {
            id: id.into(),
            pipeline: pipeline.into(),
            file: file.into(),
            trigger: trigger.into(),
            targets: targets.join(" "),
            at: ts(now()),
        });
    }

    pub fn stage_started(&self, run: &str, stage: &str, log: Option<&Path>, attempt: u32) {
        self.send(Msg::StageStarted {
            run: run.into(),
            stage: stage.into(),
            at: ts(now()),
            log: log.map(|p| p.display().to_string()),
            attempt,
        });
    }

    pub fn stage_finished(&self, run: &str, rec: StageRecord) {
        self.send(Msg::StageFinished {
            run: run.into(),
            rec,
        });
    }

    pub fn metrics(&self, run: &str, stage: &str, rows: Vec<MetricRow>) {
        self.send(Msg::Metrics {
            run: run.into(),
            stage: stage.into(),
            rows,
        });
    }

    pub fn artifact(&self, run: &str, stage: &str, key: &str, path: &str, hash: &str) {
        self.send(Msg::Artifact {
            run: run.into(),
            stage: stage.into(),
            key: key.into(),
            path: path.into(),
            hash: hash.into(),
        });
    }

    pub fn event(&self, run: Option<&str>, stage: Option<&str>, kind: &str, message: &str) {
        self.send(Msg::Event {
            run: run.map(Into::into),
            stage: stage.map(Into::into),
            kind: kind.into(),
            message: message.into(),
        });
    }

    /// The run's experiment name and overrides, and the params its stages used.
    pub fn run_params(&self, run: &str, p: experiments::RunParams) {
        self.send(Msg::RunParams { run: run.into(), p });
    }

    pub fn end_run(&self, id: &str, status: &str) {
        self.send(Msg::EndRun {
            id: id.into(),
            status: status.into(),
            at: ts(now()),
        });
    }

    /// A new version in the adapter registry.
    pub fn adapter_version(&self, row: AdapterVersionRow) {
        self.send(Msg::AdapterVersion(row));
    }

    /// A version's status changed (current / candidate / retired).
    pub fn adapter_status(&self, name: &str, version: u32, status: &str) {
        self.send(Msg::AdapterStatus {
            name: name.into(),
            version,
            status: status.into(),
        });
    }

    /// Appends to the registry's history.
    pub fn adapter_event(
        &self,
        name: &str,
        version: u32,
        action: &str,
        reason: &str,
        run: Option<&str>,
    ) {
        self.send(Msg::AdapterEvent {
            name: name.into(),
            version,
            action: action.into(),
            reason: reason.into(),
            run: run.map(Into::into),
        });
    }

    /// Waits until everything sent so far is committed.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Msg::Flush(tx));
        let _ = rx.recv();
    }

    /// Stops the writer after it has committed everything; returns its first error.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        drop(self.tx.take());
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the run database writer panicked"))?
                .with_context(|| format!("writing {}", self.path.display())),
            None => Ok(()),
        }
    }
}

impl Drop for RunDb {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!("{e:#}");
        }
    }
}

fn writer(mut conn: Connection, rx: mpsc::Receiver<Msg>) -> Result<()> {
    let mut first_err: Option<anyhow::Error> = None;
    // Group commit: everything queued by the time a transaction starts goes into it, so a
    // run of 1,000 cached stages costs a handful of fsyncs, not 1,000. Each message is
    // still applied whole or not at all (a savepoint per message).
    while let Ok(m) = rx.recv() {
        let mut batch = vec![m];
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
            if batch.len() >= 4096 {
                break;
            }
        }
        let mut flushes = Vec::new();
        let res = (|| -> Result<()> {
            let mut tx =
                conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for m in batch {
                match m {
                    Msg::Flush(done) => flushes.push(done),
                    m => {
                        let sp = tx.savepoint()?;
                        match apply(&sp, m) {
                            Ok(()) => sp.commit()?,
                            Err(e) => {
                                drop(sp); // rolls back this message only
                                tracing::error!("run database write failed: {e:#}");
                                first_err.get_or_insert(e);
                            }
                        }
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = res {
            tracing::error!("run database write failed: {e:#}");
            first_err.get_or_insert(e);
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn apply(tx: &Connection, m: Msg) -> Result<()> {
    match m {
        Msg::BeginRun {
            id,
            pipeline,
            file,
            trigger,
            targets,
            at,
        } => {
            let seq: i64 = tx.query_row("SELECT coalesce(max(seq), 0) + 1 FROM runs", [], |r| {
                r.get(0)
            })?;
            tx.execute(
                "INSERT INTO runs(id, seq, pipeline, pipeline_file, trigger, targets, started_at, status, pid) VALUES (?1,?2,?3,?4,?5,?6,?7,'running',?8)",
                params![id, seq, pipeline, file, trigger, targets, at, std::process::id()],
            )?;
            tx.execute(
                "INSERT INTO events(at, run_id, kind, message) VALUES (?1, ?2, 'run_started', ?3)",
                params![at, id, format!("{trigger} run of {pipeline}")],
            )?;
        }
        Msg::StageStarted {
            run,
            stage,
            at,
            log,
            attempt,
        } => {
            tx.execute(
                "INSERT INTO stage_runs(run_id, stage, status, started_at, log_path, attempt) VALUES (?1,?2,'running',?3,?4,?5)
                 ON CONFLICT(run_id, stage) DO UPDATE SET status='running', started_at=excluded.started_at, log_path=excluded.log_path, attempt=excluded.attempt",
                params![run, stage, at, log, attempt],
            )?;
        }
        Msg::StageFinished { run, rec } => {
            tx.execute(
                "INSERT INTO stage_runs(run_id, stage, status, fingerprint, started_at, ended_at, duration_ms, exit_code, log_path, attempt, message)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)
                 ON CONFLICT(run_id, stage) DO UPDATE SET status=excluded.status, fingerprint=excluded.fingerprint,
                   started_at=coalesce(excluded.started_at, started_at), ended_at=excluded.ended_at, duration_ms=excluded.duration_ms,
                   exit_code=excluded.exit_code, log_path=coalesce(excluded.log_path, log_path), attempt=excluded.attempt, message=excluded.message",
                params![
                    run,
                    rec.stage,
                    rec.status,
                    rec.fingerprint,
                    rec.started_at,
                    rec.ended_at,
                    rec.duration_ms,
                    rec.exit_code,
                    rec.log_path,
                    rec.attempt,
                    rec.message
                ],
            )?;
            tx.execute(
                "INSERT INTO events(at, run_id, stage, kind, message) VALUES (?1, ?2, ?3, 'stage_finished', ?4)",
                params![ts(now()), run, rec.stage, rec.status],
            )?;
        }
        Msg::Metrics { run, stage, rows } => {
            let mut st = tx.prepare(
                "INSERT INTO metrics(run_id, stage, name, step, value) VALUES (?1,?2,?3,?4,?5)",
            )?;
            // SQLite stores NaN as NULL: a metric that is not a number (a loss after zero
            // steps) is left out rather than failing the whole batch.
            for r in rows.iter().filter(|r| !r.value.is_nan()) {
                st.execute(params![run, stage, r.name, r.step, r.value])?;
            }
        }
        Msg::Artifact {
            run,
            stage,
            key,
            path,
            hash,
        } => {
            tx.execute(
                "INSERT INTO artifacts(run_id, stage, out_key, path, hash) VALUES (?1,?2,?3,?4,?5)",
                params![run, stage, key, path, hash],
            )?;
        }
        Msg::Event {
            run,
            stage,
            kind,
            message,
        } => {
            tx.execute(
                "INSERT INTO events(at, run_id, stage, kind, message) VALUES (?1,?2,?3,?4,?5)",
                params![ts(now()), run, stage, kind, message],
            )?;
        }
        Msg::EndRun { id, status, at } => {
            tx.execute(
                "UPDATE runs SET status = ?2, ended_at = ?3 WHERE id = ?1",
                params![id, status, at],
            )?;
            tx.execute(
                "INSERT INTO events(at, run_id, kind, message) VALUES (?1, ?2, 'run_finished', ?3)",
                params![at, id, status],
            )?;
        }
        Msg::AdapterVersion(r) => {
            tx.execute(
                "INSERT INTO adapter_versions(name, version, hash, path, metrics, run_id, pipeline, stage, created_at, status)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)
                 ON CONFLICT(name, version) DO UPDATE SET hash=excluded.hash, path=excluded.path, metrics=excluded.metrics,
                   run_id=excluded.run_id, pipeline=excluded.pipeline, stage=excluded.stage, created_at=excluded.created_at, status=excluded.status",
                params![r.name, r.version, r.hash, r.path, r.metrics, r.run_id, r.pipeline, r.stage, r.created_at, r.status],
            )?;
        }
        Msg::AdapterStatus {
            name,
            version,
            status,
        } => {
            tx.execute(
                "UPDATE adapter_versions SET status = ?3 WHERE name = ?1 AND version = ?2",
                params![name, version, status],
            )?;
        }
        Msg::AdapterEvent {
            name,
            version,
            action,
            reason,
            run,
        } => {
            tx.execute(
                "INSERT INTO adapter_events(at, name, version, action, reason, run_id) VALUES (?1,?2,?3,?4,?5,?6)",
                params![ts(now()), name, version, action, reason, run],
            )?;
        }
        Msg::RunParams { run, p } => experiments::write(tx, &run, &p)?,
        Msg::Flush(_) => {}
    }
    Ok(())
}

/// The registry history of `name` (every name when `None`), oldest first.
pub fn adapter_events(conn: &Connection, name: Option<&str>) -> Result<Vec<AdapterEventRow>> {
    let mut st = conn.prepare(
        "SELECT id, at, name, version, action, reason, run_id FROM adapter_events
         WHERE ?1 IS NULL OR name = ?1 ORDER BY id",
    )?;
    Ok(st
        .query_map([name], |r| {
            Ok(AdapterEventRow {
                id: r.get(0)?,
                at: r.get(1)?,
                name: r.get(2)?,
                version: r.get(3)?,
                action: r.get(4)?,
                reason: r.get(5)?,
                run_id: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// The `adapter_versions` rows of `name`, by version.
pub fn adapter_versions(conn: &Connection, name: &str) -> Result<Vec<AdapterVersionRow>> {
    let mut st = conn.prepare(
        "SELECT name, version, hash, path, metrics, run_id, pipeline, stage, created_at, status
         FROM adapter_versions WHERE name = ?1 ORDER BY version",
    )?;
    Ok(st
        .query_map([name], |r| {
            Ok(AdapterVersionRow {
                name: r.get(0)?,
                version: r.get(1)?,
                hash: r.get(2)?,
                path: r.get(3)?,
                metrics: r.get(4)?,
                run_id: r.get(5)?,
                pipeline: r.get(6)?,
                stage: r.get(7)?,
                created_at: r.get(8)?,
                status: r.get(9)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// Appends one event from outside a run (watch, schedule). Opens its own connection; safe
/// next to a running writer (WAL + busy timeout).
pub fn record_event(
    project: &Project,
    run: Option<&str>,
    stage: Option<&str>,
    kind: &str,
    message: &str,
) -> Result<()> {
    let conn = open(&project.db_path())?;
    conn.execute(
        "INSERT INTO events(at, run_id, stage, kind, message) VALUES (?1,?2,?3,?4,?5)",
        params![ts(now()), run, stage, kind, message],
    )?;
    Ok(())
}

/// When `stage` of `pipeline` last succeeded (ran, cached or restored) with status `ok`.
pub fn last_success(
    project: &Project,
    pipeline: &str,
    stage: &str,
) -> Result<Option<DateTime<Utc>>> {
    let Some(conn) = open_read(project)? else {
        return Ok(None);
    };
    let t: Option<String> = conn
        .query_row(
            "SELECT max(coalesce(s.ended_at, r.started_at)) FROM stage_runs s JOIN runs r ON r.id = s.run_id
             WHERE r.pipeline = ?1 AND s.stage = ?2 AND s.status IN ('ran','cached','restored')",
            params![pipeline, stage],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    Ok(t.and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc)))
}

/// When the last successful run of `pipeline` ended.
pub fn last_successful_run(project: &Project, pipeline: &str) -> Result<Option<DateTime<Utc>>> {
    let Some(conn) = open_read(project)? else {
        return Ok(None);
    };
    let t: Option<String> = conn
        .query_row(
            "SELECT max(ended_at) FROM runs WHERE pipeline = ?1 AND status = 'success'",
            [pipeline],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    Ok(t.and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc)))
}

/// The fingerprint `stage` of `pipeline` had the last time it completed.
pub fn last_fingerprint(conn: &Connection, pipeline: &str, stage: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT s.fingerprint FROM stage_runs s JOIN runs r ON r.id = s.run_id
             WHERE r.pipeline = ?1 AND s.stage = ?2 AND s.status IN ('ran','cached','restored') AND s.fingerprint IS NOT NULL
             ORDER BY r.seq DESC LIMIT 1",
            params![pipeline, stage],
            |r| r.get(0),
        )
        .optional()?)
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub id: String,
    pub seq: i64,
    pub pipeline: String,
    pub pipeline_file: String,
    pub trigger: String,
    pub targets: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub status: String,
}

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        seq: r.get(1)?,
        pipeline: r.get(2)?,
        pipeline_file: r.get(3)?,
        trigger: r.get(4)?,
        targets: r.get(5)?,
        started_at: r.get(6)?,
        ended_at: r.get(7)?,
        status: r.get(8)?,
    })
}

const RUN_COLS: &str =
    "id, seq, pipeline, pipeline_file, trigger, targets, started_at, ended_at, status";

pub fn list_runs(conn: &Connection, limit: usize) -> Result<Vec<RunRow>> {
    let mut st = conn.prepare(&format!(
        "SELECT {RUN_COLS} FROM runs ORDER BY seq DESC LIMIT ?1"
    ))?;
    Ok(st
        .query_map([limit as i64], run_row)?
        .collect::<rusqlite::Result<_>>()?)
}

/// A run by id, unique id prefix, `latest`, or `latest~N` (newest of any pipeline).
pub fn find_run(conn: &Connection, spec: &str) -> Result<RunRow> {
    find_run_in(conn, spec, None)
}

/// As [`find_run`], but `latest` and `latest~N` count only the runs of `pipeline` (a
/// pipeline's name) when it is given. An id or id prefix names one run whatever it is.
pub fn find_run_in(conn: &Connection, spec: &str, pipeline: Option<&str>) -> Result<RunRow> {
    if let Some(rest) = spec.strip_prefix("latest") {
        let back: i64 = match rest.strip_prefix('~') {
            Some(n) => n
                .parse()
                .with_context(|| format!("bad run reference {spec:?} (expected latest~N)"))?,
            None if rest.is_empty() => 0,
            None => bail!("bad run reference {spec:?} (expected a run id, `latest` or `latest~N`)"),
        };
        let row = match pipeline {
            None => conn.query_row(
                &format!("SELECT {RUN_COLS} FROM runs ORDER BY seq DESC LIMIT 1 OFFSET ?1"),
                [back],
                run_row,
            ),
            Some(p) => conn.query_row(
                &format!(
                    "SELECT {RUN_COLS} FROM runs WHERE pipeline = ?2 ORDER BY seq DESC LIMIT 1 OFFSET ?1"
                ),
                params![back, p],
                run_row,
            ),
        };
        return row.optional()?.with_context(|| match pipeline {
            None => format!("no run {spec} (the database has fewer runs)"),
            Some(p) => format!("no run {spec} of pipeline {p:?} (it has fewer runs)"),
        });
    }
    let mut st = conn.prepare(&format!(
        "SELECT {RUN_COLS} FROM runs WHERE id = ?1 OR id LIKE ?2 ESCAPE '\\' LIMIT 2"
    ))?;
    let like = format!(
        "{}%",
        spec.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    let rows: Vec<RunRow> = st
        .query_map(params![spec, like], run_row)?
        .collect::<rusqlite::Result<_>>()?;
    match rows.len() {
        0 => bail!("no run {spec:?} (see `tsumugi runs`)"),
        1 => Ok(rows.into_iter().next().expect("one row")),
        _ => rows
            .into_iter()
            .find(|r| r.id == spec)
            .with_context(|| format!("run reference {spec:?} is ambiguous; give more of the id")),
    }
}

pub fn stage_records(conn: &Connection, run: &str) -> Result<Vec<StageRecord>> {
    let mut st = conn.prepare(
        "SELECT stage, status, fingerprint, started_at, ended_at, duration_ms, exit_code, log_path, attempt, message
         FROM stage_runs WHERE run_id = ?1 ORDER BY id",
    )?;
    Ok(st
        .query_map([run], |r| {
            Ok(StageRecord {
                stage: r.get(0)?,
                status: r.get(1)?,
                fingerprint: r.get(2)?,
                started_at: r.get(3)?,
                ended_at: r.get(4)?,
                duration_ms: r.get(5)?,
                exit_code: r.get(6)?,
                log_path: r.get(7)?,
                attempt: r.get(8)?,
                message: r.get(9)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricRecord {
    pub stage: String,
    pub name: String,
    pub step: Option<i64>,
    pub value: f64,
}

pub fn run_metrics(conn: &Connection, run: &str) -> Result<Vec<MetricRecord>> {
    let mut st = conn.prepare(
        "SELECT stage, name, step, value FROM metrics WHERE run_id = ?1 ORDER BY stage, name, step",
    )?;
    Ok(st
        .query_map([run], |r| {
            Ok(MetricRecord {
                stage: r.get(0)?,
                name: r.get(1)?,
                step: r.get(2)?,
                value: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

#[derive(Debug, Clone, Serialize)]
pub struct ArtifactRecord {
    pub stage: String,
    pub out_key: String,
    pub path: String,
    pub hash: String,
}

pub fn run_artifacts(conn: &Connection, run: &str) -> Result<Vec<ArtifactRecord>> {
    let mut st =
        conn.prepare("SELECT stage, out_key, path, hash FROM artifacts WHERE run_id = ?1 ORDER BY stage, out_key")?;
    Ok(st
        .query_map([run], |r| {
            Ok(ArtifactRecord {
                stage: r.get(0)?,
                out_key: r.get(1)?,
                path: r.get(2)?,
                hash: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// Which runs `gc --keep-last N` keeps whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepLast {
    /// The N newest runs of each pipeline (so a busy pipeline cannot push out another's).
    PerPipeline(usize),
    /// The N newest runs of the project, whatever their pipeline.
    Global(usize),
}

/// Fingerprints `gc` must keep: every stage's latest completed fingerprint per pipeline, and
/// every fingerprint of the `keep_last` newest runs (of the project).
pub fn kept_fingerprints(
    conn: &Connection,
    keep_last: usize,
) -> Result<std::collections::HashSet<String>> {
    kept_fingerprints_by(conn, KeepLast::Global(keep_last))
}

/// As [`kept_fingerprints`], with the newest runs counted as `keep` says.
pub fn kept_fingerprints_by(
    conn: &Connection,
    keep: KeepLast,
) -> Result<std::collections::HashSet<String>> {
    let (keep_last, runs_sql) = match keep {
        KeepLast::Global(n) => (n, "SELECT id FROM runs ORDER BY seq DESC LIMIT ?1"),
        KeepLast::PerPipeline(n) => (
            n,
            "SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY pipeline ORDER BY seq DESC) AS k
                             FROM runs) WHERE k <= ?1",
        ),
    };
    let mut keep = std::collections::HashSet::new();
    let mut st = conn.prepare(
        "SELECT s.fingerprint FROM stage_runs s JOIN runs r ON r.id = s.run_id
         WHERE s.fingerprint IS NOT NULL AND s.status IN ('ran','cached','restored')
           AND r.seq = (SELECT max(r2.seq) FROM stage_runs s2 JOIN runs r2 ON r2.id = s2.run_id
                        WHERE r2.pipeline = r.pipeline AND s2.stage = s.stage AND s2.status IN ('ran','cached','restored'))",
    )?;
    for f in st.query_map([], |r| r.get::<_, String>(0))? {
        keep.insert(f?);
    }
    let mut st = conn.prepare(&format!(
        "SELECT s.fingerprint FROM stage_runs s WHERE s.fingerprint IS NOT NULL AND s.status IN ('ran','cached','restored')
         AND s.run_id IN ({runs_sql})",
    ))?;
    for f in st.query_map([keep_last as i64], |r| r.get::<_, String>(0))? {
        keep.insert(f?);
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_records_runs_and_events_are_append_only() {
        let d = tempfile::tempdir().unwrap();
        let project = Project::new(d.path());
        let db = RunDb::start(&project).unwrap();
        db.begin_run("r1", "p", "p.yaml", "manual", &[]);
        db.stage_started("r1", "a", None, 1);
        db.stage_finished(
            "r1",
            StageRecord {
                stage: "a".into(),
                status: "ran".into(),
                fingerprint: Some("f".into()),
                started_at: None,
                ended_at: Some(ts(now())),
                duration_ms: Some(5),
                exit_code: Some(0),
                log_path: None,
                attempt: 1,
                message: None,
            },
        );
        db.metrics(
            "r1",
            "a",
            vec![
                MetricRow {
                    name: "final_loss".into(),
                    step: None,
                    value: f64::NAN,
                },
                MetricRow {
                    name: "acc".into(),
                    step: None,
                    value: 0.5,
                },
            ],
        );
        db.end_run("r1", "success");
        db.close().unwrap();

        let conn = open(&project.db_path()).unwrap();
        let run = find_run(&conn, "latest").unwrap();
        assert_eq!((run.id.as_str(), run.status.as_str()), ("r1", "success"));
        let st = stage_records(&conn, "r1").unwrap();
        assert_eq!(st[0].status, "ran");
        assert_eq!(
            last_fingerprint(&conn, "p", "a").unwrap().as_deref(),
            Some("f")
        );
        assert!(last_success(&project, "p", "a").unwrap().is_some());
        // The NaN row is left out; the batch's other rows are kept.
        let m = run_metrics(&conn, "r1").unwrap();
        assert_eq!((m.len(), m[0].value), (1, 0.5));
        assert!(conn.execute("DELETE FROM events", []).is_err());
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert!(kept_fingerprints(&conn, 0).unwrap().contains("f"));
    }

    #[test]
    fn a_version_1_database_gains_the_registry_tables() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("runs/tsumugi.db");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        {
            // What the first release wrote: migration 1 only.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1);",
            )
            .unwrap();
        }
        let project = Project::new(d.path());
        let db = RunDb::start(&project).unwrap();
        db.adapter_version(AdapterVersionRow {
            name: "nli".into(),
            version: 1,
            hash: "h".into(),
            path: "adapters/nli/v1".into(),
            metrics: "{}".into(),
            run_id: None,
            pipeline: None,
            stage: None,
            created_at: ts(now()),
            status: "candidate".into(),
        });
        db.adapter_status("nli", 1, "current");
        db.adapter_event("nli", 1, "manual_promote", "by hand", None);
        db.close().unwrap();
        let conn = open(&path).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), MIGRATIONS.len());
        assert_eq!(adapter_versions(&conn, "nli").unwrap()[0].status, "current");
        let ev = adapter_events(&conn, Some("nli")).unwrap();
        assert_eq!(
            (ev[0].action.as_str(), ev[0].version),
            ("manual_promote", 1)
        );
        assert!(conn.execute("DELETE FROM adapter_events", []).is_err());
        assert!(
            conn.execute("UPDATE adapter_events SET reason = 'x'", [])
                .is_err()
        );
    }
}
