//! The adapter registry end to end (docs/adapters.md): real projects, real `sh` stages, the
//! real binary. `evaluate` writes a metrics file from a parameter and `export` writes a model
//! directory from another, so a test chooses both the artifact and its metric.

mod engine_support;
use engine_support::Proj;

use serde_json::Value;

/// `gate` is the `promote_if` block (or empty); `register_extra` more keys of `register`.
fn pipeline(model: &str, metric: &str, value: f64, gate: &str) -> String {
    format!(
        r#"
name: reg
params: {{model: "{model}", value: {value}}}
stages:
  evaluate:
    cmd: |
      echo '{{"{metric}": ${{params.value}}, "nested": {{"x": 1}}}}' > out/metrics.json
    outs: {{metrics: out/metrics.json}}
  export:
    cmd: echo export >> ran.log && mkdir -p out/model && echo ${{params.model}} > out/model/weights.txt
    needs: [evaluate]
    outs: [out/model]
    register:
      name: nli
      metrics: ${{stages.evaluate.outs.metrics}}
{gate}
"#
    )
}

const MIN_GATE: &str = "      promote_if: {metric: accuracy, min: 0.6}";
const MAX_GATE: &str = "      promote_if: {metric: loss, max: 0.5}";

fn setup(model: &str, acc: f64) -> Proj {
    Proj::new(&pipeline(model, "accuracy", acc, MIN_GATE))
}

fn register_of(v: &Value) -> Value {
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "export")
        .unwrap()["register"]
        .clone()
}

