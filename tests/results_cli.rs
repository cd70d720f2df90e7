//! Issue 14, items 3 and 5 through the real binary on temporary projects: what a run prints
//! at its end, progress without a terminal, `plots`, `--force` on named stages, `gc` per
//! pipeline, `latest` per pipeline, metrics files inside output directories, integers.

use std::path::Path;

use assert_cmd::Command;

fn tsumugi(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("tsumugi").unwrap();
    c.arg("-C").arg(dir);
    c
}

/// Runs `args`, which must succeed; returns (stdout, stderr).
fn ok(dir: &Path, args: &[&str]) -> (String, String) {
    let out = tsumugi(dir).args(args).output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "tsumugi {args:?} failed ({}):\n{so}\n{se}",
        out.status
    );
    (so, se)
}

/// Every stage appends its name to `ran.log` (not an output): the side effect that counts
/// which stages really ran.
fn ran(dir: &Path) -> Vec<String> {
    let v = std::fs::read_to_string(dir.join("ran.log")).unwrap_or_default();
    let _ = std::fs::remove_file(dir.join("ran.log"));
    v.lines().map(str::to_string).collect()
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

const CHAIN: &str = r#"name: chain
stages:
  fetch:
    cmd: echo fetch >> ran.log && echo model > model.txt
    outs: [model.txt]
  train:
    cmd: echo train >> ran.log && cat model.txt > adapter.txt
    deps: [model.txt]
    outs: [adapter.txt]
  evaluate:
    cmd: "echo evaluate >> ran.log && mkdir -p eval && echo '{\"acc\": 0.75, \"n\": 1379}' > eval/metrics.json"
    deps: [adapter.txt]
    outs: [eval]
    metrics: [eval/metrics.json]
"#;

#[test]
fn force_on_named_stages_forces_only_them_unless_force_upstream() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(p, "chain.yaml", CHAIN);
    ok(p, &["run", "chain.yaml"]);
    assert_eq!(ran(p), ["fetch", "train", "evaluate"]);

    let (out, _) = ok(p, &["run", "chain.yaml", "evaluate", "--force"]);
    assert_eq!(ran(p), ["evaluate"], "only the named stage is forced");
    assert!(out.contains("1 ran, 2 cached"), "{out}");

    ok(
        p,
        &[
            "run",
            "chain.yaml",
            "evaluate",
            "--force-upstream",
            "--force",
        ],
    );
    assert_eq!(ran(p), ["fetch", "train", "evaluate"]);

    ok(p, &["run", "chain.yaml", "--force"]);
    assert_eq!(
        ran(p),
        ["fetch", "train", "evaluate"],
        "no stage named: all"
    );

    // --force-upstream means nothing without --force: refused, not ignored.
    tsumugi(p)
        .args(["run", "chain.yaml", "evaluate", "--force-upstream"])
        .assert()
        .code(2);
    let help = ok(p, &["run", "--help"]).0;
    assert!(help.contains("--force-upstream"), "{help}");
    assert!(help.contains("the named STAGEs only"), "{help}");
}

#[test]
fn a_metrics_file_inside_an_output_directory_is_recorded_and_integers_print_as_integers() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(p, "chain.yaml", CHAIN);
    ok(p, &["validate", "chain.yaml"]);
    ok(p, &["run", "chain.yaml"]);
    let (show, _) = ok(p, &["show"]);
    assert!(show.contains("evaluate.n = 1379\n"), "{show}");
    assert!(show.contains("evaluate.acc = 0.750000\n"), "{show}");
    let (json, _) = ok(p, &["show", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let names: Vec<&str> = v["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acc", "n"]);
    ok(p, &["run", "chain.yaml", "evaluate", "--force"]);
    let (diff, _) = ok(p, &["metrics", "diff", "latest~1", "latest"]);
    let row = diff.lines().find(|l| l.starts_with("evaluate.n")).unwrap();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["evaluate.n", "1379", "1379", "+0"],
        "{diff}"
    );
    assert!(!diff.contains("1379.0"), "{diff}");
}

