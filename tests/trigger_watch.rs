//! `tsumugi watch` with real file-system events (notify/inotify), real processes and, in
//! the last test, the real executor and run database. Every wait is bounded.

mod trigger_support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use trigger_support::*;
use tsumugi::project::Project;
use tsumugi::spec::Pipeline;
use tsumugi::trigger::runner::ExecutorRunner;
use tsumugi::trigger::watch::{Effect, WatchOptions, WatchPlan, WatchReport, watch};
use tsumugi::trigger::{Origin, PipelineRunner};

const DEBOUNCE: Duration = Duration::from_millis(200);

/// a ← data/a/ ; c needs a ; b ← data/b.txt ; d needs b.
const PIPE: &str = r#"
name: w
stages:
  a:
    cmd: ls data/a > out/a.txt
    deps: [data/a]
    outs: [out/a.txt]
  c:
    cmd: wc -l < ${stages.a.outs.out/a.txt} > out/c.txt
    outs: [out/c.txt]
  b:
    cmd: cat data/b.txt > out/b.txt
    deps: [data/b.txt]
    outs: [out/b.txt]
  d:
    cmd: cat ${stages.b.outs.out/b.txt} > out/d.txt
    outs: [out/d.txt]
"#;

fn setup() -> (tempfile::TempDir, Project, Pipeline) {
    let (d, pr) = project(&[
        ("pipelines/w.yaml", PIPE),
        ("data/a/0.txt", "0"),
        ("data/b.txt", "b"),
        ("out/.keep", ""),
    ]);
    let p = load(&pr, "pipelines/w.yaml");
    (d, pr, p)
}

