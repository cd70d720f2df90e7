//! Params files and experiments (issue 14, items 1 and 2) through the real binary, on
//! temporary projects. What ran is counted by side effects: every stage appends its name
//! to `log.txt` when its command runs.

use std::collections::BTreeMap;
use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

fn tsumugi(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("tsumugi").unwrap();
    c.arg("-C").arg(dir);
    c
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = tsumugi(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tsumugi {args:?} must succeed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let out = tsumugi(dir).args(args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "tsumugi {args:?} must fail with 2"
    );
    String::from_utf8(out.stderr).unwrap()
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}

/// How many times each stage has run so far.
fn runs(dir: &Path) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in std::fs::read_to_string(dir.join("log.txt"))
        .unwrap_or_default()
        .lines()
    {
        *m.entry(l.to_owned()).or_insert(0) += 1;
    }
    m
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// A stage that logs its run and writes `out` from a shell expression.
fn stage(name: &str, params: &str, body: &str, out: &str) -> String {
    format!(
        "  {name}:\n    cmd: echo {name} >> log.txt; {body} > {out}\n    params: {params}\n    outs: [{out}]\n"
    )
}

const PARAMS: &str =
    "# DVC's default params file\ntrain:\n  n_est: 50\n  seed: 1\nother: 3\nrank: 99\n";

fn params_project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "params.yaml", PARAMS);
    write(d, "extra.json", r#"{"a": {"b": 1}, "c": 2}"#);
    write(d, "more.toml", "x = 1\n[t]\ny = \"s\"\n");
    let mut p = String::from("name: pf\nparams: {rank: 16}\nstages:\n");
    p += &stage(
        "n_est",
        "[params.yaml:train.n_est]",
        "echo ${params.train.n_est}",
        "n.txt",
    );
    p += &stage("seed", "[train.seed]", "echo seed", "seed.txt");
    p += &stage("json", "[{extra.json: [a.b]}]", "echo json", "json.txt");
    p += &stage("toml", "[more.toml:t.y]", "echo toml", "toml.txt");
    p += &stage("inline", "[]", "echo ${params.rank}", "inline.txt");
    p += "  down:\n    cmd: echo down >> log.txt; cat n.txt > down.txt\n    deps: [n.txt]\n    outs: [down.txt]\n";
    write(d, "p.yaml", &p);
    dir
}

#[test]
fn a_params_file_key_reruns_only_the_stages_that_list_it() {
    let dir = params_project();
    let d = dir.path();
    ok(d, &["run", "p.yaml", "-q"]);
    let all1 = counts(&[
        ("down", 1),
        ("inline", 1),
        ("json", 1),
        ("n_est", 1),
        ("seed", 1),
        ("toml", 1),
    ]);
    assert_eq!(runs(d), all1);
    // `${params.train.n_est}` read params.yaml; an inline param wins over a key of it.
    assert_eq!(std::fs::read_to_string(d.join("n.txt")).unwrap(), "50\n");
    assert_eq!(
        std::fs::read_to_string(d.join("inline.txt")).unwrap(),
        "16\n"
    );

    // Another key of the file, and the file rewritten with the same values: nothing runs.
    write(
        d,
        "params.yaml",
        "train: {seed: 1, n_est: 50}\nother: 4\nnew: x\nrank: 1\n",
    );
    ok(d, &["run", "p.yaml", "-q"]);
    assert_eq!(runs(d), all1);

    // One key: its stage and what is downstream of it, nothing else; status names the key.
    write(d, "params.yaml", "train: {seed: 1, n_est: 100}\nother: 4\n");
    let st = ok(d, &["status", "p.yaml"]);
    assert!(
        st.contains("param params.yaml:train.n_est: 50 → 100"),
        "status names the key:\n{st}"
    );
    ok(d, &["run", "p.yaml", "-q"]);
    let mut want = all1.clone();
    *want.get_mut("n_est").unwrap() += 1;
    *want.get_mut("down").unwrap() += 1;
    assert_eq!(runs(d), want);

    // JSON and TOML files, by key.
    write(d, "extra.json", r#"{"a": {"b": 1}, "c": 99}"#);
    ok(d, &["run", "p.yaml", "-q"]);
    assert_eq!(runs(d), want, "another key of extra.json");
    write(d, "extra.json", r#"{"a": {"b": 2}, "c": 99}"#);
    write(d, "more.toml", "x = 2\n[t]\ny = \"z\"\n");
    ok(d, &["run", "p.yaml", "-q"]);
    *want.get_mut("json").unwrap() += 1;
    *want.get_mut("toml").unwrap() += 1;
    assert_eq!(runs(d), want);
    // The params files are never dependencies (no stage would be fresh otherwise).
    let st = ok(d, &["status", "p.yaml"]);
    assert!(st.contains("up to date"), "{st}");
}

#[test]
fn a_missing_params_file_or_key_is_a_positioned_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "params.yaml", "train: {lr: 0.1}\n");
    let p = "stages:\n  a:\n    cmd: echo ${params.train.nope}\n  b:\n    cmd: echo b\n    params: [trian.lr, nope.yaml:x]\n";
    write(d, "p.yaml", p);
    let err = fails(d, &["run", "p.yaml"]);
    assert!(
        err.contains("p.yaml:3:15")
            && err.contains(
                "params file 'params.yaml' has no key 'train.nope' (keys of 'train': lr)"
            ),
        "{err}"
    );
    assert!(
        err.contains("p.yaml:6:14")
            && err.contains("no key 'trian.lr'")
            && err.contains("did you mean 'train'?"),
        "{err}"
    );
    assert!(
        err.contains("p.yaml:6:24") && err.contains("params file 'nope.yaml' does not exist"),
        "{err}"
    );
    // An override of a key that does not exist is refused before anything runs.
    write(
        d,
        "p.yaml",
        "stages:\n  a:\n    cmd: echo ${params.train.lr}\n",
    );
    let err = fails(d, &["exp", "run", "p.yaml", "-S", "train.rl=1"]);
    assert!(
        err.contains("params file 'params.yaml' has no key 'train.rl'"),
        "{err}"
    );
    assert!(!d.join("runs/tsumugi.db").exists() || ok(d, &["runs"]).contains("no runs"));
}