fn two_pipelines(p: &Path, a_value: &str) {
    write(
        p,
        "pipelines/a.yaml",
        &format!(
            "name: a\nstages:\n  make:\n    cmd: \"echo a >> ran.log && echo {a_value} > a.txt && echo '{{\\\"score\\\": {a_value}}}' > a.json\"\n    outs: [a.txt]\n    metrics: [a.json]\n"
        ),
    );
    write(
        p,
        "pipelines/b.yaml",
        "name: b\nstages:\n  make:\n    cmd: \"echo b >> ran.log && echo b > b.txt && echo '{\\\"other\\\": 2}' > b.json\"\n    outs: [b.txt]\n    metrics: [b.json]\n",
    );
}

#[test]
fn gc_keep_last_counts_runs_per_pipeline() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    two_pipelines(p, "1");
    ok(p, &["run", "pipelines/a.yaml"]);
    two_pipelines(p, "2");
    ok(p, &["run", "pipelines/a.yaml"]);
    for _ in 0..3 {
        ok(p, &["run", "pipelines/b.yaml"]);
    }
    ran(p);
    // a's first result is kept by a's two newest runs, whatever b did since.
    ok(p, &["gc", "--keep-last", "2"]);
    two_pipelines(p, "1");
    let (out, _) = ok(p, &["run", "pipelines/a.yaml"]);
    assert!(ran(p).is_empty(), "a=1 came back from the cache: {out}");

    // The old meaning: the two newest runs of the project (b's) and the latest of each
    // stage; a=2 is neither any more.
    for _ in 0..2 {
        ok(p, &["run", "pipelines/b.yaml"]);
    }
    ok(p, &["gc", "--keep-last-global", "2"]);
    two_pipelines(p, "2");
    ok(p, &["run", "pipelines/a.yaml"]);
    assert_eq!(ran(p), ["a"], "a=2 was collected");

    let help = ok(p, &["gc", "--help"]).0;
    assert!(help.contains("of each pipeline"), "{help}");
    assert!(help.contains("--keep-last-global"), "{help}");
}

#[test]
fn latest_counts_within_the_given_pipeline_and_diff_warns_across_pipelines() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    two_pipelines(p, "1");
    ok(p, &["run", "pipelines/a.yaml"]);
    two_pipelines(p, "3");
    ok(p, &["run", "pipelines/a.yaml"]);
    ok(p, &["run", "pipelines/b.yaml"]);

    let (show, _) = ok(p, &["show", "pipelines/a.yaml"]);
    assert!(show.contains("— a (manual trigger)"), "{show}");
    let (show, _) = ok(p, &["show", "pipelines/a.yaml", "latest~1"]);
    assert!(show.contains("make.score = 1\n"), "{show}");
    let (show, _) = ok(p, &["show", "latest"]);
    assert!(show.contains("— b (manual trigger)"), "{show}");

    let (diff, err) = ok(p, &["metrics", "diff", "latest~1", "latest"]);
    assert!(
        err.contains("warning: comparing runs of two pipelines"),
        "{err}"
    );
    assert!(diff.contains("make.other"), "{diff}");
    let (diff, err) = ok(
        p,
        &["metrics", "diff", "pipelines/a.yaml", "latest~1", "latest"],
    );
    assert!(!err.contains("warning"), "{err}");
    let row = diff.lines().find(|l| l.starts_with("make.score")).unwrap();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["make.score", "1", "3", "+2"],
        "{diff}"
    );
    // A pipeline with fewer runs says so.
    let out = tsumugi(p)
        .args(["show", "pipelines/b.yaml", "latest~1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("of pipeline \"b\""));
}

