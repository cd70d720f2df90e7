use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use crate::project::Project;
use crate::rundb;

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// `[FILE] [RUN]`: a run id (or a unique prefix), `latest`, or `latest~N` (default
    /// `latest`). With a pipeline FILE first, `latest~N` counts only that pipeline's runs.
    #[arg(value_name = "FILE|RUN", num_args = 0..=2)]
    pub args: Vec<String>,
    /// Print JSON on stdout (see docs/json-output.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(project: &Project, args: ShowArgs) -> anyhow::Result<ExitCode> {
    let Some(conn) = rundb::open_read(project)? else {
        eprintln!("error: no runs yet (runs/tsumugi.db does not exist)");
        return Ok(ExitCode::from(2));
    };
    let mut refs = args.args.clone();
    // `show FILE` alone means that pipeline's latest run.
    if refs.is_empty() || (refs.len() == 1 && looks_like_file(project, &refs[0])) {
        refs.push("latest".into());
    }
    let r = match super::runref::resolve(project, &conn, &refs, 1) {
        Ok((_, mut rows)) => rows.remove(0),
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let stages = rundb::stage_records(&conn, &r.id)?;
    let metrics = rundb::run_metrics(&conn, &r.id)?;
    let artifacts = rundb::run_artifacts(&conn, &r.id)?;
    if args.json {
        let v = json!({ "run": r, "stages": stages.iter().map(|s| json!({
            "name": s.stage, "status": s.status, "fingerprint": s.fingerprint,
            "started_at": s.started_at, "ended_at": s.ended_at, "duration_ms": s.duration_ms,
            "exit_code": s.exit_code, "log": s.log_path, "attempt": s.attempt, "message": s.message,
        })).collect::<Vec<_>>(), "metrics": metrics, "artifacts": artifacts });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "run {} — {} ({} trigger) {}",
        r.id, r.pipeline, r.trigger, r.status
    );
    println!("  file:    {}", r.pipeline_file);
    println!("  started: {}", r.started_at);
    if let Some(e) = &r.ended_at {
        println!("  ended:   {e}");
    }
    println!();
    for s in &stages {
        let dur = s
            .duration_ms
            .map(|d| format!("{:.1}s", d as f64 / 1000.0))
            .unwrap_or_default();
        println!(
            "  {:<10} {:<20} {:>7}  {}{}",
            s.status,
            s.stage,
            dur,
            s.fingerprint
                .as_deref()
                .map(|f| &f[..12.min(f.len())])
                .unwrap_or("-"),
            s.message
                .as_ref()
                .map(|m| format!("  {m}"))
                .unwrap_or_default()
        );
        if let Some(l) = &s.log_path
            && (s.status == "failed" || s.status == "ran")
        {
            println!("  {:<10} log: {l}", "");
        }
    }
    if !metrics.is_empty() {
        println!("\n  metrics:");
        for m in metrics.iter().filter(|m| m.step.is_none()) {
            println!(
                "    {}.{} = {}",
                m.stage,
                m.name,
                tsumugi_base::metrics_file::display(m.value, false)
            );
        }
        let steps = metrics.iter().filter(|m| m.step.is_some()).count();
        if steps > 0 {
            println!("    ({steps} per-step values; --json lists them)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A pipeline file rather than a run reference (as `run FILE` decides).
pub(super) fn looks_like_file(project: &Project, arg: &str) -> bool {
    arg.ends_with(".yaml")
        || arg.ends_with(".yml")
        || arg.contains('/')
        || project.root().join(arg).is_file()
}
