use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::cache::Cache;
use crate::project::Project;
use crate::rundb::{self, RunRow};
use crate::spec::{Action, Pipeline};

/// `tsumugi plots --help`.
pub const LONG_ABOUT: &str =
    "Draw the plots a run's stages declare (`plots:`) as SVG and PNG, with an \
index.html that shows them.

The data come from the run's results in the cache, not from the workspace, so an old run's \
plots are those it wrote (as long as `tsumugi gc` kept them). The plot declarations come \
from the pipeline file as it is now. The plots that built-in kinds write (evaluate's \
`plots` output) are copied beside them. See docs/plots.md.";

#[derive(Debug, Subcommand)]
pub enum PlotsCommand {
    /// Every declared plot of one run: `plots show [FILE] [RUN]` (default: the pipeline's
    /// latest run).
    Show(ShowArgs),
    /// The declared plots of several runs overlaid, one series per run (confusion matrices
    /// side by side): `plots diff [FILE] RUN RUN…`.
    Diff(DiffArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// `[FILE] [RUN]`: the pipeline file (default: the only one in pipelines/), and a run id,
    /// prefix, `latest` or `latest~N` counted within that pipeline (default `latest`).
    #[arg(value_name = "FILE|RUN", num_args = 0..=2)]
    pub args: Vec<String>,
    /// Where the files go (created if missing; existing plots of the same name replaced).
    #[arg(short = 'o', long, value_name = "DIR", default_value = "out/plots")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// `[FILE] RUN RUN…`: the pipeline file (default: the only one in pipelines/), then two
    /// or more runs (ids, prefixes, `latest`, `latest~N` within that pipeline).
    #[arg(value_name = "FILE|RUN", num_args = 2.., required = true)]
    pub args: Vec<String>,
    /// Where the files go.
    #[arg(
        short = 'o',
        long,
        value_name = "DIR",
        default_value = "out/plots/diff"
    )]
    pub out: PathBuf,
}

