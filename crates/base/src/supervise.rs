//! Process supervision that survives tsumugi's own death.
//!
//! Every stage command runs in its own process group. Before the command may do anything,
//! the engine records what it started in `runs/.procs/<token>.proc` (the group, the leader's
//! pid and its start time from `/proc/<pid>/stat`, the boot id, the run and the stage, and
//! the tsumugi process that owns it); the record is removed once the group is gone. The
//! launch is *gated*: a shell stage ([`spawn_shell_recorded`]) is started by `posix_spawn`
//! (no fork of the engine's large, threaded process) as `setpriv --pdeathsig KILL sh -c GATE`,
//! whose first act is to read one line on stdin that the engine writes only once the record
//! is in place; without `setpriv`, [`spawn_recorded`] forks and the child waits at the same
//! kind of gate between fork and exec. Either way nothing of the stage runs unrecorded. Each started command also gets `TSUMUGI_PROC_TOKEN`, a value
//! unique to that launch, in its environment, which its descendants inherit.
//!
//! If tsumugi dies without cleaning up (SIGKILL, OOM killer), `PR_SET_PDEATHSIG` ends the
//! direct `sh`, but its descendants live on and could write into the outputs of the next
//! run. So the next invocation that takes the project lock ([`reap`], called by
//! [`crate::lock::ProjectLock::acquire`]) reads the records whose owner is gone, verifies
//! each process is still the one started (the leader's pid *and* start time, or the launch's
//! token in the environment of a group member — a pid or group number alone may have been
//! reused), ends them (SIGTERM, a short grace, SIGKILL), waits until they are gone, and only
//! then lets the caller touch outputs. It says so in one line on stderr.
//!
//! The records are renamed into place but not fsynced: they only need to outlive the tsumugi
//! process, and the page cache does; a machine crash ends the processes too (and the boot id
//! tells a record from before a reboot).

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::project::Project;

/// The environment variable that carries a launch's token to the command and its descendants.
pub const TOKEN_VAR: &str = "TSUMUGI_PROC_TOKEN";

/// How long processes left by an interrupted run get to exit after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for SIGKILLed processes to disappear before giving up.
const KILL_WAIT: Duration = Duration::from_secs(10);

static CURRENT_RUN: Mutex<String> = Mutex::new(String::new());
static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// Sets the run id written into the records of commands started from now on.
pub fn set_current_run(run_id: &str) {
    let mut r = CURRENT_RUN.lock().unwrap_or_else(|e| e.into_inner());
    r.clear();
    r.push_str(run_id);
}

fn current_run() -> String {
    let r = CURRENT_RUN.lock().unwrap_or_else(|e| e.into_inner());
    if r.is_empty() {
        "(unknown)".to_string()
    } else {
        r.clone()
    }
}

