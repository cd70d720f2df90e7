use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use crate::executor;
use crate::project::Project;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Pipeline file (relative to the project root); default: the only one in pipelines/.
    #[arg(value_name = "FILE")]
    pub file: Option<String>,
    /// Print JSON on stdout (see docs/json-output.md); its `fsmonitor` field says what a
    /// running `tsumugi fsmonitor` daemon spared.
    #[arg(long)]
    pub json: bool,
}

pub fn run(project: &Project, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (file, _) = super::run::split_file_and_stages(project, args.file.as_slice())?;
    let pipeline = match super::run::load(project, &file) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let st = match executor::status(project, &pipeline) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let stale = st.iter().filter(|s| !s.fresh).count();
    if args.json {
        let v = json!({
            "pipeline": pipeline.name,
            "stale": stale,
            "stages": st.iter().map(|s| json!({
                "name": s.name,
                "status": if s.fresh { "fresh" } else { "stale" },
                "fresh": s.fresh,
                "fingerprint": s.fingerprint,
                "reasons": s.reasons,
                "items": s.items,
            })).collect::<Vec<_>>(),
            // What the file-system monitor spared (docs/fsmonitor.md).
            "fsmonitor": crate::fsmonitor::last_report(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for s in &st {
            if s.fresh {
                println!("fresh  {}", s.name);
            } else {
                println!("stale  {}", s.name);
                for r in &s.reasons {
                    println!("         {r}");
                }
            }
        }
        if stale == 0 {
            println!(
                "{}: everything is up to date ({} stages)",
                pipeline.name,
                st.len()
            );
        } else {
            println!("{}: {stale} of {} stages stale", pipeline.name, st.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}
