//! DVC's example-get-started, ported (examples/dvc-get-started): the whole daily loop a DVC
//! user of that project runs — repro, params change, experiments, metrics, plots — on a copy
//! of the example in a temporary directory, with its real Python stages.

use std::path::{Path, PathBuf};
use std::process::Command;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dvc-get-started")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let ty = e.file_type().unwrap();
        // Only the sources: a run of the example in place leaves outputs that a fresh copy lacks.
        if [
            "data",
            "eval",
            "cache",
            "runs",
            ".tsumugi",
            "model.json",
            "__pycache__",
        ]
        .contains(&name.to_str().unwrap())
        {
            continue;
        }
        if ty.is_dir() {
            copy_dir(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

struct Example {
    dir: tempfile::TempDir,
}

impl Example {
    fn new() -> Option<Example> {
        if Command::new("python3").arg("--version").output().is_err() {
            eprintln!("skipped: python3 not on PATH");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&example(), dir.path());
        Some(Example { dir })
    }

    fn tsumugi(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(assert_cmd::cargo::cargo_bin("tsumugi"))
            .current_dir(self.dir.path())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.tsumugi(args);
        assert_eq!(
            code, 0,
            "tsumugi {args:?} failed\nstdout: {stdout}\nstderr: {stderr}"
        );
        stdout
    }

    /// `run pipeline.yaml --json` → the stages that ran, in order.
    fn run(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["run", "pipeline.yaml", "--json"];
        args.extend_from_slice(extra);
        let v: serde_json::Value = serde_json::from_str(&self.ok(&args)).unwrap();
        v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"] == "ran")
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn edit_params(&self, from: &str, to: &str) {
        let p = self.dir.path().join("params.yaml");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "params.yaml has no {from:?}");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    }
}

#[test]
fn the_dvc_example_runs_its_daily_loop_in_tsumugi() {
    let Some(ex) = Example::new() else { return };
    let all = ["get_data", "prepare", "featurize", "train", "evaluate"];

    // dvc repro: everything runs, then the end of the run names evaluate's metrics and plots.
    let (code, out, err) = ex.tsumugi(&["run", "pipeline.yaml"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("5 ran"), "{out}");
    assert!(out.contains("avg_prec.test="), "{out}");
    assert!(out.contains("eval/plots/sklearn/roc/test.json"), "{out}");
    // …and again: nothing to do.
    assert!(ex.run(&[]).is_empty());

    // A params key is its own input: train.n_est re-runs train and evaluate only, and
    // status says which key changed.
    ex.edit_params("n_est: 50", "n_est: 20");
    let status = ex.ok(&["status", "pipeline.yaml"]);
    assert!(
        status.contains("param params.yaml:train.n_est: 50 → 20"),
        "{status}"
    );
    assert_eq!(ex.run(&[]), ["train", "evaluate"]);
    // featurize.ngrams reaches featurize and what follows; prepare and get_data stay cached.
    ex.edit_params("ngrams: 2", "ngrams: 1");
    assert_eq!(ex.run(&[]), ["featurize", "train", "evaluate"]);

    // dvc metrics diff / plots show / plots diff.
    let diff = ex.ok(&["metrics", "diff", "pipeline.yaml", "latest~1", "latest"]);
    assert!(diff.contains("evaluate.roc_auc.test"), "{diff}");
    let shown = ex.ok(&["plots", "show", "pipeline.yaml", "-o", "plots"]);
    for name in ["ROC", "Confusion-Matrix", "Precision-Recall"] {
        let svg = ex.dir.path().join(format!("plots/evaluate.{name}.svg"));
        assert!(shown.contains(&format!("evaluate.{name}.svg")), "{shown}");
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains(name), "{} lacks its title", svg.display());
    }
    let roc = std::fs::read_to_string(ex.dir.path().join("plots/evaluate.ROC.svg")).unwrap();
    assert!(roc.contains("roc/train.json") && roc.contains("roc/test.json"));
    ex.ok(&[
        "plots",
        "diff",
        "pipeline.yaml",
        "latest~1",
        "latest",
        "-o",
        "diff",
    ]);
    let overlaid = std::fs::read_to_string(ex.dir.path().join("diff/evaluate.ROC.svg")).unwrap();
    let runs = ex.ok(&["runs", "--json"]);
    let runs: serde_json::Value = serde_json::from_str(&runs).unwrap();
    let newest = runs.as_array().unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        overlaid.contains(&newest),
        "the diff names each run in its legend"
    );

    // dvc exp run -S with a grid: params.yaml untouched, only what each override reaches runs.
    let params_before = std::fs::read(ex.dir.path().join("params.yaml")).unwrap();
    let (code, out, err) = ex.tsumugi(&[
        "exp",
        "run",
        "pipeline.yaml",
        "-S",
        "train.n_est=10,30",
        "-n",
        "trees",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("trees-1: run") && out.contains("2 ran, 3 cached"),
        "{out}"
    );
    assert!(out.contains("trees-2: run"), "{out}");
    assert_eq!(
        std::fs::read(ex.dir.path().join("params.yaml")).unwrap(),
        params_before
    );
    // dvc exp show
    let shown: serde_json::Value =
        serde_json::from_str(&ex.ok(&["exp", "show", "--json"])).unwrap();
    let exps = shown.as_array().unwrap();
    assert_eq!(exps.len(), 2, "{shown}");
    for e in exps {
        assert!(e["metrics"].to_string().contains("avg_prec.test"), "{e}");
    }
    // dvc exp apply: params.yaml gets the override, the workspace its outputs; all cached.
    ex.ok(&["exp", "apply", "trees-1"]);
    let params = std::fs::read_to_string(ex.dir.path().join("params.yaml")).unwrap();
    assert!(params.contains("n_est: 10"), "{params}");
    assert!(
        ex.run(&[]).is_empty(),
        "after exp apply everything is cached"
    );
    let v = ex.ok(&["status", "pipeline.yaml"]);
    for stage in all {
        assert!(v.contains(&format!("fresh  {stage}")), "{v}");
    }
}
