//! The monitor daemon (Linux, inotify): `tsumugi fsmonitor run`.
//!
//! inotify is used directly rather than through `notify` (which the `watch` trigger uses),
//! because the daemon's answers are only as good as four guarantees `notify` 8 does not
//! give: (1) the watch of a newly created directory exists before any later event (such as
//! a cookie) is handled, so an answer never precedes it — `notify` adds such watches after
//! delivering the whole batch of events; (2) every failed watch is known (it drops errors
//! other than the watch limit); (3) `cache/`, `runs/` and `.git/` are not watched at all
//! (its recursive mode cannot exclude); (4) a queue overflow is known for what it is.
//!
//! One thread reads the inotify queue and numbers changes under a lock; one thread per
//! connection answers requests. The daemon holds an exclusive `flock` on
//! `cache/fsmonitor/daemon.lock` for its whole life, so two never watch one project, and
//! the kernel drops the lock however the daemon dies.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::{Answer, MAX_ANSWER_PATHS, Request, coarsen, is_watched};
use tsumugi_base::project::Project;

/// Events a directory watch asks for. `IN_DONT_FOLLOW`: a symlink is never watched through
/// (clients do not trust paths reached through one). `IN_ONLYDIR`: only directories.
const MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR
    | libc::IN_DONT_FOLLOW;

/// How long a query waits for its cookie before answering "no answer". Longer than any
/// sensible client timeout: the client decides when to give up (and then does a full pass).
const COOKIE_WAIT: Duration = Duration::from_secs(30);

/// Beyond this many distinct changed paths the history is dropped (tokens before it then
/// get "anything may have changed"), so memory stays bounded.
const MAX_HISTORY: usize = 1_000_000;

struct State {
    seq: u64,
    /// Tokens below this may have missed events (overflow, history dropped).
    floor: u64,
    /// Root-relative path → sequence number of its last change.
    changed: HashMap<PathBuf, u64>,
    /// Watch descriptor → root-relative directory path (`""`: the root).
    wds: HashMap<i32, PathBuf>,
    /// Directories whose watch failed: reported as changed in every answer.
    unwatched: BTreeSet<PathBuf>,
    cookie_wd: Option<i32>,
    pending: HashMap<OsString, mpsc::Sender<()>>,
    events: u64,
    overflows: u64,
    queries: u64,
}