/// Spawns `cmd` (which must start its own process group: `process_group(0)`) with a token
/// unique to this launch in its environment, and records it before it runs anything: the
/// child, between fork and exec, sends its pid and waits until the record is in place. If
/// tsumugi dies before that, the child never gets past the wait (its end of the gate sees
/// end-of-file) and runs nothing.
pub fn spawn_recorded(
    cmd: &mut Command,
    project_root: &Path,
    stage: &str,
) -> Result<(Child, Tracked)> {
    let token = new_token()?;
    cmd.env(TOKEN_VAR, &token);
    let (pid_r, pid_w) = pipe()?;
    let (gate_r, gate_w) = pipe()?;
    let (pid_w_raw, gate_r_raw, gate_w_raw) =
        (pid_w.as_raw_fd(), gate_r.as_raw_fd(), gate_w.as_raw_fd());
    // SAFETY: between fork and exec only async-signal-safe calls (getpid, write, close,
    // read, _exit) on descriptors this function keeps open until `spawn` returns; no
    // allocation. All four descriptors are close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            // Our copy of the gate's write end would keep the read below from ever seeing
            // end-of-file if tsumugi died.
            libc::close(gate_w_raw);
            let pid: libc::pid_t = libc::getpid();
            let n = libc::write(
                pid_w_raw,
                (&pid as *const libc::pid_t).cast(),
                std::mem::size_of::<libc::pid_t>(),
            );
            if n != std::mem::size_of::<libc::pid_t>() as isize {
                libc::_exit(125);
            }
            libc::close(pid_w_raw);
            let mut b = 0u8;
            loop {
                match libc::read(gate_r_raw, (&mut b as *mut u8).cast(), 1) {
                    1 => break,
                    -1 if *libc::__errno_location() == libc::EINTR => continue,
                    _ => libc::_exit(125),
                }
            }
            libc::close(gate_r_raw);
            Ok(())
        });
    }
    let root = project_root.to_path_buf();
    let stage = stage.to_string();
    let tok = token.clone();
    // The recorder runs beside `spawn`, which returns only once the child has exec'd.
    let recorder = std::thread::Builder::new()
        .name("tsumugi-record".into())
        .spawn(move || -> Result<Option<Tracked>> {
            let mut pid_r = fs::File::from(pid_r);
            let mut buf = [0u8; std::mem::size_of::<libc::pid_t>()];
            if pid_r.read_exact(&mut buf).is_err() {
                return Ok(None); // no child got as far as the gate
            }
            let pid = libc::pid_t::from_ne_bytes(buf);
            match Tracked::record(&root, &tok, &stage, pid) {
                Ok(t) => {
                    let mut gate = fs::File::from(gate_w);
                    // A failed write means the child is gone; spawn says why.
                    let _ = gate.write_all(b"\n");
                    Ok(Some(t))
                }
                Err(e) => {
                    signal(pid, libc::SIGKILL);
                    Err(e.context("cannot record the process"))
                }
            }
        })
        .context("cannot start a thread")?;
    let spawned = cmd.spawn();
    drop(pid_w);
    drop(gate_r);
    let recorded = recorder
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the recorder thread panicked")));
    match (spawned, recorded) {
        (Ok(child), Ok(Some(t))) => Ok((child, t)),
        (Ok(mut child), rec) => {
            // Killed by the recorder or never gated: reap it, report why.
            let _ = child.kill();
            let _ = child.wait();
            Err(rec
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("the child did not report its pid")))
        }
        (Err(e), _) => Err(e.into()),
    }
}

/// `setpriv` (util-linux), which sets `PR_SET_PDEATHSIG` and execs: with it a shell stage
/// is started by `posix_spawn` instead of `fork` (see [`spawn_shell_recorded`]).
fn setpriv() -> Option<&'static Path> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            if std::env::var_os("TSUMUGI_SPAWN").is_some_and(|v| v == "fork") {
                return None;
            }
            ["/usr/bin/setpriv", "/bin/setpriv"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
        .as_deref()
}

/// The gate in shell: the first line on stdin is the go-ahead (end-of-file means tsumugi
/// died before recording the launch: run nothing), then the command runs as `sh -c CMD`
/// with stdin from /dev/null, exactly as a forked launch runs it.
const SHELL_GATE: &str = "IFS= read -r _ || exit 125; exec sh -c \"$1\" </dev/null";