/// Starts watching in a task; returns the stop sender and the task.
async fn start<R: PipelineRunner + 'static>(
    pr: &Project,
    p: Pipeline,
    runner: Arc<R>,
    debounce: Duration,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<WatchReport>) {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = oneshot::channel();
    let mut opts = WatchOptions::with_debounce(debounce);
    opts.ready = Some(ready_tx);
    let pr2 = pr.clone();
    let file = p.file.clone();
    let task = tokio::spawn(async move {
        let reload_pr = pr2.clone();
        watch(
            &pr2,
            p,
            runner,
            opts,
            move || Ok(tsumugi::spec::load(&file, &reload_pr)?),
            async move {
                let _ = stop_rx.await;
            },
        )
        .await
        .unwrap()
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .expect("watcher ready in time")
        .unwrap();
    (stop_tx, task)
}

/// Waits (bounded) for the next message, e.g. a run start.
async fn next(rx: &mut mpsc::UnboundedReceiver<usize>, within: Duration) -> Option<usize> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

#[test]
fn plan_classifies_changes() {
    let (_d, _pr, p) = setup();
    let plan = WatchPlan::new(&p).unwrap();
    assert_eq!(
        plan.classify(Path::new("data/a/new.jpg")),
        Effect::Stages(vec!["a".into()])
    );
    assert_eq!(
        plan.classify(Path::new("data/b.txt")),
        Effect::Stages(vec!["b".into()])
    );
    assert_eq!(
        plan.classify(Path::new("out/a.txt")),
        Effect::Ignored("an output of the pipeline")
    );
    assert_eq!(
        plan.classify(Path::new("cache/objects/ab/cd")),
        Effect::Ignored("tsumugi's own directory")
    );
    assert_eq!(
        plan.classify(Path::new("runs/tsumugi.db-wal")),
        Effect::Ignored("tsumugi's own directory")
    );
    assert_eq!(
        plan.classify(Path::new(".git/index")),
        Effect::Ignored("tsumugi's own directory")
    );
    assert_eq!(
        plan.classify(Path::new("data/bb.txt")),
        Effect::Ignored("no stage depends on it")
    );
    assert_eq!(
        plan.classify(Path::new("pipelines/w.yaml")),
        Effect::Pipeline
    );
    let changed = ["a".to_string()].into_iter().collect();
    assert_eq!(plan.targets(&changed), vec!["a", "c"]);
}

/// A restore into a watched folder writes `.tmp.<pid>.<n>.<name>` first (a directory: a
/// temporary tree); those events are tsumugi's own, only the final name counts.
#[test]
fn plan_ignores_tsumugis_own_temporary_files() {
    let (_d, _pr, p) = setup();
    let plan = WatchPlan::new(&p).unwrap();
    for tmp in ["data/a/.tmp.4242.7.new.jpg", "data/a/.tmp.4242.8.sub/x.jpg"] {
        assert_eq!(
            plan.classify(Path::new(tmp)),
            Effect::Ignored("a temporary file of tsumugi"),
            "{tmp}"
        );
    }
    // Names that only look alike are the user's files.
    for name in [
        "data/a/.tmp.x.jpg",
        "data/a/.tmp.1.jpg",
        "data/a/.tmp.12.x.y",
    ] {
        assert_eq!(
            plan.classify(Path::new(name)),
            Effect::Stages(vec!["a".into()]),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_writes_is_one_run_of_the_affected_subgraph() {
    let (d, pr, p) = setup();
    let (tx, mut started) = mpsc::unbounded_channel();
    let mut runner = ProcessRunner::new(d.path());
    runner.started = Some(tx);
    let runner = Arc::new(runner);
    // A longer debounce than elsewhere: on a loaded machine a pause inside the burst
    // must not split it.
    let debounce = Duration::from_millis(600);
    let (stop, task) = start(&pr, p, runner.clone(), debounce).await;

    // 40 files written over ~100 ms: one burst.
    for i in 0..40 {
        std::fs::write(d.path().join(format!("data/a/{i}.txt")), format!("{i}")).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        next(&mut started, Duration::from_secs(10)).await,
        Some(1),
        "a run starts"
    );
    // Nothing else comes, even well past the debounce.
    assert_eq!(
        next(&mut started, debounce * 4).await,
        None,
        "exactly one coalesced run"
    );
    stop.send(()).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.runs.len(), 1);
    let (req, res) = &report.runs[0];
    assert_eq!(req.origin, Origin::Watch);
    // Only the stages downstream of the change, not b and d.
    assert_eq!(req.targets, vec!["a", "c"]);
    assert!(req.reason.contains("data/a/"), "{}", req.reason);
    assert!(res.as_ref().unwrap().success);
    assert_eq!(runner.runs_on_disk(), 1);
    assert_eq!(kinds(&pr), vec!["watch.fired", "watch.run_ok"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_during_a_run_queue_exactly_one_follow_up_and_failures_are_survived() {
    let (d, pr, p) = setup();
    let (tx, mut started) = mpsc::unbounded_channel();
    let mut runner = ProcessRunner::new(d.path());
    runner.started = Some(tx);
    runner.sleep_secs = 1.0;
    runner.fail.store(true, Ordering::SeqCst);
    let runner = Arc::new(runner);
    let (stop, task) = start(&pr, p, runner.clone(), DEBOUNCE).await;

    std::fs::write(d.path().join("data/a/1.txt"), "1").unwrap();
    assert_eq!(next(&mut started, Duration::from_secs(10)).await, Some(1));
    // While run 1 (which fails) takes its second: several changes to b, and outputs and
    // tsumugi's own directories written, which must not count.
    for i in 0..5 {
        std::fs::write(d.path().join("data/b.txt"), format!("b{i}")).unwrap();
        std::fs::write(d.path().join("out/a.txt"), format!("{i}")).unwrap();
        std::fs::create_dir_all(d.path().join("runs/x")).unwrap();
        std::fs::write(d.path().join("runs/x/log"), format!("{i}")).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runner.fail.store(false, Ordering::SeqCst);
    let t0 = Instant::now();
    assert_eq!(
        next(&mut started, Duration::from_secs(10)).await,
        Some(2),
        "one follow-up run"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "the follow-up waited for run 1 to end"
    );
    assert_eq!(
        next(&mut started, Duration::from_millis(1000) + DEBOUNCE * 5).await,
        None,
        "and only one"
    );
    stop.send(()).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        runner.max_in_flight.load(Ordering::SeqCst),
        1,
        "never two runs at once"
    );
    assert_eq!(report.runs.len(), 2);
    assert!(!report.runs[0].1.as_ref().unwrap().success, "run 1 failed");
    assert_eq!(report.runs[1].0.targets, vec!["b", "d"]);
    assert!(
        report.runs[1].1.as_ref().unwrap().success,
        "watching went on after the failure"
    );
    assert_eq!(
        kinds(&pr),
        vec![
            "watch.fired",
            "watch.run_failed",
            "watch.queued",
            "watch.fired",
            "watch.run_ok"
        ]
    );
}

/// Polls the run database (bounded) until it holds `n` finished runs.
async fn wait_runs(pr: &Project, n: usize, within: Duration) -> Vec<(String, String, String)> {
    let t0 = Instant::now();
    loop {
        if let Some(conn) = tsumugi::rundb::open_read(pr).unwrap() {
            let mut st = conn
                .prepare(
                    "SELECT id, trigger, status FROM runs WHERE status != 'running' ORDER BY seq",
                )
                .unwrap();
            let rows: Vec<(String, String, String)> = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            if rows.len() >= n || t0.elapsed() > within {
                return rows;
            }
        } else if t0.elapsed() > within {
            return vec![];
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_executor_runs_are_recorded_as_watch_and_outputs_do_not_loop() {
    let (d, pr) = project(&[
        (
            "pipelines/w.yaml",
            r#"
name: w
stages:
  up:
    cmd: mkdir -p out && tr a-z A-Z < data/in.txt > out/up.txt
    deps: [data/in.txt]
    outs: [out/up.txt]
  check:
    cmd: grep -q OK ${stages.up.outs.out/up.txt} && cp out/up.txt out/checked.txt
    outs: [out/checked.txt]
# out/ is watched on purpose: the run's own writes land in a watched directory.
triggers:
  - watch: [data/, out/]
"#,
        ),
        ("data/in.txt", "start\n"),
        ("out/.keep", ""),
    ]);
    let p = load(&pr, "pipelines/w.yaml");
    let runner = Arc::new(ExecutorRunner::new(&pr, "pipelines/w.yaml".into()));
    let (stop, task) = start(&pr, p, runner, DEBOUNCE).await;

    // A change whose run fails in `check`.
    std::fs::write(d.path().join("data/in.txt"), "not yet\n").unwrap();
    let runs = wait_runs(&pr, 1, Duration::from_secs(20)).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (runs[0].1.as_str(), runs[0].2.as_str()),
        ("watch", "failed")
    );
    // Still watching: the next change runs, and succeeds.
    std::fs::write(d.path().join("data/in.txt"), "ok now\n").unwrap();
    let runs = wait_runs(&pr, 2, Duration::from_secs(20)).await;
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (runs[1].1.as_str(), runs[1].2.as_str()),
        ("watch", "success")
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("out/checked.txt")).unwrap(),
        "OK NOW\n"
    );
    // The run wrote out/ and runs/ and cache/: none of that starts another run.
    let runs = wait_runs(&pr, 3, DEBOUNCE * 8).await;
    assert_eq!(runs.len(), 2, "no run caused by the pipeline's own writes");
    stop.send(()).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.runs.len(), 2);
}
