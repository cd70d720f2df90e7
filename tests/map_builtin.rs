//! `map:` over a built-in kind (`uses:`), against a stand-in per-item kind: what the loader
//! accepts and refuses, and the per-item runtime (`tsumugi::map::run`) on real files, the
//! real object store and the real run database. The end-to-end case with `caption-images`
//! and Tesseract is in tests/caption_map.rs.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use serde_json::json;
use tsumugi::cache::Cache;
use tsumugi::hash::{Hasher, StatCache};
use tsumugi::map::{self, MapRun};
use tsumugi::project::Project;
use tsumugi::rundb::RunDb;
use tsumugi::spec::{self, Action, Dep, Out, Pipeline, SpecError};
use tsumugi_stages::kinds::SettingsInfo;
use tsumugi_stages::{KindInfo, Reporter, Stage as StageImpl, StageInput};

static KINDS: &[KindInfo] = &[
    KindInfo {
        name: "shout",
        version: 2,
        summary: "one JSONL row per input file, its text upper-cased",
        input_fields: &["input", "lexicon"],
        outputs: &[("rows", "rows.jsonl"), ("sizes", "sizes.jsonl")],
        metrics: None,
        per_item: true,
        settings: SettingsInfo::ANY,
    },
    KindInfo {
        name: "build-pairs",
        version: 1,
        summary: "text pairs from a table",
        input_fields: &["input"],
        outputs: &[("pairs", "pairs.jsonl")],
        metrics: None,
        per_item: false,
        settings: SettingsInfo::ANY,
    },
];

fn load_in(dir: &Path, yaml: &str) -> Result<Pipeline, SpecError> {
    let project = Project::new(dir);
    spec::load_str_with_kinds(Path::new("pipelines/p.yaml"), yaml, &project, KINDS)
}

fn project_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (p, text) in files {
        let abs = d.path().join(p);
        std::fs::create_dir_all(abs.parent().unwrap()).unwrap();
        std::fs::write(abs, text).unwrap();
    }
    d
}

const PIPE: &str = r#"
stages:
  shout:
    uses: shout
    map: {glob: "data/notes/**/*.txt"}
    with: {input: "${item.path}", lexicon: data/lexicon.txt, tag: "k=${item.key}"}
  report:
    cmd: wc -l < ${stages.shout.outs.rows} > out/report.txt
    outs: [out/report.txt]
"#;

#[test]
fn a_per_item_kind_under_map_keeps_its_outputs_and_per_item_with() {
    let d = project_with(&[("data/notes/a.txt", "a\n"), ("data/lexicon.txt", "x\n")]);
    let p = load_in(d.path(), PIPE).unwrap_or_else(|e| panic!("{e}"));
    let s = p.stage("shout").unwrap();
    // The kind's outputs, where an unmapped stage of the kind writes them.
    assert_eq!(
        s.outs["rows"],
        Out {
            path: PathBuf::from("out/p/shout/rows.jsonl"),
            cache: true,
            persist: false,
        }
    );
    assert_eq!(s.outs.len(), 2);
    // `${item.…}` stays for the runtime; the per-item input is not a dependency, the map
    // source and the shared input are.
    let Action::Builtin { with, kind, .. } = &s.action else {
        panic!("{:?}", s.action)
    };
    assert_eq!(kind, "shout");
    assert_eq!(with["input"], "${item.path}");
    assert_eq!(with["tag"], "k=${item.key}");
    assert!(
        s.deps.contains(&Dep::Path("data/notes".into())),
        "{:?}",
        s.deps
    );
    assert!(
        s.deps.contains(&Dep::Path("data/lexicon.txt".into())),
        "{:?}",
        s.deps
    );
    assert_eq!(s.deps.len(), 2, "{:?}", s.deps);
    // A downstream reference to the mapped stage's output is an edge as usual.
    let r = p.stage("report").unwrap();
    assert!(r.deps.contains(&Dep::Path("out/p/shout/rows.jsonl".into())));
}

