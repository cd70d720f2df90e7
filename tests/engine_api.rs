//! The engine's library API on hand-made pipelines: what the watch and schedule code calls.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tsumugi::executor::{self, ProgressMode, RunOptions, StageState, TriggerKind};
use tsumugi::project::Project;
use tsumugi::spec::{Action, Dep, Out, Pipeline, Resources, Retry, Span, Stage};

fn stage(name: &str, action: Action, deps: &[&str], outs: &[&str], needs: &[&str]) -> Stage {
    Stage {
        name: name.into(),
        action,
        deps: deps.iter().map(|d| Dep::Path(PathBuf::from(d))).collect(),
        outs: outs
            .iter()
            .map(|o| {
                (
                    o.to_string(),
                    Out {
                        path: PathBuf::from(o),
                        cache: true,
                        persist: false,
                    },
                )
            })
            .collect(),
        metrics: Vec::new(),
        plots: Vec::new(),
        params: BTreeMap::new(),
        env: BTreeMap::new(),
        needs: needs.iter().map(|n| n.to_string()).collect(),
        resources: Resources::default(),
        retry: Retry::default(),
        timeout: None,
        map: None,
        register: None,
        exec: Default::default(),
        span: Span::default(),
    }
}

fn cmd(c: &str) -> Action {
    Action::Cmd { cmd: c.into() }
}

fn pipeline(stages: Vec<Stage>) -> Pipeline {
    Pipeline {
        name: "api".into(),
        file: PathBuf::from("api.yaml"),
        params: BTreeMap::new(),
        param_files: BTreeMap::new(),
        stages,
        triggers: Vec::new(),
    }
}

fn opts(trigger: TriggerKind) -> RunOptions {
    RunOptions {
        trigger,
        progress: ProgressMode::Quiet,
        handle_signals: false,
        ..RunOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_status_and_last_success_through_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project::new(dir.path());
    std::fs::write(dir.path().join("in.txt"), "x\n").unwrap();
    let mut b = stage(
        "b",
        cmd("cat a.txt a.txt > b.txt"),
        &["a.txt"],
        &["b.txt"],
        &["a"],
    );
    b.env.insert("GREETING".into(), "hi".into());
    let p = pipeline(vec![
        stage("a", cmd("cp in.txt a.txt"), &["in.txt"], &["a.txt"], &[]),
        b,
    ]);

    let st = executor::status(&project, &p).unwrap();
    assert_eq!(st[0].reasons, ["never run"]);
    assert!(!st[1].fresh);

    let s = executor::run(&project, &p, &opts(TriggerKind::Watch))
        .await
        .unwrap();
    assert!(s.success && !s.cancelled);
    assert!(s.stages.iter().all(|o| o.status == StageState::Ran));
    assert!(
        tsumugi::rundb::last_success(&project, "api", "b")
            .unwrap()
            .is_some()
    );
    assert!(
        tsumugi::rundb::last_success(&project, "api", "nope")
            .unwrap()
            .is_none()
    );

    let st = executor::status(&project, &p).unwrap();
    assert!(st.iter().all(|s| s.fresh && s.reasons.is_empty()));
    assert_eq!(
        st[1].fingerprint.as_deref(),
        s.stages[1].fingerprint.as_deref()
    );

    // Declared env is part of the fingerprint and status names it.
    let mut p2 = p.clone();
    p2.stages[1].env.insert("GREETING".into(), "hello".into());
    let st = executor::status(&project, &p2).unwrap();
    assert_eq!(st[1].reasons, ["env GREETING: hi → hello"]);

    let conn = tsumugi::rundb::open(&project.db_path()).unwrap();
    let runs = tsumugi::rundb::list_runs(&conn, 10).unwrap();
    assert_eq!(runs[0].trigger, "watch");
    tsumugi::rundb::record_event(
        &project,
        Some(&runs[0].id),
        None,
        "note",
        "from the scheduler",
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn builtin_kind_without_an_implementation_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project::new(dir.path());
    let p = pipeline(vec![stage(
        "train",
        Action::Builtin {
            // Not a kind of any build (the loader would refuse it; the executor must too).
            kind: "render-video".into(),
            version: 1,
            with: serde_json::json!({"r": 16}),
        },
        &[],
        &["out/api/train/adapter"],
        &[],
    )]);
    let s = executor::run(&project, &p, &opts(TriggerKind::Manual))
        .await
        .unwrap();
    assert!(!s.success);
    assert_eq!(s.stages[0].status, StageState::Failed);
    let msg = s.stages[0].message.as_deref().unwrap();
    assert!(
        msg.contains("stage kind render-video is not available in this build"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn external_cancel_flag_cancels_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project::new(dir.path());
    let p = pipeline(vec![stage(
        "slow",
        cmd("sleep 20; echo x > s.txt"),
        &[],
        &["s.txt"],
        &[],
    )]);
    let o = opts(TriggerKind::Cron);
    let flag = o.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let t0 = std::time::Instant::now();
    let s = executor::run(&project, &p, &o).await.unwrap();
    assert!(t0.elapsed() < std::time::Duration::from_secs(10));
    assert!(s.cancelled && !s.success);
    assert_eq!(s.stages[0].status, StageState::Cancelled);
    assert!(
        !dir.path().join("cache/actions").exists()
            || std::fs::read_dir(dir.path().join("cache/actions"))
                .unwrap()
                .count()
                == 0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn uncached_output_is_not_stored_and_its_loss_reruns_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project::new(dir.path());
    let mut s = stage(
        "scratch",
        cmd("echo run >> ran.log; echo tmp > tmp.txt"),
        &[],
        &[],
        &[],
    );
    s.outs.insert(
        "tmp".into(),
        Out {
            path: PathBuf::from("tmp.txt"),
            cache: false,
            persist: false,
        },
    );
    let p = pipeline(vec![s]);
    let o = opts(TriggerKind::Manual);
    assert!(executor::run(&project, &p, &o).await.unwrap().success);
    assert_eq!(
        executor::run(&project, &p, &o).await.unwrap().stages[0].status,
        StageState::Cached
    );
    std::fs::remove_file(dir.path().join("tmp.txt")).unwrap();
    let st = executor::status(&project, &p).unwrap();
    assert_eq!(st[0].reasons, ["output tmp.txt missing (not cached)"]);
    assert_eq!(
        executor::run(&project, &p, &o).await.unwrap().stages[0].status,
        StageState::Ran
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ran.log"))
            .unwrap()
            .lines()
            .count(),
        2
    );
}
