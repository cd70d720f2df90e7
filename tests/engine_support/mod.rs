//! Shared helpers for the engine integration tests: a real temporary project, the real
//! binary, real `sh` stages.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

pub struct Proj {
    pub dir: tempfile::TempDir,
}

impl Proj {
    pub fn new(pipeline: &str) -> Proj {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.yaml"), pipeline).unwrap();
        Proj { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    pub fn set_pipeline(&self, text: &str) {
        self.write("p.yaml", text);
    }

    pub fn cmd(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("tsumugi").unwrap();
        c.current_dir(self.root());
        c
    }

    pub fn bin() -> PathBuf {
        assert_cmd::cargo::cargo_bin("tsumugi")
    }

    /// `tsumugi run p.yaml ARGS --json`; returns (exit code, parsed JSON summary, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, serde_json::Value, String) {
        let out: Output = self
            .cmd()
            .arg("run")
            .arg("p.yaml")
            .args(args)
            .arg("--json")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "bad JSON ({e}): {}\nstderr: {stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        (out.status.code().unwrap_or(-1), v, stderr)
    }

    /// Stage name → status of a run summary.
    pub fn statuses(v: &serde_json::Value) -> Vec<(String, String)> {
        v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Names of stages with `status` in a run summary, sorted.
    pub fn with_status(v: &serde_json::Value, status: &str) -> Vec<String> {
        let mut n: Vec<String> = Self::statuses(v)
            .into_iter()
            .filter(|(_, s)| s == status)
            .map(|(n, _)| n)
            .collect();
        n.sort();
        n
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = self
            .cmd()
            .args(["status", "p.yaml", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Lines of `ran.log`, where every test stage appends its name when it executes.
    pub fn executions(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("ran.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    pub fn clear_executions(&self) {
        let _ = std::fs::remove_file(self.path("ran.log"));
    }

    pub fn action_entries(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.path("cache/actions")) {
            Ok(rd) => rd
                .map(|e| e.unwrap().path())
                .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

pub fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Spawns a server command (`tsumugi serve`, `tsumugi ui`) whose first stdout line is
/// `listening on URL`; returns the child and the URL.
pub fn spawn_listening(cmd: &mut std::process::Command) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("expected `listening on …`, got {line:?}"))
        .to_string();
    (child, url)
}
