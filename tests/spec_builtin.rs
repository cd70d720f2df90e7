//! The `uses:` path against stand-in kinds (this build lists none yet): outputs placed under
//! `out/<pipeline>/<stage>/`, `with:` input fields as deps and edges, versions, metrics.

use std::path::{Path, PathBuf};

use serde_json::json;
use tsumugi::graph::Dag;
use tsumugi::project::Project;
use tsumugi::spec::{self, Action, BuiltinInput, Dep, Out, Pipeline, SpecError};
use tsumugi_stages::KindInfo;
use tsumugi_stages::kinds::SettingsInfo;

static KINDS: &[KindInfo] = &[
    KindInfo {
        name: "build-pairs",
        version: 3,
        summary: "text pairs from a table",
        input_fields: &["input"],
        outputs: &[("pairs", "pairs.jsonl")],
        metrics: None,
        per_item: false,
        settings: SettingsInfo::ANY,
    },
    KindInfo {
        name: "train-lora",
        version: 7,
        summary: "LoRA fine-tuning",
        input_fields: &["base", "train", "extra"],
        outputs: &[("adapter", "adapter"), ("metrics", "metrics.json")],
        metrics: Some("metrics"),
        per_item: false,
        settings: SettingsInfo::ANY,
    },
];

fn load(yaml: &str) -> (tempfile::TempDir, Result<Pipeline, SpecError>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/train.csv"), "a,b\n").unwrap();
    std::fs::create_dir_all(dir.path().join("models/minilm")).unwrap();
    let project = Project::new(dir.path());
    let r = spec::load_str_with_kinds(Path::new("pipelines/sts.yaml"), yaml, &project, KINDS);
    (dir, r)
}

#[test]
fn builtin_stages_resolve() {
    let (_d, p) = load(
        r#"
params: {rank: 16, lr: 5e-4}
stages:
  pairs:
    uses: build-pairs
    with: {input: data/train.csv, format: tsv}
  train:
    uses: train-lora
    with:
      base: models/minilm
      train: ${stages.pairs.outs.pairs}
      lora: {r: ${params.rank}, alpha: 32}
      optim: {lr: "${params.lr}"}
    resources: {gpu: 1}
  report:
    cmd: cat ${stages.train.outs.metrics} > report.md
    outs: [report.md]
"#,
    );
    let p = p.unwrap_or_else(|e| panic!("{e}"));
    let pairs = p.stage("pairs").unwrap();
    assert_eq!(
        pairs.outs["pairs"],
        Out {
            path: PathBuf::from("out/sts/pairs/pairs.jsonl"),
            cache: true,
            persist: false,
        }
    );
    assert_eq!(pairs.deps, vec![Dep::Path("data/train.csv".into())]);

    let train = p.stage("train").unwrap();
    let Action::Builtin {
        kind,
        version,
        with,
    } = &train.action
    else {
        panic!("not built-in")
    };
    assert_eq!((kind.as_str(), *version), ("train-lora", 7));
    // Whole-value references keep their type, inside flow mappings too.
    assert_eq!(with["lora"], json!({"r": 16, "alpha": 32}));
    assert_eq!(with["optim"]["lr"], json!(0.0005));
    assert_eq!(with["train"], json!("out/sts/pairs/pairs.jsonl"));
    assert_eq!(
        train.deps,
        vec![
            Dep::Path("models/minilm".into()),
            Dep::Path("out/sts/pairs/pairs.jsonl".into())
        ]
    );
    assert_eq!(train.needs, vec!["pairs"]);
    assert_eq!(train.outs.keys().collect::<Vec<_>>(), vec!["adapter"]);
    assert_eq!(
        train.outs["adapter"].path,
        Path::new("out/sts/train/adapter")
    );
    // The metrics output is listed once, as metrics, and can still be referenced by key.
    assert_eq!(
        train.metrics,
        vec![PathBuf::from("out/sts/train/metrics.json")]
    );
    assert_eq!(train.params.keys().collect::<Vec<_>>(), vec!["lr", "rank"]);

    let report = p.stage("report").unwrap();
    assert_eq!(report.needs, vec!["train"]);
    let Action::Cmd { cmd } = &report.action else {
        panic!()
    };
    assert_eq!(cmd, "cat out/sts/train/metrics.json > report.md");
    assert_eq!(
        Dag::build(&p).unwrap().topo_order(),
        vec!["pairs", "train", "report"]
    );
}

