//! Good-path tests of the pipeline loader and the graph, on real temporary projects.

use std::path::Path;

use serde_json::json;
use tsumugi::graph::Dag;
use tsumugi::project::Project;
use tsumugi::spec::{self, Action, Dep, Pipeline};

fn project(files: &[&str]) -> (tempfile::TempDir, Project) {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        let p = dir.path().join(f);
        if f.ends_with('/') {
            std::fs::create_dir_all(&p).unwrap();
        } else {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "x").unwrap();
        }
    }
    let project = Project::new(dir.path());
    (dir, project)
}

fn load(project: &Project, yaml: &str) -> Pipeline {
    let file = project.root().join("pipelines/p.yaml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, yaml).unwrap();
    match spec::load(Path::new("pipelines/p.yaml"), project) {
        Ok(p) => p,
        Err(e) => panic!("expected a valid pipeline, got:\n{e}"),
    }
}

fn load_err(project: &Project, yaml: &str) -> String {
    let file = project.root().join("pipelines/p.yaml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, yaml).unwrap();
    match spec::load(Path::new("pipelines/p.yaml"), project) {
        Ok(p) => match Dag::build(&p) {
            Ok(_) => panic!("expected an error, got a valid pipeline"),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

fn cmd(p: &Pipeline, stage: &str) -> String {
    match &p.stage(stage).unwrap().action {
        Action::Cmd { cmd } => cmd.clone(),
        other => panic!("not a command stage: {other:?}"),
    }
}

#[test]
fn full_example_resolves() {
    let (_d, pr) = project(&["data/raw.csv", "prep.py"]);
    let p = load(
        &pr,
        r#"
name: demo
params: {lr: 5e-4, rank: 16, model: {name: bert, layers: 6}}
stages:
  prep:
    cmd: python prep.py --lr ${params.lr} --layers ${params.model.layers} > out/prep.txt
    deps: [data/raw.csv, prep.py]
    outs: [out/prep.txt]
    metrics: [out/metrics.json]
    params: [rank]
    env: {OMP_NUM_THREADS: "1", SEED: 7}
    resources: {gpu: 1, cpu: 2}
    retry: {attempts: 2, backoff: 1s}
    timeout: 10m
  report:
    cmd: cat ${stages.prep.outs.out/prep.txt} > report.md
    outs: {report: report.md, log: {path: out/log.txt, cache: false}}
triggers:
  - cron: "0 3 * * *"
    when: {sql: "SELECT count(*) >= 100 FROM corrections", db: data/app.db}
  - watch: [data/]
"#,
    );
    assert_eq!(p.name, "demo");
    assert_eq!(p.params["lr"], json!(0.0005));
    let prep = p.stage("prep").unwrap();
    assert_eq!(
        cmd(&p, "prep"),
        "python prep.py --lr 0.0005 --layers 6 > out/prep.txt"
    );
    assert_eq!(
        prep.deps,
        vec![
            Dep::Path("data/raw.csv".into()),
            Dep::Path("prep.py".into())
        ]
    );
    assert_eq!(prep.outs["out/prep.txt"].path, Path::new("out/prep.txt"));
    assert_eq!(
        prep.metrics,
        vec![Path::new("out/metrics.json").to_path_buf()]
    );
    // Exactly the params referenced or listed, with values; nested ones by dotted path.
    assert_eq!(
        prep.params.keys().collect::<Vec<_>>(),
        vec!["lr", "model.layers", "rank"]
    );
    assert_eq!(prep.params["model.layers"], json!(6));
    assert_eq!(prep.env["SEED"], "7");
    assert_eq!((prep.resources.gpu, prep.resources.cpu), (1, 2));
    assert_eq!(prep.retry.attempts, 2);
    assert_eq!(prep.timeout, Some(std::time::Duration::from_secs(600)));
    assert_eq!(prep.span.line, 5);

    let report = p.stage("report").unwrap();
    assert_eq!(cmd(&p, "report"), "cat out/prep.txt > report.md");
    assert_eq!(report.needs, vec!["prep"]);
    assert!(report.deps.contains(&Dep::Path("out/prep.txt".into())));
    assert!(!report.outs["log"].cache);
    assert!(report.params.is_empty());
    assert_eq!(p.triggers.len(), 2);

    let dag = Dag::build(&p).unwrap();
    assert_eq!(dag.topo_order(), vec!["prep", "report"]);
    assert_eq!(dag.dependencies("report").unwrap(), vec!["prep"]);
    assert_eq!(dag.downstream("prep").unwrap(), vec!["report"]);
}

#[test]
fn whole_references_keep_their_json_type() {
    let (_d, pr) = project(&[]);
    let p = load(
        &pr,
        r#"
params: {rank: 16, lr: 0.1, on: true, tags: [a, b], opt: {x: 1}, s: "16"}
stages:
  a:
    cmd: "echo ${params.rank} ${params.on} $${params.rank}"
    env:
      R: ${params.rank}
      Q: "${params.lr}"
      S: ${params.s}
    outs: [a.txt]
"#,
    );
    let a = p.stage("a").unwrap();
    assert_eq!(cmd(&p, "a"), "echo 16 true ${params.rank}");
    assert_eq!(a.env["R"], "16");
    assert_eq!(a.env["Q"], "0.1");
    assert_eq!(a.env["S"], "16");
    // `$${` is an escape: not a reference, so not a used param.
    assert_eq!(
        a.params.keys().collect::<Vec<_>>(),
        vec!["lr", "on", "rank", "s"]
    );
}

#[test]
fn params_can_refer_to_params() {
    let (_d, pr) = project(&[]);
    let p = load(
        &pr,
        r#"
params:
  out: ${params.base}/x
  base: runs/${params.tag}
  tag: v1
  n: ${params.k}
  k: 3
stages:
  a: {cmd: "true", outs: ["${params.out}"]}
"#,
    );
    assert_eq!(p.params["out"], json!("runs/v1/x"));
    assert_eq!(p.params["n"], json!(3));
    assert_eq!(
        p.params.keys().collect::<Vec<_>>(),
        vec!["base", "k", "n", "out", "tag"]
    );
    let a = p.stage("a").unwrap();
    assert!(a.outs.contains_key("runs/v1/x"));
    // A param used only in an output path is a param of the stage.
    assert_eq!(a.params.keys().collect::<Vec<_>>(), vec!["out"]);
}

#[test]
fn foreach_list_map_and_matrix_expand() {
    let (_d, pr) = project(&[]);
    let p = load(
        &pr,
        r#"
params: {langs: [en, ja]}
stages:
  sweep:
    foreach: [a, b]
    cmd: echo ${item} ${key} > out/${item}.txt
    outs: [out/${item}.txt]
  lang:
    foreach: ${params.langs}
    cmd: echo ${item}
    outs: [out/lang-${item}.txt]
  model:
    foreach: {small: {dim: 64}, large: {dim: 512}}
    cmd: train --dim ${item.dim} --name ${key}
    outs: [out/${key}.bin]
  grid:
    matrix: {model: [x, y], lr: [1, 2]}
    cmd: run ${item.model} ${item.lr}
    outs: [out/grid-${item.model}-${item.lr}]
  all:
    cmd: cat out/*
    needs: [sweep, grid@y-2]
"#,
    );
    let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "sweep@a",
            "sweep@b",
            "lang@en",
            "lang@ja",
            "model@small",
            "model@large",
            "grid@x-1",
            "grid@x-2",
            "grid@y-1",
            "grid@y-2",
            "all"
        ]
    );
    assert_eq!(cmd(&p, "sweep@b"), "echo b 1 > out/b.txt");
    assert_eq!(cmd(&p, "model@large"), "train --dim 512 --name large");
    assert_eq!(cmd(&p, "grid@y-1"), "run y 1");
    assert!(
        p.stage("grid@x-2")
            .unwrap()
            .outs
            .contains_key("out/grid-x-2")
    );
    // `needs:` on an expanded base name means all of its stages.
    assert_eq!(
        p.stage("all").unwrap().needs,
        vec!["grid@y-2", "sweep@a", "sweep@b"]
    );
    // The list a foreach expands is not a param of each stage: adding a language must not
    // invalidate the stages of the others.
    assert!(p.stage("lang@en").unwrap().params.is_empty());
}

#[test]
fn edges_from_deps_inside_outputs_and_directories() {
    let (_d, pr) = project(&["src/"]);
    let p = load(
        &pr,
        r#"
stages:
  gen:
    cmd: mkdir -p out/gen && touch out/gen/a out/gen/b
    outs: [out/gen]
  one:
    cmd: cat out/gen/a
    deps: [out/gen/a, src]
    outs: [one.txt]
  sum:
    cmd: cat one.txt
    deps: [one.txt, ./src/../src]
    outs: [sum.txt]
  late:
    cmd: "true"
    needs: [sum]
"#,
    );
    assert_eq!(p.stage("one").unwrap().needs, vec!["gen"]);
    assert_eq!(p.stage("sum").unwrap().needs, vec!["one"]);
    assert_eq!(
        p.stage("sum").unwrap().deps,
        vec![Dep::Path("one.txt".into()), Dep::Path("src".into())]
    );
    let dag = Dag::build(&p).unwrap();
    assert_eq!(dag.topo_order(), vec!["gen", "one", "sum", "late"]);
    assert_eq!(
        dag.upstream_closure(&["sum"]).unwrap(),
        vec!["gen", "one", "sum"]
    );
    assert_eq!(dag.downstream("gen").unwrap(), vec!["one", "sum", "late"]);
    assert_eq!(dag.dependencies("late").unwrap(), vec!["sum"]);
    let e = dag.upstream_closure(&["summ"]).unwrap_err().to_string();
    assert!(
        e.contains("no stage named 'summ'") && e.contains("did you mean 'sum'?"),
        "{e}"
    );
}

#[test]
fn sqlite_deps_and_cache_false() {
    let (_d, pr) = project(&["data/app.db"]);
    let p = load(
        &pr,
        r#"
stages:
  q:
    cmd: "true"
    deps: [{sqlite: {db: data/app.db, query: "SELECT * FROM corrections"}}]
    outs: [{path: out/q, cache: false}]
"#,
    );
    let q = p.stage("q").unwrap();
    assert_eq!(
        q.deps,
        vec![Dep::Sqlite {
            db: "data/app.db".into(),
            query: "SELECT * FROM corrections".into()
        }]
    );
    assert!(!q.outs["out/q"].cache);
}

#[test]
fn cycle_is_printed() {
    let (_d, pr) = project(&[]);
    let e = load_err(
        &pr,
        r#"
stages:
  a: {cmd: "true", needs: [c]}
  b: {cmd: "true", needs: [a]}
  c: {cmd: "true", needs: [b]}
  d: {cmd: "true", needs: [d]}
"#,
    );
    assert_eq!(
        e,
        "pipelines/p.yaml:3:3: dependency cycle: a -> c -> b -> a (each stage needs the next)\n\
         pipelines/p.yaml:6:3: dependency cycle: d -> d (each stage needs the next)"
    );
}

#[test]
fn cycle_through_outputs() {
    let (_d, pr) = project(&[]);
    let e = load_err(
        &pr,
        r#"
stages:
  a: {cmd: "true", deps: [b.txt], outs: [a.txt]}
  b: {cmd: "true", deps: [a.txt], outs: [b.txt]}
"#,
    );
    assert_eq!(
        e,
        "pipelines/p.yaml:3:3: dependency cycle: a -> b -> a (each stage needs the next)"
    );
}

#[test]
fn all_errors_are_collected() {
    let (_d, pr) = project(&[]);
    let e = load_err(
        &pr,
        r#"
stages:
  a:
    cmd: echo ${params.nope}
    dep: [x]
  b:
    cmd: "true"
    timeout: soon
"#,
    );
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 3, "{e}");
    assert!(
        lines[0].starts_with("pipelines/p.yaml:4:15: unknown parameter 'params.nope'"),
        "{e}"
    );
    assert!(
        lines[1].starts_with("pipelines/p.yaml:5:5: unknown key 'dep' in stage 'a'"),
        "{e}"
    );
    assert!(lines[1].ends_with("did you mean 'deps'?)"), "{e}");
    assert!(
        lines[2].starts_with("pipelines/p.yaml:8:14: invalid duration 'soon'"),
        "{e}"
    );
}

#[test]
fn errors_expose_each_diagnostic() {
    let (_d, pr) = project(&[]);
    let file = pr.root().join("p.yaml");
    std::fs::write(
        &file,
        "stages: {a: {cmd: x, outs: [/abs]}, b: {outs: [y]}}\n",
    )
    .unwrap();
    let e = spec::load(Path::new("p.yaml"), &pr).unwrap_err();
    assert_eq!(e.errors().len(), 2);
    assert_eq!(e.errors()[0].span.line, 1);
    assert!(e.errors()[0].message.contains("absolute path '/abs'"));
    assert!(e.errors()[1].message.contains("neither 'cmd' nor 'uses'"));
    let _: &dyn std::error::Error = &e;
}

#[test]
fn relative_file_is_read_from_the_project_root() {
    let (_d, pr) = project(&[]);
    std::fs::write(pr.root().join("x.yaml"), "stages: {a: {cmd: \"true\"}}\n").unwrap();
    let p = spec::load(Path::new("x.yaml"), &pr).unwrap();
    assert_eq!(p.name, "x");
    assert_eq!(p.file, Path::new("x.yaml"));
    let e = spec::load(Path::new("missing.yaml"), &pr)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("missing.yaml: cannot read pipeline file:"),
        "{e}"
    );
}

#[cfg(unix)]
#[test]
fn output_through_symlink_out_of_the_root_is_rejected() {
    let outside = tempfile::tempdir().unwrap();
    let (_d, pr) = project(&[]);
    std::os::unix::fs::symlink(outside.path(), pr.root().join("link")).unwrap();
    std::fs::create_dir(pr.root().join("inner")).unwrap();
    std::os::unix::fs::symlink(pr.root().join("inner"), pr.root().join("ok")).unwrap();
    let e = load_err(
        &pr,
        "stages:\n  a: {cmd: \"true\", outs: [link/x.txt, ok/y.txt]}\n",
    );
    assert!(e.starts_with("pipelines/p.yaml:2:27: output 'link/x.txt' of stage 'a' leads outside the project root through the symlink 'link'"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn stage_templates_with_merge_keys() {
    let (_d, pr) = project(&["train.py"]);
    let p = load(
        &pr,
        r#"
x-train: &train
  deps: [train.py]
  resources: {gpu: 1}
  retry: 2
  timeout: 2h
stages:
  small:
    <<: *train
    cmd: python train.py --size small
    outs: [out/small]
  large:
    <<: *train
    cmd: python train.py --size large
    timeout: 6h
    outs: [out/large]
"#,
    );
    let small = p.stage("small").unwrap();
    let large = p.stage("large").unwrap();
    assert_eq!(small.deps, vec![Dep::Path("train.py".into())]);
    assert_eq!((small.resources.gpu, small.retry.attempts), (1, 2));
    assert_eq!(small.timeout, Some(std::time::Duration::from_secs(7200)));
    assert_eq!(
        large.timeout,
        Some(std::time::Duration::from_secs(6 * 3600))
    );
    assert_eq!(large.resources.gpu, 1);
}

#[test]
fn dep_on_a_directory_holding_outputs() {
    let (_d, pr) = project(&[]);
    let p = load(
        &pr,
        r#"
stages:
  v1.2:
    cmd: echo a > out/a.txt
    outs: {a: out/a.txt}
  b:
    cmd: echo b > out/sub/b.txt
    outs: [out/sub/b.txt]
  all:
    cmd: ls out ${stages.v1.2.outs.a}
    deps: [out]
"#,
    );
    // `out` does not exist yet, but it holds outputs of v1.2 and b: not missing, and edges.
    assert_eq!(p.stage("all").unwrap().needs, vec!["b", "v1.2"]);
}

#[test]
fn outputs_are_found_by_their_normalised_path() {
    let (_d, pr) = project(&[]);
    let p = load(
        &pr,
        r#"
stages:
  a: {cmd: "true", outs: [./out/a.txt], metrics: [out/m.json]}
  b: {cmd: "cat ${stages.a.outs.out/a.txt} ${stages.a.outs.out/m.json}"}
"#,
    );
    let Action::Cmd { cmd } = &p.stage("b").unwrap().action else {
        panic!()
    };
    assert_eq!(cmd, "cat out/a.txt out/m.json");
    assert!(p.stage("a").unwrap().outs.contains_key("./out/a.txt"));
}

#[test]
fn register_resolves_and_orders_but_stays_out_of_the_fingerprint() {
    use tsumugi::spec::{Bound, Gate, Register};
    let (_d, pr) = project(&["data/raw.csv"]);
    let yaml = |register: &str| {
        format!(
            r#"
params: {{floor: 0.6}}
stages:
  evaluate:
    cmd: cat data/raw.csv > out/metrics.json
    deps: [data/raw.csv]
    outs: {{metrics: out/metrics.json}}
  export:
    cmd: echo model > out/model.bin
    outs: [./out/model.bin]
{register}
"#
        )
    };
    let p = load(
        &pr,
        &yaml(
            r#"    register:
      out: out/model.bin
      metrics: ${stages.evaluate.outs.metrics}
      promote_if: {metric: accuracy, min: "${params.floor}", not_worse: false}"#,
        ),
    );
    let st = p.stage("export").unwrap();
    assert_eq!(
        st.register,
        Some(Register {
            name: "export".into(),
            out: "./out/model.bin".into(),
            metrics: Some("out/metrics.json".into()),
            promote_if: Some(Gate {
                metric: "accuracy".into(),
                bound: Bound::Min(0.6),
                not_worse: false,
            }),
        })
    );
    // The metrics file orders the stages but is not an input, and its params are not the
    // stage's: the fingerprint is the one without `register:`.
    assert_eq!(st.needs, vec!["evaluate".to_string()]);
    assert!(st.deps.is_empty(), "{:?}", st.deps);
    assert!(st.params.is_empty(), "{:?}", st.params);
    let without = load(&pr, &yaml(""));
    let fp = |p: &Pipeline| {
        tsumugi::fingerprint::components(p.stage("export").unwrap(), Default::default())
            .fingerprint()
    };
    assert_eq!(fp(&p), fp(&without));

    // A plain path that a stage writes orders the stages too; `max:` and a default name.
    let p = load(
        &pr,
        &yaml(
            r#"    register:
      name: nli
      metrics: out/metrics.json
      promote_if: {metric: loss, max: 0.5}"#,
        ),
    );
    let st = p.stage("export").unwrap();
    let reg = st.register.as_ref().unwrap();
    assert_eq!(
        (reg.name.as_str(), reg.out.as_str()),
        ("nli", "./out/model.bin")
    );
    assert_eq!(reg.promote_if.as_ref().unwrap().bound, Bound::Max(0.5));
    assert!(reg.promote_if.as_ref().unwrap().not_worse);
    assert_eq!(st.needs, vec!["evaluate".to_string()]);

    let e = load_err(&pr, &yaml("    register: {out: model}"));
    assert!(
        e.contains("'model' in 'register.out' of stage 'export' is not an output of the stage (outputs: ./out/model.bin)"),
        "{e}"
    );
}
