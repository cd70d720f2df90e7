use std::process::ExitCode;

use clap::Args;

use crate::project::Project;

#[derive(Debug, Args)]
pub struct ValidateArgs {}

pub fn run(_project: &Project, _args: ValidateArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`tsumugi validate` is not implemented yet")
}
