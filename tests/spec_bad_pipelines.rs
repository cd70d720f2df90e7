//! Every `tests/bad_pipelines/NN-name.yaml` must make `tsumugi validate` fail (exit 2, no
//! panic) with exactly the errors in `NN-name.expected`. The files are validated with
//! `-C tests/bad_pipelines`, which is the project root for their paths (`data/raw.csv`,
//! `prep.py` and the symlink `escape -> ..` live there).
//!
//! After a deliberate change of messages: `TSUMUGI_BLESS=1 cargo test --test spec_bad_pipelines`
//! rewrites the .expected files; review the diff before committing it.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn corpus() -> (PathBuf, Vec<String>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_pipelines");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    (dir, names)
}

#[test]
fn every_bad_pipeline_fails_with_its_expected_errors() {
    let (dir, names) = corpus();
    assert!(
        names.len() >= 30,
        "the corpus has only {} files",
        names.len()
    );
    let bless = std::env::var_os("TSUMUGI_BLESS").is_some();
    let mut failures = Vec::new();
    for name in &names {
        let out = Command::cargo_bin("tsumugi")
            .unwrap()
            .arg("-C")
            .arg(&dir)
            .arg("validate")
            .arg(name)
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!stderr.contains("panicked"), "{name} panicked:\n{stderr}");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: exit status {:?}, stderr:\n{stderr}",
            out.status
        );
        assert!(
            out.stdout.is_empty(),
            "{name}: printed on stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let expected_path = dir.join(name.replace(".yaml", ".expected"));
        if bless {
            std::fs::write(&expected_path, &stderr).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} is missing", expected_path.display()));
        // Every message names the file it is about, then line and column.
        for line in stderr.lines() {
            assert!(
                line.starts_with(&format!("{name}:")),
                "{name}: a line without file:line:col: {line}"
            );
        }
        if stderr != expected {
            failures.push(format!("{name}\n--- expected\n{expected}--- got\n{stderr}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} file(s) differ:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_expected_file_has_its_pipeline() {
    let (dir, names) = corpus();
    for e in std::fs::read_dir(&dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(stem) = n.strip_suffix(".expected") {
            assert!(
                names.contains(&format!("{stem}.yaml")),
                "{n} has no {stem}.yaml"
            );
        }
    }
}