/// `prep(a) → train(a, b) → eval`, and `indep` which uses no param.
const GRID: &str = r#"name: grid
params: {rank: 16}
stages:
  prep:
    cmd: echo prep >> log.txt; echo "a=${params.a}" > prep.txt
    outs: [prep.txt]
  train:
    cmd: echo train >> log.txt; cat prep.txt > model.txt; echo "b=$(grep '^b:' $TSUMUGI_PARAMS | cut -d' ' -f2)" >> model.txt
    deps: [prep.txt]
    params: [a, params.yaml:b]
    outs: [model.txt]
  eval:
    cmd: 'echo eval >> log.txt; mkdir -p eval; echo "{\"a\": $(sed -n "s/a=//p" model.txt), \"len\": $(wc -c < model.txt)}" > eval/metrics.json'
    deps: [model.txt]
    metrics: [eval/metrics.json]
  indep:
    cmd: echo indep >> log.txt; echo x > indep.txt
    outs: [indep.txt]
"#;

#[test]
fn a_3x2_grid_reruns_only_what_each_override_reaches() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "params.yaml", "# the params\na: 1\nb: x\n");
    write(d, "grid.yaml", GRID);
    let before = (
        std::fs::read(d.join("grid.yaml")).unwrap(),
        std::fs::read(d.join("params.yaml")).unwrap(),
    );

    let out = ok(
        d,
        &[
            "exp",
            "run",
            "grid.yaml",
            "-S",
            "a=1,2,3",
            "-S",
            "b=x,y",
            "-q",
        ],
    );
    assert_eq!(
        out.lines().filter(|l| l.contains(": run ")).count(),
        6,
        "{out}"
    );
    // prep once per a, train and eval once per (a, b), indep once.
    assert_eq!(
        runs(d),
        counts(&[("eval", 6), ("indep", 1), ("prep", 3), ("train", 6)])
    );
    // The files are untouched.
    assert_eq!(std::fs::read(d.join("grid.yaml")).unwrap(), before.0);
    assert_eq!(std::fs::read(d.join("params.yaml")).unwrap(), before.1);

    let show: Vec<Value> = serde_json::from_str(&ok(d, &["exp", "show", "--json"])).unwrap();
    assert_eq!(show.len(), 6);
    let mut seen = Vec::new();
    for e in &show {
        let a = e["overrides"]["a"].as_i64().unwrap();
        let b = e["overrides"]["b"].as_str().unwrap().to_owned();
        assert_eq!(e["status"], "success");
        // The metric eval computed from the overridden a (through prep and train), and b
        // (read by the command through TSUMUGI_PARAMS) made model.txt "a=N\nb=B\n".
        assert_eq!(e["metrics"]["a"].as_f64(), Some(a as f64), "{e}");
        assert_eq!(e["metrics"]["len"].as_f64(), Some(8.0), "{e}");
        assert_eq!(e["params"]["params.yaml:b"], Value::String(b.clone()));
        seen.push((a, b));
    }
    seen.sort();
    assert_eq!(seen.len(), 6);
    seen.dedup();
    assert_eq!(seen.len(), 6, "six distinct grid points");

    // The same grid again: all cached, nothing runs.
    ok(
        d,
        &[
            "exp",
            "run",
            "grid.yaml",
            "-S",
            "a=1,2,3",
            "-S",
            "b=x,y",
            "-q",
            "-n",
            "again",
        ],
    );
    assert_eq!(
        runs(d),
        counts(&[("eval", 6), ("indep", 1), ("prep", 3), ("train", 6)])
    );

    // Sorted table and CSV.
    let csv = ok(d, &["exp", "show", "--csv", "--sort", "a", "--desc"]);
    let first = csv.lines().nth(1).unwrap();
    assert!(first.contains(",a=3 b="), "{csv}");

    // apply: params.yaml gets the experiment's values (its comment stays), the workspace
    // its outputs, and a run after it is all cached.
    let target = show
        .iter()
        .find(|e| e["overrides"]["a"] == 2 && e["overrides"]["b"] == "y")
        .unwrap();
    ok(d, &["exp", "apply", target["name"].as_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(d.join("params.yaml")).unwrap(),
        "# the params\na: 2\nb: y\n"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("model.txt")).unwrap(),
        "a=2\nb=y\n"
    );
    assert_all_cached(d);
    assert_eq!(
        runs(d),
        counts(&[("eval", 6), ("indep", 1), ("prep", 3), ("train", 6)]),
        "apply restores from the cache, it runs nothing"
    );
}

