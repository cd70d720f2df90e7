//! How a stage's work is carried out under the one stage contract: a command stage as a
//! supervised process group ([`CmdStage`]), a built-in kind through the stages crate.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tsumugi_stages::{Reporter, Stage as StageImpl, StageInput};

use tsumugi_pipeline::{Action, Stage};

/// The built-in stage implementations this build has: the `stages` crate's registry.
/// Kinds that need burn are absent from a build without the `ml` feature.
pub fn builtin_stage(kind: &str) -> Option<Box<dyn StageImpl>> {
    tsumugi_stages::kinds::implementation(kind)
}

pub(crate) fn stage_impl(stage: &Stage) -> Result<Box<dyn StageImpl>> {
    match &stage.action {
        Action::Cmd { cmd } => Ok(Box::new(CmdStage { cmd: cmd.clone() })),
        Action::Builtin { kind, .. } => builtin_stage(kind).with_context(|| {
            format!(
                "stage kind {kind} is not available in this build (stage {}); build with the `ml` feature (the default)",
                stage.name
            )
        }),
    }
}

/// A failed shell command.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct CommandFailed {
    pub code: Option<i32>,
    pub what: String,
}

/// A `cmd:` stage: `sh -c CMD` in the project root, in its own process group so the whole
/// tree can be killed on cancel or timeout, and recorded in `runs/.procs/` so the next
/// invocation can end what it left running if tsumugi dies ([`tsumugi_base::supervise`]).
pub struct CmdStage {
    pub cmd: String,
}

pub(crate) fn killpg(pgid: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory involved.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

impl StageImpl for CmdStage {
    fn run(&self, input: &StageInput<'_>, report: &dyn Reporter) -> Result<()> {
        let (mut child, tracked) = tsumugi_base::supervise::spawn_shell_recorded(
            &self.cmd,
            |cmd| {
                cmd.current_dir(input.project_root)
                    .envs(input.env)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
            },
            input.project_root,
            input.name,
        )
        .context("cannot start sh")?;
        let pgid = child.id() as i32;
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let out = child.stdout.take().expect("piped");
            let err = child.stderr.take().expect("piped");
            let r1 = s.spawn(|| pump(out, report));
            let r2 = s.spawn(|| pump(err, report));
            let watcher = s.spawn(|| {
                let mut term_at: Option<Instant> = None;
                while !done.load(Ordering::Acquire) {
                    if report.cancelled() {
                        match term_at {
                            None => {
                                killpg(pgid, libc::SIGTERM);
                                term_at = Some(Instant::now());
                            }
                            Some(t) if t.elapsed() > Duration::from_secs(3) => {
                                killpg(pgid, libc::SIGKILL)
                            }
                            _ => {}
                        }
                    }
                    // Parked, not slept: the waiter unparks it the moment the child exits.
                    std::thread::park_timeout(Duration::from_millis(20));
                }
            });
            let status = child.wait();
            done.store(true, Ordering::Release);
            watcher.thread().unpark();
            // The stage is over: whatever it left running in its group goes too (and the
            // pipes close, so the readers finish).
            killpg(pgid, libc::SIGKILL);
            let _ = watcher.join();
            let _ = r1.join();
            let _ = r2.join();
            // Only once nothing of the group runs may its outputs be committed (and its
            // record go).
            if !tsumugi_base::supervise::wait_group_gone(pgid, Duration::from_secs(10)) {
                tracked.keep();
                bail!("processes of the command (group {pgid}) are still alive after SIGKILL");
            }
            drop(tracked);
            let status = status.context("cannot wait for sh")?;
            if status.success() {
                return Ok(());
            }
            use std::os::unix::process::ExitStatusExt;
            let what = match (status.code(), status.signal()) {
                (Some(c), _) => format!("command exited with status {c}"),
                (None, Some(sig)) => format!("command killed by signal {sig}"),
                _ => "command failed".to_string(),
            };
            Err(CommandFailed {
                code: status.code(),
                what,
            }
            .into())
        })
    }
}

pub(crate) fn pump(r: impl std::io::Read, report: &dyn Reporter) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                report.log(line.trim_end_matches(['\n', '\r']));
            }
        }
    }
}
