//! `tsumugi exp show`: a table of experiments — overrides, the params that differ between
//! them, their final metrics — as text, JSON or CSV.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use serde_json::{Value, json};

use crate::project::Project;
use crate::rundb::{self, experiments};

#[derive(Debug, Args)]
pub struct ExpShowArgs {
    /// Only the experiments of this pipeline file.
    pub file: Option<PathBuf>,
    /// Sort by this metric (or param) column, ascending; with --desc, descending.
    #[arg(long, value_name = "METRIC")]
    pub sort: Option<String>,
    /// Sort descending.
    #[arg(long, requires = "sort")]
    pub desc: bool,
    /// Print JSON on stdout: one object per experiment.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV on stdout.
    #[arg(long)]
    pub csv: bool,
}

/// One row of `exp show`.
struct Row {
    exp: experiments::ExpRow,
    /// Param key → value (the first stage's, when several stages use one key).
    params: BTreeMap<String, Value>,
    /// Final metrics: name → value (`stage:name` when two stages report one name).
    metrics: BTreeMap<String, f64>,
}

fn rows(conn: &rusqlite::Connection, file: Option<&Path>) -> anyhow::Result<Vec<Row>> {
    let file = file.map(|f| f.display().to_string());
    let mut out = Vec::new();
    for exp in experiments::list(conn, file.as_deref())? {
        let mut params = BTreeMap::new();
        for (_, k, v) in experiments::run_params(conn, &exp.run_id)? {
            params.entry(k).or_insert(v);
        }
        let finals: Vec<_> = rundb::run_metrics(conn, &exp.run_id)?
            .into_iter()
            .filter(|m| m.step.is_none())
            .collect();
        let mut stages_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for m in &finals {
            stages_of.entry(&m.name).or_default().insert(&m.stage);
        }
        let mut metrics = BTreeMap::new();
        for m in &finals {
            let key = if stages_of[m.name.as_str()].len() > 1 {
                format!("{}:{}", m.stage, m.name)
            } else {
                m.name.clone()
            };
            metrics.insert(key, m.value);
        }
        out.push(Row {
            exp,
            params,
            metrics,
        });
    }
    Ok(out)
}

pub(super) fn show(project: &Project, args: ExpShowArgs) -> anyhow::Result<ExitCode> {
    let mut rows = match rundb::open_read(project)? {
        Some(c) => rows(&c, args.file.as_deref())?,
        None => Vec::new(),
    };
    // Params that differ between the experiments shown (the others say nothing).
    let all_keys: BTreeSet<String> = rows.iter().flat_map(|r| r.params.keys().cloned()).collect();
    let differ: Vec<String> = all_keys
        .into_iter()
        .filter(|k| {
            let vals: BTreeSet<String> = rows
                .iter()
                .map(|r| r.params.get(k).map(|v| v.to_string()).unwrap_or_default())
                .collect();
            vals.len() > 1
        })
        .collect();
    let metric_names: Vec<String> = rows
        .iter()
        .flat_map(|r| r.metrics.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if let Some(col) = &args.sort {
        if !metric_names.contains(col) && !differ.contains(col) && !rows.is_empty() {
            bail!(
                "no column '{col}' to sort by (metrics: {}; params that differ: {})",
                metric_names.join(", "),
                differ.join(", ")
            );
        }
        let key = |r: &Row| -> Option<f64> {
            r.metrics
                .get(col)
                .copied()
                .or_else(|| r.params.get(col).and_then(Value::as_f64))
        };
        rows.sort_by(|a, b| {
            let o = match (key(a), key(b)) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            };
            if args.desc { o.reverse() } else { o }
        });
    }
    if args.json {
        let out: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "name": r.exp.name,
                    "run_id": r.exp.run_id,
                    "pipeline": r.exp.pipeline,
                    "pipeline_file": r.exp.pipeline_file,
                    "status": r.exp.status,
                    "started_at": r.exp.started_at,
                    "overrides": r.exp.overrides,
                    "params": r.params,
                    "metrics": r.metrics,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut header: Vec<String> = ["name", "run", "status", "overrides"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    header.extend(differ.iter().cloned());
    header.extend(metric_names.iter().cloned());
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut line = vec![
                r.exp.name.clone(),
                r.exp.run_id.clone(),
                r.exp.status.clone(),
                r.exp
                    .overrides
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| format!("{k}={}", scalar(v)))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default(),
            ];
            line.extend(
                differ
                    .iter()
                    .map(|k| r.params.get(k).map(scalar).unwrap_or_else(|| "-".into())),
            );
            line.extend(metric_names.iter().map(|m| {
                r.metrics
                    .get(m)
                    .map(|v| tsumugi_base::metrics_file::display(*v, false))
                    .unwrap_or_else(|| "-".into())
            }));
            line
        })
        .collect();
    if args.csv {
        let esc = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_owned()
            }
        };
        for line in std::iter::once(&header).chain(table.iter()) {
            println!(
                "{}",
                line.iter().map(|s| esc(s)).collect::<Vec<_>>().join(",")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no experiments yet (start one: tsumugi exp run FILE -S KEY=VALUE)");
        return Ok(ExitCode::SUCCESS);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            std::iter::once(&header)
                .chain(table.iter())
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for line in std::iter::once(&header).chain(table.iter()) {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        // serde_json prints the shortest form that reads back: 3, 0.0003, 1e-7.
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}