#[test]
fn map_over_a_built_in_kind_says_what_is_wrong_and_where() {
    let d = project_with(&[("data/notes/a.txt", "a\n"), ("data/t.csv", "a,b\n")]);
    let err = |yaml: &str| load_in(d.path(), yaml).unwrap_err().to_string();

    // A kind that is not per-item: the stage, the kind and the kinds that can be mapped.
    let e = err(
        "stages:\n  pairs:\n    uses: build-pairs\n    map: {glob: \"data/notes/*.txt\"}\n    with: {input: \"${item.path}\"}\n",
    );
    assert!(e.contains("pipelines/p.yaml:3:11"), "{e}");
    assert!(
        e.contains("stage 'pairs': kind 'build-pairs' cannot run per item under 'map'"),
        "{e}"
    );
    assert!(e.contains("kinds that can: shout"), "{e}");

    // `merge:` — the kind's own outputs are the merged ones.
    let e = err(
        "stages:\n  s:\n    uses: shout\n    map: {glob: \"data/notes/*.txt\"}\n    with: {input: \"${item.path}\"}\n    merge: {out: out/all.jsonl}\n",
    );
    assert!(e.contains("pipelines/p.yaml:6:5"), "{e}");
    assert!(
        e.contains("'merge' is not allowed in stage 's' with 'uses'") && e.contains("rows, sizes"),
        "{e}"
    );

    // A field the map source does not have.
    let e = err(
        "stages:\n  s:\n    uses: shout\n    map: {glob: \"data/notes/*.txt\"}\n    with: {input: \"${item.line}\"}\n",
    );
    assert!(e.contains("pipelines/p.yaml:5:"), "{e}");
    assert!(e.contains("item has no field 'line'"), "{e}");

    // `batch:` runs a command once; a kind has none.
    let e = err(
        "stages:\n  s:\n    uses: shout\n    map: {glob: \"data/notes/*.txt\", batch: true}\n    with: {input: \"${item.path}\"}\n",
    );
    assert!(e.contains("pipelines/p.yaml:4:"), "{e}");
    assert!(e.contains("'batch: true' needs 'cmd' in stage 's'"), "{e}");

    // `${item.…}` without `map:`.
    let e = err("stages:\n  s:\n    uses: shout\n    with: {input: \"${item.path}\"}\n");
    assert!(e.contains("pipelines/p.yaml:4:"), "{e}");
    assert!(e.contains("${item} is only defined"), "{e}");
}

/// The stand-in kind: for its `input` file, one row `{"file", "text"}` with the text
/// upper-cased in `rows`, and `{"file", "bytes"}` in `sizes`. A file saying `fail` fails.
struct Shout {
    calls: AtomicUsize,
}

impl StageImpl for Shout {
    fn run(&self, input: &StageInput<'_>, report: &dyn Reporter) -> anyhow::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let file = input.with["input"].as_str().context("input")?;
        let text = std::fs::read_to_string(input.project_root.join(file))?;
        if text.contains("fail") {
            anyhow::bail!("{file} says fail");
        }
        report.log(&format!("read {file}"));
        report.progress(1, Some(1), "1 of 1 files");
        let row = json!({"file": file, "text": text.trim().to_uppercase()});
        std::fs::write(&input.outs["rows"], format!("{row}\n"))?;
        let size = json!({"file": file, "bytes": text.len()});
        std::fs::write(&input.outs["sizes"], format!("{size}\n"))?;
        Ok(())
    }
}

#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    progress: Mutex<Vec<(u64, Option<u64>)>>,
    /// Says "cancelled" once this many items are done (Ctrl-C in the middle of a stage).
    cancel_after: Option<usize>,
}

impl Reporter for Log {
    fn progress(&self, done: u64, total: Option<u64>, _message: &str) {
        self.progress.lock().unwrap().push((done, total));
    }
    fn metric(&self, _: &str, _: Option<u64>, _: f64) {}
    fn log(&self, line: &str) {
        self.lines.lock().unwrap().push(line.to_string());
    }
    fn cancelled(&self) -> bool {
        self.cancel_after
            .is_some_and(|n| self.progress.lock().unwrap().len() >= n)
    }
}

/// Runs the mapped stage of `dir` once; (calls of the kind, its error, the reporter).
fn run_map(dir: &Path, force: bool) -> (usize, Option<String>, Log) {
    run_map_with(dir, force, 3, Log::default())
}

