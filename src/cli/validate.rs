use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::graph::Dag;
use crate::project::Project;
use crate::spec;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Pipeline file (relative to the project root).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Prints `ok: N stages`, or every error (file:line:col: message) on stderr and exits 2
/// (invalid input, as for every command).
pub fn run(project: &Project, args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let checked = spec::load(&args.file, project).and_then(|p| Dag::build(&p).map(|_| p));
    match checked {
        Ok(p) => {
            let n = p.stages.len();
            println!("ok: {n} stage{}", if n == 1 { "" } else { "s" });
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(2))
        }
    }
}
