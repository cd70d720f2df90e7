//! Execution: parallelism, retries, timeouts, --keep-going, cancellation, the project lock.

mod engine_support;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use engine_support::{Proj, sorted};

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn independent_stages_run_in_parallel_up_to_jobs() {
    let p = Proj::new(
        r#"
name: par
stages:
  s1: {cmd: "sleep 1 && echo 1 > o1", outs: [o1]}
  s2: {cmd: "sleep 1 && echo 2 > o2", outs: [o2]}
  s3: {cmd: "sleep 1 && echo 3 > o3", outs: [o3]}
  join: {cmd: "cat o1 o2 o3 > all", deps: [o1, o2, o3], outs: [all]}
"#,
    );
    let t0 = Instant::now();
    let (code, v, err) = p.run(&["-j", "3"]);
    let took = t0.elapsed();
    assert_eq!(code, 0, "{err}");
    assert_eq!(Proj::with_status(&v, "ran").len(), 4);
    assert!(
        took < Duration::from_millis(2500),
        "3 × 1 s stages with -j 3 took {took:?}"
    );
    assert_eq!(p.read("all"), "1\n2\n3\n");

    // -j 1 serialises them.
    let t0 = Instant::now();
    let (code, _, _) = p.run(&["-j", "1", "--force"]);
    assert_eq!(code, 0);
    assert!(t0.elapsed() >= Duration::from_secs(3));
}

#[test]
fn retry_with_backoff_then_success() {
    let p = Proj::new(
        r#"
name: retry
stages:
  flaky:
    cmd: "echo try >> tries && test $(wc -l < tries) -ge 3 && echo ok > out.txt"
    outs: [out.txt]
    retry: {attempts: 3, backoff: 100ms}
"#,
    );
    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    let s = &v["stages"][0];
    assert_eq!(s["status"], "ran");
    assert_eq!(s["attempts"], 3);
    assert_eq!(p.read("tries").lines().count(), 3);
    let log = p.read(s["log"].as_str().unwrap());
    assert!(log.contains("attempt 3"), "{log}");
}

#[test]
fn retries_exhausted_fail_with_exit_code_and_log() {
    let p = Proj::new(
        r#"
name: fail
stages:
  bad:
    cmd: "echo boom >&2; exit 7"
    outs: [never.txt]
    retry: {attempts: 1, backoff: 50ms}
"#,
    );
    let (code, v, _) = p.run(&[]);
    assert_eq!(code, 1);
    let s = &v["stages"][0];
    assert_eq!(s["status"], "failed");
    assert_eq!(s["exit_code"], 7);
    assert_eq!(s["attempts"], 2);
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("exited with status 7")
    );
    assert!(p.read(s["log"].as_str().unwrap()).contains("boom"));
    assert!(p.action_entries().is_empty());
}

#[test]
fn timeout_kills_the_process_group() {
    let p = Proj::new(
        r#"
name: slow
stages:
  slow:
    cmd: "sleep 30 & sleep 30; echo done > out.txt"
    outs: [out.txt]
    timeout: 500ms
"#,
    );
    let t0 = Instant::now();
    let (code, v, _) = p.run(&[]);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(code, 1);
    assert_eq!(v["stages"][0]["status"], "failed");
    assert!(
        v["stages"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("timed out after 0.5s")
    );
    assert!(!p.path("out.txt").exists());
}

const KG: &str = r#"
name: kg
stages:
  bad: {cmd: "echo bad >> ran.log; exit 1", outs: [bad.txt]}
  after_bad: {cmd: "echo after_bad >> ran.log; cp bad.txt x", deps: [bad.txt], outs: [x]}
  good: {cmd: "echo good >> ran.log; echo g > good.txt", outs: [good.txt]}
"#;

#[test]
fn without_keep_going_the_run_stops_after_a_failure() {
    let p = Proj::new(KG);
    let (code, v, _) = p.run(&["-j", "1"]);
    assert_eq!(code, 1);
    assert_eq!(Proj::with_status(&v, "failed"), ["bad"]);
    assert_eq!(
        Proj::with_status(&v, "skipped"),
        sorted(&["after_bad", "good"])
    );
    assert_eq!(p.executions(), ["bad"]);
}

#[test]
fn keep_going_runs_everything_not_downstream_of_the_failure() {
    let p = Proj::new(KG);
    let (code, v, _) = p.run(&["-j", "1", "--keep-going"]);
    assert_eq!(code, 1);
    assert_eq!(Proj::with_status(&v, "failed"), ["bad"]);
    assert_eq!(Proj::with_status(&v, "ran"), ["good"]);
    assert_eq!(Proj::with_status(&v, "skipped"), ["after_bad"]);
    let msg = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "after_bad")
        .unwrap()["message"]
        .clone();
    assert_eq!(msg, "upstream stage bad failed");
}

