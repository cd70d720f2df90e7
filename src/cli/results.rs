//! What `run` prints after its summary line: the final metrics of the stages that ran, the
//! gates they passed, and the plots they wrote (issue 14: results where people look).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::executor::{RunSummary, StageState};
use crate::project::Project;
use crate::rundb;
use crate::spec::{Action, Pipeline};
use tsumugi_base::metrics_file::display;

/// One stage's results.
#[derive(Debug, Default)]
pub(super) struct StageResults {
    pub name: String,
    /// Final values: the value without a step, else the last step's.
    pub metrics: Vec<(String, f64)>,
    /// `evaluate fail_if` gates and `register:` promotions, as sentences.
    pub gates: Vec<String>,
    /// Plot files it wrote, relative to the project root.
    pub plots: Vec<String>,
}

/// The results of the stages of `s` that ran, in the run's order; empty ones left out.
pub(super) fn collect(project: &Project, pipeline: &Pipeline, s: &RunSummary) -> Vec<StageResults> {
    let recorded = match rundb::open_read(project) {
        Ok(Some(conn)) if !s.run_id.is_empty() => {
            rundb::run_metrics(&conn, &s.run_id).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for o in &s.stages {
        let ran = o.status == StageState::Ran;
        let mut r = StageResults {
            name: o.name.clone(),
            ..Default::default()
        };
        if ran {
            // (value, step): a final value (no step) wins over any step; else the last step.
            let mut finals: BTreeMap<&str, (f64, Option<i64>)> = BTreeMap::new();
            for m in recorded.iter().filter(|m| m.stage == o.name) {
                let keep = match (finals.get(m.name.as_str()), m.step) {
                    (None, _) => true,
                    (Some((_, Some(_))), None) => true,
                    (Some((_, Some(a))), Some(b)) => b >= *a,
                    (Some((_, None)), _) => false,
                };
                if keep {
                    finals.insert(&m.name, (m.value, m.step));
                }
            }
            r.metrics = finals
                .into_iter()
                .map(|(k, (v, _))| (k.to_string(), v))
                .collect();
        }
        if let Some(stage) = pipeline.stage(&o.name)
            && ran
        {
            r.gates.extend(fail_if_gates(&stage.action, &r.metrics));
            r.plots = plot_files(project, stage);
        }
        if let Some(reg) = &o.registration
            && reg.gate.is_some()
            && o.status.is_ok()
        {
            r.gates
                .push(format!("register {}: {}", reg.name, reg.message));
        }
        if !(r.metrics.is_empty() && r.gates.is_empty() && r.plots.is_empty()) {
            out.push(r);
        }
    }
    out
}

/// `evaluate`'s `fail_if:` gates, which a stage that ran has passed (a failed one fails it).
fn fail_if_gates(action: &Action, metrics: &[(String, f64)]) -> Vec<String> {
    let Action::Builtin { kind, with, .. } = action else {
        return Vec::new();
    };
    if kind != "evaluate" {
        return Vec::new();
    }
    let gates: Vec<&Value> = match with.get("fail_if") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v @ Value::Object(_)) => vec![v],
        _ => return Vec::new(),
    };
    gates
        .into_iter()
        .filter_map(|g| {
            let metric = g.get("metric")?.as_str()?;
            let value = metrics.iter().find(|(k, _)| k == metric).map(|(_, v)| *v);
            let rule = ["below", "above", "below_baseline", "above_baseline"]
                .iter()
                .find_map(|k| Some(format!("{k} {}", g.get(*k)?)))?;
            Some(format!(
                "gate {metric} not {rule}: passed{}",
                value
                    .map(|v| format!(" ({metric} = {})", display(v, false)))
                    .unwrap_or_default()
            ))
        })
        .collect()
}

/// The plot files a stage wrote: its declared `plots:` files, and the images in a built-in
/// kind's `plots` output directory.
fn plot_files(project: &Project, stage: &crate::spec::Stage) -> Vec<String> {
    let mut files: Vec<String> = stage
        .plots
        .iter()
        .flat_map(|p| p.series.iter().map(|s| s.file.display().to_string()))
        .collect();
    if matches!(stage.action, Action::Builtin { .. })
        && let Some(out) = stage.outs.get("plots")
        && let Ok(rd) = std::fs::read_dir(project.root().join(&out.path))
    {
        let mut imgs: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("png" | "svg")))
            .map(|p| {
                out.path
                    .join(p.file_name().unwrap_or_default())
                    .display()
                    .to_string()
            })
            .collect();
        imgs.sort();
        files.extend(imgs);
    }
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.clone()));
    files
}

/// The block printed under `run … ok in …`.
pub(super) fn print(results: &[StageResults], file: &Path) {
    let width = results.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let mut any_declared = false;
    for r in results {
        if !r.metrics.is_empty() {
            let ms: Vec<String> = r
                .metrics
                .iter()
                .map(|(k, v)| format!("{k}={}", display(*v, false)))
                .collect();
            println!("  {:<width$}  {}", r.name, ms.join("  "));
        }
        for g in &r.gates {
            println!("  {:<width$}  {g}", r.name);
        }
        if !r.plots.is_empty() {
            any_declared = true;
            println!("  {:<width$}  plots: {}", r.name, r.plots.join(", "));
        }
    }
    if any_declared {
        println!("  draw them: tsumugi plots show {}", file.display());
    }
}

/// The same, as fields of a stage in `run --json`.
pub(super) fn add_json(stages: &mut [Value], results: &[StageResults]) {
    for r in results {
        if let Some(v) = stages.iter_mut().find(|v| v["name"] == r.name.as_str()) {
            v["metrics"] = Value::Object(
                r.metrics
                    .iter()
                    .map(|(k, x)| (k.clone(), json_number(*x)))
                    .collect(),
            );
            v["gates"] = json!(r.gates);
            v["plots"] = json!(r.plots);
        }
    }
}

/// A whole number as a JSON integer (`1379`, not `1379.0`).
fn json_number(v: f64) -> Value {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluate_gates_that_passed_are_named_with_their_value() {
        let action = Action::Builtin {
            kind: "evaluate".into(),
            version: 1,
            with: json!({"fail_if": [{"metric": "spearman", "below": 0.7}, {"metric": "rmse", "above": 1}]}),
        };
        let m = vec![("spearman".to_string(), 0.8125), ("rmse".to_string(), 0.5)];
        assert_eq!(
            fail_if_gates(&action, &m),
            [
                "gate spearman not below 0.7: passed (spearman = 0.812500)",
                "gate rmse not above 1: passed (rmse = 0.500000)"
            ]
        );
        let cmd = Action::Cmd { cmd: "true".into() };
        assert!(fail_if_gates(&cmd, &m).is_empty());
    }
}
