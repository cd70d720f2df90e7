use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::project::Project;

#[derive(Debug, Subcommand)]
pub enum MetricsCommand {
    /// Metric by metric, the values of two runs and their difference.
    Diff(DiffArgs),
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    pub run_a: String,
    pub run_b: String,
}

pub fn run(_project: &Project, _cmd: MetricsCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`tsumugi metrics diff` is not implemented yet")
}
