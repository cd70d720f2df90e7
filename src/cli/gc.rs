use std::process::ExitCode;

use clap::Args;

use crate::project::Project;

#[derive(Debug, Args)]
pub struct GcArgs {}

pub fn run(_project: &Project, _args: GcArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`tsumugi gc` is not implemented yet")
}
