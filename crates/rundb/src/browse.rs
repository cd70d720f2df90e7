//! Read queries for `tsumugi ui`: one page of runs at a time, sorted and filtered in SQL,
//! so a database of 10,000 runs answers as fast as one of ten (see BENCHMARKS.md, "tsumugi
//! ui"). The indexes they use are migration 4 in `lib.rs`.
//!
//! Columns that other features add (`runs.exp`, `runs.overrides`, the `run_params` table of
//! experiments) are read only when the database has them, so this works on any schema
//! version this build can open.

use std::collections::HashMap;

use anyhow::Result;
use rusqlite::{Connection, params_from_iter, types::Value};
use serde::Serialize;

use crate::{RUN_COLS, RunRow, run_row};

/// What a runs page is sorted by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortKey {
    Started,
    Duration,
    Status,
    Pipeline,
    /// A final metric (a row with no step) of one stage.
    Metric {
        stage: String,
        name: String,
    },
}

impl SortKey {
    /// `started`, `duration`, `status`, `pipeline`, or `metric:STAGE/NAME`.
    pub fn parse(s: &str) -> Option<SortKey> {
        Some(match s {
            "started" => SortKey::Started,
            "duration" => SortKey::Duration,
            "status" => SortKey::Status,
            "pipeline" => SortKey::Pipeline,
            _ => {
                let (stage, name) = s.strip_prefix("metric:")?.split_once('/')?;
                SortKey::Metric {
                    stage: stage.into(),
                    name: name.into(),
                }
            }
        })
    }

    pub fn as_param(&self) -> String {
        match self {
            SortKey::Started => "started".into(),
            SortKey::Duration => "duration".into(),
            SortKey::Status => "status".into(),
            SortKey::Pipeline => "pipeline".into(),
            SortKey::Metric { stage, name } => format!("metric:{stage}/{name}"),
        }
    }
}

/// Which runs, in which order, which page.
#[derive(Debug, Clone)]
pub struct RunQuery {
    pub pipeline: Option<String>,
    /// Only experiments (runs with `runs.exp` set); nothing when the column is absent.
    pub experiments_only: bool,
    pub sort: SortKey,
    pub descending: bool,
    pub limit: usize,
    pub offset: usize,
}

/// A final metric of a run.
#[derive(Debug, Clone, Serialize)]
pub struct FinalMetric {
    pub stage: String,
    pub name: String,
    pub value: f64,
}

/// A parameter a stage of a run used (from `run_params`, when experiments recorded it).
#[derive(Debug, Clone, Serialize)]
pub struct ParamValue {
    pub stage: String,
    pub key: String,
    /// Canonical JSON of the value.
    pub value: String,
}

/// A run as the list shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunListRow {
    pub run: RunRow,
    pub duration_ms: Option<i64>,
    /// The experiment name (`runs.exp`), when the column exists and is set.
    pub exp: Option<String>,
    /// `runs.overrides`: a JSON object of the `-S` overrides.
    pub overrides: Option<String>,
    pub metrics: Vec<FinalMetric>,
    pub params: Vec<ParamValue>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunPage {
    /// Runs matching the filter, all pages together.
    pub total: i64,
    pub rows: Vec<RunListRow>,
}

const DURATION_MS: &str =
    "CAST(round((julianday(r.ended_at) - julianday(r.started_at)) * 86400000.0) AS INTEGER)";

