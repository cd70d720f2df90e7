use std::process::ExitCode;

use clap::Args;

use crate::project::Project;

#[derive(Debug, Args)]
pub struct StatusArgs {}

pub fn run(_project: &Project, _args: StatusArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`tsumugi status` is not implemented yet")
}