#[test]
fn inline_overrides_queue_apply_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "params.yaml", "a: 1\nb: x\n");
    write(d, "grid.yaml", GRID);
    write(
        d,
        "r.yaml",
        "params:\n  rank: 16 # LoRA rank\nstages:\n  r:\n    cmd: echo r >> log.txt; echo ${params.rank} > r.txt\n    outs: [r.txt]\n",
    );
    let q = ok(
        d,
        &[
            "exp", "run", "r.yaml", "-S", "rank=4,8", "-n", "rk", "--queue",
        ],
    );
    assert!(
        q.contains("queued rk-1 (rank=4)") && q.contains("queued rk-2 (rank=8)"),
        "{q}"
    );
    assert!(runs(d).is_empty(), "--queue runs nothing");
    ok(d, &["exp", "run", "--run-all", "-q"]);
    assert_eq!(runs(d), counts(&[("r", 2)]));
    assert!(ok(d, &["exp", "run", "--run-all"]).contains("no queued experiments"));

    // An inline param goes back into the pipeline file, edited in place.
    ok(d, &["exp", "apply", "rk-1"]);
    assert_eq!(
        std::fs::read_to_string(d.join("r.yaml")).unwrap(),
        "params:\n  rank: 4 # LoRA rank\nstages:\n  r:\n    cmd: echo r >> log.txt; echo ${params.rank} > r.txt\n    outs: [r.txt]\n"
    );
    assert_eq!(std::fs::read_to_string(d.join("r.txt")).unwrap(), "4\n");
    assert_eq!(runs(d), counts(&[("r", 2)]));

    // A name is not reused; remove frees it.
    let out = tsumugi(d)
        .args(["exp", "run", "r.yaml", "-S", "rank=5", "-n", "rk-1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exp remove rk-1"));
    ok(d, &["exp", "remove", "rk-1"]);
    let names: Vec<Value> = serde_json::from_str(&ok(d, &["exp", "show", "--json"])).unwrap();
    assert_eq!(names.len(), 1);
    assert_eq!(names[0]["name"], "rk-2");
}