/// Piped or in CI (stderr not a terminal), a running stage prints a line every
/// `--progress-interval` with what it last reported. The stage itself waits until tsumugi's
/// stderr shows such a line, so the test does not depend on timing.
#[test]
fn without_a_terminal_a_running_stage_prints_a_line_every_interval() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(
        p,
        "wait.yaml",
        "name: wait\nstages:\n  wait:\n    cmd: \"echo step one && i=0; until grep -q 'wait: running [0-9]' err.txt; do i=$((i+1)); [ $i -gt 600 ] && exit 1; sleep 0.1; done; echo done > w.txt\"\n    outs: [w.txt]\n",
    );
    let err = std::fs::File::create(p.join("err.txt")).unwrap();
    let status = std::process::Command::new(assert_cmd::cargo::cargo_bin("tsumugi"))
        .arg("-C")
        .arg(p)
        .args(["run", "wait.yaml", "--progress-interval", "1s"])
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .status()
        .unwrap();
    let err = std::fs::read_to_string(p.join("err.txt")).unwrap();
    assert!(status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("wait: running ") && l != &"wait: running")
        .unwrap_or_else(|| panic!("no periodic line in:\n{err}"));
    assert!(line.ends_with(", last output: step one"), "{err}");

    // The same through the environment; `0` turns the lines off (the stage would then wait
    // for its line in vain, so here it does not wait).
    write(
        p,
        "quick.yaml",
        "name: quick\nstages:\n  q:\n    cmd: echo q > q.txt\n    outs: [q.txt]\n",
    );
    let out = tsumugi(p)
        .args(["run", "quick.yaml"])
        .env("TSUMUGI_PROGRESS_INTERVAL", "0")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("q: running "),
        "no periodic line"
    );
    let help = ok(p, &["run", "--help"]).0;
    assert!(help.contains("--progress-interval"), "{help}");
}

/// An evaluate-like stage whose outputs hold DVC-style plot files; `${params.shift}` moves
/// its curves so two runs differ.
const PLOTS: &str = r#"name: plots
params: {shift: 1}
stages:
  evaluate:
    cmd: >-
      mkdir -p eval/plots/roc eval/plots/cm &&
      echo '{"roc": [{"fpr": 0, "tpr": 0.${params.shift}}, {"fpr": 1, "tpr": 1}]}' > eval/plots/roc/test.json &&
      echo '[{"fpr": 0, "tpr": 0}, {"fpr": 1, "tpr": 1}]' > eval/plots/roc/train.json &&
      printf 'actual,predicted\na,a\na,a\na,b\nb,b\n' > eval/plots/cm/test.csv &&
      printf 'step\tloss\tacc\n1\t0.9\t0.5\n2\t0.${params.shift}\t0.75\n' > eval/history.tsv &&
      echo '{"acc": 0.${params.shift}, "n": 1379}' > eval/metrics.json
    outs: [eval]
    metrics: [eval/metrics.json]
    plots:
      - ROC:
          template: line
          x: fpr
          y: {eval/plots/roc/train.json: tpr, eval/plots/roc/test.json: tpr}
      - Confusion-Matrix:
          template: confusion
          x: actual
          y: {eval/plots/cm/test.csv: predicted}
      - eval/history.tsv
      - eval/plots/roc/test.json: {x: fpr, y: tpr, template: scatter, title: ROC points}
"#;

