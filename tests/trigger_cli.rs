//! `tsumugi schedule --once` (the crontab path) and the errors of `schedule`, through the
//! real binary.

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;
use tsumugi::project::Project;
use tsumugi::trigger::state::SchedulerLock;

fn tsumugi(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("tsumugi").unwrap();
    c.arg("-C").arg(dir);
    c
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Every minute: whenever the test runs, a tick is at most a minute old, so on time.
const EVERY_MINUTE: &str = r#"name: nightly
stages:
  count:
    cmd: mkdir -p out && wc -l < data/rows.txt > out/count.txt
    deps: [data/rows.txt]
    outs: [out/count.txt]
triggers:
  - cron: "* * * * *"
    when:
      sql: SELECT count(*) FROM jobs WHERE done = 0
      db: data/app.db
      min: 2
"#;

fn runs(dir: &Path) -> Vec<(String, String)> {
    let Some(conn) = tsumugi::rundb::open_read(&Project::new(dir)).unwrap() else {
        return vec![];
    };
    let mut st = conn
        .prepare("SELECT trigger, status FROM runs ORDER BY seq")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn once_evaluates_the_due_tick_runs_and_records_cron() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "pipelines/nightly.yaml", EVERY_MINUTE);
    write(d.path(), "data/rows.txt", "a\nb\n");
    let conn = rusqlite::Connection::open(d.path().join("data/app.db")).unwrap();
    conn.execute_batch("CREATE TABLE jobs(done INTEGER); INSERT INTO jobs VALUES (0);")
        .unwrap();

    // One pending job: below min 2, skipped, with the reason on stderr; exit 0.
    tsumugi(d.path())
        .args(["schedule", "pipelines/nightly.yaml", "--once"])
        .assert()
        .success()
        .stderr(
            predicate::str::contains("cron.skipped").and(predicate::str::contains("= 1 < min 2")),
        );
    assert!(runs(d.path()).is_empty());

    // The tick has been dealt with: an immediate second --once finds nothing due — unless
    // the minute turned in between, in which case it evaluates the new tick (still 1 < 2).
    tsumugi(d.path())
        .args(["schedule", "pipelines/nightly.yaml", "--once"])
        .assert()
        .success();

    // Two pending jobs, a fresh state (as on the next tick): it fires and the run is a cron run.
    conn.execute_batch("INSERT INTO jobs VALUES (0);").unwrap();
    std::fs::remove_file(d.path().join("runs/triggers/nightly.json")).unwrap();
    tsumugi(d.path())
        .args(["schedule", "pipelines/nightly.yaml", "--once"])
        .assert()
        .success()
        .stderr(
            predicate::str::contains("cron.fired").and(predicate::str::contains("cron.run_ok")),
        );
    assert_eq!(
        runs(d.path()),
        vec![("cron".to_string(), "success".to_string())]
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("out/count.txt"))
            .unwrap()
            .trim(),
        "2"
    );
}

#[test]
fn once_exits_1_when_the_run_fails() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "pipelines/p.yaml",
        "name: p\nstages:\n  bad:\n    cmd: exit 7\ntriggers:\n  - cron: \"* * * * *\"\n",
    );
    tsumugi(d.path())
        .args(["schedule", "pipelines/p.yaml", "--once"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("cron.run_failed"));
    assert_eq!(
        runs(d.path()),
        vec![("cron".to_string(), "failed".to_string())]
    );
}

#[test]
fn schedule_errors_name_the_place_and_exit_non_zero() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "pipelines/p.yaml",
        "name: p\nstages:\n  s:\n    cmd: echo\ntriggers:\n  - cron: \"CRON_TZ=Asia/Tokio 0 3 * * *\"\n",
    );
    tsumugi(d.path())
        .args(["schedule", "pipelines/p.yaml", "--once"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "pipelines/p.yaml:6:5: unknown time zone \"Asia/Tokio\"",
        ));

    write(
        d.path(),
        "pipelines/p.yaml",
        "name: p\nstages:\n  s:\n    cmd: echo\n",
    );
    tsumugi(d.path())
        .args(["schedule", "pipelines/p.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "the pipeline has no cron triggers",
        ));
}

