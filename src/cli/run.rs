use std::process::ExitCode;

use clap::Args;

use crate::project::Project;

#[derive(Debug, Args)]
pub struct RunArgs {}

pub fn run(_project: &Project, _args: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`tsumugi run` is not implemented yet")
}
