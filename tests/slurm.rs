//! The Slurm executor against a real one-node Slurm (scripts/slurm-local.sh starts it:
//! munged, slurmctld, slurmd on localhost). Without `sbatch` on PATH these tests say why
//! and pass, unless TSUMUGI_REQUIRE_SLURM=1 (CI), where that is a failure.

mod engine_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use engine_support::Proj;

/// True when a cluster is up (started here if needed); false (test skipped) without Slurm.
fn slurm() -> bool {
    static UP: OnceLock<bool> = OnceLock::new();
    *UP.get_or_init(|| {
        let have = Command::new("sh")
            .args(["-c", "command -v sbatch"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            assert!(
                std::env::var("TSUMUGI_REQUIRE_SLURM").as_deref() != Ok("1"),
                "TSUMUGI_REQUIRE_SLURM=1 but sbatch is not on PATH (apt-get install -y slurm-wlm munge)"
            );
            eprintln!("skipped: sbatch not on PATH (apt-get install -y slurm-wlm munge)");
            return false;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-local.sh");
        let out = Command::new(script).arg("start").output().unwrap();
        assert!(
            out.status.success(),
            "scripts/slurm-local.sh start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        true
    })
}

fn run(p: &Proj, args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut a = vec!["--executor", "slurm"];
    a.extend_from_slice(args);
    p.run(&a)
}

/// Slurm job ids the run's stage logs name (`--- tsumugi: slurm job N …`).
fn job_ids(p: &Proj) -> Vec<String> {
    let mut ids = Vec::new();
    for e in walk(&p.path("runs")) {
        if e.extension().is_some_and(|x| x == "log") {
            for l in std::fs::read_to_string(&e).unwrap_or_default().lines() {
                // The submission line (`… job N (script) ---`), not a failure message.
                if let Some(rest) = l.strip_prefix("--- tsumugi: slurm job ")
                    && let Some(id) = rest.split_whitespace().next()
                    && id.bytes().all(|b| b.is_ascii_digit())
                {
                    ids.push(id.to_string());
                }
            }
        }
    }
    ids.sort();
    ids
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                v.extend(walk(&p));
            } else {
                v.push(p);
            }
        }
    }
    v
}

