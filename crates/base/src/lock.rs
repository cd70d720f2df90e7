//! The project lock, `runs/.lock`: one `run` or `gc` at a time per project.
//!
//! An OS file lock (`flock` via `File::try_lock`) is released by the kernel when its holder
//! dies, however it dies, so there is no stale-lock cleanup. The holder writes its pid,
//! command line and start time into the file so a waiting process can say who it waits for.
//! Taking the lock also ends what an interrupted holder left running ([`crate::supervise`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::project::Project;

/// Held for as long as the value lives.
#[derive(Debug)]
pub struct ProjectLock {
    _file: File,
}

/// Another process holds the lock and the caller asked not to wait.
#[derive(Debug, thiserror::Error)]
#[error("the project is locked by {holder}; not waiting (--no-wait)")]
pub struct Locked {
    pub holder: String,
}

/// Whether to wait for a held lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Yes,
    No,
}

fn describe_holder(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_string(&mut s);
    let mut lines = s.lines();
    match (lines.next(), lines.next(), lines.next()) {
        (Some(pid), Some(cmd), Some(since)) => {
            let since = chrono::DateTime::parse_from_rfc3339(since)
                .map(|t| {
                    t.with_timezone(&chrono::Local)
                        .format("%H:%M:%S")
                        .to_string()
                })
                .unwrap_or_else(|_| since.to_string());
            format!("pid {pid} ({cmd}, since {since})")
        }
        _ => "another tsumugi process".to_string(),
    }
}

impl ProjectLock {
    /// Takes the lock, waiting (with one message on stderr) unless `wait` is [`Wait::No`],
    /// in which case a held lock is a [`Locked`] error.
    pub fn acquire(project: &Project, command: &str, wait: Wait) -> Result<ProjectLock> {
        let dir = project.lock_dir();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(".lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the project lock {}", path.display()))?;
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    let holder = describe_holder(&mut file);
                    if wait == Wait::No {
                        return Err(Locked { holder }.into());
                    }
                    if !told {
                        eprintln!("waiting for the project lock held by {holder}…");
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("cannot lock {}", path.display()));
                }
            }
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        write!(
            file,
            "{}\n{}\n{}\n",
            std::process::id(),
            command,
            crate::time::ts(crate::time::now())
        )?;
        file.flush()?;
        let lock = ProjectLock { _file: file };
        // The previous holder may have died leaving stage processes running; end them
        // before the caller touches any output.
        crate::supervise::reap_and_say(project)?;
        Ok(lock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_ones_pid() {
        let d = tempfile::tempdir().unwrap();
        let p = Project::new(d.path());
        let held = ProjectLock::acquire(&p, "tsumugi run a.yaml", Wait::No).unwrap();
        let err = ProjectLock::acquire(&p, "tsumugi run b.yaml", Wait::No).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("tsumugi run a.yaml"), "{msg}");
        drop(held);
        ProjectLock::acquire(&p, "tsumugi run b.yaml", Wait::No).unwrap();
    }
}