#[test]
fn a_run_ends_with_its_metrics_and_plot_paths() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(p, "pipelines/plots.yaml", PLOTS);
    let (out, _) = ok(p, &["run"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("run ") && lines[0].ends_with(": 1 ran"),
        "{out}"
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["evaluate", "acc=0.100000", "n=1379"],
        "{out}"
    );
    assert_eq!(
        lines[2].trim(),
        "evaluate  plots: eval/plots/roc/train.json, eval/plots/roc/test.json, eval/plots/cm/test.csv, eval/history.tsv"
    );
    assert_eq!(
        lines[3].trim(),
        "draw them: tsumugi plots show pipelines/plots.yaml"
    );
    // Cached stages did not run: nothing to report.
    let (out, _) = ok(p, &["run"]);
    assert_eq!(out.lines().count(), 1, "{out}");

    ok(p, &["run", "--force"]);
    let (json, _) = ok(p, &["run", "--force", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let st = &v["stages"][0];
    assert_eq!(st["metrics"], serde_json::json!({"acc": 0.1, "n": 1379}));
    assert_eq!(st["plots"][3], "eval/history.tsv");
    assert_eq!(st["gates"], serde_json::json!([]));
}

#[test]
fn plots_show_and_diff_draw_from_the_cache_with_one_series_per_run() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(p, "pipelines/plots.yaml", PLOTS);
    ok(p, &["run"]);
    write(
        p,
        "pipelines/plots.yaml",
        &PLOTS.replace("shift: 1", "shift: 6"),
    );
    ok(p, &["run"]);
    let runs: serde_json::Value = serde_json::from_str(&ok(p, &["runs", "--json"]).0).unwrap();
    let (new, old) = (
        runs[0]["id"].as_str().unwrap().to_string(),
        runs[1]["id"].as_str().unwrap().to_string(),
    );
    // The workspace no longer holds the first run's files (nor any): the cache does.
    std::fs::remove_dir_all(p.join("eval")).unwrap();

    let (out, _) = ok(
        p,
        &[
            "plots",
            "show",
            "pipelines/plots.yaml",
            "latest~1",
            "-o",
            "shown",
        ],
    );
    let written: Vec<&str> = out.lines().collect();
    assert_eq!(
        written,
        [
            "shown/evaluate.ROC.svg",
            "shown/evaluate.ROC.png",
            "shown/evaluate.Confusion-Matrix.svg",
            "shown/evaluate.Confusion-Matrix.png",
            "shown/evaluate.eval_history.tsv.svg",
            "shown/evaluate.eval_history.tsv.png",
            "shown/evaluate.eval_plots_roc_test.json.svg",
            "shown/evaluate.eval_plots_roc_test.json.png",
            "shown/index.html",
        ]
    );
    for f in &written {
        assert!(std::fs::metadata(p.join(f)).unwrap().len() > 100, "{f}");
    }
    let png = std::fs::read(p.join("shown/evaluate.ROC.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let roc = svg_texts(&p.join("shown/evaluate.ROC.svg"));
    assert!(roc.contains(&"ROC".to_string()), "title: {roc:?}");
    assert!(
        roc.contains(&"eval/plots/roc/train.json".to_string()),
        "legend: {roc:?}"
    );
    let history = svg_texts(&p.join("shown/evaluate.eval_history.tsv.svg"));
    assert!(
        history.contains(&"loss".to_string()) && history.contains(&"acc".to_string()),
        "a bare path draws every column but the first: {history:?}"
    );
    let cm = svg_texts(&p.join("shown/evaluate.Confusion-Matrix.svg"));
    assert!(
        cm.contains(&"a".to_string()) && cm.contains(&"b".to_string()),
        "class labels: {cm:?}"
    );
    assert_eq!(
        cm[cm.len() - 4..],
        ["2", "1", "0", "1"],
        "counts, row by row: {cm:?}"
    );
    let index = std::fs::read_to_string(p.join("shown/index.html")).unwrap();
    assert!(index.contains(&format!("run {old}")), "{index}");
    assert!(index.contains("<img src=\"evaluate.ROC.svg\""), "{index}");

    let (out, _) = ok(p, &["plots", "diff", "latest~1", "latest"]);
    assert!(
        out.lines().any(|l| l == "out/plots/diff/evaluate.ROC.svg"),
        "{out}"
    );
    let roc = svg_texts(&p.join("out/plots/diff/evaluate.ROC.svg"));
    for run in [&old, &new] {
        assert!(
            roc.contains(&format!("{run} eval/plots/roc/test.json")),
            "one series per run: {roc:?}"
        );
    }
    let cm = svg_texts(&p.join("out/plots/diff/evaluate.Confusion-Matrix.svg"));
    assert!(
        cm.contains(&old) && cm.contains(&new),
        "side by side, one panel per run: {cm:?}"
    );

    // A run of another pipeline is not counted by `latest` of this one.
    write(
        p,
        "other.yaml",
        "name: other\nstages:\n  o:\n    cmd: echo o > o.txt\n    outs: [o.txt]\n",
    );
    ok(p, &["run", "other.yaml"]);
    let (out, _) = ok(p, &["plots", "show", "-o", "again"]);
    assert!(out.contains("again/index.html"), "{out}");
    let index = std::fs::read_to_string(p.join("again/index.html")).unwrap();
    assert!(index.contains(&format!("run {new}")), "{index}");
}

#[test]
fn a_plot_file_must_be_an_output_of_its_stage_and_errors_are_positioned() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(
        p,
        "bad.yaml",
        "name: bad\nstages:\n  e:\n    cmd: mkdir -p eval\n    outs: [eval]\n    plots:\n      - other.csv\n      - eval/a.json: {template: pie}\n      - N: {x: a, y: {eval/b.json: c}, colour: red}\n",
    );
    let out = tsumugi(p).args(["validate", "bad.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:7:9: plot file 'other.csv' of stage 'e' is not one of its outputs"),
        "{err}"
    );
    assert!(
        err.contains("bad.yaml:8:33: unknown template 'pie'"),
        "{err}"
    );
    assert!(
        err.contains("bad.yaml:9:40: unknown key 'colour' in plot 'N'"),
        "{err}"
    );
}

/// The texts of an SVG file (`<text …>TEXT</text>`), trimmed.
fn svg_texts(path: &Path) -> Vec<String> {
    let svg = std::fs::read_to_string(path).unwrap();
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

/// docs/triggers.md's cron example is what the loader and `schedule` accept, and the
/// mistakes it names are reported as it says.
#[test]
fn the_cron_keys_docs_triggers_md_shows_are_accepted_and_checked() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/triggers.md"))
            .unwrap();
    let start = doc.find("```yaml\ntriggers:").unwrap() + "```yaml\n".len();
    let example = &doc[start..start + doc[start..].find("```").unwrap()];
    let pipeline =
        format!("name: cron\nstages:\n  s:\n    cmd: echo s > s.txt\n    outs: [s.txt]\n{example}");
    write(p, "data/app.db", "");
    write(p, "cron.yaml", &pipeline);
    ok(p, &["validate", "cron.yaml"]);
    // A first start evaluates nothing (no tick is missed yet): it checks and exits 0.
    ok(p, &["schedule", "cron.yaml", "--once"]);

    let bad = |trigger: &str| {
        write(
            p,
            "bad.yaml",
            &format!(
                "name: bad\nstages:\n  s:\n    cmd: echo s > s.txt\n    outs: [s.txt]\ntriggers:\n{trigger}"
            ),
        );
        let v = tsumugi(p).args(["validate", "bad.yaml"]).output().unwrap();
        let s = tsumugi(p)
            .args(["schedule", "bad.yaml", "--once"])
            .output()
            .unwrap();
        (
            v.status.code(),
            String::from_utf8_lossy(&v.stderr).into_owned(),
            s.status.code(),
            String::from_utf8_lossy(&s.stderr).into_owned(),
        )
    };
    let (v, verr, _, _) = bad("  - cron: \"0 3 * * *\"\n    timezone: UTC\n");
    assert_eq!(v, Some(2));
    assert!(
        verr.contains("bad.yaml:8:5: unknown key 'timezone' in a cron trigger"),
        "{verr}"
    );
    let (v, verr, _, _) = bad("  - cron: \"CRON_TZ=Asia/Tokyo @daily\"\n");
    assert_eq!(v, Some(2), "the word count: {verr}");
    let (v, _, s, serr) = bad("  - cron: \"0 3 * * *\"\n    catchup: sometimes\n");
    assert_eq!((v, s), (Some(0), Some(2)), "{serr}");
    assert!(
        serr.contains("bad.yaml:7:5")
            && serr.contains("unknown catchup policy \"sometimes\": expected skip or run-once"),
        "{serr}"
    );
    let (_, _, s, serr) = bad("  - cron: \"CRON_TZ=Asia/Tokyo 0 3 * * *\"\n    tz: Europe/Paris\n");
    assert_eq!(s, Some(2));
    assert!(serr.contains("give the time zone once"), "{serr}");
}
