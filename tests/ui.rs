//! `tsumugi ui` end to end (docs/ui.md): a real temporary project that ran a small pipeline
//! and an experiment over it (command stages writing metrics, a per-step loss, declared
//! plots and an image, a registered adapter),
//! the real `tsumugi ui` on a free port, and headless Chromium loading every page: the
//! content a user reads is checked in the DOM after scripts ran, the browser's console must
//! stay empty, and a screenshot is taken of each page.
//!
//! Chromium: `chromium` on PATH (or TSUMUGI_CHROMIUM=/path). Without it the browser test
//! passes with a message, unless TSUMUGI_REQUIRE_CHROMIUM=1 (CI). The screenshots go to a
//! temporary directory; TSUMUGI_UI_SCREENSHOTS=DIR keeps them (docs/ui/ was made so).
//!
//! The speed check is `bench_run_list_10k` (ignored; see BENCHMARKS.md, "tsumugi ui").

mod engine_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use engine_support::Proj;

const TOKEN: &str = "ui-test-token-41c9";

/// The pipeline of the test project: the loss and the accuracy follow `lr` (0.1 → loss
/// 0.3, accuracy 0.72; 0.3 → 0.2, 0.81), so an experiment over `lr` changes its metrics.
const PIPELINE: &str = r##"
name: demo
params: {lr: 0.1}
stages:
  prepare:
    cmd: mkdir -p work && tr a-z A-Z < data/raw.txt > work/prepared.txt
    deps: [data/raw.txt]
    outs: [work/prepared.txt]
  train:
    cmd: |
      echo "training with lr ${params.lr}"
      LOSS=$(awk 'BEGIN {print 0.35 - ${params.lr} / 2}')
      echo "{\"loss\": [1.0, 0.61, 0.43, $LOSS], \"final_loss\": $LOSS}" > work/train.json
      cat work/prepared.txt > work/model.txt
      echo ${params.lr} >> work/model.txt
    deps: [work/prepared.txt]
    outs: [work/model.txt]
    metrics: [work/train.json]
  evaluate:
    cmd: |
      echo '<script>alert("xss")</script> evaluating'
      ACC=$(tail -n 1 work/model.txt | awk '{print 0.675 + $1 * 0.45}')
      mkdir -p work/plots
      echo "{\"accuracy\": $ACC}" > work/eval.json
      printf '<svg xmlns="http://www.w3.org/2000/svg" width="160" height="60"><rect width="160" height="60" fill="#56B4E9"/><text x="10" y="35">acc %s</text></svg>' $ACC > work/plots/accuracy.svg
      echo "{\"roc\": [{\"fpr\": 0, \"tpr\": 0}, {\"fpr\": 0.2, \"tpr\": $ACC}, {\"fpr\": 1, \"tpr\": 1}]}" > work/plots/roc.json
      printf 'actual,predicted\nyes,yes\nyes,no\nno,no\n' > work/plots/cm.csv
    deps: [work/model.txt, data/labels.txt]
    outs: [work/plots]
    metrics: [work/eval.json]
    plots:
      - work/plots/roc.json: {x: fpr, y: tpr, title: ROC curve}
      - Confusion:
          template: confusion
          x: actual
          y: {work/plots/cm.csv: predicted}
  export:
    cmd: mkdir -p work/export && cp work/model.txt work/export/model.txt
    deps: [work/model.txt]
    needs: [evaluate]
    outs: [work/export]
    register:
      name: demo-model
      metrics: work/eval.json
      promote_if: {metric: accuracy, min: 0.6}
"##;