struct Daemon {
    root: PathBuf,
    start_id: String,
    started: String,
    inotify: OwnedFd,
    cookie_dir: PathBuf,
    sock: PathBuf,
    sock_ino: AtomicU64,
    cookies: AtomicU64,
    state: Mutex<State>,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl Daemon {
    fn add_watch(&self, abs: &Path, mask: u32) -> io::Result<i32> {
        let c = CString::new(abs.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a valid inotify descriptor and a NUL-terminated path that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(self.inotify.as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(wd)
        }
    }

    /// Watches `rel` and every directory below it (not through symlinks, not the ignored
    /// top-level directories). Called with the state locked, so no answer is given between
    /// a directory's creation event and its watch. Returns the number of watches added.
    fn watch_tree(&self, st: &mut State, rel: PathBuf) -> usize {
        let mut n = 0;
        let mut stack = vec![rel];
        while let Some(rel) = stack.pop() {
            let abs = self.root.join(&rel);
            match self.add_watch(&abs, MASK) {
                Ok(wd) => {
                    st.wds.insert(wd, rel.clone());
                    st.unwatched.remove(&rel);
                    n += 1;
                }
                // Gone or replaced by a file already: that is an event of its own.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                    continue;
                }
                Err(e) => {
                    eprintln!(
                        "fsmonitor: cannot watch {}: {e}{}",
                        abs.display(),
                        if e.raw_os_error() == Some(libc::ENOSPC) {
                            " (raise fs.inotify.max_user_watches)"
                        } else {
                            ""
                        }
                    );
                    st.unwatched.insert(rel);
                    continue;
                }
            }
            let rd = match fs::read_dir(&abs) {
                Ok(rd) => rd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => {
                    eprintln!("fsmonitor: cannot read {}: {e}", abs.display());
                    st.unwatched.insert(rel);
                    continue;
                }
            };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let child = rel.join(e.file_name());
                    if is_watched(&child) {
                        stack.push(child);
                    }
                }
            }
        }
        n
    }

    fn watch_cookies(&self, st: &mut State) -> io::Result<()> {
        if st.cookie_wd.is_none() {
            fs::create_dir_all(&self.cookie_dir)?;
            let wd = self.add_watch(&self.cookie_dir, libc::IN_CREATE | libc::IN_ONLYDIR)?;
            st.cookie_wd = Some(wd);
        }
        Ok(())
    }

    fn record(&self, st: &mut State, path: PathBuf) {
        st.seq += 1;
        let seq = st.seq;
        st.changed.insert(path, seq);
        if st.changed.len() > MAX_HISTORY {
            st.changed.clear();
            st.floor = seq;
        }
    }

    /// Loses every older token: after an overflow or anything else that may hide events.
    fn lose_history(&self, st: &mut State) {
        st.seq += 1;
        st.floor = st.seq;
        st.changed.clear();
    }

    /// Reads and applies inotify events until the daemon must stop; returns why.
    fn event_loop(&self) -> String {
        let mut buf = vec![0u8; 256 * 1024];
        let fd = self.inotify.as_raw_fd();
        let mut checked = std::time::Instant::now();
        loop {
            // Also when events never stop coming, not only when idle.
            if checked.elapsed() > Duration::from_secs(1) {
                if let Some(why) = self.socket_gone() {
                    return why;
                }
                checked = std::time::Instant::now();
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, 1000) };
            if r == 0 {
                continue;
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return format!("poll failed: {e}");
            }
            // SAFETY: reading into a buffer we own, of the length we pass.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) {
                    continue;
                }
                return format!("reading inotify events failed: {e}");
            }
            let mut st = self.state.lock().expect("state");
            let mut off = 0usize;
            let n = n as usize;
            let head = std::mem::size_of::<libc::inotify_event>();
            while off + head <= n {
                // SAFETY: the kernel wrote a whole event header at `off`; read unaligned.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
                let name_bytes = &buf[off + head..off + head + ev.len as usize];
                let end = name_bytes.iter().position(|&b| b == 0).unwrap_or(0);
                let name = OsStr::from_bytes(&name_bytes[..end]);
                off += head + ev.len as usize;
                if let Some(why) = self.apply(&mut st, ev.wd, ev.mask, name) {
                    return why;
                }
            }
        }
    }

    /// Applies one event; `Some(reason)` when the daemon must stop.
    fn apply(&self, st: &mut State, wd: i32, mask: u32, name: &OsStr) -> Option<String> {
        st.events += 1;
        if mask & libc::IN_Q_OVERFLOW != 0 {
            eprintln!("fsmonitor: inotify queue overflow; older tokens now mean a full pass");
            st.overflows += 1;
            self.lose_history(st);
            return None;
        }
        if Some(wd) == st.cookie_wd {
            if mask & libc::IN_IGNORED != 0 {
                st.cookie_wd = None;
            } else if mask & libc::IN_CREATE != 0
                && let Some(tx) = st.pending.remove(name)
            {
                let _ = tx.send(());
            }
            return None;
        }
        // An unknown descriptor: a watch already removed.
        let dir = st.wds.get(&wd).cloned()?;
        if mask & libc::IN_IGNORED != 0 {
            st.wds.remove(&wd);
            return None;
        }
        if mask & libc::IN_UNMOUNT != 0 {
            self.lose_history(st);
            st.unwatched.insert(dir);
            return None;
        }
        if dir.as_os_str().is_empty()
            && name.is_empty()
            && mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0
        {
            return Some("the project root was moved or deleted".into());
        }
        let path = if name.is_empty() { dir } else { dir.join(name) };
        if !is_watched(&path) {
            return None;
        }
        self.record(st, path.clone());
        if mask & libc::IN_ISDIR != 0 && mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
            self.watch_tree(st, path);
        }
        None
    }

    /// `Some(reason)` if our socket was removed or replaced (e.g. `rm -rf cache`): clients
    /// cannot reach us any more, and a new daemon may start.
    fn socket_gone(&self) -> Option<String> {
        match fs::symlink_metadata(&self.sock) {
            Ok(md) if md.ino() == self.sock_ino.load(Ordering::Relaxed) => None,
            _ => Some(format!("{} was removed or replaced", self.sock.display())),
        }
    }

    fn answer(&self, since: &str) -> Result<Answer> {
        let name = format!(
            "{}-{}",
            std::process::id(),
            self.cookies.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, rx) = mpsc::channel();
        {
            let mut st = self.state.lock().expect("state");
            st.queries += 1;
            self.watch_cookies(&mut st)
                .context("cannot watch the cookie directory")?;
            st.pending.insert(OsString::from(&name), tx);
        }
        let cookie = self.cookie_dir.join(&name);
        let made = File::create(&cookie);
        let seen = made.is_ok() && rx.recv_timeout(COOKIE_WAIT).is_ok();
        let _ = fs::remove_file(&cookie);
        let mut st = self.state.lock().expect("state");
        st.pending.remove(OsStr::new(&name));
        if let Err(e) = made {
            bail!("cannot create cookie {}: {e}", cookie.display());
        }
        if !seen {
            bail!("the cookie's event did not arrive within {COOKIE_WAIT:?}");
        }
        let token = format!("{}:{}", self.start_id, st.seq);
        let root = self.root.to_string_lossy().into_owned();
        let all = |reason: &str| Answer {
            token: token.clone(),
            root: root.clone(),
            all: true,
            reason: reason.into(),
            changed: Vec::new(),
        };
        let Some((sid, n)) = since.rsplit_once(':') else {
            return Ok(all("first query"));
        };
        if sid != self.start_id {
            return Ok(all("the daemon restarted since the last check"));
        }
        let Ok(n) = n.parse::<u64>() else {
            return Ok(all("malformed token"));
        };
        if n > st.seq {
            return Ok(all("token from the future"));
        }
        if n < st.floor {
            return Ok(all(
                "events were lost since the last check (queue overflow)",
            ));
        }
        let changed: Vec<PathBuf> = st
            .changed
            .iter()
            .filter(|&(_, &s)| s > n)
            .map(|(p, _)| p.clone())
            .chain(st.unwatched.iter().cloned())
            .collect();
        let changed = coarsen(changed, MAX_ANSWER_PATHS)
            .into_iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        Ok(Answer {
            token,
            root,
            all: false,
            reason: String::new(),
            changed,
        })
    }

    fn status(&self) -> serde_json::Value {
        let st = self.state.lock().expect("state");
        json!({
            "running": true,
            "pid": std::process::id(),
            "root": self.root,
            "start_id": self.start_id,
            "started": self.started,
            "token": format!("{}:{}", self.start_id, st.seq),
            "watched_dirs": st.wds.len(),
            "unwatched": st.unwatched.iter().collect::<Vec<_>>(),
            "events": st.events,
            "changed_paths": st.changed.len(),
            "overflows": st.overflows,
            "queries": st.queries,
        })
    }

    fn serve(&self, conn: UnixStream) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line).is_err() {
            return;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => json!({"error": format!("bad request: {e}")}),
            Ok(r) => match r.op.as_str() {
                "query" => match self.answer(&r.since) {
                    Ok(a) => serde_json::to_value(a).expect("answer"),
                    Err(e) => json!({"error": format!("{e:#}")}),
                },
                "status" => self.status(),
                "stop" => {
                    let _ = (&conn).write_all(b"{\"stopping\":true}\n");
                    self.exit("stopped by request");
                }
                other => json!({"error": format!("unknown op {other:?}")}),
            },
        };
        let mut out = serde_json::to_vec(&reply).expect("json");
        out.push(b'\n');
        let _ = (&conn).write_all(&out);
    }

    fn exit(&self, why: &str) -> ! {
        if self.socket_gone().is_none() {
            let _ = fs::remove_file(&self.sock);
        }
        eprintln!("fsmonitor: exiting: {why}");
        std::process::exit(0)
    }
}