#[test]
fn a_second_scheduler_of_one_pipeline_is_refused() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "pipelines/p.yaml",
        "name: p\nstages:\n  s:\n    cmd: echo\ntriggers:\n  - cron: \"* * * * *\"\n",
    );
    // This test process plays the running daemon.
    let _held = SchedulerLock::acquire(&Project::new(d.path()), "p", "a test daemon").unwrap();
    tsumugi(d.path())
        .args(["schedule", "pipelines/p.yaml", "--once"])
        .assert()
        .code(3)
        .stderr(
            predicate::str::contains(
                "another tsumugi schedule is already running for pipeline 'p'",
            )
            .and(predicate::str::contains("a test daemon")),
        );
    assert!(runs(d.path()).is_empty());
}

/// Polls (bounded) until the project's run database holds `n` finished runs.
fn wait_runs(dir: &Path, n: usize, within: std::time::Duration) -> Vec<(String, String)> {
    let t0 = std::time::Instant::now();
    loop {
        let r: Vec<(String, String)> = runs(dir)
            .into_iter()
            .filter(|(_, s)| s != "running")
            .collect();
        if r.len() >= n || t0.elapsed() > within {
            return r;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Waits (bounded) for a child to exit; kills it and fails if it does not.
fn wait_exit(
    child: &mut std::process::Child,
    within: std::time::Duration,
) -> std::process::ExitStatus {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > within {
            let _ = child.kill();
            panic!("the process did not exit within {within:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn watch_command_runs_on_a_change_and_stops_on_ctrl_c() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "pipelines/w.yaml",
        "name: w\nstages:\n  up:\n    cmd: mkdir -p out && tr a-z A-Z < data/in.txt > out/up.txt\n    deps: [data/in.txt]\n    outs: [out/up.txt]\n",
    );
    write(d.path(), "data/in.txt", "a\n");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("tsumugi"))
        .arg("-C")
        .arg(d.path())
        .args(["watch", "pipelines/w.yaml", "--debounce", "100ms"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (bounded) for the "watching" line, so the watches are in place.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    assert!(line.starts_with("watching "), "{line}");
    // Drain the rest of stderr in the background so the child never blocks on it.
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut rest);
        rest
    });
    write(d.path(), "data/in.txt", "hello\n");
    let r = wait_runs(d.path(), 1, std::time::Duration::from_secs(20));
    assert_eq!(r, vec![("watch".to_string(), "success".to_string())]);
    assert_eq!(
        std::fs::read_to_string(d.path().join("out/up.txt")).unwrap(),
        "HELLO\n"
    );
    signal(&child, "-INT");
    assert!(wait_exit(&mut child, std::time::Duration::from_secs(10)).success());
    let rest = drain.join().unwrap();
    assert!(
        rest.contains("watch.fired") && rest.contains("watch.run_ok"),
        "{rest}"
    );
}

#[test]
fn schedule_daemon_fires_on_its_ticks_and_stops_on_sigterm() {
    let d = tempfile::tempdir().unwrap();
    // Every second; fires only when data/*.txt changed since the last successful run.
    write(
        d.path(),
        "pipelines/s.yaml",
        "name: s\nstages:\n  cat:\n    cmd: mkdir -p out && cat data/*.txt > out/all.txt\n    deps: [data]\n    outs: [out/all.txt]\ntriggers:\n  - cron: \"* * * * * *\"\n    when: {changed: [\"data/*.txt\"]}\n",
    );
    write(d.path(), "data/a.txt", "a\n");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("tsumugi"))
        .arg("-C")
        .arg(d.path())
        .args(["schedule", "pipelines/s.yaml"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // First tick: no earlier run, so "changed": one run.
    assert_eq!(
        wait_runs(d.path(), 1, std::time::Duration::from_secs(20)).len(),
        1
    );
    // Nothing changes for a few ticks: no run.
    assert_eq!(
        wait_runs(d.path(), 2, std::time::Duration::from_millis(2500)).len(),
        1
    );
    // A change: the next tick runs again.
    write(d.path(), "data/b.txt", "b\n");
    let r = wait_runs(d.path(), 2, std::time::Duration::from_secs(20));
    assert_eq!(r, vec![("cron".to_string(), "success".to_string()); 2]);
    assert_eq!(
        std::fs::read_to_string(d.path().join("out/all.txt")).unwrap(),
        "a\nb\n"
    );
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, std::time::Duration::from_secs(10)).success());
}