/// One page of runs with their final metrics, params, experiment and overrides.
pub fn runs_page(conn: &Connection, q: &RunQuery) -> Result<RunPage> {
    let mut filter = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    if let Some(p) = &q.pipeline {
        args.push(Value::Text(p.clone()));
        filter.push(format!("r.pipeline = ?{}", args.len()));
    }
    if q.experiments_only {
        filter.push("r.exp IS NOT NULL".to_string());
    }
    let where_sql = if filter.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", filter.join(" AND "))
    };
    let total: i64 = conn.query_row(
        &format!("SELECT count(*) FROM runs r {where_sql}"),
        params_from_iter(args.iter()),
        |r| r.get(0),
    )?;

    let dir = if q.descending { "DESC" } else { "ASC" };
    // Rows without a value (a running run's duration, a run without the metric) go last
    // either way; ties by newest first.
    let order = match &q.sort {
        SortKey::Started => format!("r.seq {dir}"),
        SortKey::Duration => format!("({DURATION_MS}) IS NULL, {DURATION_MS} {dir}, r.seq DESC"),
        SortKey::Status => format!("r.status {dir}, r.seq DESC"),
        SortKey::Pipeline => format!("r.pipeline {dir}, r.seq DESC"),
        SortKey::Metric { stage, name } => {
            args.push(Value::Text(stage.clone()));
            let s = args.len();
            args.push(Value::Text(name.clone()));
            let n = args.len();
            let v = format!(
                "(SELECT m.value FROM metrics m WHERE m.run_id = r.id AND m.stage = ?{s} AND m.name = ?{n} AND m.step IS NULL LIMIT 1)"
            );
            format!("{v} IS NULL, {v} {dir}, r.seq DESC")
        }
    };
    args.push(Value::Integer(q.limit as i64));
    let l = args.len();
    args.push(Value::Integer(q.offset as i64));
    let o = args.len();
    let extra = format!(", {DURATION_MS}, r.exp, r.overrides");
    let cols = RUN_COLS
        .split(", ")
        .map(|c| format!("r.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {cols}{extra} FROM runs r {where_sql} ORDER BY {order} LIMIT ?{l} OFFSET ?{o}"
    );
    let mut st = conn.prepare(&sql)?;
    let mut rows: Vec<RunListRow> = st
        .query_map(params_from_iter(args.iter()), |r| {
            Ok(RunListRow {
                run: run_row(r)?,
                duration_ms: r.get(9)?,
                exp: r.get(10)?,
                overrides: r.get(11)?,
                metrics: Vec::new(),
                params: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;

    let ids: Vec<String> = rows.iter().map(|r| r.run.id.clone()).collect();
    let mut metrics = final_metrics(conn, &ids)?;
    let mut params = run_params(conn, &ids)?;
    for r in &mut rows {
        r.metrics = metrics.remove(&r.run.id).unwrap_or_default();
        r.params = params.remove(&r.run.id).unwrap_or_default();
    }
    Ok(RunPage { total, rows })
}

fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The final metrics (rows without a step) of the given runs, by run.
pub fn final_metrics(
    conn: &Connection,
    ids: &[String],
) -> Result<HashMap<String, Vec<FinalMetric>>> {
    let mut out: HashMap<String, Vec<FinalMetric>> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let mut st = conn.prepare(&format!(
        "SELECT run_id, stage, name, value FROM metrics
         WHERE step IS NULL AND run_id IN ({}) ORDER BY run_id, stage, name",
        placeholders(ids.len())
    ))?;
    let rows = st.query_map(params_from_iter(ids.iter()), |r| {
        Ok((
            r.get::<_, String>(0)?,
            FinalMetric {
                stage: r.get(1)?,
                name: r.get(2)?,
                value: r.get(3)?,
            },
        ))
    })?;
    for row in rows {
        let (id, m) = row?;
        out.entry(id).or_default().push(m);
    }
    Ok(out)
}

/// The params each stage of the given runs used, when the database records them
/// (`run_params`, written by experiments); empty otherwise.
pub fn run_params(conn: &Connection, ids: &[String]) -> Result<HashMap<String, Vec<ParamValue>>> {
    let mut out: HashMap<String, Vec<ParamValue>> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let mut st = conn.prepare(&format!(
        "SELECT run_id, stage, key, value_json FROM run_params
         WHERE run_id IN ({}) ORDER BY run_id, key, stage",
        placeholders(ids.len())
    ))?;
    let rows = st.query_map(params_from_iter(ids.iter()), |r| {
        Ok((
            r.get::<_, String>(0)?,
            ParamValue {
                stage: r.get(1)?,
                key: r.get(2)?,
                value: r.get(3)?,
            },
        ))
    })?;
    for row in rows {
        let (id, p) = row?;
        out.entry(id).or_default().push(p);
    }
    Ok(out)
}

/// The experiment name and overrides of one run (both `None` for a plain run).
pub fn run_experiment(conn: &Connection, id: &str) -> Result<(Option<String>, Option<String>)> {
    Ok(
        conn.query_row("SELECT exp, overrides FROM runs WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?,
    )
}

/// A metric series (rows with a step) of one run: `(stage, name) → [(step, value)]`.
pub type Series = Vec<((String, String), Vec<(i64, f64)>)>;

/// The step-indexed metrics of a run, by stage and name, in step order.
pub fn metric_series(conn: &Connection, run: &str) -> Result<Series> {
    let mut st = conn.prepare(
        "SELECT stage, name, step, value FROM metrics
         WHERE run_id = ?1 AND step IS NOT NULL ORDER BY stage, name, step",
    )?;
    let mut out: Series = Vec::new();
    let rows = st.query_map([run], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, f64>(3)?,
        ))
    })?;
    for row in rows {
        let (stage, name, step, value) = row?;
        match out.last_mut() {
            Some((k, pts)) if k.0 == stage && k.1 == name => pts.push((step, value)),
            _ => out.push(((stage, name), vec![(step, value)])),
        }
    }
    Ok(out)
}

/// Pipeline names that have runs, for the filter.
pub fn pipelines(conn: &Connection) -> Result<Vec<String>> {
    // The (pipeline, seq) index makes this a walk over distinct keys.
    let mut st = conn.prepare("SELECT DISTINCT pipeline FROM runs ORDER BY pipeline")?;
    Ok(st
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Every version of every adapter in the run database's mirror of the registry.
pub fn all_adapter_versions(conn: &Connection) -> Result<Vec<crate::AdapterVersionRow>> {
    let mut names = conn.prepare("SELECT DISTINCT name FROM adapter_versions ORDER BY name")?;
    let names: Vec<String> = names
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for n in names {
        out.extend(crate::adapter_versions(conn, &n)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MetricRow, RunDb};
    use tsumugi_base::project::Project;

    fn db_with_runs(n: usize) -> (tempfile::TempDir, Connection) {
        let d = tempfile::tempdir().unwrap();
        let project = Project::new(d.path());
        let db = RunDb::start(&project).unwrap();
        for i in 0..n {
            let id = format!("r{i:03}");
            let p = if i % 2 == 0 { "even" } else { "odd" };
            db.begin_run(&id, p, "p.yaml", "manual", &[]);
            db.metrics(
                &id,
                "eval",
                vec![
                    MetricRow {
                        name: "acc".into(),
                        step: None,
                        value: (i * 7 % 10) as f64,
                    },
                    MetricRow {
                        name: "loss".into(),
                        step: Some(1),
                        value: 1.0,
                    },
                ],
            );
            if i != 3 {
                db.end_run(&id, "success");
            }
        }
        db.close().unwrap();
        let conn = crate::open(&project.db_path()).unwrap();
        (d, conn)
    }

    fn q(sort: SortKey, descending: bool) -> RunQuery {
        RunQuery {
            pipeline: None,
            experiments_only: false,
            sort,
            descending,
            limit: 3,
            offset: 0,
        }
    }

    #[test]
    fn pages_sort_and_filter_in_sql() {
        let (_d, conn) = db_with_runs(10);
        let ids = |p: RunPage| p.rows.iter().map(|r| r.run.id.clone()).collect::<Vec<_>>();
        let page = runs_page(&conn, &q(SortKey::Started, true)).unwrap();
        assert_eq!(page.total, 10);
        assert_eq!(ids(page), ["r009", "r008", "r007"]);
        // acc = i*7 % 10: r001 → 7, r004 → 8, r007 → 9.
        let by_acc = SortKey::parse("metric:eval/acc").unwrap();
        let page = runs_page(&conn, &q(by_acc.clone(), true)).unwrap();
        assert_eq!(ids(page.clone()), ["r007", "r004", "r001"]);
        assert_eq!(page.rows[0].metrics.len(), 1, "only final metrics");
        let mut only_even = q(by_acc, false);
        only_even.pipeline = Some("even".into());
        only_even.offset = 1;
        let page = runs_page(&conn, &only_even).unwrap();
        assert_eq!(page.total, 5);
        // even runs' acc: r000 0, r002 4, r004 8, r006 2, r008 6 → ascending from the 2nd.
        assert_eq!(ids(page), ["r006", "r002", "r008"]);
        // The run that never ended has no duration and sorts last.
        let mut by_duration = q(SortKey::Duration, true);
        by_duration.limit = 10;
        let page = runs_page(&conn, &by_duration).unwrap();
        assert_eq!(page.rows.last().unwrap().run.id, "r003");
        assert!(page.rows.last().unwrap().duration_ms.is_none());
        // No experiments column in this schema: an experiments filter is empty, not an error.
        let mut exps = q(SortKey::Started, true);
        exps.experiments_only = true;
        assert_eq!(runs_page(&conn, &exps).unwrap().total, 0);
        assert_eq!(metric_series(&conn, "r001").unwrap()[0].1, vec![(1, 1.0)]);
    }

    #[test]
    fn experiments_columns_and_params_are_read_when_present() {
        let (_d, conn) = db_with_runs(4);
        // What `tsumugi exp run` records (migration 3's columns and table).
        conn.execute_batch(
            "UPDATE runs SET exp = 'sweep', overrides = '{\"lr\":0.3}' WHERE id = 'r002';
             INSERT INTO run_params VALUES ('r002', 'train', 'lr', '0.3'), ('r001', 'train', 'lr', '0.1');",
        )
        .unwrap();
        let mut exps = q(SortKey::Started, true);
        exps.experiments_only = true;
        let page = runs_page(&conn, &exps).unwrap();
        assert_eq!(page.total, 1);
        let r = &page.rows[0];
        assert_eq!(r.exp.as_deref(), Some("sweep"));
        assert_eq!(r.overrides.as_deref(), Some("{\"lr\":0.3}"));
        assert_eq!(
            (r.params[0].key.as_str(), r.params[0].value.as_str()),
            ("lr", "0.3")
        );
        assert_eq!(
            run_experiment(&conn, "r001").unwrap(),
            (None, None),
            "a plain run"
        );
    }
}
