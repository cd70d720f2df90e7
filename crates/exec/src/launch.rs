//! Where a stage's work runs. Everything around the launch (clearing outputs, the log,
//! retries, fingerprint, commit, cache, records) is the executor's and the same for all.

use anyhow::Result;
use tsumugi_pipeline::{ExecutorKind, Stage};
use tsumugi_stages::{Reporter, Stage as StageImpl, StageInput};

use crate::ctx::Ctx;

pub(crate) trait Launcher: Sync {
    /// Runs one attempt of the stage to completion (or failure, or cancellation).
    fn launch(
        &self,
        ctx: &Ctx,
        stage: &Stage,
        imp: &dyn StageImpl,
        input: &StageInput<'_>,
        report: &dyn Reporter,
        attempt: u32,
    ) -> Result<()>;
    /// True when the work does not use this machine's CPU and GPU slots.
    fn is_remote(&self) -> bool;
}

/// This machine: a supervised process group, or a built-in kind in-process.
pub(crate) struct LocalLauncher;

impl Launcher for LocalLauncher {
    fn launch(
        &self,
        _ctx: &Ctx,
        _stage: &Stage,
        imp: &dyn StageImpl,
        input: &StageInput<'_>,
        report: &dyn Reporter,
        _attempt: u32,
    ) -> Result<()> {
        imp.run(input, report)
    }
    fn is_remote(&self) -> bool {
        false
    }
}

/// A Slurm batch job per attempt ([`crate::slurm`]).
pub(crate) struct SlurmLauncher;

impl Launcher for SlurmLauncher {
    fn launch(
        &self,
        ctx: &Ctx,
        stage: &Stage,
        _imp: &dyn StageImpl,
        input: &StageInput<'_>,
        report: &dyn Reporter,
        attempt: u32,
    ) -> Result<()> {
        crate::slurm::run_stage(&ctx.slurm, &ctx.run_id, stage, input, report, attempt)
    }
    fn is_remote(&self) -> bool {
        true
    }
}

/// Where `stage`'s work runs in this run.
pub(crate) fn launcher(ctx: &Ctx, stage: &Stage) -> &'static dyn Launcher {
    match stage.exec.resolve(ctx.executor) {
        ExecutorKind::Local => &LocalLauncher,
        ExecutorKind::Slurm => &SlurmLauncher,
    }
}