/// Starts `sh -c shell_cmd` the way [`spawn_recorded`] does — own process group, the launch's
/// token in the environment, recorded before the command runs anything, `PR_SET_PDEATHSIG`
/// on the shell — but without `fork`: the caller's `Command` must have no `pre_exec`, so
/// std starts it with `posix_spawn` (a vfork). Forking a controller with a large heap and
/// many threads costs page-table copies and copy-on-write faults in every thread while the
/// child waits at the gate: at 10,000 stages that was most of the engine's CPU per stage
/// (benches/scale). `setpriv --pdeathsig KILL` sets the parent-death signal, and the gate is
/// the shell reading one line on stdin. Without `setpriv` (or with `TSUMUGI_SPAWN=fork`)
/// this falls back to the forked launch.
///
/// `configure` adds the caller's settings (cwd, environment, stdout/stderr) to the command.
pub fn spawn_shell_recorded(
    shell_cmd: &str,
    configure: impl Fn(&mut Command),
    project_root: &Path,
    stage: &str,
) -> Result<(Child, Tracked)> {
    let parent = std::process::id() as libc::pid_t;
    let Some(setpriv) = setpriv() else {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(shell_cmd);
        configure(&mut cmd);
        cmd.stdin(std::process::Stdio::null()).process_group(0);
        // SAFETY: prctl and getppid are async-signal-safe. This thread waits for the child,
        // so it outlives it (PDEATHSIG is per thread). A parent that died before prctl is
        // caught by getppid.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(125);
                }
                Ok(())
            });
        }
        return spawn_recorded(&mut cmd, project_root, stage);
    };
    let token = new_token()?;
    let mut cmd = Command::new(setpriv);
    cmd.args([
        "--pdeathsig",
        "KILL",
        "/bin/sh",
        "-c",
        SHELL_GATE,
        "sh",
        shell_cmd,
    ]);
    configure(&mut cmd);
    cmd.env(TOKEN_VAR, &token)
        .stdin(std::process::Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut gate = child.stdin.take().expect("piped");
    match Tracked::record(project_root, &token, stage, pid) {
        // A failed write means the child is gone already; its exit status says why.
        Ok(t) => {
            let _ = gate.write_all(b"\n");
            drop(gate);
            Ok((child, t))
        }
        Err(e) => {
            drop(gate);
            let _ = child.kill();
            let _ = child.wait();
            Err(e.context("cannot record the process"))
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot create a pipe");
    }
    // SAFETY: both were just opened and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `runs/.procs/`.
pub fn procs_dir(project_root: &Path) -> PathBuf {
    Project::new(project_root).runs_dir().join(".procs")
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub state: char,
    pub pgid: i32,
    /// Field 22: start time in clock ticks after boot.
    pub start: u64,
}

impl ProcStat {
    fn gone(&self) -> bool {
        // A zombie runs no code and writes nothing; only its parent's wait removes it.
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses `/proc/<pid>/stat`; `None` if the process does not exist (or is unreadable).
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s)
}

fn parse_stat(s: &str) -> Option<ProcStat> {
    let pid = s.split_whitespace().next()?.parse().ok()?;
    // The command name (field 2) is in parentheses and may hold spaces and parentheses.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state), so field N is f[N - 3].
    Some(ProcStat {
        pid,
        state: f.first()?.chars().next()?,
        pgid: f.get(2)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

fn boot_id() -> &'static str {
    static BOOT: OnceLock<String> = OnceLock::new();
    BOOT.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}

fn own_start() -> Result<u64> {
    static START: OnceLock<u64> = OnceLock::new();
    if let Some(s) = START.get() {
        return Ok(*s);
    }
    let me = std::process::id() as i32;
    let start = proc_stat(me)
        .context("cannot read /proc/self/stat (process supervision needs Linux /proc)")?
        .start;
    Ok(*START.get_or_init(|| start))
}

/// One recorded launch: the file in `runs/.procs/`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    token: String,
    boot: String,
    owner_pid: i32,
    owner_start: u64,
    pid: i32,
    pgid: i32,
    start: u64,
    run: String,
    stage: String,
}

impl Record {
    fn to_text(&self) -> String {
        format!(
            "token {}\nboot {}\nowner {} {}\nproc {} {} {}\nrun {}\nstage {}\n",
            self.token,
            self.boot,
            self.owner_pid,
            self.owner_start,
            self.pid,
            self.pgid,
            self.start,
            self.run,
            self.stage.replace('\n', " ")
        )
    }

    fn parse(text: &str) -> Option<Record> {
        let mut r = Record {
            token: String::new(),
            boot: String::new(),
            owner_pid: 0,
            owner_start: 0,
            pid: 0,
            pgid: 0,
            start: 0,
            run: String::new(),
            stage: String::new(),
        };
        for line in text.lines() {
            let (key, val) = line.split_once(' ').unwrap_or((line, ""));
            let nums = || -> Vec<&str> { val.split_whitespace().collect() };
            match key {
                "token" => r.token = val.to_string(),
                "boot" => r.boot = val.to_string(),
                "owner" => {
                    let n = nums();
                    r.owner_pid = n.first()?.parse().ok()?;
                    r.owner_start = n.get(1)?.parse().ok()?;
                }
                "proc" => {
                    let n = nums();
                    r.pid = n.first()?.parse().ok()?;
                    r.pgid = n.get(1)?.parse().ok()?;
                    r.start = n.get(2)?.parse().ok()?;
                }
                "run" => r.run = val.to_string(),
                "stage" => r.stage = val.to_string(),
                _ => {}
            }
        }
        (!r.token.is_empty() && r.pid > 0 && r.pgid > 0).then_some(r)
    }

    /// Whether the tsumugi process that started it is still alive.
    fn owner_alive(&self, boot: &str) -> bool {
        self.boot == boot
            && proc_stat(self.owner_pid).is_some_and(|p| p.start == self.owner_start && !p.gone())
    }
}

/// A token unique to one launch (and the name of its record).
fn new_token() -> Result<String> {
    let n = LAUNCHES.fetch_add(1, Ordering::Relaxed);
    Ok(format!("{}-{}-{n}", std::process::id(), own_start()?))
}

/// A launch's record in `runs/.procs/`; removed when dropped. Drop it only once the
/// process group is gone.
#[derive(Debug)]
pub struct Tracked {
    path: PathBuf,
}

impl Tracked {
    /// Records that `pid` (the leader of its own process group, carrying `token`) was
    /// started for `stage`. Renamed into place, so a record is whole or absent.
    pub fn record(project_root: &Path, token: &str, stage: &str, pid: i32) -> Result<Tracked> {
        let st = proc_stat(pid).with_context(|| format!("cannot read /proc/{pid}/stat"))?;
        let rec = Record {
            token: token.to_string(),
            boot: boot_id().to_string(),
            owner_pid: std::process::id() as i32,
            owner_start: own_start()?,
            pid,
            pgid: pid,
            start: st.start,
            run: current_run(),
            stage: stage.to_string(),
        };
        let dir = procs_dir(project_root);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{token}.proc"));
        let tmp = dir.join(format!(".tmp.{token}"));
        let res = (|| -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(rec.to_text().as_bytes())?;
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot write {}", path.display()));
        }
        Ok(Tracked { path })
    }
}

impl Tracked {
    /// Leaves the record in place, for the next invocation to end what is still running.
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// `kill(2)`; a negative `pid` signals a process group.
fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) touches no memory of ours.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Live (non-zombie) members of process group `pgid`.
fn group_members(pgid: i32) -> Vec<ProcStat> {
    all_procs()
        .into_iter()
        .filter(|p| p.pgid == pgid && !p.gone())
        .collect()
}

/// Waits until no process of group `pgid` runs any more, at most `limit`; true if so.
/// Cheap when the group is already empty (one `kill(-pgid, 0)`).
pub fn wait_group_gone(pgid: i32, limit: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        if !signal(-pgid, 0) || group_members(pgid).is_empty() {
            return true;
        }
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn all_procs() -> Vec<ProcStat> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_stat)
        .collect()
}

fn has_token(pid: i32, token: &str) -> bool {
    let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!("{TOKEN_VAR}={token}");
    env.split(|&b| b == 0).any(|kv| kv == want.as_bytes())
}

/// What [`reap`] ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// Processes signalled.
    pub processes: usize,
    /// Runs they were left by, with their stages (`run (stage a, b)`).
    pub runs: Vec<String>,
}

/// A process to end: its pid and start time (so a reused pid is never signalled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    pid: i32,
    start: u64,
}