/// A project with a run (lr 0.1, accuracy 0.72) and an experiment `lr-sweep`
/// (`tsumugi exp run p.yaml -S lr=0.3`, accuracy 0.81), whose value is then kept in the
/// pipeline file; then an input of `evaluate` only changes, so that `prepare` and `train`
/// are fresh and `evaluate` and `export` stale. Returns the project and the run ids.
fn project() -> (Proj, String, String) {
    let p = Proj::new(PIPELINE);
    p.write("data/raw.txt", "some training text\n");
    p.write("data/labels.txt", "yes\nno\n");
    let (code, v1, err) = p.run(&[]);
    assert_eq!(code, 0, "first run failed: {err}");
    let run1 = v1["run_id"].as_str().unwrap().to_string();
    let out = p
        .cmd()
        .args(["exp", "run", "p.yaml", "-S", "lr=0.3", "-n", "lr-sweep"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exp run failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `lr-sweep: run ID ok in …`
    let run2 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("lr-sweep: run ")?.split(' ').next())
        .unwrap_or_else(|| panic!("no run id in {stdout:?}"))
        .to_string();
    // Keep the experiment's value (the workspace holds its outputs), then edit `evaluate`'s
    // own input.
    p.set_pipeline(&PIPELINE.replace("params: {lr: 0.1}", "params: {lr: 0.3}"));
    p.write("data/labels.txt", "yes\nno\nmaybe\n");
    (p, run1, run2)
}

/// A running `tsumugi ui`; SIGTERM and a wait when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(project: &Path, token: Option<&str>) -> Server {
        let mut cmd = Command::new(Proj::bin());
        cmd.arg("-C")
            .arg(project)
            .args(["ui", "--port", "0"])
            .env_remove("TSUMUGI_UI_TOKEN")
            .stderr(Stdio::inherit());
        if let Some(t) = token {
            cmd.env("TSUMUGI_UI_TOKEN", t);
        }
        let (child, url) = engine_support::spawn_listening(&mut cmd);
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "binds 127.0.0.1: {url}"
        );
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 request; (status, body).
fn http(url: &str, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let host = url.strip_prefix("http://").unwrap();
    let mut s = TcpStream::connect(host).unwrap();
    let auth = auth
        .map(|a| format!("Authorization: Bearer {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TSUMUGI_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// Headless Chromium on one page: the DOM after scripts ran, and the console lines.
struct Loaded {
    dom: String,
    console: Vec<String>,
}

/// `screenshot`: the PNG to write and the window's height (the page's top that much).
fn browse(chrome: &Path, profile: &Path, url: &str, screenshot: Option<(&Path, u32)>) -> Loaded {
    let mut cmd = Command::new(chrome);
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    match screenshot {
        Some((png, height)) => cmd
            .arg(format!("--screenshot={}", png.display()))
            .arg(format!("--window-size=1280,{height}")),
        None => cmd.arg("--dump-dom").arg("--window-size=1280,800"),
    };
    let out = cmd.arg(url).output().expect("chromium runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed on {url}: {stderr}");
    Loaded {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        // Chromium logs every console message (errors, uncaught exceptions, resources
        // that failed to load) as `…:INFO:CONSOLE(…)] "message", source: …`.
        console: stderr
            .lines()
            .filter(|l| l.contains(":CONSOLE"))
            .map(str::to_string)
            .collect(),
    }
}

/// The `<figure>` of declared plot `STAGE.ID` on a page.
fn figure<'a>(dom: &'a str, plot: &str) -> &'a str {
    let start = pos(dom, &format!("data-plot=\"{plot}\""));
    let len = pos(&dom[start..], "</figure>");
    &dom[start..start + len]
}

fn pos(hay: &str, needle: &str) -> usize {
    hay.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not on the page:\n{hay}"))
}

#[test]
fn every_page_renders_in_headless_chromium_without_console_errors() {
    let Some(chrome) = chromium() else {
        if std::env::var("TSUMUGI_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
            panic!("TSUMUGI_REQUIRE_CHROMIUM=1 but no chromium on PATH (apt-get install chromium)");
        }
        eprintln!("skipped: no chromium on PATH (set TSUMUGI_REQUIRE_CHROMIUM=1 to fail instead)");
        return;
    };
    let (p, run1, run2) = project();
    let server = Server::start(p.root(), Some(TOKEN));
    let profile = tempfile::tempdir().unwrap();
    let shots_tmp = tempfile::tempdir().unwrap();
    let shots = std::env::var_os("TSUMUGI_UI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| shots_tmp.path().to_path_buf());
    std::fs::create_dir_all(&shots).unwrap();

    let visit_tall = |name: &str, path: &str, height: u32| -> String {
        let url = format!("{}{path}", server.url);
        let page = browse(&chrome, profile.path(), &url, None);
        assert!(
            page.console.is_empty(),
            "console messages on {path}:\n{}",
            page.console.join("\n")
        );
        let png = shots.join(format!("{name}.png"));
        let shot = browse(&chrome, profile.path(), &url, Some((&png, height)));
        assert!(shot.console.is_empty(), "{:?}", shot.console);
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "a PNG screenshot of {path}");
        page.dom
    };
    let visit = |name: &str, path: &str| visit_tall(name, path, 800);

    // The run list: both runs, newest first, their final metrics; sorted by accuracy
    // ascending the first run comes first.
    let dom = visit("runs", "/");
    assert!(pos(&dom, &run2) < pos(&dom, &run1), "newest first");
    for text in ["0.72", "0.81", "final_loss", "accuracy", "demo", "2 runs"] {
        pos(&dom, text);
    }
    // The experiment with its overrides, and the params of each run.
    pos(&dom, "lr-sweep <code>lr=0.3</code>");
    pos(&dom, "<td class=\"params\">lr=0.1</td>");
    let dom = visit("experiments", "/?exp=1");
    pos(&dom, "1 experiment<");
    assert!(!dom.contains(&run1), "a plain run is not an experiment");
    let dom = visit(
        "runs-by-accuracy",
        "/?sort=metric%3Aevaluate%2Faccuracy&order=asc",
    );
    assert!(pos(&dom, &run1) < pos(&dom, &run2), "sorted by accuracy ↑");
    pos(&dom, "accuracy <small>evaluate</small> ▲");

    // Compare: the metric diff with its change, one curve per run for the loss series,
    // the plot of each run.
    let dom = visit("compare", &format!("/compare?run={run1}&run={run2}"));
    pos(&dom, "Compare 2 runs");
    pos(
        &dom,
        "<tr class=\"differs\"><td>lr</td><td><code>0.1</code></td><td><code>0.3</code></td>",
    );
    pos(&dom, "+0.09");
    pos(&dom, "train · loss");
    let curves = &dom[..pos(&dom, "<h2 id=\"plots\">Plots</h2>")];
    assert_eq!(curves.matches("<polyline").count(), 2, "two loss curves");
    // The declared plots, drawn by tsumugi-plots from each run's cache entry: the ROC
    // curve with a legend naming both runs, the confusion matrices side by side.
    for plot in ["evaluate.work_plots_roc.json", "evaluate.Confusion"] {
        let fig = figure(&dom, plot);
        for run in [&run1, &run2] {
            pos(fig, &format!("\n{run}\n</text>"));
        }
    }
    pos(
        figure(&dom, "evaluate.work_plots_roc.json"),
        "\nROC curve\n</text>",
    );
    pos(figure(&dom, "evaluate.Confusion"), "\nConfusion\n</text>");
    assert_eq!(
        dom.matches("<figcaption>work/plots/accuracy.svg").count(),
        2,
        "each run's plot"
    );
    // The whole page, plots included (the screenshot docs/ui/plots.png).
    let dom = visit_tall("plots", &format!("/compare?run={run1}&run={run2}"), 1500);
    pos(&dom, "data-plot=\"evaluate.work_plots_roc.json\"");

    // Compare without runs picked: a list to pick from.
    let dom = visit("compare-pick", "/compare");
    pos(&dom, "Tick two runs or more");
    pos(&dom, &format!("value=\"{run1}\""));

    // One run: its stages on the timeline, the log (escaped), metrics, artifacts.
    let dom = visit("run", &format!("/runs/{run2}"));
    for stage in ["prepare", "train", "evaluate", "export"] {
        pos(&dom, &format!("id=\"log-{stage}\""));
    }
    pos(&dom, "training with lr 0.3");
    pos(
        &dom,
        "&lt;script&gt;alert(\"xss\")&lt;/script&gt; evaluating",
    );
    assert!(!dom.contains("<script>alert"), "log text is escaped");
    pos(&dom, "work/plots/accuracy.svg");
    pos(&dom, "<svg class=\"timeline\"");
    // Its declared plots: titled, the axes named by the fields, one run so no run legend.
    let roc = figure(&dom, "evaluate.work_plots_roc.json");
    for text in [
        "\nROC curve\n</text>",
        "\nfpr\n</text>",
        "<figcaption>evaluate: ROC curve<",
    ] {
        pos(roc, text);
    }
    assert!(!roc.contains(&run1), "one run's plot has no run legend");
    let cm = figure(&dom, "evaluate.Confusion");
    for text in ["\nConfusion\n</text>", "\nyes\n</text>", "\nno\n</text>"] {
        pos(cm, text);
    }

    // The DAG after an input of `evaluate` changed: the stages before it fresh, it and
    // what follows stale, with the reason.
    let dom = visit("dag", "/dag");
    for (stage, state) in [
        ("prepare", "fresh"),
        ("train", "fresh"),
        ("evaluate", "stale"),
        ("export", "stale"),
    ] {
        pos(
            &dom,
            &format!("class=\"node {state}\" data-stage=\"{stage}\""),
        );
    }
    pos(&dom, "2 of 4 stages stale");
    pos(
        &dom,
        "<tr data-stage=\"train\"><td>train</td><td><span class=\"badge good\">fresh</span></td><td></td></tr>",
    );
    pos(&dom, "<td>dep data/labels.txt changed: ");
    pos(&dom, "<td>upstream stage evaluate is stale</td>");

    // Adapters: two versions, the second current, both gates passed.
    let dom = visit("adapters", "/adapters");
    pos(&dom, "demo-model");
    pos(&dom, "current v2");
    assert_eq!(dom.matches(">passed<").count(), 2);

    // The one write action needs the token; with it, v1 becomes current again.
    let promote = "/api/adapters/demo-model/promote?version=1";
    assert_eq!(http(&server.url, "POST", promote, None).0, 401);
    assert_eq!(http(&server.url, "POST", promote, Some("wrong")).0, 401);
    let (status, body) = http(&server.url, "POST", promote, Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("v1 is current"), "{body}");
    let dom = browse(
        &chrome,
        profile.path(),
        &format!("{}/adapters", server.url),
        None,
    )
    .dom;
    pos(&dom, "current v1");
}

#[test]
fn without_a_token_the_ui_is_read_only_and_bad_requests_say_why() {
    let p = Proj::new(PIPELINE);
    p.write("data/raw.txt", "x\n");
    p.write("data/labels.txt", "yes\n");
    // Nothing has run yet: the pages say so instead of failing.
    let server = Server::start(p.root(), None);
    let (status, body) = http(&server.url, "GET", "/", None);
    assert_eq!(status, 200);
    assert!(body.contains("No runs yet"), "{body}");
    let (status, body) = http(&server.url, "GET", "/dag", None);
    assert_eq!(status, 200);
    assert!(
        body.contains("0 of") || body.contains("4 of 4 stages stale"),
        "{body}"
    );
    let (status, body) = http(
        &server.url,
        "POST",
        "/api/adapters/demo-model/promote?version=1",
        Some(TOKEN),
    );
    assert_eq!(status, 403);
    assert!(body.contains("read-only"), "{body}");
    let (status, body) = http(&server.url, "GET", "/?sort=colour", None);
    assert_eq!(status, 400);
    assert!(body.contains("unknown sort"), "{body}");
    let (status, _) = http(&server.url, "GET", "/runs/nope", None);
    assert_eq!(status, 404);
    let (status, _) = http(&server.url, "GET", "/object/..%2F..%2Fetc%2Fpasswd", None);
    assert_eq!(status, 400);

    // A declared plot that cannot be drawn (the file now names a field the run's data
    // lacks) is a sentence in its place; the page and the other plot are still shown.
    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    p.set_pipeline(&PIPELINE.replace("y: tpr,", "y: recall,"));
    let run = v["run_id"].as_str().unwrap();
    let (status, body) = http(&server.url, "GET", &format!("/runs/{run}"), None);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(
            "<p class=\"error\">plot &#39;work/plots/roc.json&#39;: work/plots/roc.json has no field &quot;recall&quot; (it has: fpr, tpr)</p>"
        ),
        "{body}"
    );
    assert!(body.contains("\nConfusion\n</text>"), "{body}");
}