fn run_map_with(dir: &Path, force: bool, jobs: usize, log: Log) -> (usize, Option<String>, Log) {
    let project = Project::new(dir);
    let p = load_in(dir, PIPE).unwrap_or_else(|e| panic!("{e}"));
    let stage = p.stage("shout").unwrap();
    let Action::Builtin { with, .. } = &stage.action else {
        unreachable!()
    };
    let cache = Cache::new(project.cache_dir());
    let stat = StatCache::in_memory();
    let db = RunDb::start(&project).unwrap();
    let imp = Shout {
        calls: AtomicUsize::new(0),
    };
    let outs = Default::default();
    let env = Default::default();
    let input = StageInput {
        name: "shout",
        project_root: dir,
        with,
        outs: &outs,
        env: &env,
        device: "cpu",
    };
    let mr = MapRun {
        project: &project,
        cache: &cache,
        stat: &stat,
        pipeline: "p",
        jobs,
        force,
        run_id: "r",
        db: &db,
    };
    let res = map::run(&mr, stage, &imp, &input, &log);
    (
        imp.calls.load(Ordering::SeqCst),
        res.err().map(|e| format!("{e:#}")),
        log,
    )
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn a_mapped_kind_runs_only_new_and_changed_items_and_merges_like_a_fresh_run() {
    let mut files: Vec<(String, String)> = (0..30)
        .map(|i| {
            (
                format!(
                    "data/notes/{}/n{i:02}.txt",
                    if i % 3 == 0 { "sub" } else { "top" }
                ),
                format!("note {i}\n"),
            )
        })
        .collect();
    files.push(("data/lexicon.txt".into(), "x\n".into()));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let d = project_with(&refs);
    let dir = d.path();

    let (calls, err, log) = run_map(dir, false);
    assert_eq!((calls, err), (30, None));
    let rows = read(dir, "out/p/shout/rows.jsonl");
    assert_eq!(rows.lines().count(), 30);
    // Item-key order: the path under data/notes.
    assert!(rows.starts_with("{\"file\":\"data/notes/sub/n00.txt\",\"text\":\"NOTE 0\"}\n"));
    assert_eq!(read(dir, "out/p/shout/sizes.jsonl").lines().count(), 30);
    // Per-item parts live under the stage's folder, by item key.
    assert_eq!(
        read(dir, "out/p/shout/items/top/n01.txt/rows.jsonl"),
        "{\"file\":\"data/notes/top/n01.txt\",\"text\":\"NOTE 1\"}\n"
    );
    // Progress is the stage's: items done of 30, never the kind's own "1 of 1".
    let prog = log.progress.lock().unwrap().clone();
    assert_eq!(prog.len(), 30);
    assert!(prog.iter().all(|&(_, t)| t == Some(30)), "{prog:?}");
    let lines = log.lines.lock().unwrap().clone();
    assert!(lines.contains(&"[top/n01.txt] read data/notes/top/n01.txt".to_string()));
    assert!(
        lines
            .iter()
            .any(|l| l == "shout: 30 of 30 items ran, 0 cached, 0 removed")
    );

    // Nothing changed: no call.
    assert_eq!(run_map(dir, false).0, 0);

    // One added, one changed, one removed; status names them first.
    std::fs::write(dir.join("data/notes/top/n99.txt"), "note 99\n").unwrap();
    std::fs::write(dir.join("data/notes/top/n01.txt"), "note one\n").unwrap();
    std::fs::remove_file(dir.join("data/notes/sub/n03.txt")).unwrap();
    let project = Project::new(dir);
    let p = load_in(dir, PIPE).unwrap();
    let stat = StatCache::in_memory();
    let counts = map::status(
        &project,
        &Hasher::new(&stat),
        "p",
        p.stage("shout").unwrap(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        counts.describe("shout"),
        "shout: 2 of 30 items stale (added: top/n99.txt; changed: top/n01.txt; removed: sub/n03.txt)"
    );
    let (calls, err, _) = run_map(dir, false);
    assert_eq!((calls, err), (2, None));
    assert!(!dir.join("out/p/shout/items/sub/n03.txt").exists());

    // Byte-identical to a from-scratch run over the same files.
    let fresh = tempfile::tempdir().unwrap();
    for e in walkdir::WalkDir::new(dir.join("data")) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(dir).unwrap();
        if e.file_type().is_file() {
            let to = fresh.path().join(rel);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(e.path(), to).unwrap();
        }
    }
    assert_eq!(run_map(fresh.path(), false).0, 30);
    for out in ["out/p/shout/rows.jsonl", "out/p/shout/sizes.jsonl"] {
        assert_eq!(read(dir, out), read(fresh.path(), out), "{out}");
    }
    assert!(read(dir, "out/p/shout/rows.jsonl").contains("NOTE ONE"));

    // The shared input is in every item's fingerprint; --force runs every item.
    std::fs::write(dir.join("data/lexicon.txt"), "y\n").unwrap();
    assert_eq!(run_map(dir, false).0, 30);
    assert_eq!(run_map(dir, true).0, 30);

    // A failing item: the error names it, the others are kept and do not run again.
    std::fs::write(dir.join("data/notes/top/n02.txt"), "fail\n").unwrap();
    std::fs::write(dir.join("data/notes/top/n04.txt"), "note four\n").unwrap();
    let (_, err, _) = run_map(dir, false);
    let err = err.expect("the failing item fails the stage");
    assert!(
        err.contains("item top/n02.txt") && err.contains("says fail"),
        "{err}"
    );
    std::fs::write(dir.join("data/notes/top/n02.txt"), "note two\n").unwrap();
    let (calls, err, _) = run_map(dir, false);
    assert_eq!(err, None);
    // n02 for sure; n04 only if the failure stopped it before it ran (items run 3 at once).
    assert!((1..=2).contains(&calls), "{calls}");
}

#[test]
fn row_keys_that_are_not_plain_paths_get_their_own_folders() {
    let yaml = r#"
stages:
  shout:
    uses: shout
    map: {rows: data/rows.jsonl, key: id}
    with: {input: "data/${item.file}"}
"#;
    let d = project_with(&[
        (
            "data/rows.jsonl",
            "{\"id\": \"../up\", \"file\": \"a.txt\"}\n{\"id\": \"a\", \"file\": \"b.txt\"}\n{\"id\": \"a/b\", \"file\": \"a.txt\"}\n{\"id\": \"写真 1\", \"file\": \"b.txt\"}\n",
        ),
        ("data/a.txt", "alpha\n"),
        ("data/b.txt", "beta\n"),
    ]);
    let dir = d.path();
    let project = Project::new(dir);
    let p = load_in(dir, yaml).unwrap_or_else(|e| panic!("{e}"));
    let stage = p.stage("shout").unwrap();
    let Action::Builtin { with, .. } = &stage.action else {
        unreachable!()
    };
    let cache = Cache::new(project.cache_dir());
    let stat = StatCache::in_memory();
    let db = RunDb::start(&project).unwrap();
    let imp = Shout {
        calls: AtomicUsize::new(0),
    };
    let (outs, env) = (Default::default(), Default::default());
    let input = StageInput {
        name: "shout",
        project_root: dir,
        with,
        outs: &outs,
        env: &env,
        device: "cpu",
    };
    let mr = MapRun {
        project: &project,
        cache: &cache,
        stat: &stat,
        pipeline: "p",
        jobs: 1,
        force: false,
        run_id: "r",
        db: &db,
    };
    map::run(&mr, stage, &imp, &input, &Log::default()).unwrap();
    assert_eq!(
        read(dir, "out/p/shout/rows.jsonl"),
        "{\"file\":\"data/a.txt\",\"text\":\"ALPHA\"}\n{\"file\":\"data/b.txt\",\"text\":\"BETA\"}\n{\"file\":\"data/a.txt\",\"text\":\"ALPHA\"}\n{\"file\":\"data/b.txt\",\"text\":\"BETA\"}\n"
    );
    assert!(dir.join("out/p/shout/items/a/rows.jsonl").exists());
    assert!(dir.join("out/p/shout/items/写真 1/rows.jsonl").exists());
    // Nothing was written outside the stage's items folder.
    assert!(!dir.join("out/p/up").exists());
    let n = std::fs::read_dir(dir.join("out/p/shout/items"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('@')
        })
        .count();
    assert_eq!(n, 2, "'../up' and 'a/b' are hashed");
}

#[test]
fn a_cancelled_stage_stops_between_items_and_keeps_those_done() {
    let mut files: Vec<(String, String)> = (0..10)
        .map(|i| (format!("data/notes/n{i}.txt"), format!("note {i}\n")))
        .collect();
    files.push(("data/lexicon.txt".into(), "x\n".into()));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let d = project_with(&refs);
    let log = Log {
        cancel_after: Some(3),
        ..Log::default()
    };
    let (calls, err, _) = run_map_with(d.path(), false, 1, log);
    assert_eq!(calls, 3);
    assert_eq!(err.as_deref(), Some("cancelled"));
    // No merged output from a cancelled stage; the three items done are not done again.
    assert!(!d.path().join("out/p/shout/rows.jsonl").exists());
    let (calls, err, _) = run_map(d.path(), false);
    assert_eq!((calls, err), (7, None));
    assert_eq!(read(d.path(), "out/p/shout/rows.jsonl").lines().count(), 10);
}
