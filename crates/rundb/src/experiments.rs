//! Experiments (`tsumugi exp`): a run recorded with a name and the `-S` overrides it was
//! given, the effective params every stage used (for every run, experiment or not), and
//! the queue of experiments stored to run later (`exp run --queue`, then `--run-all`).
//!
//! An experiment is not a table of its own: it is the newest run carrying its name
//! (`runs.exp`), so a name run again shows its latest result and the older runs stay in
//! the history.

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// Migration 3 (appended to the list in `lib.rs`).
pub(crate) const MIGRATION: &str = r#"
ALTER TABLE runs ADD COLUMN exp TEXT;
ALTER TABLE runs ADD COLUMN overrides TEXT;
CREATE INDEX runs_exp ON runs(exp, seq);
CREATE TABLE run_params (
    run_id TEXT NOT NULL REFERENCES runs(id),
    stage TEXT NOT NULL,
    key TEXT NOT NULL,
    value_json TEXT NOT NULL,
    PRIMARY KEY (run_id, stage, key)
);
CREATE TABLE exp_queue (
    name TEXT PRIMARY KEY,
    pipeline_file TEXT NOT NULL,
    targets TEXT NOT NULL,
    overrides TEXT NOT NULL,
    queued_at TEXT NOT NULL
);
"#;

/// What a run is, as an experiment, and the params its stages used.
#[derive(Debug, Clone, Default)]
pub struct RunParams {
    /// Experiment name; `None` for a plain run.
    pub exp: Option<String>,
    /// `{"KEY": value, …}` as given with `-S`; `None` if none.
    pub overrides: Option<serde_json::Value>,
    /// (stage, param key, value) for every param a stage's fingerprint took.
    pub params: Vec<(String, String, serde_json::Value)>,
}

pub(crate) fn write(tx: &Connection, run: &str, p: &RunParams) -> Result<()> {
    tx.execute(
        "UPDATE runs SET exp = ?2, overrides = ?3 WHERE id = ?1",
        params![run, p.exp, p.overrides.as_ref().map(|o| o.to_string())],
    )?;
    let mut st = tx.prepare(
        "INSERT OR REPLACE INTO run_params(run_id, stage, key, value_json) VALUES (?1,?2,?3,?4)",
    )?;
    for (stage, key, v) in &p.params {
        st.execute(params![run, stage, key, v.to_string()])?;
    }
    Ok(())
}

/// One experiment: its newest run.
#[derive(Debug, Clone, Serialize)]
pub struct ExpRow {
    pub name: String,
    pub run_id: String,
    pub pipeline: String,
    pub pipeline_file: String,
    pub status: String,
    pub started_at: String,
    pub overrides: serde_json::Value,
}

fn exp_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExpRow> {
    let o: Option<String> = r.get(6)?;
    Ok(ExpRow {
        name: r.get(0)?,
        run_id: r.get(1)?,
        pipeline: r.get(2)?,
        pipeline_file: r.get(3)?,
        status: r.get(4)?,
        started_at: r.get(5)?,
        overrides: o
            .and_then(|o| serde_json::from_str(&o).ok())
            .unwrap_or_else(|| serde_json::json!({})),
    })
}

const NEWEST: &str =
    "SELECT r.exp, r.id, r.pipeline, r.pipeline_file, r.status, r.started_at, r.overrides
     FROM runs r WHERE r.exp IS NOT NULL
       AND r.seq = (SELECT max(seq) FROM runs r2 WHERE r2.exp = r.exp)";

/// Every experiment (of `pipeline_file`, if given), oldest first.
pub fn list(conn: &Connection, pipeline_file: Option<&str>) -> Result<Vec<ExpRow>> {
    let mut st = conn.prepare(&format!(
        "{NEWEST} AND (?1 IS NULL OR r.pipeline_file = ?1) ORDER BY r.seq"
    ))?;
    Ok(st
        .query_map([pipeline_file], exp_row)?
        .collect::<rusqlite::Result<_>>()?)
}

/// The experiment called `name`.
pub fn find(conn: &Connection, name: &str) -> Result<Option<ExpRow>> {
    Ok(conn
        .query_row(&format!("{NEWEST} AND r.exp = ?1"), [name], exp_row)
        .optional()?)
}

/// Whether `name` is taken by an experiment or a queued one.
pub fn name_taken(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM runs WHERE exp = ?1) OR EXISTS(SELECT 1 FROM exp_queue WHERE name = ?1)",
        [name],
        |r| r.get(0),
    )?)
}

/// The params each stage of `run` used: (stage, key, value).
pub fn run_params(
    conn: &Connection,
    run: &str,
) -> Result<Vec<(String, String, serde_json::Value)>> {
    let mut st = conn.prepare(
        "SELECT stage, key, value_json FROM run_params WHERE run_id = ?1 ORDER BY stage, key",
    )?;
    Ok(st
        .query_map([run], |r| {
            let v: String = r.get(2)?;
            Ok((
                r.get(0)?,
                r.get(1)?,
                serde_json::from_str(&v).unwrap_or(serde_json::Value::Null),
            ))
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// Forgets experiment `name` (its runs stay, as plain runs) and drops it from the queue.
/// Returns how many runs and queued entries it touched.
pub fn remove(conn: &Connection, name: &str) -> Result<usize> {
    let a = conn.execute("UPDATE runs SET exp = NULL WHERE exp = ?1", [name])?;
    let b = conn.execute("DELETE FROM exp_queue WHERE name = ?1", [name])?;
    Ok(a + b)
}

/// An experiment stored to run later.
#[derive(Debug, Clone, Serialize)]
pub struct Queued {
    pub name: String,
    pub pipeline_file: String,
    pub targets: Vec<String>,
    /// The `-S` arguments as given (`KEY=VALUE`), one grid point.
    pub overrides: Vec<String>,
    pub queued_at: String,
}

pub fn enqueue(conn: &Connection, q: &Queued) -> Result<()> {
    conn.execute(
        "INSERT INTO exp_queue(name, pipeline_file, targets, overrides, queued_at) VALUES (?1,?2,?3,?4,?5)",
        params![
            q.name,
            q.pipeline_file,
            serde_json::to_string(&q.targets)?,
            serde_json::to_string(&q.overrides)?,
            q.queued_at
        ],
    )?;
    Ok(())
}

/// The queue, oldest first.
pub fn queued(conn: &Connection) -> Result<Vec<Queued>> {
    let mut st = conn.prepare(
        "SELECT name, pipeline_file, targets, overrides, queued_at FROM exp_queue ORDER BY queued_at, rowid",
    )?;
    Ok(st
        .query_map([], |r| {
            let t: String = r.get(2)?;
            let o: String = r.get(3)?;
            Ok(Queued {
                name: r.get(0)?,
                pipeline_file: r.get(1)?,
                targets: serde_json::from_str(&t).unwrap_or_default(),
                overrides: serde_json::from_str(&o).unwrap_or_default(),
                queued_at: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// Takes `name` off the queue (before it runs).
pub fn dequeue(conn: &Connection, name: &str) -> Result<()> {
    conn.execute("DELETE FROM exp_queue WHERE name = ?1", [name])?;
    Ok(())
}
