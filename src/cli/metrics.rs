use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;

use crate::project::Project;
use crate::rundb;

#[derive(Debug, Subcommand)]
pub enum MetricsCommand {
    /// Metric by metric, the values of two runs and their difference.
    Diff(DiffArgs),
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// `[FILE] RUN_A RUN_B`: run ids, prefixes, `latest` or `latest~N`. With a pipeline FILE
    /// first, `latest~N` counts only that pipeline's runs (`metrics diff pipelines/x.yaml
    /// latest~1 latest`). Runs of two different pipelines are compared with a warning.
    #[arg(value_name = "FILE|RUN", num_args = 2..=3, required = true)]
    pub args: Vec<String>,
    /// Print JSON on stdout (see docs/json-output.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(project: &Project, cmd: MetricsCommand) -> anyhow::Result<ExitCode> {
    let MetricsCommand::Diff(args) = cmd;
    let Some(conn) = rundb::open_read(project)? else {
        eprintln!("error: no runs yet (runs/tsumugi.db does not exist)");
        return Ok(ExitCode::from(2));
    };
    let (a, b) = match super::runref::resolve(project, &conn, &args.args, 2) {
        Ok((_, rows)) => {
            let mut it = rows.into_iter();
            (it.next().expect("two runs"), it.next().expect("two runs"))
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    if a.pipeline != b.pipeline {
        // Metric names rarely match across pipelines: most rows would show `-`.
        eprintln!(
            "warning: comparing runs of two pipelines ({} is {:?}, {} is {:?}); give the \
             pipeline file first to count latest~N within one pipeline",
            a.id, a.pipeline, b.id, b.pipeline
        );
    }
    // Final values only; for a per-step series, its last step.
    let finals = |run: &str| -> anyhow::Result<BTreeMap<(String, String), f64>> {
        let mut m: BTreeMap<(String, String), (Option<i64>, f64)> = BTreeMap::new();
        for r in rundb::run_metrics(&conn, run)? {
            let k = (r.stage, r.name);
            let keep = match (m.get(&k), r.step) {
                (None, _) => true,
                (Some((Some(_), _)), None) => true,
                (Some((Some(s), _)), Some(t)) => t >= *s,
                (Some((None, _)), _) => false,
            };
            if keep {
                m.insert(k, (r.step, r.value));
            }
        }
        Ok(m.into_iter().map(|(k, (_, v))| (k, v)).collect())
    };
    let (ma, mb) = (finals(&a.id)?, finals(&b.id)?);
    let mut keys: Vec<&(String, String)> = ma.keys().chain(mb.keys()).collect();
    keys.sort();
    keys.dedup();
    let rows: Vec<_> = keys
        .iter()
        .map(|k| {
            let (va, vb) = (ma.get(*k).copied(), mb.get(*k).copied());
            let delta = match (va, vb) {
                (Some(x), Some(y)) => Some(y - x),
                _ => None,
            };
            (k, va, vb, delta)
        })
        .collect();
    if args.json {
        let v = json!({
            "run_a": a.id, "run_b": b.id,
            "metrics": rows.iter().map(|(k, va, vb, d)| json!({
                "stage": k.0, "name": k.1, "a": va, "b": vb, "delta": d,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no metrics in either run ({} and {})", a.id, b.id);
        return Ok(ExitCode::SUCCESS);
    }
    let f = |v: Option<f64>, signed: bool| {
        v.map(|x| tsumugi_base::metrics_file::display(x, signed))
            .unwrap_or_else(|| "-".into())
    };
    println!("{:<36} {:>14} {:>14} {:>14}", "METRIC", a.id, b.id, "DELTA");
    for (k, va, vb, d) in rows {
        println!(
            "{:<36} {:>14} {:>14} {:>14}",
            format!("{}.{}", k.0, k.1),
            f(va, false),
            f(vb, false),
            f(d, true)
        );
    }
    Ok(ExitCode::SUCCESS)
}
