//! Content-hashed caching end to end: what runs, what is skipped, what is restored.

mod engine_support;
use engine_support::{Proj, sorted};

/// a → b → c, and d on its own. Every stage appends its name to ran.log when it executes.
const PIPE: &str = r#"
name: chain
params: {scale: 2, suffix: "!"}
stages:
  a:
    cmd: echo a >> ran.log && cat data/in.txt > out/a.txt
    deps: [data/in.txt]
    outs: [out/a.txt]
  b:
    cmd: echo b >> ran.log && sed 's/$/${params.suffix}/' out/a.txt > out/b.txt
    deps: [out/a.txt]
    outs: [out/b.txt]
  c:
    cmd: echo c >> ran.log && wc -l < out/b.txt > out/c.txt
    deps: [out/b.txt]
    outs: [out/c.txt]
  d:
    cmd: echo d >> ran.log && mkdir -p out/d && cp data/other.txt out/d/x.txt && echo ${params.scale} > out/d/scale.txt
    deps: [data/other.txt]
    outs: [out/d]
"#;

fn project() -> Proj {
    let p = Proj::new(PIPE);
    p.write("data/in.txt", "one\ntwo\n");
    p.write("data/other.txt", "other\n");
    p
}

#[test]
fn first_run_runs_all_and_second_run_does_nothing() {
    let p = project();
    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(Proj::with_status(&v, "ran"), sorted(&["a", "b", "c", "d"]));
    assert_eq!(p.read("out/b.txt"), "one!\ntwo!\n");
    for s in v["stages"].as_array().unwrap() {
        assert_eq!(s["fingerprint"].as_str().unwrap().len(), 64);
    }
    p.clear_executions();

    let (code, v, _) = p.run(&[]);
    assert_eq!(code, 0);
    assert_eq!(
        Proj::with_status(&v, "cached"),
        sorted(&["a", "b", "c", "d"])
    );
    assert!(
        p.executions().is_empty(),
        "nothing may execute: {:?}",
        p.executions()
    );
    let st = p.status_json();
    assert_eq!(st["stale"], 0);
}