impl Target {
    fn alive(&self) -> bool {
        proc_stat(self.pid).is_some_and(|p| p.start == self.start && !p.gone())
    }
}

/// Finds the processes recorded by interrupted runs of the project that are still alive,
/// ends them and waits until they are gone. Records whose owner is still alive are left
/// alone. Call it holding the project lock, before touching outputs.
pub fn reap(project: &Project) -> Result<Reaped> {
    let dir = procs_dir(project.root());
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Reaped::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let boot = boot_id();
    let mut stale: Vec<(PathBuf, Option<Record>)> = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        let path = e.path();
        if let Some(tmp) = name.strip_prefix(".tmp.") {
            // A record being written: its owner's pid is in the name (`.tmp.<pid>-…`).
            let owner = tmp.split('-').next().and_then(|p| p.parse::<i32>().ok());
            if owner.is_none_or(|p| proc_stat(p).is_none()) {
                stale.push((path, None));
            }
            continue;
        }
        let rec = fs::read_to_string(&path)
            .ok()
            .and_then(|t| Record::parse(&t));
        match rec {
            Some(r) if r.owner_alive(boot) => {}
            Some(r) => stale.push((path, Some(r))),
            // Unreadable or partial: the launch's gate never opened, nothing ran.
            None => stale.push((path, None)),
        }
    }
    if stale.is_empty() {
        return Ok(Reaped::default());
    }
    let procs = all_procs();
    let mut targets: BTreeSet<Target> = BTreeSet::new();
    let mut groups: BTreeSet<i32> = BTreeSet::new();
    let mut runs: Vec<(String, BTreeSet<String>)> = Vec::new();
    for r in stale.iter().filter_map(|(_, r)| r.as_ref()) {
        if r.boot != boot {
            continue; // from before a reboot: everything it started is gone
        }
        let before = targets.len();
        let leader_ok = procs
            .iter()
            .any(|p| p.pid == r.pid && p.start == r.start && !p.gone());
        // Processes started by this launch: they carry its token (and started after it).
        let carriers: Vec<&ProcStat> = procs
            .iter()
            .filter(|p| !p.gone() && p.start >= r.start && has_token(p.pid, &r.token))
            .collect();
        // The group number is the launch's only if its leader is still the same process or
        // a member provably belongs to the launch; a group number can be reused only after
        // every member of the old group is gone.
        let group_ok = leader_ok || carriers.iter().any(|p| p.pgid == r.pgid);
        if group_ok {
            groups.insert(r.pgid);
            targets.extend(
                procs
                    .iter()
                    .filter(|p| p.pgid == r.pgid && !p.gone())
                    .map(|p| Target {
                        pid: p.pid,
                        start: p.start,
                    }),
            );
        }
        // Descendants that moved to a group of their own still carry the token.
        targets.extend(carriers.iter().map(|p| Target {
            pid: p.pid,
            start: p.start,
        }));
        if targets.len() > before {
            match runs.iter_mut().find(|(id, _)| *id == r.run) {
                Some((_, st)) => {
                    st.insert(r.stage.clone());
                }
                None => runs.push((r.run.clone(), BTreeSet::from([r.stage.clone()]))),
            }
        }
    }
    if !targets.is_empty() {
        end(&groups, &targets)?;
    }
    for (path, _) in &stale {
        let _ = fs::remove_file(path);
    }
    Ok(Reaped {
        processes: targets.len(),
        runs: runs
            .into_iter()
            .map(|(id, st)| {
                format!(
                    "{id} (stage {})",
                    st.into_iter().collect::<Vec<_>>().join(", ")
                )
            })
            .collect(),
    })
}

