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