pub fn run(project: &Project, cmd: PlotsCommand) -> anyhow::Result<ExitCode> {
    let (args, out, diff) = match cmd {
        PlotsCommand::Show(a) => (a.args, a.out, false),
        PlotsCommand::Diff(a) => (a.args, a.out, true),
    };
    let Some(conn) = rundb::open_read(project)? else {
        eprintln!("error: no runs yet (runs/tsumugi.db does not exist)");
        return Ok(ExitCode::from(2));
    };
    // The pipeline file: given first, or the only one in pipelines/.
    let (file, mut refs) = match args.first() {
        Some(a) if super::show::looks_like_file(project, a) => {
            (PathBuf::from(a), args[1..].to_vec())
        }
        _ => match super::run::split_file_and_stages(project, &[]) {
            Ok((f, _)) => (f, args.clone()),
            Err(e) => {
                eprintln!("error: {e:#}");
                return Ok(ExitCode::from(2));
            }
        },
    };
    if refs.is_empty() && !diff {
        refs.push("latest".into());
    }
    if diff && refs.len() < 2 {
        eprintln!("error: plots diff needs two or more runs");
        return Ok(ExitCode::from(2));
    }
    let pipeline = match super::run::load(project, &file) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let runs: Vec<RunRow> = match refs
        .iter()
        .map(|r| rundb::find_run_in(&conn, r, Some(&pipeline.name)))
        .collect::<anyhow::Result<_>>()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let dir = project.root().join(&out);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cache = Cache::new(project.cache_dir());
    // Per run, each stage's completed fingerprint in it.
    let mut fps = Vec::new();
    for r in &runs {
        let recs = rundb::stage_records(&conn, &r.id)?;
        fps.push(
            recs.into_iter()
                .filter(|s| matches!(s.status.as_str(), "ran" | "cached" | "restored"))
                .filter_map(|s| Some((s.stage, s.fingerprint?)))
                .collect::<std::collections::HashMap<_, _>>(),
        );
    }
    let written = draw_all(&pipeline, &runs, &fps, &cache, &dir)?;
    let heading = if diff {
        format!(
            "{}: runs {}",
            pipeline.name,
            runs.iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        format!("{}: run {}", pipeline.name, runs[0].id)
    };
    if written.figures.is_empty() {
        eprintln!(
            "no plots: no stage of {} that ran in {} declares `plots:` or writes a plot directory",
            file.display(),
            if diff { "these runs" } else { "this run" }
        );
        return Ok(ExitCode::from(if written.failed { 1 } else { 0 }));
    }
    let index = tsumugi_plots::write_index(&dir, &heading, &written.figures)?;
    for p in &written.paths {
        println!("{}", rel(project, p));
    }
    println!("{}", rel(project, &index));
    Ok(if written.failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Default)]
struct Written {
    paths: Vec<PathBuf>,
    /// (caption, SVG file name) for index.html.
    figures: Vec<(String, String)>,
    failed: bool,
}

/// Reads a file of one run's cached outputs.
type Reader<'a> = Box<dyn Fn(&Path) -> anyhow::Result<Vec<u8>> + 'a>;

fn draw_all(
    pipeline: &Pipeline,
    runs: &[RunRow],
    fps: &[std::collections::HashMap<String, String>],
    cache: &Cache,
    dir: &Path,
) -> anyhow::Result<Written> {
    let mut w = Written::default();
    for stage in &pipeline.stages {
        // The runs in which this stage completed, and its cache entry in each.
        let present: Vec<(&RunRow, &String)> = runs
            .iter()
            .zip(fps)
            .filter_map(|(r, f)| Some((r, f.get(&stage.name)?)))
            .collect();
        if present.is_empty() {
            continue;
        }
        for plot in &stage.plots {
            let readers: Vec<Reader<'_>> = present
                .iter()
                .map(|(_, fp)| {
                    let fp = (*fp).clone();
                    Box::new(move |p: &Path| tsumugi_plots::read_output_file(cache, &fp, p))
                        as Reader<'_>
                })
                .collect();
            let files: Vec<tsumugi_plots::RunFiles<'_>> = present
                .iter()
                .zip(&readers)
                .map(|((r, _), read)| tsumugi_plots::RunFiles {
                    label: r.id.clone(),
                    read: read.as_ref(),
                })
                .collect();
            match tsumugi_plots::draw_plot(plot, &stage.name, &files, dir) {
                Ok(paths) => {
                    w.figures.push((
                        format!(
                            "{}: {}",
                            stage.name,
                            plot.title.as_deref().unwrap_or(&plot.id)
                        ),
                        format!("{}.svg", tsumugi_plots::file_stem(&stage.name, &plot.id)),
                    ));
                    w.paths.extend(paths);
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    w.failed = true;
                }
            }
        }
        // Plots a built-in kind drew itself (evaluate's `plots` directory), per run.
        if matches!(stage.action, Action::Builtin { .. }) && stage.outs.contains_key("plots") {
            for (r, fp) in &present {
                let files = tsumugi_plots::output_dir_files(cache, fp, "plots", &["svg", "png"])?;
                for (rel_path, bytes) in files {
                    let suffix = if runs.len() > 1 {
                        format!(".{}", r.id)
                    } else {
                        String::new()
                    };
                    let stem = tsumugi_plots::file_stem(&stage.name, &rel_path);
                    let (base, ext) = stem.rsplit_once('.').unwrap_or((&stem, ""));
                    let name = format!("{base}{suffix}.{ext}");
                    let p = dir.join(&name);
                    tsumugi_base::atomic::write_atomic(&p, &bytes)?;
                    if ext == "svg" {
                        w.figures
                            .push((format!("{}: {rel_path} ({})", stage.name, r.id), name));
                    }
                    w.paths.push(p);
                }
            }
        }
    }
    Ok(w)
}

fn rel(project: &Project, p: &Path) -> String {
    p.strip_prefix(project.root())
        .unwrap_or(p)
        .display()
        .to_string()
}
