//! Shared by the stage tests (`mod support;`): run a built-in kind as the engine does.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use serde_json::Value;
use tsumugi_stages::contract::{Reporter, StageInput};
use tsumugi_stages::kinds;

/// Runs kind `kind` as stage `name` of a project at `root`, on the CPU, with its declared
/// outputs under `root/out/<name>/`; returns output key → path.
pub fn run_kind(
    kind: &str,
    root: &Path,
    name: &str,
    with: &Value,
    rep: &dyn Reporter,
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let info = kinds::kind(kind).ok_or_else(|| anyhow!("no kind {kind}"))?;
    let dir = root.join("out").join(name);
    let outs: BTreeMap<String, PathBuf> = info
        .outputs
        .iter()
        .map(|(k, f)| (k.to_string(), dir.join(f)))
        .collect();
    std::fs::create_dir_all(&dir)?;
    let env = BTreeMap::new();
    let input = StageInput {
        name,
        project_root: root,
        with,
        outs: &outs,
        env: &env,
        device: "cpu",
    };
    kinds::implementation(kind)
        .ok_or_else(|| anyhow!("kind {kind} is not implemented in this build"))?
        .run(&input, rep)?;
    Ok(outs)
}

/// Each output's text (for kinds whose outputs are files).
pub fn read_outputs(outs: &BTreeMap<String, PathBuf>) -> BTreeMap<String, String> {
    outs.iter()
        .map(|(k, p)| (k.clone(), std::fs::read_to_string(p).unwrap()))
        .collect()
}

/// A reporter that drops everything and never cancels.
pub struct Quiet;

impl Reporter for Quiet {
    fn progress(&self, _: u64, _: Option<u64>, _: &str) {}
    fn metric(&self, _: &str, _: Option<u64>, _: f64) {}
    fn log(&self, _: &str) {}
    fn cancelled(&self) -> bool {
        false
    }
}
