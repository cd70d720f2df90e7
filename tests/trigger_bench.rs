//! Benchmark, not a test: watch latency, from a file write to the start of the re-run.
//! Ignored by `cargo test`; run it with
//!
//! ```sh
//! cargo test --release --test trigger_bench -- --ignored --nocapture
//! ```
//!
//! and copy the table into BENCHMARKS.md ("Triggers (issue 6)").

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use tokio::sync::{mpsc, oneshot};
use tsumugi::project::Project;
use tsumugi::spec;
use tsumugi::trigger::runner::ExecutorRunner;
use tsumugi::trigger::watch::{WatchOptions, watch};
use tsumugi::trigger::{PipelineRunner, RunOutcome, RunRequest};

const SAMPLES: usize = 15;

/// Wraps a runner: reports when each run starts and ends.
struct Timed<R> {
    inner: R,
    starts: mpsc::UnboundedSender<Instant>,
    ends: mpsc::UnboundedSender<bool>,
}

impl<R: PipelineRunner> PipelineRunner for Timed<R> {
    async fn run(&self, request: RunRequest) -> Result<RunOutcome> {
        let _ = self.starts.send(Instant::now());
        let r = self.inner.run(request).await;
        let _ = self
            .ends
            .send(r.as_ref().map(|o| o.success).unwrap_or(false));
        r
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Returns (write → run() called, write → first stage process running), in ms.
async fn measure(debounce: Duration) -> (Vec<f64>, Vec<f64>) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    std::fs::create_dir_all(root.join("pipelines")).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("data/in.txt"), "0").unwrap();
    std::fs::write(
        root.join("pipelines/b.yaml"),
        "name: b\nstages:\n  stamp:\n    cmd: date +%s%N > started.txt && mkdir -p out && cp data/in.txt out/in.txt\n    deps: [data/in.txt]\n    outs: [out/in.txt]\n",
    )
    .unwrap();
    let pr = Project::new(root);
    let p = spec::load(std::path::Path::new("pipelines/b.yaml"), &pr).unwrap();
    let (stx, mut starts) = mpsc::unbounded_channel();
    let (etx, mut ends) = mpsc::unbounded_channel();
    let mut inner = ExecutorRunner::new(&pr, "pipelines/b.yaml".into());
    inner.progress = tsumugi::executor::ProgressMode::Quiet;
    let runner = Arc::new(Timed {
        inner,
        starts: stx,
        ends: etx,
    });
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = oneshot::channel();
    let mut opts = WatchOptions::with_debounce(debounce);
    opts.ready = Some(ready_tx);
    let pr2 = pr.clone();
    let task = tokio::spawn(async move {
        let rp = pr2.clone();
        watch(
            &pr2,
            p,
            runner,
            opts,
            move || Ok(spec::load(std::path::Path::new("pipelines/b.yaml"), &rp)?),
            async move {
                let _ = stop_rx.await;
            },
        )
        .await
        .unwrap()
    });
    ready_rx.await.unwrap();
    let (mut to_run, mut to_stage) = (Vec::new(), Vec::new());
    for i in 0..SAMPLES {
        let wall = now_ns();
        let t0 = Instant::now();
        std::fs::write(root.join("data/in.txt"), format!("{i}")).unwrap();
        let started = tokio::time::timeout(Duration::from_secs(30), starts.recv())
            .await
            .unwrap()
            .unwrap();
        to_run.push((started - t0).as_secs_f64() * 1e3);
        assert!(
            tokio::time::timeout(Duration::from_secs(30), ends.recv())
                .await
                .unwrap()
                .unwrap()
        );
        let stamp: u128 = std::fs::read_to_string(root.join("started.txt"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        to_stage.push((stamp.saturating_sub(wall)) as f64 / 1e6);
        // Let the run's own trailing events pass before the next sample.
        tokio::time::sleep(debounce + Duration::from_millis(100)).await;
    }
    stop_tx.send(()).unwrap();
    task.await.unwrap();
    (to_run, to_stage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn watch_latency() {
    println!(
        "| debounce | write → run start, median | p95 | write → first stage running, median | p95 |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for ms in [0u64, 50, 200, 500] {
        let (mut a, mut b) = measure(Duration::from_millis(ms)).await;
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        println!(
            "| {ms} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            percentile(&a, 0.5),
            percentile(&a, 0.95),
            percentile(&b, 0.5),
            percentile(&b, 0.95)
        );
    }
}
