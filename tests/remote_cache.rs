//! The remote cache end to end, against a real S3-protocol server (moto in server mode, on a
//! free port of 127.0.0.1) and a local-directory remote: clones that restore instead of
//! running, corrupt remote objects, a server stopped mid-run, concurrent pushes.
//!
//! moto: `pip install 'moto[server]'`. Without it the S3 halves print why and pass, unless
//! `TSUMUGI_REQUIRE_S3=1` (CI), where they fail.

mod engine_support;
use engine_support::{Proj, sorted};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// a → b → c, and d (a directory of many files) on its own. Every stage appends its name to
/// ran.log, outside its outputs, when it executes.
const PIPE: &str = r#"
name: chain
params: {suffix: "!"}
stages:
  a:
    cmd: test -z "$KILL_PID" || kill "$KILL_PID"; echo a >> ran.log && cat data/in.txt > out/a.txt
    deps: [data/in.txt]
    outs: [out/a.txt]
  b:
    cmd: echo b >> ran.log && sed 's/$/${params.suffix}/' out/a.txt > out/b.txt
    deps: [out/a.txt]
    outs: [out/b.txt]
  c:
    cmd: echo c >> ran.log && wc -l < out/b.txt > out/c.txt
    deps: [out/b.txt]
    outs: [out/c.txt]
  d:
    cmd: echo d >> ran.log && mkdir -p out/d && for i in $(seq 1 40); do echo "$i $(cat data/other.txt)" > out/d/f$i.txt; done
    deps: [data/other.txt]
    outs: [out/d]
"#;

