use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::fsmonitor::{self, Request};
use crate::project::Project;

/// `tsumugi fsmonitor --help`.
pub const LONG_ABOUT: &str = "\
Keep a file-system monitor running so that `status` need not stat every input file.

The daemon watches the project tree (not cache/, runs/, .git/) with inotify and numbers \
every change. `tsumugi status` asks it what changed since its last check and reuses the \
hash of every dependency and output with no change at, above or below its path: a no-op \
status of a 100,000-file input then makes no stat call per file.

Whenever the daemon cannot vouch for a path, status does the full stat pass, as it does \
without a daemon: not running, restarted or killed (once), an inotify queue overflow \
(once), a directory it could not watch, symlinks or hard links in the tree, no answer \
within 2 s (TSUMUGI_FSMONITOR_TIMEOUT_MS). TSUMUGI_FSMONITOR=0 ignores a running daemon. \
`tsumugi run` still checks its inputs by stat. Linux only. Details: docs/fsmonitor.md.

Examples:
  tsumugi fsmonitor start        # background; log in cache/fsmonitor/daemon.log
  tsumugi status p.yaml --json   # \"fsmonitor\": {\"used\": true, \"files_statted\": 0, ...}
  tsumugi fsmonitor status       # pid, watched directories, events, overflows
  tsumugi fsmonitor stop";

#[derive(Debug, Args)]
pub struct FsmonitorArgs {
    #[command(subcommand)]
    pub command: FsmonitorCommand,
}

#[derive(Debug, Subcommand)]
pub enum FsmonitorCommand {
    /// Run the daemon in the foreground (for systemd or a terminal); Ctrl-C stops it.
    Run,
    /// Start the daemon in the background and wait until it answers.
    Start {
        /// How long to wait for the initial watches of a large tree.
        #[arg(long, default_value = "60s", value_parser = tsumugi_base::duration::parse_arg)]
        wait: Duration,
    },
    /// Stop the project's daemon.
    Stop,
    /// Say whether a daemon runs, what it watches and what it has seen.
    Status {
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(project: &Project, args: FsmonitorArgs) -> Result<ExitCode> {
    match args.command {
        FsmonitorCommand::Run => run_foreground(project),
        FsmonitorCommand::Start { wait } => start(project, wait),
        FsmonitorCommand::Stop => stop(project),
        FsmonitorCommand::Status { json } => status(project, json),
    }
}

#[cfg(target_os = "linux")]
fn run_foreground(project: &Project) -> Result<ExitCode> {
    fsmonitor::daemon::run(project, |_, _| {})?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(target_os = "linux"))]
fn run_foreground(_project: &Project) -> Result<ExitCode> {
    bail!("the fsmonitor daemon needs Linux (inotify); status does the full stat pass")
}

fn ask(project: &Project, op: &str) -> Result<serde_json::Value> {
    fsmonitor::request(
        project,
        &Request {
            op: op.into(),
            since: String::new(),
        },
        Duration::from_secs(5),
    )
}

fn start(project: &Project, wait: Duration) -> Result<ExitCode> {
    if let Ok(v) = ask(project, "status") {
        println!("fsmonitor already running (pid {})", v["pid"]);
        return Ok(ExitCode::SUCCESS);
    }
    let dir = fsmonitor::dir(project);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log_path = fsmonitor::log_path(project);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let root = std::fs::canonicalize(project.root())?;
    let exe = std::env::current_exe().context("cannot find the tsumugi binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("-C")
        .arg(&root)
        .args(["fsmonitor", "run"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own process group: Ctrl-C in the starting terminal does not stop it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("cannot start the daemon")?;
    let t0 = Instant::now();
    loop {
        if let Ok(v) = ask(project, "status") {
            println!(
                "fsmonitor started (pid {}, {} directories watched; log {})",
                v["pid"],
                v["watched_dirs"],
                log_path.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(st) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "the daemon exited ({st}):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if t0.elapsed() > wait {
            bail!(
                "the daemon did not answer within {wait:?} (still setting up watches?); see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(project: &Project) -> Result<ExitCode> {
    let Ok(v) = ask(project, "status") else {
        println!("fsmonitor is not running");
        return Ok(ExitCode::SUCCESS);
    };
    let _ = ask(project, "stop");
    // The daemon's lock is free once it has exited.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if !fsmonitor::socket_path(project).exists() {
            println!("fsmonitor stopped (pid {})", v["pid"]);
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("the daemon (pid {}) did not stop within 10 s", v["pid"])
}

fn status(project: &Project, json: bool) -> Result<ExitCode> {
    match ask(project, "status") {
        Ok(v) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "fsmonitor running: pid {}, since {}, watching {} ({} directories)",
                    v["pid"],
                    v["started"].as_str().unwrap_or("?"),
                    v["root"].as_str().unwrap_or("?"),
                    v["watched_dirs"]
                );
                println!(
                    "  {} events, {} distinct changed paths, {} queue overflows, {} queries",
                    v["events"], v["changed_paths"], v["overflows"], v["queries"]
                );
                if let Some(u) = v["unwatched"].as_array().filter(|u| !u.is_empty()) {
                    println!(
                        "  {} directories could not be watched (always re-checked): {}",
                        u.len(),
                        u.iter()
                            .filter_map(|p| p.as_str())
                            .take(5)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"running": false, "why": format!("{e:#}")})
                );
            } else {
                println!("fsmonitor is not running ({e:#})");
            }
            // Like `systemctl is-active`: non-zero when not running.
            Ok(ExitCode::from(1))
        }
    }
}
