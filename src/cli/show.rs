use std::process::ExitCode;

use clap::Args;

use crate::project::Project;

#[derive(Debug, Args)]
pub struct ShowArgs {}

pub fn run(_project: &Project, _args: ShowArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`tsumugi show` is not implemented yet")
}