#[test]
fn builtin_errors() {
    let (_d, p) = load(
        r#"
stages:
  a:
    uses: train-lorra
  b:
    uses: build-pairs
    with: {input: [data/train.csv, 3]}
    outs: [x]
  c:
    uses: build-pairs
    with: {input: data/nope.csv}
"#,
    );
    assert_eq!(
        p.unwrap_err().to_string(),
        "pipelines/sts.yaml:4:11: unknown stage kind 'train-lorra' (known: build-pairs, train-lora; did you mean 'train-lora'?)\n\
         pipelines/sts.yaml:7:19: expected a path, a list of paths or {sqlite: {db, query}} for 'with.input' of stage 'b', found a number\n\
         pipelines/sts.yaml:8:5: 'outs' is not allowed in stage 'b' with 'uses' (a built-in kind declares its own outputs)\n\
         pipelines/sts.yaml:11:19: missing dependency 'data/nope.csv' of stage 'c': no such file or directory, and no stage outputs it"
    );
}

#[test]
fn path_mapping_helpers() {
    let (outs, metrics) = spec::builtin_outputs(&KINDS[1], Path::new("out/p/s"));
    assert_eq!(outs.len(), 1);
    assert_eq!(outs["adapter"].path, Path::new("out/p/s/adapter"));
    assert_eq!(
        metrics,
        vec![("metrics".to_string(), PathBuf::from("out/p/s/metrics.json"))]
    );
    let found = spec::builtin_inputs(
        &KINDS[1],
        &json!({"base": "m", "extra": ["a", "b"], "other": "x"}),
    )
    .unwrap();
    assert_eq!(
        found,
        vec![
            ("base".into(), BuiltinInput::Path("m".into())),
            ("extra".into(), BuiltinInput::Path("a".into())),
            ("extra".into(), BuiltinInput::Path("b".into()))
        ]
    );
    assert_eq!(
        spec::builtin_inputs(
            &KINDS[1],
            &json!({"base": {"sqlite": {"db": "data/app.db", "query": "SELECT a FROM t"}}})
        )
        .unwrap(),
        vec![(
            "base".into(),
            BuiltinInput::Sqlite {
                db: "data/app.db".into(),
                query: "SELECT a FROM t".into()
            }
        )]
    );
    assert_eq!(
        spec::builtin_inputs(&KINDS[1], &json!({"base": {"sqlite": {"db": "x.db"}}})).unwrap_err(),
        ("base".to_string(), "a mapping".to_string())
    );
    assert_eq!(
        spec::builtin_inputs(&KINDS[1], &json!({"train": {"x": 1}})).unwrap_err(),
        ("train".to_string(), "a mapping".to_string())
    );
}

#[test]
fn builtin_sqlite_input_is_a_sqlite_dep() {
    let (_d, p) = load(
        r#"
stages:
  setup:
    cmd: sqlite3 data/app.db 'CREATE TABLE corrections(a, b, label)'
    outs: [data/app.db]
  pairs:
    uses: build-pairs
    with:
      input: {sqlite: {db: data/app.db, query: "SELECT a, b, label FROM corrections"}}
"#,
    );
    let p = p.unwrap_or_else(|e| panic!("{e}"));
    let pairs = p.stage("pairs").unwrap();
    assert_eq!(
        pairs.deps,
        vec![Dep::Sqlite {
            db: "data/app.db".into(),
            query: "SELECT a, b, label FROM corrections".into()
        }]
    );
    // The db is another stage's output, so the sqlite input makes the edge too.
    assert_eq!(pairs.needs, vec!["setup".to_string()]);
}
