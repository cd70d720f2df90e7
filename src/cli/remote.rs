//! `tsumugi remote add|list|remove|verify`, `tsumugi push`, `tsumugi pull`, and the
//! `--remote` choice of `tsumugi run` (docs/remote-cache.md).

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};

use crate::lock::Wait;
use crate::project::Project;
use crate::remote_cache::{self, SyncLine, SyncState};
use tsumugi_remote::{Config, Remote};

/// `tsumugi remote --help`.
pub const LONG_ABOUT: &str =
    "Remote caches: the stage cache on object storage, shared by machines and people.

Remotes are named in .tsumugi/config.toml at the project root (commit it to share the \
names). URLs: s3://BUCKET/PREFIX (any S3-compatible server), gs://BUCKET/PREFIX, \
az://CONTAINER/PREFIX, file:///DIR or a directory path (local disk, NFS). Credentials are \
never stored by tsumugi: each store reads its standard environment, e.g. for s3:// \
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION and \
AWS_ENDPOINT_URL (for MinIO, moto, …); see docs/remote-cache.md.

Downloads are verified (an object whose SHA-256 is not its name is never restored: the \
stage runs), and an unreachable remote makes a run carry on locally after one warning.

With a default remote (`remote add --default`), `tsumugi run` looks each stale stage up \
on it before running it and uploads each stage it runs; `run --no-remote` turns that off.

Examples:
  tsumugi remote add team s3://ml-cache/tsumugi --default
  tsumugi push                 # upload the results the workspace is built from
  tsumugi pull                 # on another machine: fetch them and check them out
  tsumugi remote verify team   # every entry's objects present and hashing to their names";

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Name a remote: `tsumugi remote add NAME URL [--default]`.
    Add {
        name: String,
        /// s3://BUCKET/PREFIX, gs://…, az://…, file:///DIR or a directory path (relative to the
        /// project).
        url: String,
        /// Use it for `run`, `push` and `pull` when no --remote is given.
        #[arg(long)]
        default: bool,
    },
    /// List the remotes (the default one marked with *).
    List,
    /// Forget a remote (its contents are left alone).
    Remove { name: String },
    /// Check a remote: every action entry's objects are there and hash to their names.
    /// Downloads everything the entries reference.
    Verify {
        /// Default: the default remote.
        name: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The remote (default: the project's default remote).
    #[arg(short, long, value_name = "NAME")]
    pub remote: Option<String>,
    /// Pipeline file, then stage names (with everything they need). Without a file, the only
    /// `*.yaml` in pipelines/.
    #[arg(value_name = "FILE|STAGE")]
    pub args: Vec<String>,
    /// If another tsumugi holds the project lock, fail (exit 3) instead of waiting (pull).
    #[arg(long)]
    pub no_wait: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// The remote to use, by name or the default; `None` when neither is configured.
pub(super) fn open(project: &Project, name: Option<&str>) -> anyhow::Result<Option<Arc<Remote>>> {
    let cfg = Config::load(project.root())?;
    match cfg.resolve(name)? {
        Some(spec) => Ok(Some(Arc::new(Remote::open(
            &spec.name,
            &spec.url,
            project.root(),
        )?))),
        None => Ok(None),
    }
}

/// For `run`: like [`open`], but a remote that cannot be opened (a directory not mounted,
/// an S3 client that cannot be set up) is a warning and no remote, not a failed run. A
/// config error still fails.
pub(super) fn open_for_run(
    project: &Project,
    name: Option<&str>,
) -> anyhow::Result<Option<Arc<Remote>>> {
    let Some(spec) = Config::load(project.root())?.resolve(name)? else {
        return Ok(None);
    };
    match Remote::open(&spec.name, &spec.url, project.root()) {
        Ok(r) => Ok(Some(Arc::new(r))),
        Err(e) => {
            eprintln!("warning: {e:#}; running locally without it");
            Ok(None)
        }
    }
}

fn open_required(project: &Project, name: Option<&str>) -> anyhow::Result<Arc<Remote>> {
    open(project, name)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no remote given and no default remote in {}; name one with --remote NAME or add one with `tsumugi remote add NAME URL --default`",
            tsumugi_remote::CONFIG_FILE
        )
    })
}

