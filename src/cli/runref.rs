//! `[FILE] RUN…` on the commands that read recorded runs: with a pipeline file, `latest`
//! and `latest~N` count only that pipeline's runs.

use std::path::Path;

use crate::project::Project;
use crate::rundb::{self, RunRow};

/// Splits `[FILE] RUN…` where exactly `runs` run references are expected after an optional
/// file (a longer list starts with the file). Returns the pipeline's name and the runs.
pub(super) fn resolve(
    project: &Project,
    conn: &rusqlite::Connection,
    args: &[String],
    runs: usize,
) -> anyhow::Result<(Option<String>, Vec<RunRow>)> {
    let (file, refs) = match args.len() {
        n if n == runs + 1 => (Some(args[0].as_str()), &args[1..]),
        n if n == runs => (None, args),
        n => anyhow::bail!(
            "expected [FILE] and {runs} run reference{} (got {n} arguments)",
            if runs == 1 { "" } else { "s" }
        ),
    };
    let pipeline = file.map(|f| pipeline_name(project, conn, f)).transpose()?;
    let rows = refs
        .iter()
        .map(|r| rundb::find_run_in(conn, r, pipeline.as_deref()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((pipeline, rows))
}

/// The `name:` of the pipeline in `file`; if it no longer loads, the name its runs were
/// recorded under.
pub(super) fn pipeline_name(
    project: &Project,
    conn: &rusqlite::Connection,
    file: &str,
) -> anyhow::Result<String> {
    if let Ok(p) = crate::spec::load(Path::new(file), project) {
        return Ok(p.name);
    }
    let recorded: Option<String> = conn
        .query_row(
            "SELECT pipeline FROM runs WHERE pipeline_file = ?1 ORDER BY seq DESC LIMIT 1",
            [file],
            |r| r.get(0),
        )
        .ok();
    recorded.ok_or_else(|| {
        anyhow::anyhow!("{file}: not a pipeline file that loads, and no run of it is recorded")
    })
}