/// Jobs among `ids` that Slurm still has pending, running or completing.
fn active(ids: &[String]) -> Vec<String> {
    let out = Command::new("squeue")
        .arg(format!("--jobs={}", ids.join(",")))
        .args(["--noheader", "--states=PD,R,CG,CF,S", "--format=%i"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn scontrol(job: &str) -> String {
    let out = Command::new("scontrol")
        .args(["show", "job", job])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const DIAMOND: &str = r#"
name: diamond
stages:
  src:
    cmd: echo src >> ran.log && printf 'q1\td1\t1\nq2\td2\t0\nq3\td3\t1\n' > data/pairs.tsv
    outs: [data/pairs.tsv]
  pairs:
    uses: build-pairs
    with:
      input: ${stages.src.outs.data/pairs.tsv}
      text_a: 0
      text_b: 1
      label: 2
      split: {dev: 0.0, test: 0.0}
  count:
    cmd: echo count >> ran.log && wc -l < data/pairs.tsv > out/count.txt
    deps: [data/pairs.tsv]
    outs: [out/count.txt]
  join:
    cmd: echo join >> ran.log && cat ${stages.pairs.outs.train} out/count.txt > out/join.txt
    outs: [out/join.txt]
"#;

#[test]
fn a_diamond_of_command_and_builtin_stages_runs_through_slurm_then_is_cached() {
    if !slurm() {
        return;
    }
    let p = Proj::new(DIAMOND);
    let (code, v, err) = run(&p, &[]);
    assert_eq!(code, 0, "{err}\n{v}");
    assert_eq!(
        Proj::with_status(&v, "ran"),
        ["count", "join", "pairs", "src"]
    );
    // Every stage was a Slurm job (the built-in through `tsumugi __stage-exec`).
    assert_eq!(job_ids(&p).len(), 4, "{:?}", job_ids(&p));
    let join = p.read("out/join.txt");
    assert!(
        join.contains("\"text_a\":\"q3\"") && join.ends_with("3\n"),
        "{join}"
    );
    // The built-in's metrics output is recorded as locally.
    assert!(p.path("out/diamond/pairs/stats.json").exists());

    let (code, v, err) = run(&p, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        Proj::with_status(&v, "cached"),
        ["count", "join", "pairs", "src"]
    );
    // A result computed on Slurm is a cache hit for the local executor too.
    let (code, v, _) = p.run(&[]);
    assert_eq!(code, 0);
    assert_eq!(Proj::with_status(&v, "cached").len(), 4);
    // Each command ran once, in the first run only.
    let mut ex = p.executions();
    ex.sort();
    assert_eq!(ex, ["count", "join", "src"]);
}

#[test]
fn a_failing_job_is_reported_with_its_exit_code_and_log() {
    if !slurm() {
        return;
    }
    let p = Proj::new(
        r#"
name: f
stages:
  boom:
    cmd: echo "about to fail on $(hostname)"; echo oops >&2; exit 7
    outs: [out/x]
"#,
    );
    let (code, v, err) = run(&p, &[]);
    assert_ne!(code, 0, "{err}");
    let st = &v["stages"][0];
    assert_eq!(st["status"], "failed", "{v}");
    let text = st.to_string();
    assert!(text.contains("status 7"), "{text}");
    let log = std::fs::read_to_string(
        walk(&p.path("runs"))
            .into_iter()
            .find(|f| f.file_name().is_some_and(|n| n == "boom.log"))
            .expect("boom.log"),
    )
    .unwrap();
    assert!(
        log.contains("about to fail on") && log.contains("oops"),
        "{log}"
    );
}

#[test]
fn a_timeout_cancels_the_job() {
    if !slurm() {
        return;
    }
    let p = Proj::new(
        r#"
name: t
stages:
  slow:
    cmd: sleep 120; touch out/x
    outs: [out/x]
    timeout: 2s
"#,
    );
    let (code, v, err) = run(&p, &[]);
    assert_ne!(code, 0, "{err}");
    assert!(v.to_string().contains("timed out"), "{v}");
    let ids = job_ids(&p);
    assert_eq!(ids.len(), 1);
    assert!(active(&ids).is_empty(), "job still in squeue: {ids:?}");
}

#[test]
fn ctrl_c_cancels_every_job_of_the_run() {
    if !slurm() {
        return;
    }
    let p = Proj::new(
        r#"
name: c
stages:
  one:
    cmd: sleep 300; touch out/1
    outs: [out/1]
  two:
    cmd: sleep 300; touch out/2
    outs: [out/2]
"#,
    );
    let mut child = Command::new(Proj::bin())
        .current_dir(p.root())
        .args(["run", "p.yaml", "--executor", "slurm", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded, not timed) until both jobs are submitted and running.
    let until = Instant::now() + Duration::from_secs(60);
    let ids = loop {
        let ids = job_ids(&p);
        if ids.len() == 2 && active(&ids).len() == 2 {
            break ids;
        }
        assert!(Instant::now() < until, "jobs never started: {ids:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(active(&ids).is_empty(), "jobs left in squeue: {ids:?}");
}

#[test]
fn a_gpu_resource_is_requested_as_gres() {
    if !slurm() {
        return;
    }
    let p = Proj::new(
        r#"
name: g
stages:
  train:
    cmd: echo trained > out/m
    outs: [out/m]
    resources: {gpu: 1, cpu: 2, mem: 1G}
"#,
    );
    let (code, _, err) = run(&p, &[]);
    assert_eq!(code, 0, "{err}");
    let ids = job_ids(&p);
    let show = scontrol(&ids[0]);
    assert!(show.contains("gres:gpu:1"), "{show}");
    assert!(
        show.contains("NumCPUs=2") || show.contains("MinCPUsNode=2"),
        "{show}"
    );
}

#[test]
fn a_node_that_cannot_see_the_project_fails_with_a_message_naming_the_token_file() {
    if !slurm() {
        return;
    }
    let p = Proj::new(
        r#"
name: s
stages:
  shared:
    cmd: echo ran >> ran.log
"#,
    );
    let (code, _, err) = run(&p, &[]);
    assert_eq!(code, 0, "{err}");
    // What a node with another (unshared) copy of the directory would see: a token that
    // is not the submitter's. Resubmit the generated script as it is.
    let files = walk(&p.path("runs"));
    let token = files
        .iter()
        .find(|f| f.ends_with("slurm/shared-fs-token"))
        .unwrap();
    std::fs::write(token, "another machine's token").unwrap();
    let script = files
        .iter()
        .find(|f| f.extension().is_some_and(|x| x == "sbatch"))
        .unwrap();
    let out_file = script.with_extension("out");
    let exit_file = script.with_extension("exit");
    std::fs::remove_file(&exit_file).unwrap();
    let st = Command::new("sbatch")
        .args(["--parsable", "--wait"])
        .arg(script)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success());
    assert_eq!(std::fs::read_to_string(&exit_file).unwrap().trim(), "97");
    let out = std::fs::read_to_string(&out_file).unwrap();
    assert!(
        out.contains("not visible on node") && out.contains(&token.display().to_string()),
        "{out}"
    );
    assert_eq!(p.executions(), ["ran"]);
}

#[test]
fn bad_executor_settings_are_positioned_errors() {
    let p = Proj::new(
        "name: x\nexecutor: ssh\nslurm: {partition: 3, qoss: a}\nstages:\n  a:\n    cmd: \"true\"\n    executor: 1\n",
    );
    let out = p.cmd().args(["validate", "p.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "p.yaml:2:11: invalid executor 'ssh' for the pipeline's 'executor' (expected local or slurm)",
        "p.yaml:3:20: expected a non-empty string for 'slurm.partition' of the pipeline",
        "p.yaml:3:23: unknown key 'qoss' in 'slurm' of the pipeline",
        "p.yaml:7:15: expected a string (local or slurm) for 'executor' of stage 'a'",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    let out = p
        .cmd()
        .args(["run", "p.yaml", "--executor", "ssh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected local or slurm"));
}

#[test]
fn a_retry_is_a_new_submission() {
    if !slurm() {
        return;
    }
    let p = Proj::new(
        r#"
name: r
stages:
  flaky:
    cmd: if [ -f seen ]; then echo ok > out/r; else touch seen; exit 3; fi
    outs: [out/r]
    retry: {attempts: 1, backoff: 0s}
"#,
    );
    let (code, v, err) = run(&p, &[]);
    assert_eq!(code, 0, "{err}\n{v}");
    assert_eq!(Proj::with_status(&v, "ran"), ["flaky"]);
    let ids = job_ids(&p);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_ne!(ids[0], ids[1]);
}
