//! The file-system monitor with real processes: the real binary as daemon and client, real
//! inotify, temporary projects. `status --json`'s `fsmonitor.files_statted` counts the
//! files the hasher stat'ed, so "no stat of the 10,000 files" is checked, not assumed.
#![cfg(target_os = "linux")]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::Value;

struct Proj {
    dir: tempfile::TempDir,
}

const PIPELINE: &str = "name: fsmon
stages:
  count:
    cmd: find data/files -type f | sort | xargs cat | wc -c > count.txt
    deps: [data/files]
    outs: [count.txt]
";

impl Proj {
    /// A project whose one stage depends on `data/files` holding `n` files in
    /// sub-directories of 1,000, all dated an hour ago.
    fn new(n: usize) -> Proj {
        let dir = tempfile::tempdir().unwrap();
        let p = Proj { dir };
        fs::write(p.path("p.yaml"), PIPELINE).unwrap();
        for i in 0..n {
            let sub = p.path(&format!("data/files/{:03}", i / 1000));
            if i % 1000 == 0 {
                fs::create_dir_all(&sub).unwrap();
            }
            fs::write(sub.join(format!("{i:06}.txt")), format!("file {i}\n")).unwrap();
        }
        p.age_all();
        p
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Every file under data/ dated an hour ago (older than the stat cache's racy window).
    fn age_all(&self) {
        let old = SystemTime::now() - Duration::from_secs(3600);
        for e in walkdir::WalkDir::new(self.path("data")) {
            let e = e.unwrap();
            if e.file_type().is_file() {
                set_mtime(e.path(), old);
            }
        }
    }

    fn tsumugi(&self) -> Command {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("tsumugi"));
        c.current_dir(self.dir.path());
        c.env_remove(tsumugi::fsmonitor::ENV_ENABLE);
        // A loaded test machine must not turn a slow answer into a full pass.
        c.env(tsumugi::fsmonitor::ENV_TIMEOUT, "30000");
        c
    }

    fn run(&self) {
        let out = self
            .tsumugi()
            .args(["run", "p.yaml", "-q"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `status --json` (with the daemon unless `use_daemon` is false).
    fn status_with(&self, use_daemon: bool) -> Value {
        let mut c = self.tsumugi();
        c.args(["status", "p.yaml", "--json"]);
        if !use_daemon {
            c.env(tsumugi::fsmonitor::ENV_ENABLE, "0");
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn status(&self) -> Value {
        self.status_with(true)
    }

    /// Stale stage count with the daemon, checked against the full pass without it.
    fn stale(&self) -> u64 {
        let with = self.status();
        let without = self.status_with(false);
        assert_eq!(
            with["stale"], without["stale"],
            "the monitor disagrees with the full pass: {with:#} vs {without:#}"
        );
        with["stale"].as_u64().unwrap()
    }

    fn start(&self) -> Daemon {
        let out = self
            .tsumugi()
            .args(["fsmonitor", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = self.daemon_status()["pid"].as_i64().unwrap() as i32;
        Daemon {
            root: self.dir.path().to_path_buf(),
            pid,
        }
    }

    fn daemon_status(&self) -> Value {
        let out = self
            .tsumugi()
            .args(["fsmonitor", "status", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// Stops the daemon when the test ends, however it ends.
struct Daemon {
    root: PathBuf,
    pid: i32,
}

impl Daemon {
    fn kill(&self, sig: i32) {
        // SAFETY: a signal to the daemon this test started.
        unsafe { libc::kill(self.pid, sig) };
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new(assert_cmd::cargo::cargo_bin("tsumugi"))
            .current_dir(&self.root)
            .args(["fsmonitor", "stop"])
            .output();
        // Still alive (stopped by SIGSTOP, say)? Kill it, but only if that pid is still
        // this project's daemon: a pid killed earlier in the test may be someone else's now.
        let cmdline = fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
        let root = self.root.canonicalize().unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(&*root.to_string_lossy());
        if ours {
            self.kill(libc::SIGCONT);
            self.kill(libc::SIGKILL);
        }
    }
}

fn set_mtime(path: &Path, t: SystemTime) {
    let f = fs::File::options().write(true).open(path).unwrap();
    f.set_modified(t).unwrap();
}

fn fsmon(v: &Value) -> &Value {
    &v["fsmonitor"]
}

#[test]
fn noop_status_stats_none_of_the_files_and_every_kind_of_change_is_noticed() {
    let p = Proj::new(10_000);
    p.run();
    let _d = p.start();

    // First status with the daemon: a full pass that records the hashes at a token.
    let first = p.status();
    assert_eq!(first["stale"], 0, "{first:#}");
    assert_eq!(fsmon(&first)["used"], true, "{first:#}");
    assert_eq!(fsmon(&first)["full_pass"], true, "{first:#}");
    assert!(fsmon(&first)["files_statted"].as_u64().unwrap() >= 10_000);

    // No-op: not one of the 10,000 files is stat'ed.
    let noop = p.status();
    assert_eq!(noop["stale"], 0, "{noop:#}");
    assert_eq!(fsmon(&noop)["full_pass"], false, "{noop:#}");
    assert_eq!(fsmon(&noop)["files_statted"], 0, "{noop:#}");
    assert_eq!(
        fsmon(&noop)["reused"],
        2,
        "the dep and the output: {noop:#}"
    );

    // An in-place edit of the same size with the mtime put back.
    let f = p.path("data/files/004/004321.txt");
    let mtime = fs::metadata(&f).unwrap().modified().unwrap();
    fs::write(&f, "FILE 4321\n").unwrap();
    set_mtime(&f, mtime);
    let st = p.status();
    assert_eq!(st["stale"], 1, "{st:#}");
    assert!(
        fsmon(&st)["files_statted"].as_u64().unwrap() >= 10_000,
        "the changed dep is walked again: {st:#}"
    );
    // Its new hash is remembered: still stale, now without a stat.
    let again = p.status();
    assert_eq!(again["stale"], 1, "{again:#}");
    assert_eq!(again["stages"][0]["reasons"], st["stages"][0]["reasons"]);
    assert_eq!(fsmon(&again)["files_statted"], 0, "{again:#}");
    assert_eq!(p.stale(), 1);
    // Putting the content back makes it fresh again (same hash), still through the daemon.
    fs::write(&f, "file 4321\n").unwrap();
    set_mtime(&f, mtime);
    assert_eq!(p.stale(), 0);
    assert_eq!(fsmon(&p.status())["files_statted"], 0);

    // A new file, in a sub-directory made just now.
    fs::create_dir_all(p.path("data/files/new/deeper")).unwrap();
    fs::write(p.path("data/files/new/deeper/x.txt"), "x").unwrap();
    assert_eq!(p.stale(), 1);
    p.run();
    assert_eq!(p.stale(), 0);
    // A file written into the new sub-directory after the run: its watch exists.
    fs::write(p.path("data/files/new/deeper/y.txt"), "y").unwrap();
    assert_eq!(p.stale(), 1);
    p.run();
    assert_eq!(p.stale(), 0);
    assert_eq!(fsmon(&p.status())["files_statted"], 0);

    // A deleted file.
    fs::remove_file(p.path("data/files/000/000007.txt")).unwrap();
    assert_eq!(p.stale(), 1);
    p.run();
    assert_eq!(p.stale(), 0);

    // A rename into the directory from outside it (and out of it).
    fs::write(p.path("outside.txt"), "from outside").unwrap();
    fs::rename(p.path("outside.txt"), p.path("data/files/001/moved-in.txt")).unwrap();
    assert_eq!(p.stale(), 1);
    p.run();
    assert_eq!(p.stale(), 0);
    fs::rename(p.path("data/files/001"), p.path("elsewhere")).unwrap();
    assert_eq!(p.stale(), 1);
    p.run();
    assert_eq!(p.stale(), 0);
    // The directory moved back in, then changed inside: its watches follow it.
    fs::rename(p.path("elsewhere"), p.path("data/files/001")).unwrap();
    assert_eq!(p.stale(), 1);
    p.run();
    assert_eq!(p.stale(), 0);
    fs::write(
        p.path("data/files/001/001001.txt"),
        "changed after the move",
    )
    .unwrap();
    assert_eq!(p.stale(), 1);
    p.run();

    // The exec bit is content.
    let g = p.path("data/files/002/002002.txt");
    fs::set_permissions(&g, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(p.stale(), 1);
    p.run();
    assert_eq!(p.stale(), 0);

    // A deleted output.
    fs::remove_file(p.path("count.txt")).unwrap();
    assert_eq!(p.stale(), 1);
    p.run();
    assert_eq!(p.stale(), 0);
    // The restored output is a copy of its own (never a hard link to its cache object,
    // whose changes would not show as events here), so the daemon vouches for it too.
    let quiet = p.status();
    assert_eq!(fsmon(&quiet)["files_statted"], 0, "{quiet:#}");
    assert_eq!(fsmon(&quiet)["reused"], 2, "{quiet:#}");
}

#[test]
fn a_killed_daemon_means_a_full_pass_and_a_restarted_one_a_full_pass_once() {
    let p = Proj::new(2_000);
    p.run();
    let d = p.start();
    p.status();
    assert_eq!(fsmon(&p.status())["files_statted"], 0);

    d.kill(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(200));
    // Changed while nothing watches: the stale socket answers nothing, so a full pass.
    let f = p.path("data/files/001/001500.txt");
    let mtime = fs::metadata(&f).unwrap().modified().unwrap();
    fs::write(&f, "FILE 1500\n").unwrap();
    set_mtime(&f, mtime);
    let st = p.status();
    assert_eq!(st["stale"], 1, "{st:#}");
    assert_eq!(fsmon(&st)["used"], false, "{st:#}");
    assert!(fsmon(&st)["files_statted"].as_u64().unwrap() >= 2_000);

    // A new daemon: its first answer cannot vouch for the old token.
    let _d2 = p.start();
    let st = p.status();
    assert_eq!(st["stale"], 1, "{st:#}");
    assert_eq!(fsmon(&st)["full_pass"], true, "{st:#}");
    assert!(
        fsmon(&st)["reason"].as_str().unwrap().contains("restarted"),
        "{st:#}"
    );
    p.run();
    let st = p.status();
    assert_eq!(st["stale"], 0, "{st:#}");
    assert_eq!(fsmon(&st)["full_pass"], false, "{st:#}");
    // The output was re-written by the run, so it is hashed once more; the dep is not.
    assert_eq!(fsmon(&p.status())["files_statted"], 0);
}

#[test]
fn a_queue_overflow_means_a_full_pass() {
    let p = Proj::new(100);
    p.run();
    let d = p.start();
    p.status();
    assert_eq!(fsmon(&p.status())["files_statted"], 0);
    // A stopped daemon reads nothing: 3 events per new file overflow the kernel's queue
    // (fs.inotify.max_queued_events, 16,384 by default).
    let max: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or(16_384);
    // The directory first, and a status to be sure it is watched before the daemon stops.
    fs::create_dir_all(p.path("noise")).unwrap();
    p.status();
    d.kill(libc::SIGSTOP);
    for i in 0..(max / 3 + 1000) {
        fs::write(p.path(&format!("noise/{i}")), "n").unwrap();
    }
    // The one change that matters, lost in the overflow.
    fs::write(p.path("data/files/000/000042.txt"), "FILE 42\n").unwrap();
    d.kill(libc::SIGCONT);
    let st = p.status();
    assert_eq!(st["stale"], 1, "{st:#}");
    assert_eq!(fsmon(&st)["full_pass"], true, "{st:#}");
    assert!(
        fsmon(&st)["reason"].as_str().unwrap().contains("overflow"),
        "{st:#}"
    );
    assert!(p.daemon_status()["overflows"].as_u64().unwrap() >= 1);
}

#[test]
fn symlinks_and_hard_links_in_a_dep_are_never_vouched_for() {
    let p = Proj::new(10);
    fs::create_dir_all(p.path("target")).unwrap();
    fs::write(p.path("target/t.txt"), "t").unwrap();
    std::os::unix::fs::symlink(p.path("target"), p.path("data/files/link")).unwrap();
    fs::write(p.path("outside-link-source"), "h").unwrap();
    fs::hard_link(
        p.path("outside-link-source"),
        p.path("data/files/000/hard.txt"),
    )
    .unwrap();
    p.run();
    let _d = p.start();
    p.status();
    let st = p.status();
    assert!(
        fsmon(&st)["files_statted"].as_u64().unwrap() >= 10,
        "a tree with links is walked every time: {st:#}"
    );
    // Changed through the other hard link's name (an event for that name only).
    fs::write(p.path("outside-link-source"), "H").unwrap();
    assert_eq!(p.stale(), 1);
}

#[test]
fn concurrent_statuses_agree() {
    let p = Proj::new(3_000);
    p.run();
    let _d = p.start();
    p.status();
    for round in 0..3 {
        if round == 1 {
            fs::write(p.path("data/files/002/002999.txt"), "changed").unwrap();
        }
        let kids: Vec<_> = (0..4)
            .map(|_| {
                p.tsumugi()
                    .args(["status", "p.yaml", "--json"])
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for k in kids {
            let out = k.wait_with_output().unwrap();
            assert!(out.status.success());
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            let want = if round == 0 { 0 } else { 1 };
            assert_eq!(v["stale"], want, "round {round}: {v:#}");
        }
    }
    assert_eq!(p.stale(), 1);
}

#[test]
fn a_second_daemon_is_refused_and_stop_stops() {
    let p = Proj::new(10);
    let _d = p.start();
    let out = p.tsumugi().args(["fsmonitor", "run"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already runs"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = p.tsumugi().args(["fsmonitor", "stop"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(p.daemon_status()["running"], false);
    let st = p.status();
    assert_eq!(fsmon(&st)["used"], false, "{st:#}");
}