/// SIGTERM, a grace period, SIGKILL; returns once every target is gone.
fn end(groups: &BTreeSet<i32>, targets: &BTreeSet<Target>) -> Result<()> {
    let send = |sig: i32| {
        for &g in groups {
            signal(-g, sig);
        }
        for t in targets {
            if t.alive() {
                signal(t.pid, sig);
            }
        }
    };
    let wait = |limit: Duration| -> bool {
        let t0 = Instant::now();
        loop {
            if !targets.iter().any(Target::alive)
                && groups.iter().all(|&g| group_members(g).is_empty())
            {
                return true;
            }
            if t0.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    send(libc::SIGTERM);
    if wait(TERM_GRACE) {
        return Ok(());
    }
    send(libc::SIGKILL);
    if wait(KILL_WAIT) {
        return Ok(());
    }
    let left: Vec<String> = targets
        .iter()
        .filter(|t| t.alive())
        .map(|t| t.pid.to_string())
        .collect();
    bail!(
        "processes left by an interrupted run are still alive after SIGKILL (pids {}); \
         not touching the project's outputs while they may write to them",
        left.join(", ")
    )
}

/// [`reap`], saying on stderr what it ended.
pub fn reap_and_say(project: &Project) -> Result<()> {
    let r = reap(project).context("cannot end the processes left by an interrupted run")?;
    if r.processes > 0 {
        eprintln!(
            "tsumugi: ended {} process{} left by interrupted run{} {}",
            r.processes,
            if r.processes == 1 { "" } else { "es" },
            if r.runs.len() == 1 { "" } else { "s" },
            r.runs.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_names_parses() {
        let s = "4242 (a) b (c) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1 2 3";
        let p = parse_stat(s).unwrap();
        assert_eq!(
            p,
            ProcStat {
                pid: 4242,
                state: 'S',
                pgid: 4240,
                start: 98765
            }
        );
    }

    #[test]
    fn own_stat_is_read() {
        let me = proc_stat(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(me.start > 0);
    }

    #[test]
    fn record_round_trips() {
        let r = Record {
            token: "1-2-3".into(),
            boot: "b".into(),
            owner_pid: 1,
            owner_start: 2,
            pid: 10,
            pgid: 10,
            start: 99,
            run: "20261204-000000-abcd".into(),
            stage: "a b".into(),
        };
        assert_eq!(Record::parse(&r.to_text()), Some(r));
        assert_eq!(Record::parse("token x\nproc 1 2"), None);
    }

    /// A record as an interrupted run leaves it: its owner is a process that has exited.
    fn stale_record(root: &Path, token: &str, pid: i32, start: u64) {
        let mut dead = Command::new("true").spawn().unwrap();
        let owner = dead.id() as i32;
        dead.wait().unwrap();
        let r = Record {
            token: token.into(),
            boot: boot_id().into(),
            owner_pid: owner,
            owner_start: 1,
            pid,
            pgid: pid,
            start,
            run: "20261204-000000-dead".into(),
            stage: "s".into(),
        };
        let dir = procs_dir(root);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("{token}.proc")), r.to_text()).unwrap();
    }

    fn sleeper(token: &str) -> Child {
        Command::new("sleep")
            .arg("30")
            .env(TOKEN_VAR, token)
            .process_group(0)
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_left_process_is_ended_and_the_record_removed() {
        let d = tempfile::tempdir().unwrap();
        let mut child = sleeper("t-live");
        let pid = child.id() as i32;
        stale_record(d.path(), "t-live", pid, proc_stat(pid).unwrap().start);
        let r = reap(&Project::new(d.path())).unwrap();
        assert_eq!(r.processes, 1);
        assert_eq!(r.runs, ["20261204-000000-dead (stage s)"]);
        // Ended by SIGTERM: the wait returns at once with the signal.
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
        assert_eq!(fs::read_dir(procs_dir(d.path())).unwrap().count(), 0);
    }

    #[test]
    fn a_reused_pid_is_not_signalled() {
        let d = tempfile::tempdir().unwrap();
        // Same pid, but a different start time and no token: not the recorded process.
        let mut child = sleeper("t-other");
        let pid = child.id() as i32;
        let start = proc_stat(pid).unwrap().start;
        stale_record(d.path(), "t-recorded", pid, start.saturating_sub(1));
        let r = reap(&Project::new(d.path())).unwrap();
        assert_eq!(r, Reaped::default());
        assert!(
            proc_stat(pid).is_some_and(|p| !p.gone()),
            "the process lives on"
        );
        assert_eq!(fs::read_dir(procs_dir(d.path())).unwrap().count(), 0);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn records_of_a_live_owner_are_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let project = Project::new(d.path());
        // Ourselves as the "stage": our owner (also ourselves) is alive, so nothing happens.
        let me = std::process::id() as i32;
        let token = new_token().unwrap();
        let t = Tracked::record(d.path(), &token, "s", me).unwrap();
        assert_eq!(reap(&project).unwrap(), Reaped::default());
        assert!(t.path.exists());
        drop(t);
        assert_eq!(fs::read_dir(procs_dir(d.path())).unwrap().count(), 0);
    }

    /// A shell stage started without fork sees what `sh -c CMD` would: no arguments, `$0`
    /// = sh, an empty stdin (not the gate), its token; it runs only once recorded, and its
    /// exit status comes through.
    #[test]
    fn a_spawned_shell_stage_runs_as_sh_c_would_and_is_recorded_first() {
        let d = tempfile::tempdir().unwrap();
        let procs = procs_dir(d.path());
        let cmd = format!(
            "echo \"$0 $# [$(cat)] ${{{TOKEN_VAR}:+token}}\"; ls {} | wc -l; exit 3",
            procs.display()
        );
        let (child, tracked) = spawn_shell_recorded(
            &cmd,
            |c| {
                c.current_dir(d.path()).stdout(std::process::Stdio::piped());
            },
            d.path(),
            "s",
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text, "sh 0 [] token\n1\n", "what the stage saw");
        assert_eq!(out.status.code(), Some(3));
        drop(tracked);
        assert_eq!(fs::read_dir(&procs).unwrap().count(), 0);
    }
}