#[test]
fn gpu_stage_without_gpus_fails_clearly() {
    let p = Proj::new(
        r#"
name: gpu
stages:
  train: {cmd: "echo $CUDA_VISIBLE_DEVICES > dev.txt", outs: [dev.txt], resources: {gpu: 1}}
"#,
    );
    let out = p
        .cmd()
        .env_remove("CUDA_VISIBLE_DEVICES")
        .env("PATH", "/usr/bin:/bin")
        .args(["run", "p.yaml", "--json"])
        .output()
        .unwrap();
    if Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return; // a real GPU machine: the stage may legitimately run
    }
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let msg = v["stages"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("needs 1 GPU(s) but 0 are available") && msg.contains("--gpus"),
        "{msg}"
    );

    // With --gpus 2 the stage gets a pinned device.
    let (code, _, err) = p.run(&["--gpus", "2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(p.read("dev.txt").trim(), "0");
}

const SLEEPY: &str = r#"
name: sleepy
stages:
  first: {cmd: "echo first >> ran.log; echo 1 > first.txt", outs: [first.txt]}
  slow: {cmd: "echo slow >> ran.log; sleep 30; echo 2 > slow.txt", deps: [first.txt], outs: [slow.txt]}
  last: {cmd: "echo last >> ran.log; cat slow.txt > last.txt", deps: [slow.txt], outs: [last.txt]}
"#;

fn spawn_run(p: &Proj, extra: &[&str]) -> std::process::Child {
    Command::new(Proj::bin())
        .current_dir(p.root())
        .args(["run", "p.yaml", "--json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn sigint_cancels_running_stages_and_the_next_run_redoes_only_them() {
    let p = Proj::new(SLEEPY);
    let child = spawn_run(&p, &[]);
    wait_for("the slow stage to start", Duration::from_secs(20), || {
        p.executions().contains(&"slow".to_string())
    });
    std::thread::sleep(Duration::from_millis(200));
    unsafe_kill(child.id(), 2);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cancelled"], true);
    assert_eq!(Proj::with_status(&v, "ran"), ["first"]);
    assert_eq!(Proj::with_status(&v, "cancelled"), ["slow"]);
    assert_eq!(Proj::with_status(&v, "skipped"), ["last"]);
    assert_eq!(p.action_entries().len(), 1, "only `first` is committed");

    // The database says the same.
    let show = p.cmd().args(["show", "latest", "--json"]).output().unwrap();
    let s: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(s["run"]["status"], "cancelled");

    p.clear_executions();
    p.set_pipeline(&SLEEPY.replace("sleep 30", "sleep 0.1"));
    let (code, v, _) = p.run(&[]);
    assert_eq!(code, 0);
    assert_eq!(Proj::with_status(&v, "cached"), ["first"]);
    assert_eq!(Proj::with_status(&v, "ran"), sorted(&["last", "slow"]));
}

#[test]
fn sigkill_of_tsumugi_leaves_no_entry_and_no_orphan_writer() {
    let p = Proj::new(&SLEEPY.replace("sleep 30", "sleep 2"));
    let mut child = spawn_run(&p, &[]);
    wait_for("the slow stage to start", Duration::from_secs(20), || {
        p.executions().contains(&"slow".to_string())
    });
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(p.action_entries().len(), 1);
    // The stage's shell died with tsumugi (PDEATHSIG): nothing writes its output later.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !p.path("slow.txt").exists(),
        "an orphaned stage wrote its output after tsumugi was killed"
    );

    p.clear_executions();
    p.set_pipeline(&SLEEPY.replace("sleep 30", "sleep 0.1"));
    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(Proj::with_status(&v, "cached"), ["first"]);
    assert_eq!(Proj::with_status(&v, "ran"), sorted(&["last", "slow"]));
    let runs = p.cmd().args(["runs", "--json"]).output().unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap();
    assert_eq!(runs[1]["status"], "interrupted");
    assert_eq!(runs[0]["status"], "success");
}

#[test]
fn concurrent_runs_wait_for_each_other_and_stay_consistent() {
    let p = Proj::new(
        r#"
name: conc
stages:
  a: {cmd: "sleep 1; echo a > a.txt", outs: [a.txt]}
  b: {cmd: "cat a.txt a.txt > b.txt", deps: [a.txt], outs: [b.txt]}
"#,
    );
    let c1 = spawn_run(&p, &[]);
    wait_for("the lock", Duration::from_secs(20), || {
        p.path("runs/.lock").exists()
    });
    let c2 = spawn_run(&p, &[]);
    let (o1, o2) = (
        c1.wait_with_output().unwrap(),
        c2.wait_with_output().unwrap(),
    );
    assert!(o1.status.success() && o2.status.success());
    let err2 = String::from_utf8_lossy(&o2.stderr);
    let err1 = String::from_utf8_lossy(&o1.stderr);
    assert!(
        err1.contains("waiting for the project lock held by pid")
            || err2.contains("waiting for the project lock held by pid"),
        "{err1}\n{err2}"
    );
    assert!(!err1.contains("database is locked") && !err2.contains("database is locked"));
    let v1: serde_json::Value = serde_json::from_slice(&o1.stdout).unwrap();
    let v2: serde_json::Value = serde_json::from_slice(&o2.stdout).unwrap();
    // One did the work, the other found it cached.
    let ran = Proj::with_status(&v1, "ran").len() + Proj::with_status(&v2, "ran").len();
    let cached = Proj::with_status(&v1, "cached").len() + Proj::with_status(&v2, "cached").len();
    assert_eq!((ran, cached), (2, 2));
    let runs = p.cmd().args(["runs", "--json"]).output().unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 2);
    // Every cached object still verifies: delete outputs, restore them.
    std::fs::remove_file(p.path("a.txt")).unwrap();
    std::fs::remove_file(p.path("b.txt")).unwrap();
    let (code, v, _) = p.run(&[]);
    assert_eq!(code, 0);
    assert_eq!(Proj::with_status(&v, "restored"), sorted(&["a", "b"]));
    assert_eq!(p.read("b.txt"), "a\na\n");
}

#[test]
fn no_wait_refuses_a_held_lock() {
    let p = Proj::new(
        r#"
name: nw
stages:
  a: {cmd: "sleep 2; echo a > a.txt", outs: [a.txt]}
"#,
    );
    let c1 = spawn_run(&p, &[]);
    wait_for(
        "the lock holder to write its pid",
        Duration::from_secs(20),
        || std::fs::read_to_string(p.path("runs/.lock")).is_ok_and(|s| s.lines().count() >= 3),
    );
    let out = p
        .cmd()
        .args(["run", "p.yaml", "--no-wait"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("locked by pid {}", c1.id())) && err.contains("tsumugi run p.yaml"),
        "{err}"
    );
    assert!(c1.wait_with_output().unwrap().status.success());
}

fn unsafe_kill(pid: u32, sig: i32) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}