/// A running moto server with one bucket; killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// `None` (after saying why) when moto is not installed and CI does not require it.
    fn start() -> Option<Moto> {
        let have = Command::new("python3")
            .args(["-c", "import moto.server, werkzeug, flask"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            let why = "moto is not installed (pip install 'moto[server]'): S3 remote tests skipped";
            assert!(
                std::env::var("TSUMUGI_REQUIRE_S3").as_deref() != Ok("1"),
                "TSUMUGI_REQUIRE_S3=1 but {why}"
            );
            eprintln!("{why}");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let m = Moto { child, port };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(60), "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(m.http("PUT", "/bucket", b""), 200, "create bucket");
        Some(m)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A raw request with a dummy signature (moto does not check signatures, but refuses an
    /// anonymous overwrite): returns the status code.
    fn http(&self, method: &str, path: &str, body: &[u8]) -> u16 {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nAuthorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        resp.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where a test's remote lives.
enum Backend {
    Dir(tempfile::TempDir),
    S3(Moto),
}

impl Backend {
    fn dir() -> Backend {
        Backend::Dir(tempfile::tempdir().unwrap())
    }

    fn url(&self, prefix: &str) -> String {
        match self {
            Backend::Dir(d) => d.path().join(prefix).display().to_string(),
            Backend::S3(_) => format!("s3://bucket/{prefix}"),
        }
    }

    fn envs(&self) -> Vec<(String, String)> {
        match self {
            Backend::Dir(_) => Vec::new(),
            Backend::S3(m) => vec![
                ("AWS_ENDPOINT_URL".into(), m.endpoint()),
                ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
                ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
            ],
        }
    }

    /// Overwrites the remote object `hash` with other bytes.
    fn corrupt(&self, prefix: &str, hash: &str) {
        let rel = format!("{prefix}/objects/{}/{}", &hash[..2], &hash[2..]);
        match self {
            Backend::Dir(d) => {
                let p = d.path().join(rel);
                let mut perm = std::fs::metadata(&p).unwrap().permissions();
                #[allow(clippy::permissions_set_readonly_false)]
                perm.set_readonly(false);
                std::fs::set_permissions(&p, perm).unwrap();
                std::fs::write(&p, "tampered\n").unwrap();
            }
            Backend::S3(m) => {
                assert_eq!(m.http("PUT", &format!("/bucket/{rel}"), b"tampered\n"), 200)
            }
        }
    }
}

/// Each test on a local-directory remote and, where moto is installed, on S3.
fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::dir()];
    if let Some(m) = Moto::start() {
        v.push(Backend::S3(m));
    }
    v
}

fn project() -> Proj {
    let p = Proj::new(PIPE);
    p.write("data/in.txt", "one\ntwo\n");
    p.write("data/other.txt", "other\n");
    p
}

/// A clone of `p` as a fresh checkout has it: the pipeline, the data, the config, no
/// cache/, runs/ or outputs.
fn clone(p: &Proj) -> Proj {
    let q = Proj::new(&p.read("p.yaml"));
    for f in ["data/in.txt", "data/other.txt", ".tsumugi/config.toml"] {
        if p.path(f).exists() {
            q.write(f, &p.read(f));
        }
    }
    q
}

/// `tsumugi ARGS` in `p` with the backend's environment: (exit code, stdout, stderr).
fn tsumugi(p: &Proj, b: &Backend, args: &[&str]) -> (i32, String, String) {
    let out = p.cmd().envs(b.envs()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `tsumugi run p.yaml ARGS --json`: (exit code, summary, stderr).
fn run(p: &Proj, b: &Backend, args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut all = vec!["run", "p.yaml"];
    all.extend_from_slice(args);
    all.push("--json");
    let (code, out, err) = tsumugi(p, b, &all);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}\n{err}"));
    (code, v, err)
}

fn add_remote(p: &Proj, b: &Backend, prefix: &str, default: bool) {
    let url = b.url(prefix);
    let mut args = vec!["remote", "add", "team", url.as_str()];
    if default {
        args.push("--default");
    }
    let (code, out, err) = tsumugi(p, b, &args);
    assert_eq!(code, 0, "{out}{err}");
}

fn message(v: &serde_json::Value, stage: &str) -> String {
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == stage)
        .unwrap()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn same_outputs(p: &Proj, q: &Proj) {
    for f in [
        "out/a.txt",
        "out/b.txt",
        "out/c.txt",
        "out/d/f1.txt",
        "out/d/f40.txt",
    ] {
        assert_eq!(p.read(f), q.read(f), "{f}");
    }
}

fn all() -> Vec<String> {
    sorted(&["a", "b", "c", "d"])
}

#[test]
fn a_clone_restores_every_stage_from_what_the_first_pushed() {
    for b in backends() {
        let p1 = project();
        add_remote(&p1, &b, "push-pull", false);
        let (code, v, err) = run(&p1, &b, &[]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(Proj::with_status(&v, "ran"), all());
        let (code, out, err) = tsumugi(&p1, &b, &["push", "--remote", "team", "p.yaml"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("pushed 4/4 stages to remote team"), "{out}");

        // Second clone, read-through: every stage restored, none executed.
        let p2 = clone(&p1);
        let (code, v, err) = run(&p2, &b, &["--remote", "team"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(Proj::with_status(&v, "restored"), all(), "{v}");
        assert_eq!(message(&v, "c"), "restored from remote team");
        assert!(p2.executions().is_empty(), "ran: {:?}", p2.executions());
        same_outputs(&p1, &p2);

        // Third clone, `pull`: outputs checked out, then a run has nothing to do.
        let p3 = clone(&p1);
        let (code, out, err) = tsumugi(&p3, &b, &["pull", "-r", "team", "p.yaml"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("pulled 4/4 stages from remote team"), "{out}");
        same_outputs(&p1, &p3);
        let (code, v, err) = run(&p3, &b, &["--no-remote"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(Proj::with_status(&v, "cached"), all(), "{v}");
        assert!(p3.executions().is_empty());
    }
}

#[test]
fn write_through_by_default_then_read_through_and_a_changed_stage_runs() {
    for b in backends() {
        let p1 = project();
        add_remote(&p1, &b, "wt", true);
        assert_eq!(run(&p1, &b, &[]).0, 0);
        // No push: the run uploaded what it ran.
        let p2 = clone(&p1);
        p2.write("data/other.txt", "changed\n");
        let (code, v, err) = run(&p2, &b, &[]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(Proj::with_status(&v, "restored"), sorted(&["a", "b", "c"]));
        assert_eq!(Proj::with_status(&v, "ran"), sorted(&["d"]));
        assert_eq!(p2.executions(), vec!["d"]);
        let (code, out, _) = tsumugi(&p2, &b, &["remote", "verify"]);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("5 entries") && out.contains("consistent"),
            "{out}"
        );
    }
}

#[test]
fn a_corrupt_remote_object_is_never_restored_and_the_stage_reruns() {
    for b in backends() {
        let p1 = project();
        add_remote(&p1, &b, "corrupt", true);
        assert_eq!(run(&p1, &b, &[]).0, 0);
        let hash = {
            let h = std::process::Command::new("sha256sum")
                .arg(p1.path("out/a.txt"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&h.stdout)[..64].to_string()
        };
        b.corrupt("corrupt", &hash);
        let (code, out, _) = tsumugi(&p1, &b, &["remote", "verify"]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains(&format!("object {hash} is corrupt")), "{out}");

        let p2 = clone(&p1);
        let (code, v, err) = run(&p2, &b, &[]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(p2.executions(), vec!["a"], "{err}");
        assert_eq!(Proj::with_status(&v, "ran"), sorted(&["a"]));
        assert_eq!(Proj::with_status(&v, "restored"), sorted(&["b", "c", "d"]));
        assert!(
            err.contains(&format!("warning: remote team: object {hash} is corrupt"))
                && err.contains("not restored, running a"),
            "{err}"
        );
        same_outputs(&p1, &p2);
        // The re-run's upload replaced the bad object.
        let (code, out, _) = tsumugi(&p2, &b, &["remote", "verify"]);
        assert_eq!(code, 0, "{out}");
    }
}

#[test]
fn a_server_stopped_mid_run_gives_local_runs_and_one_warning() {
    let Some(moto) = Moto::start() else { return };
    let pid = moto.child.id().to_string();
    let b = Backend::S3(moto);
    let p = project();
    add_remote(&p, &b, "stopped", true);
    // Stage a stops the server while it runs: its upload, and every later lookup, fails.
    let out = p
        .cmd()
        .envs(b.envs())
        .env("KILL_PID", &pid)
        .args(["run", "p.yaml", "-j", "1", "--json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(Proj::with_status(&v, "ran"), all());
    assert_eq!(p.read("out/b.txt"), "one!\ntwo!\n");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("remote team is unavailable")
            && warnings[0].contains("running locally without it"),
        "{err}"
    );

    // A server that is not there at all: same, from the first stage.
    let q = project();
    add_remote(&q, &b, "gone", true);
    let (code, v, err) = run(&q, &b, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(Proj::with_status(&v, "ran"), all());
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    // push says it plainly and fails.
    let (code, _, err) = tsumugi(&q, &b, &["push", "p.yaml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("remote team is unavailable"), "{err}");
}

#[test]
fn concurrent_pushes_from_two_processes_leave_a_consistent_remote() {
    for b in backends() {
        // Two machines with overlapping results: a, b, c are shared, d differs.
        let p1 = project();
        let p2 = project();
        p2.write("data/other.txt", "second machine\n");
        for p in [&p1, &p2] {
            add_remote(p, &b, "concurrent", false);
            assert_eq!(run(p, &b, &[]).0, 0);
        }
        let spawn = |p: &Proj| {
            Command::new(Proj::bin())
                .current_dir(p.root())
                .envs(b.envs())
                .args(["push", "-r", "team", "-q", "p.yaml"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (c1, c2) = (spawn(&p1), spawn(&p2));
        for c in [c1, c2] {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (code, out, _) = tsumugi(&p1, &b, &["remote", "verify", "team"]);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("5 entries") && out.contains("consistent"),
            "{out}"
        );
        // And either machine's results restore elsewhere.
        for src in [&p1, &p2] {
            let q = clone(src);
            let (code, v, err) = run(&q, &b, &["--remote", "team"]);
            assert_eq!(code, 0, "{err}");
            assert_eq!(Proj::with_status(&v, "restored"), all());
            same_outputs(src, &q);
        }
    }
}

#[test]
fn remote_config_commands_and_their_errors() {
    let b = Backend::dir();
    let p = project();
    add_remote(&p, &b, "cfg", true);
    let (code, out, _) = tsumugi(&p, &b, &["remote", "list"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("* team"), "{out}");
    let text = p.read(".tsumugi/config.toml");
    assert!(text.contains("default_remote = \"team\""), "{text}");
    let (code, _, err) = tsumugi(&p, &b, &["remote", "add", "team", "/tmp/x"]);
    assert_eq!(code, 2);
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = tsumugi(&p, &b, &["remote", "add", "g", "ftp://host/x"]);
    assert_eq!(code, 2);
    assert!(err.contains("ftp:// is not a supported store"), "{err}");
    let (code, _, err) = tsumugi(&p, &b, &["run", "p.yaml", "--remote", "nope"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no remote named nope") && err.contains("known: team"),
        "{err}"
    );
    let (code, _, _) = tsumugi(&p, &b, &["remote", "remove", "team"]);
    assert_eq!(code, 0);
    let (code, _, err) = tsumugi(&p, &b, &["push", "p.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("no default remote"), "{err}");

    // A directory remote that is not there (a share not mounted): a run goes on locally
    // with one warning and creates nothing; push fails and says why.
    let gone = b.url("not-mounted");
    p.write(
        ".tsumugi/config.toml",
        &format!("default_remote = \"nfs\"\n[remotes.nfs]\nurl = \"{gone}\"\n"),
    );
    let (code, v, err) = run(&p, &b, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(Proj::with_status(&v, "ran"), all());
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    assert!(
        err.contains("does not exist (a share not mounted?"),
        "{err}"
    );
    assert!(!std::path::Path::new(&gone).exists());
    let (code, _, err) = tsumugi(&p, &b, &["push", "p.yaml"]);
    assert_eq!(code, 2, "{err}");
    assert!(!p.read(".tsumugi/config.toml").contains("team"));
}

/// A per-item stage: its item manifest travels with it, so a clone that changes one item
/// runs that item only.
const MAP_PIPE: &str = r#"
name: captions
stages:
  caption:
    map: {glob: "data/images/*.png"}
    cmd: echo ${item.key} >> ran.log && tr a-z A-Z < ${item.path} > out/captions/${item.stem}.txt
    outs: out/captions/${item.stem}.txt
    merge: {out: out/captions.txt}
"#;

#[test]
fn a_map_stage_travels_with_its_items() {
    let b = Backend::dir();
    let p1 = Proj::new(MAP_PIPE);
    for i in 0..5 {
        p1.write(&format!("data/images/img_{i}.png"), &format!("image {i}\n"));
    }
    add_remote(&p1, &b, "map", true);
    assert_eq!(run(&p1, &b, &[]).0, 0);
    assert_eq!(p1.executions().len(), 5);

    let p2 = Proj::new(MAP_PIPE);
    for i in 0..5 {
        p2.write(&format!("data/images/img_{i}.png"), &format!("image {i}\n"));
    }
    p2.write(".tsumugi/config.toml", &p1.read(".tsumugi/config.toml"));
    let (code, v, err) = run(&p2, &b, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(Proj::with_status(&v, "restored"), sorted(&["caption"]));
    assert!(p2.executions().is_empty());
    assert_eq!(p2.read("out/captions.txt"), p1.read("out/captions.txt"));
    // One changed image: one item runs, the four others come from the fetched item manifest.
    p2.write("data/images/img_3.png", "changed\n");
    let (code, _, err) = run(&p2, &b, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(p2.executions(), vec!["img_3.png"], "{err}");
    assert!(p2.read("out/captions.txt").contains("CHANGED"));
}