/// Runs the daemon in the foreground until stopped (`tsumugi fsmonitor stop`), killed, or
/// its socket is removed. `ready` is called once it answers queries.
pub fn run(project: &Project, ready: impl FnOnce(&Path, usize)) -> Result<()> {
    let dir = super::dir(project);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let lock_path = super::lock_path(project);
    let mut lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = fs::read_to_string(&lock_path).unwrap_or_default();
        bail!(
            "an fsmonitor daemon already runs for this project (pid {})",
            holder.trim()
        );
    }
    lock.set_len(0)?;
    writeln!(lock, "{}", std::process::id())?;

    let root = fs::canonicalize(project.root())
        .with_context(|| format!("cannot resolve {}", project.root().display()))?;
    let cookie_dir = root.join(super::cookie_dir(&Project::new("")));
    // Leftovers of a daemon that was killed.
    let _ = fs::remove_dir_all(&cookie_dir);
    // SAFETY: plain syscall; the result is checked before being wrapped.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("inotify_init1 failed");
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let inotify = unsafe { OwnedFd::from_raw_fd(fd) };
    let sock = root.join(super::socket_path(&Project::new("")));
    let d = Arc::new(Daemon {
        start_id: format!("{:x}-{}", now_ns(), std::process::id()),
        started: chrono::Local::now().to_rfc3339(),
        root: root.clone(),
        inotify,
        cookie_dir,
        sock: sock.clone(),
        sock_ino: AtomicU64::new(0),
        cookies: AtomicU64::new(0),
        state: Mutex::new(State {
            seq: 0,
            floor: 0,
            changed: HashMap::new(),
            wds: HashMap::new(),
            unwatched: BTreeSet::new(),
            cookie_wd: None,
            pending: HashMap::new(),
            events: 0,
            overflows: 0,
            queries: 0,
        }),
    });
    let watched = {
        let mut st = d.state.lock().expect("state");
        d.watch_cookies(&mut st)
            .context("cannot watch the cookie directory")?;
        let n = d.watch_tree(&mut st, PathBuf::new());
        if !st.wds.values().any(|p| p.as_os_str().is_empty()) {
            bail!("cannot watch the project root {}", root.display());
        }
        // Nothing before this point can be vouched for (no client holds a token of ours yet).
        d.lose_history(&mut st);
        n
    };
    let _ = fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).with_context(|| format!("cannot bind {}", sock.display()))?;
    d.sock_ino
        .store(fs::symlink_metadata(&sock)?.ino(), Ordering::Relaxed);
    {
        let d = Arc::clone(&d);
        std::thread::Builder::new()
            .name("fsmonitor-events".into())
            .spawn(move || {
                let why = d.event_loop();
                d.exit(&why);
            })?;
    }
    eprintln!(
        "fsmonitor: watching {} ({watched} directories), pid {}",
        root.display(),
        std::process::id()
    );
    ready(&sock, watched);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let d = Arc::clone(&d);
        std::thread::spawn(move || d.serve(conn));
    }
    drop(lock);
    Ok(())
}