fn current(p: &Proj) -> Option<String> {
    std::fs::read_link(p.path("adapters/nli/current"))
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

fn versions(p: &Proj) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p.path("adapters/nli"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('v'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// (action, version) of every registry event of `nli`, oldest first.
fn events(p: &Proj) -> Vec<(String, u32)> {
    let conn = tsumugi::rundb::open(&p.path("runs/tsumugi.db")).unwrap();
    tsumugi::rundb::adapter_events(&conn, Some("nli"))
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.version))
        .collect()
}

fn db_status(p: &Proj) -> Vec<(u32, String)> {
    let conn = tsumugi::rundb::open(&p.path("runs/tsumugi.db")).unwrap();
    tsumugi::rundb::adapter_versions(&conn, "nli")
        .unwrap()
        .into_iter()
        .map(|r| (r.version, r.status))
        .collect()
}

fn ev(list: &[(&str, u32)]) -> Vec<(String, u32)> {
    list.iter().map(|(a, v)| (a.to_string(), *v)).collect()
}

fn adapters(p: &Proj, args: &[&str]) -> (i32, String, String) {
    let out = p.cmd().arg("adapters").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn first_run_registers_and_promotes_v1_and_a_second_run_registers_nothing() {
    let p = setup("a", 0.7);
    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    let r = register_of(&v);
    assert_eq!(r["action"], "promoted", "{r}");
    assert_eq!(r["version"], 1);
    assert_eq!(r["current"], 1);
    assert_eq!(r["path"], "adapters/nli/v1");
    assert_eq!(r["hash"].as_str().unwrap().len(), 64);
    assert_eq!(r["gate"]["value"], 0.7);
    assert!(
        err.contains("register nli: v1 promoted (accuracy 0.7000 ≥ 0.6)"),
        "{err}"
    );
    assert_eq!(current(&p).as_deref(), Some("v1"));
    assert_eq!(p.read("adapters/nli/v1/model/weights.txt"), "a\n");
    // A copy, writable, not a link into the cache.
    let md = std::fs::metadata(p.path("adapters/nli/v1/model/weights.txt")).unwrap();
    assert!(!md.permissions().readonly());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(md.nlink(), 1);
    let info: Value = serde_json::from_str(&p.read("adapters/nli/v1/version.json")).unwrap();
    assert_eq!(info["status"], "current");
    // The one metrics-file reader: nested keys are joined with `.` (docs/json-output.md).
    assert_eq!(
        info["metrics"],
        serde_json::json!({"accuracy": 0.7, "nested.x": 1.0})
    );
    assert_eq!(info["stage"], "export");
    assert_eq!(info["run_id"], v["run_id"]);
    assert_eq!(info["hash"], r["hash"]);
    assert_eq!(events(&p), ev(&[("registered", 1), ("promoted", 1)]));
    assert_eq!(db_status(&p), vec![(1, "current".to_string())]);

    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(Proj::with_status(&v, "cached").len(), 2);
    assert_eq!(register_of(&v)["action"], "unchanged");
    assert!(!err.contains("register nli"), "{err}");
    assert_eq!(versions(&p), vec!["v1"]);
    assert_eq!(events(&p).len(), 2);
}

#[test]
fn restoring_from_cache_registers_nothing_new() {
    let p = setup("a", 0.7);
    assert_eq!(p.run(&[]).0, 0);
    std::fs::remove_dir_all(p.path("out/model")).unwrap();
    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(Proj::with_status(&v, "restored"), vec!["export"]);
    assert_eq!(register_of(&v)["action"], "unchanged");
    assert_eq!(register_of(&v)["version"], 1);
    assert_eq!(versions(&p), vec!["v1"]);
    assert_eq!(events(&p).len(), 2);
}

#[test]
fn adding_register_does_not_rerun_the_stage_but_registers_its_output() {
    let p = Proj::new(
        &pipeline("a", "accuracy", 0.7, MIN_GATE)
            .replace(
                "    register:\n      name: nli\n      metrics: ${stages.evaluate.outs.metrics}\n",
                "",
            )
            .replace(MIN_GATE, ""),
    );
    assert_eq!(p.run(&[]).0, 0);
    p.clear_executions();
    p.set_pipeline(&pipeline("a", "accuracy", 0.7, MIN_GATE));
    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(Proj::with_status(&v, "cached").len(), 2, "{v}");
    assert!(p.executions().is_empty());
    assert_eq!(register_of(&v)["action"], "promoted");
    assert_eq!(current(&p).as_deref(), Some("v1"));
}

#[test]
fn a_worse_version_is_kept_and_a_better_one_promoted() {
    let p = setup("a", 0.7);
    assert_eq!(p.run(&[]).0, 0);

    p.set_pipeline(&pipeline("b", "accuracy", 0.65, MIN_GATE));
    let (code, v, err) = p.run(&[]);
    assert_eq!(
        code, 0,
        "a gate that does not pass does not fail the run: {err}"
    );
    let r = register_of(&v);
    assert_eq!(r["action"], "kept");
    assert_eq!(r["version"], 2);
    assert_eq!(r["current"], 1);
    assert!(
        err.contains("register nli: v2 kept, not promoted: accuracy 0.6500 < current v1's 0.7000"),
        "{err}"
    );
    assert_eq!(current(&p).as_deref(), Some("v1"));
    assert_eq!(p.read("adapters/nli/v2/model/weights.txt"), "b\n");

    p.set_pipeline(&pipeline("c", "accuracy", 0.8, MIN_GATE));
    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    let r = register_of(&v);
    assert_eq!(
        (r["action"].as_str(), r["version"].as_u64()),
        (Some("promoted"), Some(3))
    );
    assert_eq!(r["previous"], 1);
    assert!(
        err.contains("register nli: v3 promoted (accuracy 0.8000 ≥ 0.6, ≥ v1's 0.7000)"),
        "{err}"
    );
    assert_eq!(current(&p).as_deref(), Some("v3"));
    assert_eq!(
        events(&p),
        ev(&[
            ("registered", 1),
            ("promoted", 1),
            ("registered", 2),
            ("kept", 2),
            ("registered", 3),
            ("promoted", 3)
        ])
    );
    assert_eq!(
        db_status(&p),
        vec![
            (1, "retired".to_string()),
            (2, "candidate".to_string()),
            (3, "current".to_string())
        ]
    );

    // Going back to an artifact already registered (v2's) adds nothing.
    p.set_pipeline(&pipeline("b", "accuracy", 0.65, MIN_GATE));
    let (code, v, _) = p.run(&[]);
    assert_eq!(code, 0);
    assert_eq!(register_of(&v)["action"], "unchanged");
    assert_eq!(register_of(&v)["version"], 2);
    assert_eq!(versions(&p).len(), 3);
}

#[test]
fn below_the_threshold_nothing_is_promoted() {
    let p = setup("a", 0.5);
    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(register_of(&v)["action"], "kept");
    assert!(
        err.contains("register nli: v1 kept, not promoted: accuracy 0.5000 < min 0.6"),
        "{err}"
    );
    assert_eq!(current(&p), None);
    assert_eq!(db_status(&p), vec![(1, "candidate".to_string())]);

    // Above the threshold, with no current version to compare with.
    p.set_pipeline(&pipeline("b", "accuracy", 0.61, MIN_GATE));
    let (_, v, err) = p.run(&[]);
    assert_eq!(register_of(&v)["action"], "promoted", "{err}");
    assert_eq!(current(&p).as_deref(), Some("v2"));
}

#[test]
fn max_gates_prefer_lower_values() {
    let p = Proj::new(&pipeline("a", "loss", 0.3, MAX_GATE));
    let (code, _, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("register nli: v1 promoted (loss 0.3000 ≤ 0.5)"),
        "{err}"
    );

    p.set_pipeline(&pipeline("b", "loss", 0.4, MAX_GATE));
    let (_, v, err) = p.run(&[]);
    assert_eq!(register_of(&v)["action"], "kept");
    assert!(
        err.contains("register nli: v2 kept, not promoted: loss 0.4000 > current v1's 0.3000"),
        "{err}"
    );

    p.set_pipeline(&pipeline("c", "loss", 0.7, MAX_GATE));
    let (_, _, err) = p.run(&[]);
    assert!(
        err.contains(
            "register nli: v3 kept, not promoted: loss 0.7000 > max 0.5 and > current v1's 0.3000"
        ),
        "{err}"
    );

    p.set_pipeline(&pipeline("d", "loss", 0.2, MAX_GATE));
    let (_, _, err) = p.run(&[]);
    assert!(
        err.contains("register nli: v4 promoted (loss 0.2000 ≤ 0.5, ≤ v1's 0.3000)"),
        "{err}"
    );
    assert_eq!(current(&p).as_deref(), Some("v4"));
}

#[test]
fn a_missing_metric_fails_the_stage_and_names_the_file() {
    let p = Proj::new(&pipeline("a", "f1", 0.7, MIN_GATE));
    let (code, v, _) = p.run(&[]);
    assert_eq!(code, 1);
    let export = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "export")
        .unwrap()
        .clone();
    assert_eq!(export["status"], "failed");
    assert_eq!(
        export["message"],
        "register nli: metric 'accuracy' is not in the metrics file out/metrics.json (it has: f1, nested.x)"
    );
    assert!(versions(&p).is_empty());
    // The stage's work is cached; the registration is tried again on the next run.
    let (code, v, _) = p.run(&[]);
    assert_eq!(code, 1);
    assert_eq!(Proj::with_status(&v, "failed"), vec!["export"]);
}

#[test]
fn without_a_gate_every_new_version_is_promoted() {
    let p = Proj::new(&pipeline("a", "accuracy", 0.7, ""));
    assert_eq!(p.run(&[]).0, 0);
    p.set_pipeline(&pipeline("b", "accuracy", 0.1, ""));
    let (_, v, err) = p.run(&[]);
    assert_eq!(register_of(&v)["action"], "promoted");
    assert!(err.contains("register nli: v2 promoted (no gate)"), "{err}");
    assert_eq!(current(&p).as_deref(), Some("v2"));
}

#[test]
fn dry_runs_register_nothing() {
    let p = setup("a", 0.7);
    let (code, v, _) = p.run(&["--dry-run"]);
    assert_eq!(code, 0);
    assert!(register_of(&v).is_null());
    assert!(!p.path("adapters").exists());
}

/// v1 promoted, v2 kept, v3 promoted: current v3.
fn three_versions() -> Proj {
    let p = setup("a", 0.7);
    assert_eq!(p.run(&[]).0, 0);
    p.set_pipeline(&pipeline("b", "accuracy", 0.65, MIN_GATE));
    assert_eq!(p.run(&[]).0, 0);
    p.set_pipeline(&pipeline("c", "accuracy", 0.8, MIN_GATE));
    assert_eq!(p.run(&[]).0, 0);
    assert_eq!(current(&p).as_deref(), Some("v3"));
    p
}

#[test]
fn promote_and_rollback_move_current_and_write_events() {
    let p = three_versions();
    let base = events(&p).len();

    let (code, out, err) = adapters(&p, &["promote", "nli", "2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "nli: v2 is current (was v3)");
    assert_eq!(current(&p).as_deref(), Some("v2"));
    assert_eq!(events(&p)[base..], ev(&[("manual_promote", 2)]));
    assert_eq!(
        db_status(&p),
        vec![
            (1, "retired".to_string()),
            (2, "current".to_string()),
            (3, "retired".to_string())
        ]
    );
    let info: Value = serde_json::from_str(&p.read("adapters/nli/v2/version.json")).unwrap();
    assert_eq!(info["status"], "current");

    // Without VERSION: the one current before, then the one before that.
    let (code, out, err) = adapters(&p, &["rollback", "nli"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "nli: rolled back to v3 (was v2)");
    assert_eq!(current(&p).as_deref(), Some("v3"));
    let (code, out, _) = adapters(&p, &["rollback", "nli"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "nli: rolled back to v1 (was v3)");
    assert_eq!(current(&p).as_deref(), Some("v1"));
    let (code, _, err) = adapters(&p, &["rollback", "nli"]);
    assert_ne!(code, 0);
    assert!(err.contains("no version was current before v1"), "{err}");
    assert_eq!(current(&p).as_deref(), Some("v1"));

    // With VERSION.
    let (code, out, err) = adapters(&p, &["rollback", "nli", "v3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "nli: rolled back to v3 (was v1)");
    assert_eq!(current(&p).as_deref(), Some("v3"));
    assert_eq!(
        events(&p)[base..],
        ev(&[
            ("manual_promote", 2),
            ("rollback", 3),
            ("rollback", 1),
            ("rollback", 3)
        ])
    );

    // A run afterwards compares against the current version (v3, 0.8).
    p.set_pipeline(&pipeline("e", "accuracy", 0.75, MIN_GATE));
    let (_, _, err) = p.run(&[]);
    assert!(
        err.contains("register nli: v4 kept, not promoted: accuracy 0.7500 < current v3's 0.8000"),
        "{err}"
    );

    let (code, out, _) = adapters(&p, &["history", "nli"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("manual_promote") && out.contains("rolled back from v2"),
        "{out}"
    );
}

#[test]
fn list_json_shape_and_table() {
    let p = three_versions();
    let (code, out, err) = adapters(&p, &["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let a = &v["adapters"][0];
    assert_eq!(a["name"], "nli");
    assert_eq!(a["current"], 3);
    let vs = a["versions"].as_array().unwrap();
    assert_eq!(vs.len(), 3);
    let statuses: Vec<(&str, bool)> = vs
        .iter()
        .map(|x| {
            (
                x["status"].as_str().unwrap(),
                x["current"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![("retired", false), ("candidate", false), ("current", true)]
    );
    let v2 = &vs[1];
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["path"], "adapters/nli/v2");
    assert_eq!(v2["artifact"], "model");
    assert_eq!(v2["source"], "out/model");
    assert_eq!(v2["metrics"]["accuracy"], 0.65);
    assert_eq!(v2["gate"]["passed"], false);
    assert_eq!(v2["gate"]["against"], 1);
    assert_eq!(v2["hash"].as_str().unwrap().len(), 64);
    assert!(v2["run_id"].is_string() && v2["created_at"].is_string());

    let (code, out, _) = adapters(&p, &["list", "nli"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("nli (current: v3)"), "{out}");
    let star: Vec<&str> = out.lines().filter(|l| l.starts_with('*')).collect();
    assert_eq!(star.len(), 1, "{out}");
    assert!(
        star[0].contains("v3") && star[0].contains("accuracy=0.8000"),
        "{out}"
    );
}

#[test]
fn unknown_names_and_versions_are_errors() {
    let p = three_versions();
    let (code, _, err) = adapters(&p, &["list", "nil"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no adapter registry named \"nil\" (names: nli; did you mean \"nli\"?)"),
        "{err}"
    );
    let (code, _, err) = adapters(&p, &["promote", "nli", "9"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("nli has no version v9 (versions: v1, v2, v3)"),
        "{err}"
    );
    let (code, _, err) = adapters(&p, &["rollback", "nli", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("bad version \"x\""), "{err}");
    let (code, _, err) = adapters(&p, &["history", "../nli"]);
    assert_eq!(code, 2);
    assert!(err.contains("bad adapter registry name"), "{err}");
    let (code, _, err) = adapters(&p, &["rollback", "other"]);
    assert_eq!(code, 2);
    assert!(err.contains("no adapter registry named \"other\""), "{err}");
    assert_eq!(current(&p).as_deref(), Some("v3"));
}