/// `cargo test --no-default-features --test ui -- --ignored --nocapture bench_run_list_10k`:
/// 10,000 runs × 4 stages, 3 final metrics and a 20-step loss series each, written through
/// the real run-database writer; then the run list through `tsumugi ui` (first page, sorted
/// by a metric, filtered, a deep page) against `tsumugi runs --json` on the same database.
#[test]
#[ignore]
fn bench_run_list_10k() {
    use tsumugi::rundb::{MetricRow, RunDb, StageRecord};
    let p = Proj::new(PIPELINE);
    let project = tsumugi::project::Project::new(p.root());
    let t = Instant::now();
    let db = RunDb::start(&project).unwrap();
    for i in 0..10_000 {
        let id = format!("run-{i:05}");
        let pipeline = if i % 3 == 0 { "sts" } else { "nli" };
        db.begin_run(&id, pipeline, "p.yaml", "manual", &[]);
        for stage in ["prepare", "train", "evaluate", "export"] {
            db.stage_started(&id, stage, None, 1);
            db.stage_finished(
                &id,
                StageRecord {
                    stage: stage.into(),
                    status: "ran".into(),
                    fingerprint: Some(format!("{i:064}")),
                    started_at: None,
                    ended_at: Some(tsumugi::rundb::ts(tsumugi::rundb::now())),
                    duration_ms: Some(5),
                    exit_code: Some(0),
                    log_path: None,
                    attempt: 1,
                    message: None,
                },
            );
        }
        let mut rows: Vec<MetricRow> = (0..20)
            .map(|s| MetricRow {
                name: "loss".into(),
                step: Some(s),
                value: 1.0 / (s + 1) as f64,
            })
            .collect();
        rows.push(MetricRow {
            name: "final_loss".into(),
            step: None,
            value: (i % 97) as f64 / 97.0,
        });
        db.metrics(&id, "train", rows);
        db.metrics(
            &id,
            "evaluate",
            vec![
                MetricRow {
                    name: "accuracy".into(),
                    step: None,
                    value: (i * 7919 % 1000) as f64 / 1000.0,
                },
                MetricRow {
                    name: "f1".into(),
                    step: None,
                    value: (i * 104729 % 1000) as f64 / 1000.0,
                },
            ],
        );
        db.end_run(&id, if i % 50 == 0 { "failed" } else { "success" });
    }
    db.close().unwrap();
    eprintln!("filled 10,000 runs in {:.1} s", t.elapsed().as_secs_f64());

    let server = Server::start(p.root(), None);
    let n = 20;
    let time = |path: &str| {
        let (status, body) = http(&server.url, "GET", path, None);
        assert_eq!(status, 200, "{body}");
        let t = Instant::now();
        for _ in 0..n {
            http(&server.url, "GET", path, None);
        }
        t.elapsed().as_secs_f64() * 1000.0 / n as f64
    };
    let first = time("/");
    let by_metric = time("/?sort=metric%3Aevaluate%2Faccuracy&order=desc");
    let filtered = time("/?pipeline=sts&sort=duration&order=asc");
    let deep = time("/?page=150");
    let run_page = time("/runs/run-09999");
    let compare = time("/compare?run=run-09999&run=run-09998&run=run-00001");
    let t = Instant::now();
    for _ in 0..n {
        let out = Command::new(Proj::bin())
            .arg("-C")
            .arg(p.root())
            .args(["runs", "--json", "-n", "50"])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let cli = t.elapsed().as_secs_f64() * 1000.0 / n as f64;
    // The same pages without the indexes of migration 4 (what they are for).
    let conn = rusqlite::Connection::open(p.path("runs/tsumugi.db")).unwrap();
    conn.execute_batch("DROP INDEX runs_seq; DROP INDEX runs_status; DROP INDEX metrics_final;")
        .unwrap();
    let first_bare = time("/");
    let by_metric_bare = time("/?sort=metric%3Aevaluate%2Faccuracy&order=desc");
    println!("tsumugi ui, 10,000 runs, mean of {n} requests (ms):");
    println!("  first page (50 runs, newest first)        {first:7.1}");
    println!("  sorted by evaluate/accuracy               {by_metric:7.1}");
    println!("  pipeline=sts, sorted by duration          {filtered:7.1}");
    println!("  page 150 (OFFSET 7450)                    {deep:7.1}");
    println!("  one run (/runs/ID, 4 stages, a series)    {run_page:7.1}");
    println!("  compare 3 runs                            {compare:7.1}");
    println!("  without migration 4's indexes: first page {first_bare:7.1}");
    println!("  without migration 4's indexes: by metric  {by_metric_bare:7.1}");
    println!("  peer: `tsumugi runs --json -n 50` process {cli:7.1}");
    println!("  ratio first page / peer: {:.2}", first / cli);
}

#[test]
fn another_address_than_loopback_needs_bind_and_gets_a_warning() {
    let p = Proj::new(PIPELINE);
    let mut child = Command::new(Proj::bin())
        .arg("-C")
        .arg(p.root())
        .args(["ui", "--bind", "0.0.0.0:0"])
        .env_remove("TSUMUGI_UI_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on http://0.0.0.0:"), "{line}");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: listening on 0.0.0.0") && stderr.contains("can read every run"),
        "{stderr}"
    );
    // --port is for 127.0.0.1 only; with --bind it is a usage error.
    p.cmd()
        .args(["ui", "--port", "1", "--bind", "127.0.0.1:0"])
        .assert()
        .failure()
        .code(2);
}