pub fn run(project: &Project, cmd: RemoteCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RemoteCommand::Add { name, url, default } => {
            // Fails now on a URL this build cannot use, not at the first run.
            Remote::create(&name, &url, project.root())?;
            let mut cfg = Config::load(project.root())?;
            cfg.add(&name, &url, default)?;
            cfg.save()?;
            println!(
                "remote {name} → {url}{}",
                if default { " (default)" } else { "" }
            );
        }
        RemoteCommand::List => {
            let cfg = Config::load(project.root())?;
            let def = cfg.default_remote().map(str::to_string);
            for (name, spec) in cfg.remotes()? {
                let mark = if def.as_deref() == Some(&name) {
                    "*"
                } else {
                    " "
                };
                println!("{mark} {name:<12} {}", spec.url);
            }
        }
        RemoteCommand::Remove { name } => {
            let mut cfg = Config::load(project.root())?;
            cfg.remove(&name)?;
            cfg.save()?;
            println!("remote {name} removed");
        }
        RemoteCommand::Verify { name } => {
            let remote = open_required(project, name.as_deref())?;
            let bar = bar(false, "verifying");
            let tick = |_: u64| bar.inc(1);
            let rep = super::run::runtime()?.block_on(remote.verify(&tick))?;
            bar.finish_and_clear();
            for p in &rep.problems {
                println!("problem: {p}");
            }
            println!(
                "remote {}: {} entries, {} objects checked: {}",
                remote.name(),
                rep.entries,
                rep.objects,
                if rep.problems.is_empty() {
                    "consistent".to_string()
                } else {
                    format!("{} problem(s)", rep.problems.len())
                }
            );
            if !rep.problems.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tsumugi push` (`pull` false) and `tsumugi pull`.
pub fn sync(project: &Project, args: SyncArgs, pull: bool) -> anyhow::Result<ExitCode> {
    let (file, targets) = super::run::split_file_and_stages(project, &args.args)?;
    let pipeline = match super::run::load(project, &file) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    if let Err(e) = crate::executor::select(&pipeline, &targets) {
        eprintln!("error: {e:#}");
        return Ok(ExitCode::from(2));
    }
    let remote = open_required(project, args.remote.as_deref())?;
    let bar = bar(args.quiet, if pull { "pulling" } else { "pushing" });
    let moved = std::sync::atomic::AtomicU64::new(0);
    let progress = |stage: &str, bytes: u64| {
        let total = moved.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed) + bytes;
        bar.set_message(format!("{} — {stage}", indicatif::HumanBytes(total)));
        bar.inc(1);
    };
    let rt = super::run::runtime()?;
    let t0 = std::time::Instant::now();
    let res = if pull {
        let wait = if args.no_wait { Wait::No } else { Wait::Yes };
        rt.block_on(remote_cache::pull(
            project, &pipeline, &targets, &remote, wait, &progress,
        ))
    } else {
        rt.block_on(remote_cache::push(
            project, &pipeline, &targets, &remote, &progress,
        ))
    };
    bar.finish_and_clear();
    let lines = match res {
        Ok(l) => l,
        Err(e) if e.downcast_ref::<crate::lock::Locked>().is_some() => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(super::run::EXIT_LOCKED));
        }
        Err(e) => return Err(e),
    };
    print_lines(&lines, pull, remote.name(), t0.elapsed());
    Ok(if lines.iter().any(|l| l.state == SyncState::Failed) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_lines(lines: &[SyncLine], pull: bool, remote: &str, took: std::time::Duration) {
    let (verb, dir) = if pull {
        ("fetched", "from")
    } else {
        ("uploaded", "to")
    };
    let mut total = tsumugi_remote::Transfer::default();
    for l in lines {
        total.add(l.transfer);
        let mut s = format!("{:<14} {}", l.state.as_str(), l.stage);
        if l.state == SyncState::Done {
            s.push_str(&format!(
                ": {} objects {verb} ({}), {} already there",
                l.transfer.objects,
                indicatif::HumanBytes(l.transfer.bytes),
                l.transfer.skipped
            ));
        }
        if let Some(m) = &l.message {
            s.push_str(&format!(": {m}"));
        }
        println!("{s}");
    }
    let done = lines.iter().filter(|l| l.state == SyncState::Done).count();
    println!(
        "{} {done}/{} stages {dir} remote {remote} in {:.1}s: {} objects, {} {verb}",
        if pull { "pulled" } else { "pushed" },
        lines.len(),
        took.as_secs_f64(),
        total.objects,
        indicatif::HumanBytes(total.bytes),
    );
}

/// A spinner with a count, on stderr when it is a terminal (indicatif hides it otherwise).
fn bar(quiet: bool, what: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} {{pos}} objects {{elapsed}} {{wide_msg}}"
        ))
        .expect("template"),
    );
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}
