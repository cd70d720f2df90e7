//! `tsumugi serve` end to end (docs/serve.md): the real binary on 127.0.0.1 with a free
//! port, called over HTTP. The model is the tiny BERT fixture of the stages crate
//! (stages/tests/fixtures/bert-1, one label) and its PEFT adapter fixture, so the whole
//! file runs in seconds.
#![cfg(feature = "ml")]

mod engine_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine_support::Proj;
use serde_json::{Value, json};

const TOKEN: &str = "test-token-7f3a";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("stages/tests/fixtures")
}
fn base() -> PathBuf {
    fixtures().join("bert-1")
}
fn adapter() -> PathBuf {
    fixtures().join("lora/bert-1/adapter")
}

/// A running server; SIGTERM and a wait when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(project: &Path, args: &[&str], token: Option<&str>) -> Server {
        let mut cmd = Command::new(Proj::bin());
        cmd.arg("-C")
            .arg(project)
            .arg("serve")
            .arg("--model")
            .arg(base())
            .args(["--bind", "127.0.0.1:0", "--poll", "50ms"])
            .args(args)
            .env_remove("TSUMUGI_SERVE_TOKEN")
            .stderr(Stdio::inherit());
        if let Some(t) = token {
            cmd.env("TSUMUGI_SERVE_TOKEN", t);
        }
        let (child, url) = engine_support::spawn_listening(&mut cmd);
        Server { child, url }
    }

    /// (status, body as JSON or as a string).
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = ureq::request(method, &format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let res = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        let r = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = r.status();
        let text = r.into_string().unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.call("POST", path, Some(body), None)
    }

    fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.call(method, path, body, Some(TOKEN))
    }

    fn stop(mut self) -> i32 {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        std::mem::forget(self);
        code
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PAIRS: &[(&str, &str)] = &[
    ("a man is playing a guitar", "someone plays music"),
    ("the cat sleeps", "a dog barks loudly at the mailman"),
    (
        "short",
        "a considerably longer second text, so that padding differs between pairs",
    ),
    ("hello world", "hello world"),
];

/// `tsumugi score`'s logits for PAIRS, with the adapter if given.
fn offline_scores(dir: &Path, adapter: Option<&Path>) -> Vec<f32> {
    let input = dir.join("pairs.jsonl");
    let lines: Vec<String> = PAIRS
        .iter()
        .map(|(a, b)| json!({"text_a": a, "text_b": b}).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let mut cmd = Command::new(Proj::bin());
    cmd.arg("score")
        .arg("--model")
        .arg(base())
        .arg("--pairs")
        .arg(&input);
    if let Some(a) = adapter {
        cmd.arg("--adapter").arg(a);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["logits"][0]
                .as_f64()
                .unwrap() as f32
        })
        .collect()
}

fn served_logits(s: &Server) -> Vec<f32> {
    let pairs: Vec<Value> = PAIRS.iter().map(|(a, b)| json!([a, b])).collect();
    let (code, v) = s.post("/predict", &json!({ "pairs": pairs }).to_string());
    assert_eq!(code, 200, "{v}");
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["logits"][0].as_f64().unwrap() as f32)
        .collect()
}

fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-6, "server {a:?} vs tsumugi score {b:?}");
    }
}

