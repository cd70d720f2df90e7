//! `tsumugi validate`, `schema` and `dag` through the real binary.

use std::path::Path;

use assert_cmd::Command;

fn tsumugi() -> Command {
    Command::cargo_bin("tsumugi").unwrap()
}

const PIPELINE: &str = r#"name: cli
params: {n: 2}
stages:
  gen:
    cmd: seq ${params.n} > out/gen.txt
    outs: [out/gen.txt]
  sweep:
    foreach: [a, b]
    cmd: cat ${stages.gen.outs.out/gen.txt} > out/${item}.txt
    outs: [out/${item}.txt]
  join:
    cmd: cat out/a.txt out/b.txt > out/join.txt
    deps: [out/a.txt, out/b.txt]
    outs: [out/join.txt]
  lone:
    cmd: echo lone
"#;

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), PIPELINE).unwrap();
    dir
}

#[test]
fn schema_file_is_the_command_output() {
    let out = tsumugi().arg("schema").output().unwrap();
    assert!(out.status.success());
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/pipeline.schema.json"),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        shipped,
        "schema/pipeline.schema.json is stale: run `cargo run -- schema > schema/pipeline.schema.json`"
    );
    let v: serde_json::Value = serde_json::from_str(&shipped).unwrap();
    assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema");
}

#[test]
fn validate_ok_counts_expanded_stages() {
    let d = project();
    tsumugi()
        .arg("-C")
        .arg(d.path())
        .args(["validate", "p.yaml"])
        .assert()
        .success()
        .stdout("ok: 5 stages\n")
        .stderr("");
}

/// README: "Exit codes: … 2 invalid input"; an invalid pipeline file is invalid input.
#[test]
fn validate_reports_errors_and_exits_2() {
    let d = project();
    std::fs::write(
        d.path().join("bad.yaml"),
        "stages:\n  a:\n    cmd: echo\n    outs: [../x]\n",
    )
    .unwrap();
    tsumugi()
        .arg("-C")
        .arg(d.path())
        .args(["validate", "bad.yaml"])
        .assert()
        .code(2)
        .stdout("")
        .stderr(
            "bad.yaml:4:12: path '../x' leads outside the project root in 'outs' of stage 'a'\n",
        );
}

#[test]
fn dag_text_mermaid_dot_and_selection() {
    let d = project();
    let run = |args: &[&str]| {
        let out = tsumugi()
            .arg("-C")
            .arg(d.path())
            .arg("dag")
            .arg("p.yaml")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        run(&[]),
        "gen\nsweep@a <- gen\nsweep@b <- gen\njoin <- sweep@a, sweep@b\nlone\n"
    );
    assert_eq!(run(&["sweep@b"]), "gen\nsweep@b <- gen\n");
    assert_eq!(
        run(&["--mermaid", "join"]),
        "flowchart TD\n    s0[\"gen\"]\n    s1[\"sweep@a\"]\n    s2[\"sweep@b\"]\n    s3[\"join\"]\n    s0 --> s1\n    s0 --> s2\n    s1 --> s3\n    s2 --> s3\n"
    );
    let dot = run(&["--dot"]);
    assert!(dot.starts_with("digraph \"cli\" {\n"), "{dot}");
    assert!(dot.contains("    \"sweep@a\" -> \"join\";\n"), "{dot}");
    assert!(dot.contains("    \"lone\";\n"), "{dot}");
    assert!(dot.ends_with("}\n"));
}

#[test]
fn dag_unknown_stage_is_an_error() {
    let d = project();
    tsumugi()
        .arg("-C")
        .arg(d.path())
        .args(["dag", "p.yaml", "jion"])
        .assert()
        .code(2)
        .stderr("p.yaml: no stage named 'jion' (stages: gen, sweep@a, sweep@b, join, lone; did you mean 'join'?)\n");
}

/// Lists nested 10,000 deep in block style (`- - - … 1`) overflowed the stack: `validate`
/// and `run` aborted (exit 134), and a run could be left `running`. Now both refuse the
/// file at the level past the limit, and no run is recorded.
#[test]
fn deep_block_nesting_is_refused_by_validate_and_run() {
    let d = project();
    std::fs::write(
        d.path().join("deep.yaml"),
        format!(
            "stages:\n  s:\n    cmd: echo ${{params.a}}\nparams:\n  a: 1\n  d:\n    {}1\n",
            "- ".repeat(10_000)
        ),
    )
    .unwrap();
    let expected = "deep.yaml:7:129: lists and mappings nested more than 64 levels deep (the limit for a pipeline file)\n";
    for cmd in ["validate", "run"] {
        tsumugi()
            .arg("-C")
            .arg(d.path())
            .args([cmd, "deep.yaml"])
            .assert()
            .code(2)
            .stdout("")
            .stderr(expected);
    }
    tsumugi()
        .arg("-C")
        .arg(d.path())
        .arg("runs")
        .assert()
        .success()
        .stdout("no runs yet\n");
}

/// `tsumugi schema | head -0`: the reader goes away first; tsumugi ends quietly (SIGPIPE),
/// with no panic and no error message, as `ls | head` does.
#[test]
fn a_closed_stdout_ends_report_commands_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("tsumugi"))
        .arg("schema")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader is gone before tsumugi (still starting) writes anything.
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGPIPE),
        "{status:?}, stderr: {err}"
    );
    assert!(err.is_empty(), "stderr: {err}");
}

/// Every pipeline shipped in `pipelines/` is valid on a fresh clone (with this build's
/// kinds), so a README command never starts with a validation error.
#[test]
fn shipped_pipelines_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(root.join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    for f in files {
        let rel = f.strip_prefix(root).unwrap();
        tsumugi()
            .current_dir(root)
            .args(["validate"])
            .arg(rel)
            .assert()
            .success();
    }
}

/// A mistake in a built-in stage's `with:` stops `run` before anything runs (it used to
/// surface when the kind ran, after its upstream stages), naming the key's line and column.
#[test]
fn run_refuses_a_bad_with_before_running_upstream_stages() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("p.yaml"),
        "stages:
  prep:
    cmd: printf 'a,b,1\\n' > rows.csv
    outs: [rows.csv]
  pairs:
    uses: build-pairs
    with:
      input: ${stages.prep.outs.rows.csv}
      text_a: 0
      text_b: 1
      lable: 2
",
    )
    .unwrap();
    let out = tsumugi()
        .arg("-C")
        .arg(d.path())
        .args(["run", "p.yaml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "stderr: {err}");
    assert!(
        err.contains("p.yaml:11:7: unknown key 'lable' in 'with' of stage 'pairs'")
            && err.contains("did you mean 'label'?"),
        "{err}"
    );
    assert!(
        !d.path().join("rows.csv").exists(),
        "the upstream stage ran: {err}"
    );
}