#[test]
fn experiments_side_by_side_run_in_copies_and_leave_the_workspace_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "params.yaml", "a: 1\nb: x\n");
    // The copies each have their own log.txt: count in the project's, by absolute path.
    let log = d.join("log.txt");
    write(
        d,
        "grid.yaml",
        &GRID.replace("log.txt", log.to_str().unwrap()),
    );
    ok(d, &["run", "grid.yaml", "-q"]);
    let before: Vec<Vec<u8>> = ["grid.yaml", "params.yaml", "model.txt", "prep.txt"]
        .iter()
        .map(|f| std::fs::read(d.join(f)).unwrap())
        .collect();

    let out = ok(
        d,
        &[
            "exp",
            "run",
            "grid.yaml",
            "-S",
            "b=x,y,z,w",
            "-j",
            "3",
            "-q",
        ],
    );
    assert!(out.contains("4 experiments, 4 ok, 0 failed"), "{out}");
    // a is the baseline's: prep is cached in every copy; train and eval run once per new b.
    assert_eq!(
        runs(d),
        counts(&[("eval", 4), ("indep", 1), ("prep", 1), ("train", 4)])
    );
    // The workspace is as it was, and the copies are gone.
    let after: Vec<Vec<u8>> = ["grid.yaml", "params.yaml", "model.txt", "prep.txt"]
        .iter()
        .map(|f| std::fs::read(d.join(f)).unwrap())
        .collect();
    assert_eq!(after, before);
    let left: Vec<_> = std::fs::read_dir(d.join(".tsumugi/exp"))
        .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");

    let show: Vec<Value> = serde_json::from_str(&ok(d, &["exp", "show", "--json"])).unwrap();
    assert_eq!(show.len(), 4);
    for e in &show {
        assert_eq!(e["status"], "success");
        assert_eq!(e["params"]["params.yaml:b"], e["overrides"]["b"]);
        assert_eq!(e["metrics"]["a"].as_f64(), Some(1.0));
        assert_eq!(e["metrics"]["len"].as_f64(), Some(8.0));
    }
    // What ran in a copy is in the cache: apply brings it into the workspace.
    let w = show.iter().find(|e| e["overrides"]["b"] == "w").unwrap();
    ok(d, &["exp", "apply", w["name"].as_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(d.join("model.txt")).unwrap(),
        "a=1\nb=w\n"
    );
    assert_all_cached(d);
    assert_eq!(
        runs(d),
        counts(&[("eval", 4), ("indep", 1), ("prep", 1), ("train", 4)])
    );
}

#[test]
fn commands_that_read_params_files_see_the_overrides_through_tsumugi_params() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "params.yaml", "train:\n  seed: 1\n  lr: 0.1\n");
    write(d, "more.toml", "# tuning\n[t]\ny = \"s\"\nz = 2\n");
    write(
        d,
        "p.yaml",
        "stages:\n  s:\n    cmd: cp \"$TSUMUGI_PARAMS\" seen.yaml\n    params: [train.seed, {more.toml: [t.y]}]\n    outs: [seen.yaml]\n",
    );
    ok(
        d,
        &[
            "exp",
            "run",
            "p.yaml",
            "-S",
            "more.toml:t.y=q",
            "-S",
            "train.seed=7",
            "-n",
            "e",
        ],
    );
    // Every params-file key the run uses, with its effective value, in one document.
    assert_eq!(
        std::fs::read_to_string(d.join("seen.yaml")).unwrap(),
        "t:\n  y: q\ntrain:\n  seed: 7\n"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("more.toml")).unwrap(),
        "# tuning\n[t]\ny = \"s\"\nz = 2\n"
    );
    // apply writes TOML anew (its comment goes), keeping the other keys.
    ok(d, &["exp", "apply", "e"]);
    let toml = std::fs::read_to_string(d.join("more.toml")).unwrap();
    assert!(
        toml.contains("y = \"q\"") && toml.contains("z = 2"),
        "{toml}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("params.yaml")).unwrap(),
        "train:\n  seed: 7\n  lr: 0.1\n"
    );
}

/// `tsumugi run grid.yaml` finds every stage cached.
fn assert_all_cached(d: &Path) {
    let run: Value = serde_json::from_str(&ok(d, &["run", "grid.yaml", "--json"])).unwrap();
    for s in run["stages"].as_array().unwrap() {
        assert_eq!(s["status"], "cached", "{s}");
    }
}
