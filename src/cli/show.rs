use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use crate::project::Project;
use crate::rundb;

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Run id (or a unique prefix), `latest`, or `latest~N`.
    #[arg(value_name = "RUN", default_value = "latest")]
    pub run: String,
    /// Print JSON on stdout (see docs/json-output.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(project: &Project, args: ShowArgs) -> anyhow::Result<ExitCode> {
    let Some(conn) = rundb::open_read(project)? else {
        eprintln!("error: no runs yet (runs/tsumugi.db does not exist)");
        return Ok(ExitCode::from(2));
    };
    let r = match rundb::find_run(&conn, &args.run) {
        Ok(r) => r,
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
            println!("    {}.{} = {}", m.stage, m.name, m.value);
        }
        let steps = metrics.iter().filter(|m| m.step.is_some()).count();
        if steps > 0 {
            println!("    ({steps} per-step values; --json lists them)");
        }
    }
    Ok(ExitCode::SUCCESS)
}
