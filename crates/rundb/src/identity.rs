//! Noticing a lost run history. SQLite opens an empty or missing file as a new, empty
//! database, so a truncated, deleted or replaced `runs/tsumugi.db` would otherwise read as
//! "no runs yet" — and `gc`, which keeps what the history references, would then see
//! nothing to keep.
//!
//! Each run database gets a random identity, stored in its own table (`tsumugi_identity`)
//! and, by the writer, in a marker next to the cache it describes (`cache/rundb-id`). A
//! database that is missing, has no identity, or has another one while the marker names one
//! is said to have lost its history; the next writer adopts the database it finds (so the
//! loss is reported until a run records into the new one, then never again). A file that
//! is not an SQLite database at all is never opened for writing: see [`damaged`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension};

use tsumugi_base::project::Project;

/// The marker, in the cache directory: the identity of the database the cache goes with.
pub fn marker_path(project: &Project) -> PathBuf {
    project.cache_dir().join("rundb-id")
}

fn read_marker(project: &Project) -> Option<String> {
    let s = std::fs::read_to_string(marker_path(project)).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// The database's identity, `None` when it has none (new, emptied, or from before
/// identities).
fn db_identity(conn: &Connection) -> Result<Option<String>> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'tsumugi_identity'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        return Ok(None);
    }
    Ok(conn
        .query_row("SELECT id FROM tsumugi_identity LIMIT 1", [], |r| r.get(0))
        .optional()?)
}

fn short(id: &str) -> &str {
    &id[..8.min(id.len())]
}

/// The sentence for a database (`conn`, `None` when the file is missing) that is not the
/// one the cache's marker names; `None` when it is, or when there is no marker.
fn loss(project: &Project, conn: Option<&Connection>) -> Result<Option<String>> {
    let Some(marker) = read_marker(project) else {
        return Ok(None);
    };
    let db = project.db_path();
    let shown = db
        .strip_prefix(project.root())
        .unwrap_or(&db)
        .display()
        .to_string();
    let Some(conn) = conn else {
        return Ok(Some(format!(
            "{shown} is missing (cache/rundb-id records database {}); run history is lost",
            short(&marker)
        )));
    };
    Ok(match db_identity(conn)? {
        Some(id) if id == marker => None,
        Some(id) => Some(format!(
            "{shown} was replaced (it is database {}, not {} that cache/rundb-id records); run history is lost",
            short(&id),
            short(&marker)
        )),
        None => Some(format!(
            "{shown} was replaced or truncated (it is empty or new, not database {} that cache/rundb-id records); run history is lost",
            short(&marker)
        )),
    })
}

static WARNED: AtomicBool = AtomicBool::new(false);

/// Says `msg` on stderr, once per process (watch and schedule open the database often).
fn warn_once(msg: &str) {
    if !WARNED.swap(true, Ordering::SeqCst) {
        eprintln!("warning: {msg}");
    }
}

/// For readers: warns if `conn` (or its absence) is not the database the cache goes with.
/// Writes nothing. Returns whether the history is lost.
pub fn check_read(project: &Project, conn: Option<&Connection>) -> Result<bool> {
    match loss(project, conn)? {
        Some(msg) => {
            warn_once(&msg);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// For the writer (the project lock held): warns as [`check_read`] does, then makes `conn`
/// the database the cache goes with, giving it an identity if it has none. Returns the
/// loss, if any, for the writer to record as an event.
pub fn adopt(project: &Project, conn: &Connection) -> Result<Option<String>> {
    let lost = loss(project, Some(conn))?;
    if let Some(msg) = &lost {
        warn_once(msg);
    }
    let id = match db_identity(conn)? {
        Some(id) => id,
        None => {
            let id = new_identity()?;
            conn.execute_batch("CREATE TABLE IF NOT EXISTS tsumugi_identity (id TEXT NOT NULL)")?;
            conn.execute("INSERT INTO tsumugi_identity(id) VALUES (?1)", [&id])?;
            id
        }
    };
    if read_marker(project).as_deref() != Some(id.as_str()) {
        tsumugi_base::atomic::write_atomic(&marker_path(project), format!("{id}\n").as_bytes())
            .context("cannot record the run database's identity")?;
    }
    Ok(lost)
}

/// 128 random bits from the kernel, in hex.
fn new_identity() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("cannot read /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A clear error for a run database file that SQLite cannot read (not a database, or
/// damaged): it is left as it is, never overwritten by a new database.
pub fn damaged(project: &Project, err: anyhow::Error) -> anyhow::Error {
    let db = project.db_path();
    let corrupt = err.chain().any(|e| {
        matches!(
            e.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(f, _))
                if matches!(f.code, rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
        )
    });
    if !corrupt {
        return err;
    }
    let shown = db
        .strip_prefix(project.root())
        .unwrap_or(&db)
        .display()
        .to_string();
    err.context(format!(
        "{shown} is damaged or not a run database; tsumugi leaves it as it is: move it aside (run history is then lost) or restore it from a backup"
    ))
}