#[test]
fn every_endpoint_its_errors_and_scores_equal_to_tsumugi_score() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("roots");
    std::fs::create_dir_all(root.join("good")).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(adapter().join(f), root.join("good").join(f)).unwrap();
    }
    std::fs::create_dir_all(root.join("broken")).unwrap();
    std::fs::write(root.join("broken/adapter_config.json"), "{not json").unwrap();
    std::os::unix::fs::symlink(base(), root.join("escape")).unwrap();
    let s = Server::start(
        tmp.path(),
        &[
            "--adapter-root",
            root.to_str().unwrap(),
            "--prefix",
            "/nli",
            "--max-pairs",
            "8",
            "--max-body",
            "4096",
        ],
        Some(TOKEN),
    );

    // Health, and the base model's scores are `tsumugi score`'s.
    let (code, v) = s.call("GET", "/health", None, None);
    assert_eq!((code, v["status"].as_str()), (200, Some("ok")));
    assert_close(&served_logits(&s), &offline_scores(tmp.path(), None));

    // predict's shape: logits and a sigmoid score per pair, in order.
    let (code, v) = s.post(
        "/predict",
        r#"{"pairs": [{"text_a": "x", "text_b": "y"}, ["x", "y"]]}"#,
    );
    assert_eq!(code, 200, "{v}");
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0], r[1]);
    let l = r[0]["logits"][0].as_f64().unwrap();
    let sc = r[0]["score"].as_f64().unwrap();
    assert!((sc - 1.0 / (1.0 + (-l).exp())).abs() < 1e-6);

    // rerank: TEI's shape, sorted, raw scores are the logits.
    let texts: Vec<&str> = PAIRS.iter().map(|p| p.1).collect();
    let (code, v) = s.post(
        "/rerank",
        &json!({"query": "a man is playing a guitar", "texts": texts, "raw_scores": true, "return_text": true}).to_string(),
    );
    assert_eq!(code, 200, "{v}");
    let ranked = v.as_array().unwrap();
    assert_eq!(ranked.len(), texts.len());
    let scores: Vec<f64> = ranked
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "not sorted: {v}");
    for r in ranked {
        let i = r["index"].as_u64().unwrap() as usize;
        assert_eq!(r["text"], texts[i]);
    }
    let (_, v) = s.post("/rerank", r#"{"query": "q", "texts": ["a", "b"]}"#);
    assert!(v[0].get("text").is_none(), "{v}");
    assert!(v[0]["score"].as_f64().unwrap() > 0.0 && v[0]["score"].as_f64().unwrap() < 1.0);

    // The adapter endpoints need the token.
    let (code, v) = s.call("GET", "/nli/adapter/status", None, None);
    assert_eq!(code, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("Bearer"), "{v}");
    let (code, _) = s.call(
        "POST",
        "/nli/adapter/load",
        Some(r#"{"path":"good"}"#),
        Some("nope"),
    );
    assert_eq!(code, 401);
    let (code, v) = s.admin("GET", "/nli/adapter/status", None);
    assert_eq!(code, 200, "{v}");
    assert!(v["adapter"].is_null());
    assert_eq!(v["num_labels"], 1);

    // Load by path inside the root: the adapter's scores are `tsumugi score --adapter`'s.
    let (code, v) = s.admin("POST", "/nli/adapter/load", Some(r#"{"path":"good"}"#));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["adapter"]["kind"], "peft");
    assert_eq!(v["swaps"], 1);
    let with_adapter = served_logits(&s);
    assert_close(&with_adapter, &offline_scores(tmp.path(), Some(&adapter())));

    // Errors: each a 4xx with a message; the adapter keeps serving.
    let cases: &[(&str, &str, u16, &str)] = &[
        (
            "/nli/adapter/load",
            r#"{"path":"/etc"}"#,
            403,
            "outside the adapter roots",
        ),
        (
            "/nli/adapter/load",
            r#"{"path":"../../"}"#,
            403,
            "outside the adapter roots",
        ),
        (
            "/nli/adapter/load",
            r#"{"path":"escape"}"#,
            403,
            "outside the adapter roots",
        ),
        (
            "/nli/adapter/load",
            r#"{"path":"missing"}"#,
            404,
            "no such directory",
        ),
        (
            "/nli/adapter/load",
            r#"{"name":"nosuch"}"#,
            404,
            "no adapter named",
        ),
        (
            "/nli/adapter/load",
            r#"{"name":"../x"}"#,
            422,
            "registry name",
        ),
        (
            "/nli/adapter/load",
            r#"{"path":"broken"}"#,
            422,
            "adapter_config.json",
        ),
        ("/nli/adapter/load", r#"{"nmae":"x"}"#, 422, "unknown field"),
        (
            "/predict",
            r#"{"pairs": [["a", "b"]"#,
            400,
            "malformed JSON",
        ),
        ("/predict", "", 400, "empty body"),
        ("/predict", r#"{"pairs": "ab"}"#, 422, "expected a sequence"),
        ("/predict", r#"{"pairs": [["a", 3]]}"#, 422, "pairs[0]"),
        (
            "/rerank",
            r#"{"query": 1, "texts": []}"#,
            422,
            "invalid type",
        ),
    ];
    for (path, body, want, says) in cases {
        let (code, v) = s.admin("POST", path, Some(body));
        assert_eq!(code, *want, "{path} {body}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{path} {body}: {msg:?} lacks {says:?}");
    }
    let many: Vec<Value> = (0..9).map(|_| json!(["a", "b"])).collect();
    let (code, v) = s.post("/predict", &json!({ "pairs": many }).to_string());
    assert_eq!(code, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("--max-pairs"), "{v}");
    let big = format!(r#"{{"pairs": [["{}", "b"]]}}"#, "x".repeat(5000));
    let (code, v) = s.post("/predict", &big);
    assert_eq!(code, 413, "{v}");
    let (code, _) = s.call("GET", "/nope", None, None);
    assert_eq!(code, 404);
    let (_, st) = s.admin("GET", "/nli/adapter/status", None);
    assert_eq!(st["swaps"], 1, "a failed load must not swap: {st}");
    assert!(
        st["adapter"]["path"].as_str().unwrap().ends_with("good"),
        "{st}"
    );
    assert!(
        st["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("adapter_config.json"),
        "{st}"
    );
    assert_close(&served_logits(&s), &with_adapter);

    // Unload: the base model again.
    let (code, v) = s.admin("POST", "/nli/adapter/unload", None);
    assert_eq!(code, 200, "{v}");
    assert!(v["adapter"].is_null());
    assert_close(&served_logits(&s), &offline_scores(tmp.path(), None));

    // Metrics: requests by route and code, latency and batch histograms, queue, adapter.
    let (code, m) = s.call("GET", "/metrics", None, None);
    assert_eq!(code, 200);
    let m = m.as_str().unwrap().to_string();
    for want in [
        "tsumugi_serve_requests_total{endpoint=\"/predict\",code=\"200\"}",
        "tsumugi_serve_requests_total{endpoint=\"/predict\",code=\"413\"} 2",
        "tsumugi_serve_requests_total{endpoint=\"/nli/adapter/load\",code=\"403\"} 3",
        "tsumugi_serve_request_duration_seconds_bucket{endpoint=\"/rerank\",le=\"+Inf\"} 3",
        "tsumugi_serve_batch_pairs_count",
        "tsumugi_serve_queue_depth 0",
        "tsumugi_serve_adapter_version{name=\"\"} 0",
        "tsumugi_serve_adapter_swaps_total 2",
        "tsumugi_serve_adapter_load_failures_total 1",
    ] {
        assert!(m.contains(want), "/metrics lacks {want}:\n{m}");
    }

    // SIGTERM: a clean exit.
    assert_eq!(s.stop(), 0);
}

#[test]
fn refuses_to_listen_beyond_loopback_without_a_token() {
    let out = Command::new(Proj::bin())
        .arg("serve")
        .arg("--model")
        .arg(base())
        .args(["--bind", "0.0.0.0:0"])
        .env_remove("TSUMUGI_SERVE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a token"), "{err}");
}

/// A pipeline whose `export` copies the directory `params.src` and registers it as `nli`
/// (no gate: every new artifact is promoted).
fn registry_pipeline(src: &Path) -> String {
    format!(
        r#"
name: reg
params: {{src: "{}"}}
stages:
  export:
    cmd: rm -rf out/model && mkdir -p out && cp -r ${{params.src}} out/model
    outs: [out/model]
    register: {{name: nli}}
"#,
        src.display()
    )
}

/// Polls status until `want` holds (the follower switches within its poll interval; the
/// bound only keeps a broken server from hanging the test).
fn wait_for(s: &Server, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, st) = s.call("GET", "/adapter/status", None, None);
        if want(&st) {
            return st;
        }
        assert!(Instant::now() < until, "{what}: status stayed {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn follow_switches_on_promote_and_rollback_and_survives_a_bad_version() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Proj::new(&registry_pipeline(&adapter()));
    let (code, _, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    // v2: the base model itself as an exported full model (scores differ from v1's).
    p.set_pipeline(&registry_pipeline(&base()));
    let (code, _, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");

    let s = Server::start(p.root(), &["--follow", "nli"], None);
    let (_, st) = s.call("GET", "/adapter/status", None, None);
    assert_eq!(st["adapter"]["version"], 2, "{st}");
    assert_eq!(st["adapter"]["kind"], "model");
    assert_eq!(st["following"], "nli");
    let v2 = served_logits(&s);
    assert_close(&v2, &offline_scores(tmp.path(), None));

    ok(&p, &["adapters", "rollback", "nli"]);
    let st = wait_for(&s, "after rollback", |st| st["adapter"]["version"] == 1);
    assert_eq!(st["adapter"]["kind"], "peft");
    assert_close(
        &served_logits(&s),
        &offline_scores(tmp.path(), Some(&adapter())),
    );
    let (_, h) = s.call("GET", "/health", None, None);
    assert_eq!(h["adapter"]["version"], 1);

    ok(&p, &["adapters", "promote", "nli", "2"]);
    wait_for(&s, "after promote", |st| st["adapter"]["version"] == 2);
    assert_close(&served_logits(&s), &v2);

    // v3 cannot load: v2 keeps serving, the error is in status and in /metrics.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("adapter_config.json"), "{}").unwrap();
    p.set_pipeline(&registry_pipeline(&bad));
    let (code, _, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    let st = wait_for(&s, "after a bad v3", |st| !st["last_error"].is_null());
    assert_eq!(st["adapter"]["version"], 2, "{st}");
    assert!(
        st["last_error"]["target"]
            .as_str()
            .unwrap()
            .contains("nli v3"),
        "{st}"
    );
    assert_close(&served_logits(&s), &v2);
    let (_, m) = s.call("GET", "/metrics", None, None);
    assert!(
        m.as_str()
            .unwrap()
            .contains("tsumugi_serve_adapter_version{name=\"nli\"} 2")
    );

    // Back to v1 by rollback (to a named version): following goes on after a failure.
    ok(&p, &["adapters", "rollback", "nli", "1"]);
    wait_for(&s, "after rollback to v1", |st| {
        st["adapter"]["version"] == 1
    });
    assert_eq!(s.stop(), 0);
}

/// Runs tsumugi in the project and fails the test with its stderr unless it succeeds.
fn ok(p: &Proj, args: &[&str]) {
    let out = p.cmd().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tsumugi {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
