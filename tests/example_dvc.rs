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
        if ["data", "eval", "cache", "runs", ".tsumugi", "model.json", "__pycache__"]
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
        assert_eq!(code, 0, "tsumugi {args:?} failed\nstdout: {stdout}\nstderr: {stderr}");
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
