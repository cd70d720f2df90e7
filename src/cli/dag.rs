use std::process::ExitCode;

use clap::Args;

use crate::project::Project;

#[derive(Debug, Args)]
pub struct DagArgs {}

pub fn run(_project: &Project, _args: DagArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`tsumugi dag` is not implemented yet")
}
