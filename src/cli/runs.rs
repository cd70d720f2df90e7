use std::process::ExitCode;

use clap::Args;

use crate::project::Project;
use crate::rundb;

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// How many runs to list (newest first).
    #[arg(short = 'n', long = "limit", default_value_t = 20)]
    pub limit: usize,
    /// Print JSON on stdout (see docs/json-output.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(project: &Project, args: RunsArgs) -> anyhow::Result<ExitCode> {
    let runs = match rundb::open_read(project)? {
        Some(c) => rundb::list_runs(&c, args.limit)?,
        None => Vec::new(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        println!("no runs yet");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<22} {:<20} {:<8} {:<11} {:<24} TARGETS",
        "RUN", "PIPELINE", "TRIGGER", "STATUS", "STARTED"
    );
    for r in runs {
        println!(
            "{:<22} {:<20} {:<8} {:<11} {:<24} {}",
            r.id, r.pipeline, r.trigger, r.status, r.started_at, r.targets
        );
    }
    Ok(ExitCode::SUCCESS)
}
