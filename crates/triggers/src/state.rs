//! The scheduler's memory between ticks and across restarts, one JSON file per pipeline:
//! `runs/triggers/<pipeline>.json`. Per trigger: the last tick evaluated (so that ticks
//! missed while the daemon was down are recognised as such), and the `changed:` snapshots
//! of the last successful run it started.
//!
//! Written atomically (temporary file in the same directory, fsync, rename, fsync of the
//! directory): a crash leaves the old state or the new one, never a torn file.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use tsumugi_base::project::Project;

const VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TriggerState {
    /// The newest tick that has been dealt with (fired, skipped or dropped as missed).
    #[serde(default, with = "rfc3339_opt")]
    pub last_tick: Option<DateTime<Utc>>,
    /// `changed:` clause key → digest of its files at the last successful run.
    #[serde(default)]
    pub changed: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerState {
    pub version: u32,
    /// Trigger id (see [`super::spec::CronTrigger::id`]) → its state.
    pub triggers: BTreeMap<String, TriggerState>,
}

impl Default for SchedulerState {
    fn default() -> Self {
        SchedulerState {
            version: VERSION,
            triggers: BTreeMap::new(),
        }
    }
}

/// Where a pipeline's scheduler state lives.
pub fn state_path(project: &Project, pipeline: &str) -> PathBuf {
    project
        .runs_dir()
        .join("triggers")
        .join(format!("{}.json", file_safe(pipeline)))
}

/// Pipeline names are identifiers in practice; anything else is replaced so the name is
/// always one path component.
pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl SchedulerState {
    /// Loads the state; a missing file is an empty state (first start).
    pub fn load(path: &Path) -> Result<SchedulerState> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(SchedulerState::default());
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read scheduler state {}", path.display()));
            }
        };
        let st: SchedulerState = serde_json::from_str(&text).with_context(|| {
            format!(
                "scheduler state {} is not valid; move it away to start afresh",
                path.display()
            )
        })?;
        if st.version != VERSION {
            bail!(
                "scheduler state {} has version {}, this tsumugi knows {VERSION}",
                path.display(),
                st.version
            );
        }
        Ok(st)
    }

    /// Writes the state atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        tsumugi_base::atomic::write_atomic(path, &bytes)
    }

    pub fn get(&self, id: &str) -> TriggerState {
        self.triggers.get(id).cloned().unwrap_or_default()
    }

    pub fn entry(&mut self, id: &str) -> &mut TriggerState {
        self.triggers.entry(id.to_string()).or_default()
    }
}

/// Held by `tsumugi schedule` for one pipeline, daemon or `--once`: two schedulers of one
/// pipeline would each fire the same tick. An OS file lock, released by the kernel however
/// its holder dies.
#[derive(Debug)]
pub struct SchedulerLock {
    _file: File,
}

impl SchedulerLock {
    /// Takes the lock or says who holds it.
    pub fn acquire(project: &Project, pipeline: &str, what: &str) -> Result<SchedulerLock> {
        use std::io::{Read, Seek, SeekFrom};
        let dir = project.runs_dir().join("triggers");
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{}.lock", file_safe(pipeline)));
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                bail!(
                    "another tsumugi schedule is already running for pipeline '{pipeline}' ({}); not starting a second one",
                    if holder.is_empty() {
                        "holder unknown"
                    } else {
                        holder
                    }
                );
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        write!(
            file,
            "pid {} ({what}, since {})",
            std::process::id(),
            tsumugi_base::time::ts(tsumugi_base::time::now())
        )?;
        file.flush()?;
        Ok(SchedulerLock { _file: file })
    }
}

/// RFC 3339 text for timestamps, readable in the state file.
mod rfc3339_opt {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("runs/triggers/x.json");
        assert_eq!(SchedulerState::load(&p).unwrap(), SchedulerState::default());
        let mut s = SchedulerState::default();
        s.entry("0 3 * * * @ UTC").last_tick = Some(Utc::now());
        s.entry("0 3 * * * @ UTC")
            .changed
            .insert("data/*".into(), "abc".into());
        s.save(&p).unwrap();
        assert_eq!(SchedulerState::load(&p).unwrap(), s);
    }

    #[test]
    fn garbage_is_an_error_not_a_reset() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        fs::write(&p, "{not json").unwrap();
        let e = SchedulerState::load(&p).unwrap_err().to_string();
        assert!(e.contains("is not valid"), "{e}");
    }
}