#[test]
fn changing_one_input_reruns_exactly_its_downstream() {
    let p = project();
    assert_eq!(p.run(&[]).0, 0);
    p.clear_executions();
    p.write("data/other.txt", "changed\n");

    let st = p.status_json();
    let d = st["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "d")
        .unwrap();
    assert_eq!(d["status"], "stale");
    let reason = d["reasons"][0].as_str().unwrap();
    assert!(
        reason.starts_with("dep data/other.txt changed: "),
        "{reason}"
    );
    assert_eq!(st["stale"], 1);

    let (code, v, _) = p.run(&[]);
    assert_eq!(code, 0);
    assert_eq!(Proj::with_status(&v, "ran"), ["d"]);
    assert_eq!(p.executions(), ["d"]);
    assert_eq!(p.read("out/d/x.txt"), "changed\n");

    p.clear_executions();
    p.write("data/in.txt", "three\n");
    let (_, v, _) = p.run(&[]);
    assert_eq!(Proj::with_status(&v, "ran"), sorted(&["a", "b", "c"]));
    assert_eq!(p.executions(), ["a", "b", "c"]);
}

#[test]
fn changing_a_param_reruns_its_stage_and_dependents() {
    let p = project();
    assert_eq!(p.run(&[]).0, 0);
    p.clear_executions();
    p.set_pipeline(&PIPE.replace(r#"suffix: "!""#, r#"suffix: "?""#));

    let st = p.status_json();
    let b = st["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "b")
        .unwrap();
    let reasons: Vec<&str> = b["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"param suffix: ! → ?"), "{reasons:?}");

    let (_, v, _) = p.run(&[]);
    assert_eq!(Proj::with_status(&v, "ran"), sorted(&["b", "c"]));
    assert_eq!(Proj::with_status(&v, "cached"), sorted(&["a", "d"]));
    assert_eq!(p.read("out/b.txt"), "one?\ntwo?\n");
}

#[test]
fn byte_identical_rerun_output_stops_the_cascade() {
    let p = project();
    assert_eq!(p.run(&[]).0, 0);
    p.clear_executions();
    // Same number of lines: b re-runs, its output changes; c re-runs but writes the same count.
    p.write("data/in.txt", "uno\ndos\n");
    let (_, v, _) = p.run(&[]);
    assert_eq!(Proj::with_status(&v, "ran"), sorted(&["a", "b", "c"]));
    p.clear_executions();

    // Now a change that a's output does not reflect: a re-runs, writes identical bytes, and
    // b and c stay cached (early cutoff).
    p.set_pipeline(&PIPE.replace(
        "cat data/in.txt > out/a.txt",
        "cat < data/in.txt > out/a.txt",
    ));
    let (_, v, _) = p.run(&[]);
    assert_eq!(Proj::with_status(&v, "ran"), ["a"]);
    assert_eq!(Proj::with_status(&v, "cached"), sorted(&["b", "c", "d"]));
    assert_eq!(p.executions(), ["a"]);
}

#[test]
fn deleted_output_is_restored_without_running() {
    let p = project();
    assert_eq!(p.run(&[]).0, 0);
    p.clear_executions();
    std::fs::remove_file(p.path("out/b.txt")).unwrap();
    std::fs::remove_dir_all(p.path("out/d")).unwrap();

    let st = p.status_json();
    let b = st["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "b")
        .unwrap();
    assert_eq!(
        b["reasons"][0],
        "output out/b.txt missing (restorable from cache)"
    );

    let (code, v, _) = p.run(&[]);
    assert_eq!(code, 0);
    assert_eq!(Proj::with_status(&v, "restored"), sorted(&["b", "d"]));
    assert!(p.executions().is_empty(), "{:?}", p.executions());
    assert_eq!(p.read("out/b.txt"), "one!\ntwo!\n");
    assert_eq!(p.read("out/d/x.txt"), "other\n");
    assert_eq!(p.read("out/d/scale.txt"), "2\n");

    // A modified output is put back too.
    std::fs::remove_file(p.path("out/c.txt")).unwrap();
    p.write("out/c.txt", "tampered\n");
    let (_, v, _) = p.run(&[]);
    assert_eq!(Proj::with_status(&v, "restored"), ["c"]);
    assert_eq!(p.read("out/c.txt").trim(), "2");
}

#[test]
fn corrupt_cache_object_is_reported_and_the_stage_reruns() {
    use std::os::unix::fs::PermissionsExt;
    let p = project();
    assert_eq!(p.run(&[]).0, 0);
    p.clear_executions();
    let hash = hex_sha256(&p.read("out/b.txt"));
    let obj = p.path(&format!("cache/objects/{}/{}", &hash[..2], &hash[2..]));
    std::fs::remove_file(p.path("out/b.txt")).unwrap();
    std::fs::set_permissions(&obj, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&obj, "bit rot\n").unwrap();

    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "cache object {hash} (output out/b.txt of stage b) is corrupt"
        )),
        "{err}"
    );
    assert_eq!(Proj::with_status(&v, "ran"), ["b"]);
    assert_eq!(p.executions(), ["b"]);
    assert_eq!(p.read("out/b.txt"), "one!\ntwo!\n");
    // The store was repaired: the object now holds the right bytes again.
    assert_eq!(hex_sha256(&std::fs::read_to_string(&obj).unwrap()), hash);
}

#[test]
fn run_targets_select_a_stage_and_its_upstream_only() {
    let p = project();
    let (code, v, _) = p.run(&["b"]);
    assert_eq!(code, 0);
    assert_eq!(Proj::with_status(&v, "ran"), sorted(&["a", "b"]));
    assert_eq!(v["stages"].as_array().unwrap().len(), 2);
    let out = p.cmd().args(["run", "p.yaml", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no stage named 'nope'"));
}

#[test]
fn gc_keeps_what_the_latest_run_references() {
    let p = project();
    assert_eq!(p.run(&[]).0, 0);
    p.write("data/other.txt", "v2\n");
    assert_eq!(p.run(&[]).0, 0);
    assert_eq!(p.action_entries().len(), 5);
    let out = p.cmd().args(["gc"]).output().unwrap();
    assert!(out.status.success());
    let msg = String::from_utf8_lossy(&out.stdout);
    assert!(msg.contains("removed 1 cache entries"), "{msg}");
    assert_eq!(p.action_entries().len(), 4);
    // Everything still restores after gc.
    std::fs::remove_dir_all(p.path("out")).unwrap();
    p.clear_executions();
    let (_, v, _) = p.run(&[]);
    assert_eq!(Proj::with_status(&v, "restored").len(), 4);
    assert!(p.executions().is_empty());
}

#[test]
fn dry_run_says_what_would_run_and_records_nothing() {
    let p = project();
    let out = p
        .cmd()
        .args(["run", "p.yaml", "--dry-run", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["run_id"], serde_json::Value::Null);
    assert_eq!(Proj::with_status(&v, "would_run").len(), 4);
    assert!(p.executions().is_empty());
    assert!(!p.path("runs/tsumugi.db").exists());
}

fn hex_sha256(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[test]
fn sqlite_dep_hashes_query_rows_not_the_file() {
    let p = Proj::new(
        r#"
name: sql
stages:
  export:
    cmd: echo export >> ran.log && echo done > out.txt
    deps:
      - sqlite: {db: app.db, query: "SELECT id, text FROM corrections WHERE used = 0 ORDER BY id"}
    outs: [out.txt]
"#,
    );
    let conn = rusqlite::Connection::open(p.path("app.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE corrections(id INTEGER PRIMARY KEY, text TEXT, used INTEGER);
         INSERT INTO corrections VALUES (1, 'a', 0); CREATE TABLE other(x);",
    )
    .unwrap();
    assert_eq!(p.run(&[]).0, 0);
    p.clear_executions();
    // A write that the query does not see changes the file, not the rows: still fresh.
    conn.execute_batch("INSERT INTO other VALUES (1); INSERT INTO corrections VALUES (2, 'b', 1);")
        .unwrap();
    let (_, v, _) = p.run(&[]);
    assert_eq!(Proj::with_status(&v, "cached"), ["export"]);
    // A new unused correction changes the rows: the stage re-runs, and status said why.
    conn.execute_batch("INSERT INTO corrections VALUES (3, 'c', 0);")
        .unwrap();
    let st = p.status_json();
    let reason = st["stages"][0]["reasons"][0].as_str().unwrap();
    assert!(
        reason.starts_with("dep sqlite:app.db?SELECT id, text FROM corrections"),
        "{reason}"
    );
    let (_, v, _) = p.run(&[]);
    assert_eq!(Proj::with_status(&v, "ran"), ["export"]);
    assert_eq!(p.executions(), ["export"]);
}

#[test]
fn metrics_files_are_recorded_and_diffed() {
    let p = Proj::new(
        r#"
name: m
params: {lr: 0.5}
stages:
  train:
    cmd: "printf 'rmse: ${params.lr}\nloss: [3, 2, 1]\nnested:\n  f1: 0.75\n' > metrics.yaml"
    metrics: [metrics.yaml]
"#,
    );
    assert_eq!(p.run(&[]).0, 0);
    p.set_pipeline(
        &std::fs::read_to_string(p.path("p.yaml"))
            .unwrap()
            .replace("lr: 0.5", "lr: 0.25"),
    );
    assert_eq!(p.run(&[]).0, 0);
    let out = p
        .cmd()
        .args(["metrics", "diff", "latest~1", "latest", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["metrics"].as_array().unwrap();
    let get = |n: &str| {
        rows.iter()
            .find(|r| r["name"] == n)
            .unwrap_or_else(|| panic!("{n} in {rows:?}"))
    };
    assert_eq!(
        (get("rmse")["a"].as_f64(), get("rmse")["b"].as_f64()),
        (Some(0.5), Some(0.25))
    );
    assert_eq!(get("rmse")["delta"].as_f64(), Some(-0.25));
    assert_eq!(
        get("loss")["b"].as_f64(),
        Some(1.0),
        "a series compares its last step"
    );
    assert_eq!(get("nested.f1")["a"].as_f64(), Some(0.75));
    let show = p.cmd().args(["show", "latest", "--json"]).output().unwrap();
    let s: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let steps = s["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"] == "loss")
        .count();
    assert_eq!(steps, 3);
}

/// The stat cache must not hide an edit that keeps a file's size and puts its mtime back
/// (what `touch -r` or an archive extraction does): ctime is in the key and cannot be set
/// back. The files are made older than the racy window first, so that the run really
/// records them in the stat cache and the no-op status answers from it.
#[test]
fn same_size_edit_with_restored_mtime_in_a_big_dir_is_noticed() {
    let p = Proj::new(
        r#"
name: big
stages:
  count:
    cmd: echo count >> ran.log && find data/big -type f | wc -l > out.txt
    deps: [data/big]
    outs: [out.txt]
"#,
    );
    for i in 0..10_000 {
        p.write(
            &format!("data/big/{:02}/{i:05}.txt", i / 1000),
            &format!("{i:05}\n"),
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(2_200));
    assert_eq!(p.run(&[]).0, 0);
    assert!(p.path("cache/statcache.bin").exists());
    assert_eq!(p.status_json()["stale"], 0);

    let f = p.path("data/big/07/07123.txt");
    let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
    p.write("data/big/07/07123.txt", "XXXXX\n");
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(mtime))
        .unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().modified().unwrap(), mtime);

    let st = p.status_json();
    assert_eq!(st["stale"], 1, "{st}");
    let reason = st["stages"][0]["reasons"][0].as_str().unwrap();
    assert!(reason.starts_with("dep data/big changed: "), "{reason}");
}

/// Seed 002's shape: a setup stage creates an application's database once (`persist`,
/// `cache: false`); the application then adds rows; a stage reading them through a SQLite
/// dep re-runs, the setup stage does not, and no run deletes the rows.
#[test]
fn persistent_database_output_is_kept_and_only_its_readers_rerun() {
    let p = Proj::new(
        r#"
name: corrections
stages:
  setup:
    cmd: >-
      echo setup >> ran.log &&
      sqlite3 app.db "CREATE TABLE IF NOT EXISTS corrections(id INTEGER PRIMARY KEY, text TEXT);
      INSERT INTO corrections SELECT 1, 'seed' WHERE NOT EXISTS (SELECT 1 FROM corrections)"
    outs: [{path: app.db, cache: false, persist: true}]
  train:
    cmd: echo train >> ran.log && echo trained > model.txt
    deps:
      - sqlite: {db: app.db, query: "SELECT id, text FROM corrections ORDER BY id"}
    outs: [model.txt]
"#,
    );
    if std::process::Command::new("sqlite3")
        .arg("-version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no sqlite3 command-line tool");
        return;
    }
    let (code, _, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(p.executions(), ["setup", "train"]);
    p.clear_executions();

    let conn = rusqlite::Connection::open(p.path("app.db")).unwrap();
    conn.execute_batch("INSERT INTO corrections VALUES (2, 'user fix');")
        .unwrap();
    let (_, v, _) = p.run(&[]);
    assert_eq!(Proj::with_status(&v, "ran"), ["train"]);
    assert_eq!(Proj::with_status(&v, "cached"), ["setup"]);
    // A forced re-run of the setup stage keeps the application's rows.
    let (code, _, err) = p.run(&["--force", "setup"]);
    assert_eq!(code, 0, "{err}");
    drop(conn);
    let conn = rusqlite::Connection::open(p.path("app.db")).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM corrections", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        n, 2,
        "the persistent output was not deleted before the re-run"
    );
}
