//! The freshness decision end to end: metrics files are outputs (committed, verified,
//! restored), and a lost run database is noticed without costing the cache.

mod engine_support;
use engine_support::Proj;

/// `train` writes a metrics file; `report` reads it.
const METRICS: &str = r#"
name: m
stages:
  train:
    cmd: "echo train >> ran.log && echo '{\"acc\": 0.5}' > eval/metrics.json"
    metrics: [eval/metrics.json]
  report:
    cmd: echo report >> ran.log && cat eval/metrics.json > report.txt
    deps: [eval/metrics.json]
    outs: [report.txt]
"#;

fn stage<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {status}"))
}

fn reasons(status: &serde_json::Value, name: &str) -> Vec<String> {
    stage(status, name)["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_deleted_metrics_file_is_stale_and_restored_without_running() {
    let p = Proj::new(METRICS);
    assert_eq!(p.run(&[]).0, 0);
    assert_eq!(p.executions(), ["train", "report"]);
    std::fs::remove_file(p.path("eval/metrics.json")).unwrap();

    let st = p.status_json();
    assert_eq!(stage(&st, "train")["fresh"], false, "{st}");
    assert_eq!(
        reasons(&st, "train"),
        ["output eval/metrics.json missing (restorable from cache)"]
    );

    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(Proj::with_status(&v, "restored"), ["train"]);
    assert_eq!(Proj::with_status(&v, "cached"), ["report"]);
    assert_eq!(p.executions(), ["train", "report"], "nothing re-ran");
    assert_eq!(p.read("eval/metrics.json"), "{\"acc\": 0.5}\n");
    assert_eq!(p.status_json()["stale"], 0);
}

#[test]
fn a_modified_metrics_file_is_put_back() {
    let p = Proj::new(METRICS);
    assert_eq!(p.run(&[]).0, 0);
    p.write("eval/metrics.json", "{\"acc\": 0.9}\n");
    let st = p.status_json();
    assert_eq!(
        reasons(&st, "train"),
        ["output eval/metrics.json modified (restorable from cache)"]
    );
    let (_, v, _) = p.run(&[]);
    assert_eq!(Proj::with_status(&v, "restored"), ["train"]);
    assert_eq!(p.read("eval/metrics.json"), "{\"acc\": 0.5}\n");
    assert_eq!(p.executions(), ["train", "report"]);
}

#[test]
fn a_metrics_file_inside_an_output_directory_is_part_of_that_output() {
    let p = Proj::new(
        r#"
name: m
stages:
  evaluate:
    cmd: "echo evaluate >> ran.log && mkdir -p eval && echo '{\"acc\": 1}' > eval/metrics.json && echo x > eval/preds.txt"
    outs: [eval]
    metrics: [eval/metrics.json]
"#,
    );
    let out = p.cmd().args(["validate", "p.yaml"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.run(&[]).0, 0);
    std::fs::remove_file(p.path("eval/metrics.json")).unwrap();
    assert_eq!(p.status_json()["stale"], 1);
    let (_, v, _) = p.run(&[]);
    assert_eq!(Proj::with_status(&v, "restored"), ["evaluate"]);
    assert_eq!(p.read("eval/metrics.json"), "{\"acc\": 1}\n");
    assert_eq!(p.executions(), ["evaluate"]);
}

#[test]
fn a_builtin_kinds_metrics_output_is_restored() {
    let p = Proj::new(
        r#"
name: b
stages:
  pairs:
    uses: build-pairs
    with:
      input: data/pairs.tsv
      text_a: 0
      text_b: 1
      label: 2
      split: {dev: 0.0, test: 0.0}
"#,
    );
    p.write("data/pairs.tsv", "q1\td1\t1\nq2\td2\t0\n");
    let (code, _, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    let stats = "out/b/pairs/stats.json";
    let before = p.read(stats);
    std::fs::remove_file(p.path(stats)).unwrap();
    let st = p.status_json();
    assert_eq!(
        reasons(&st, "pairs"),
        [format!("output {stats} missing (restorable from cache)")]
    );
    let (_, v, _) = p.run(&[]);
    assert_eq!(Proj::with_status(&v, "restored"), ["pairs"]);
    assert_eq!(p.read(stats), before);
}

/// One stage with a file output, one with a directory output.
const TWO: &str = r#"
name: two
stages:
  a:
    cmd: echo a >> ran.log && cat data/in.txt > out/a.txt
    deps: [data/in.txt]
    outs: [out/a.txt]
  d:
    cmd: echo d >> ran.log && mkdir -p out/d && cp out/a.txt out/d/x.txt
    deps: [out/a.txt]
    outs: [out/d]
"#;

fn two() -> Proj {
    let p = Proj::new(TWO);
    p.write("data/in.txt", "one\n");
    p
}

fn stderr_of(p: &Proj, args: &[&str]) -> (bool, String, String) {
    let out = p.cmd().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_truncated_run_database_is_said_until_a_run_adopts_it() {
    let p = two();
    assert_eq!(p.run(&[]).0, 0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(p.path("runs/tsumugi.db"))
        .unwrap()
        .set_len(0)
        .unwrap();

    let (ok, out, err) = stderr_of(&p, &["runs"]);
    assert!(ok, "{err}");
    assert!(out.contains("no runs yet"), "{out}");
    assert!(
        err.contains("runs/tsumugi.db was replaced or truncated")
            && err.contains("run history is lost"),
        "{err}"
    );

    let (code, _, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("run history is lost"), "{err}");

    // The run adopted the new database: said once, not again.
    let (ok, out, err) = stderr_of(&p, &["runs"]);
    assert!(ok && !err.contains("history"), "{err}");
    assert!(out.contains("two"), "{out}");
}

#[test]
fn gc_without_history_keeps_what_the_workspace_uses() {
    let p = two();
    assert_eq!(p.run(&[]).0, 0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(p.path("runs/tsumugi.db"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let (ok, out, err) = stderr_of(&p, &["gc"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("removed 0 cache entries and 0 objects"),
        "{out}"
    );

    // Everything gc kept still restores, without running.
    std::fs::remove_dir_all(p.path("out")).unwrap();
    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(Proj::with_status(&v, "restored"), ["a", "d"]);
    assert_eq!(p.executions(), ["a", "d"], "nothing re-ran");
}

#[test]
fn a_deleted_run_database_is_said() {
    let p = two();
    assert_eq!(p.run(&[]).0, 0);
    std::fs::remove_file(p.path("runs/tsumugi.db")).unwrap();
    let (ok, _, err) = stderr_of(&p, &["status", "p.yaml"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("runs/tsumugi.db is missing") && err.contains("run history is lost"),
        "{err}"
    );
}

#[test]
fn a_damaged_run_database_is_refused_and_left_as_it_is() {
    let p = two();
    assert_eq!(p.run(&[]).0, 0);
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(p.path("runs/tsumugi.db"), &garbage).unwrap();
    let (ok, _, err) = stderr_of(&p, &["run", "p.yaml"]);
    assert!(!ok);
    assert!(
        err.contains("runs/tsumugi.db is damaged or not a run database")
            && err.contains("move it aside"),
        "{err}"
    );
    assert_eq!(std::fs::read(p.path("runs/tsumugi.db")).unwrap(), garbage);
}

#[test]
fn gc_with_its_history_still_removes_what_nothing_uses() {
    // History intact: gc still removes what nothing uses (the first version of `a`).
    let p = two();
    assert_eq!(p.run(&[]).0, 0);
    p.write("data/in.txt", "two\n");
    assert_eq!(p.run(&[]).0, 0);
    assert_eq!(p.action_entries().len(), 4);
    let (ok, out, err) = stderr_of(&p, &["gc"]);
    assert!(ok, "{err}");
    assert!(out.contains("removed 2 cache entries"), "{out}");
    assert_eq!(p.action_entries().len(), 2);
}
