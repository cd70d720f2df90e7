use std::process::ExitCode;

use clap::Args;

use crate::project::Project;

#[derive(Debug, Args)]
pub struct RunsArgs {}

pub fn run(_project: &Project, _args: RunsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`tsumugi runs` is not implemented yet")
}
