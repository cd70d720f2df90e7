//! The Slurm executor: a stage's work as one `sbatch` job per attempt.
//!
//! Only the launching differs from a local stage: outputs are cleared, fingerprinted,
//! committed, cached and recorded by the executor exactly as for a local stage. What
//! happens here (docs/slurm.md):
//!
//! - a batch script under `runs/<run>/slurm/` checks the run's token file (the project
//!   must be on a shared file system), runs the command (or `tsumugi __stage-exec REQUEST`
//!   for a built-in kind) in the project root, and writes its exit code to a file next to
//!   the script; the job's stdout/stderr go to a file there, tailed into the stage's log;
//! - state: ONE `squeue --jobs=…` per poll interval for all jobs of the run ([`Queue`]).
//!   There is no accounting database on the test cluster, so the exit code comes from the
//!   file the script writes, not `sacct`; a job that ended without one (cancelled, killed
//!   at `--time`, node failure, project not visible) fails with its Slurm state;
//! - cancellation and `timeout:` (enforced here too, not only by `--time`) → `scancel`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tsumugi_pipeline::{Action, Stage};
use tsumugi_stages::{Reporter, StageInput};

use crate::process::CommandFailed;

/// A line a built-in stage on the node prints to report a metric to the submitter.
const METRIC_MARK: &str = "##tsumugi-metric ";

/// Exit code of the batch script when the node cannot see the project directory.
pub const EXIT_NOT_SHARED: i32 = 97;

/// Job states of one run, refreshed by one `squeue` call per interval for all its jobs.
pub(crate) struct Queue {
    interval: Duration,
    inner: Mutex<QueueInner>,
}

#[derive(Default)]
struct QueueInner {
    active: BTreeSet<String>,
    states: HashMap<String, String>,
    last: Option<Instant>,
}

impl Queue {
    pub(crate) fn new() -> Queue {
        let ms = std::env::var("TSUMUGI_SLURM_POLL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500);
        Queue {
            interval: Duration::from_millis(ms),
            inner: Mutex::new(QueueInner::default()),
        }
    }

    fn add(&self, job: &str) {
        let mut q = self.inner.lock().expect("queue");
        q.active.insert(job.to_owned());
    }

    fn remove(&self, job: &str) {
        let mut q = self.inner.lock().expect("queue");
        q.active.remove(job);
        q.states.remove(job);
    }

    /// The job's Slurm state (`PENDING`, `RUNNING`, `COMPLETED`, …; `GONE` when squeue no
    /// longer knows it). The lock is held during the query, so however many stages ask,
    /// squeue runs at most once per interval.
    fn state(&self, job: &str) -> Option<String> {
        let mut q = self.inner.lock().expect("queue");
        if q.last.is_none_or(|t| t.elapsed() >= self.interval) && !q.active.is_empty() {
            let ids: Vec<&str> = q.active.iter().map(String::as_str).collect();
            let out = Command::new("squeue")
                .arg(format!("--jobs={}", ids.join(",")))
                .args(["--noheader", "--states=all", "--format=%i %T"])
                .output();
            q.last = Some(Instant::now());
            match out {
                Ok(o) if o.status.success() => {
                    let text = String::from_utf8_lossy(&o.stdout);
                    let mut seen: HashMap<String, String> = HashMap::new();
                    for line in text.lines() {
                        let mut it = line.split_whitespace();
                        if let (Some(id), Some(st)) = (it.next(), it.next()) {
                            seen.insert(id.to_owned(), st.to_owned());
                        }
                    }
                    let active: Vec<String> = q.active.iter().cloned().collect();
                    for id in active {
                        let st = seen.remove(&id).unwrap_or_else(|| "GONE".into());
                        q.states.insert(id, st);
                    }
                }
                // squeue fails for a list of only unknown (purged) jobs.
                Ok(o) if String::from_utf8_lossy(&o.stderr).contains("Invalid job id") => {
                    let active: Vec<String> = q.active.iter().cloned().collect();
                    for id in active {
                        q.states.insert(id, "GONE".into());
                    }
                }
                Ok(o) => tracing::warn!(
                    "squeue failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => tracing::warn!("cannot run squeue: {e}"),
            }
        }
        q.states.get(job).cloned()
    }
}

fn terminal(state: &str) -> bool {
    !matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "REQUEUED"
            | "RESIZING"
            | "SUSPENDED"
            | "STAGE_OUT"
            | "SIGNALING"
            | "REQUEUE_HOLD"
            | "REQUEUE_FED"
    )
}

/// A built-in stage, serialized for `tsumugi __stage-exec` on the node.
#[derive(Debug, Serialize, Deserialize)]
pub struct StageRequest {
    pub name: String,
    pub kind: String,
    pub project_root: PathBuf,
    pub with: serde_json::Value,
    pub outs: BTreeMap<String, PathBuf>,
    pub env: BTreeMap<String, String>,
    pub device: String,
}

/// Writes a request file: the SHA-256 of the JSON on the first line, the JSON after it.
fn write_request(path: &Path, req: &StageRequest) -> Result<()> {
    let json = serde_json::to_vec(req)?;
    let mut text = tsumugi_store::hash::sha256_hex(&json).into_bytes();
    text.push(b'\n');
    text.extend_from_slice(&json);
    tsumugi_base::atomic::write_atomic(path, &text)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `tsumugi __stage-exec REQUEST`: runs one built-in stage from a request file whose hash
/// is checked first (a truncated or edited request is refused, never half-run).
pub fn run_request(path: &Path) -> Result<()> {
    let text = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let nl = text
        .iter()
        .position(|b| *b == b'\n')
        .with_context(|| format!("{}: expected a SHA-256 line then JSON", path.display()))?;
    let (want, json) = (String::from_utf8_lossy(&text[..nl]), &text[nl + 1..]);
    let got = tsumugi_store::hash::sha256_hex(json);
    if want.trim() != got {
        bail!(
            "{}: request hash mismatch (file says {}, content hashes to {got}); refusing to run it",
            path.display(),
            want.trim()
        );
    }
    let req: StageRequest = serde_json::from_slice(json)
        .with_context(|| format!("{}: not a stage request", path.display()))?;
    let imp = crate::process::builtin_stage(&req.kind).with_context(|| {
        format!(
            "stage kind {} is not available in this build on the node",
            req.kind
        )
    })?;
    let input = StageInput {
        name: &req.name,
        project_root: &req.project_root,
        with: &req.with,
        outs: &req.outs,
        env: &req.env,
        device: &req.device,
    };
    imp.run(&input, &PrintReporter)
}

/// The node side's reporter: log lines and metrics on stdout (the job's output file).
struct PrintReporter;

impl Reporter for PrintReporter {
    fn progress(&self, _done: u64, _total: Option<u64>, _message: &str) {}
    fn metric(&self, name: &str, step: Option<u64>, value: f64) {
        let m = serde_json::json!({"name": name, "step": step, "value": value});
        println!("{METRIC_MARK}{m}");
    }
    fn log(&self, line: &str) {
        println!("{line}");
    }
    fn cancelled(&self) -> bool {
        false
    }
}

fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The per-run directory and shared-FS token, made once per run.
pub(crate) struct RunDir {
    dir: PathBuf,
    token_file: PathBuf,
    token: String,
}

static TOKENS: OnceLock<Mutex<HashMap<PathBuf, (PathBuf, String)>>> = OnceLock::new();

impl RunDir {
    fn new(root: &Path, run_id: &str) -> Result<RunDir> {
        let dir = root.join("runs").join(run_id).join("slurm");
        let mut map = TOKENS.get_or_init(Default::default).lock().expect("tokens");
        let (token_file, token) = match map.get(&dir) {
            Some(t) => t.clone(),
            None => {
                fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                let token = tsumugi_store::hash::sha256_hex(
                    format!("{run_id}{:?}{}", Instant::now(), std::process::id()).as_bytes(),
                );
                let file = dir.join("shared-fs-token");
                tsumugi_base::atomic::write_atomic(&file, token.as_bytes())
                    .with_context(|| format!("cannot write {}", file.display()))?;
                map.insert(dir.clone(), (file.clone(), token.clone()));
                (file, token)
            }
        };
        Ok(RunDir {
            dir,
            token_file,
            token,
        })
    }
}

/// The sbatch options of a stage: resources, timeout, the `slurm:` settings.
pub fn sbatch_options(stage: &Stage) -> Vec<String> {
    let mut o = Vec::new();
    if stage.resources.gpu > 0 {
        o.push(format!("--gres=gpu:{}", stage.resources.gpu));
    }
    if stage.resources.cpu > 0 {
        o.push(format!("--cpus-per-task={}", stage.resources.cpu));
    }
    if stage.resources.mem_mb > 0 {
        o.push(format!("--mem={}M", stage.resources.mem_mb));
    }
    if let Some(t) = stage.timeout {
        // Slurm's limit is in whole minutes; tsumugi enforces the exact one itself.
        o.push(format!("--time={}", t.as_secs().div_ceil(60).max(1)));
    }
    let s = &stage.exec.slurm;
    if let Some(p) = &s.partition {
        o.push(format!("--partition={p}"));
    }
    if let Some(a) = &s.account {
        o.push(format!("--account={a}"));
    }
    if let Some(x) = &s.qos {
        o.push(format!("--qos={x}"));
    }
    o
}

/// Runs one attempt of `stage` as a Slurm job and waits for it.
pub(crate) fn run_stage(
    queue: &Queue,
    run_id: &str,
    stage: &Stage,
    input: &StageInput<'_>,
    report: &dyn Reporter,
    attempt: u32,
) -> Result<()> {
    // Absolute: the script runs on another machine, from wherever Slurm starts it.
    let root_abs = input
        .project_root
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", input.project_root.display()))?;
    let root = root_abs.as_path();
    let rd = RunDir::new(root, run_id)?;
    let base = rd
        .dir
        .join(format!("{}.{attempt}", stage.name.replace(['/', '@'], "_")));
    let out_file = base.with_extension(format!("{attempt}.out"));
    let exit_file = base.with_extension(format!("{attempt}.exit"));
    let script_file = base.with_extension(format!("{attempt}.sbatch"));
    for f in [&out_file, &exit_file] {
        let _ = fs::remove_file(f);
    }
    let body = match &stage.action {
        Action::Cmd { cmd } => {
            let mut b = String::new();
            for (k, v) in input.env {
                b.push_str(&format!("export {k}={}\n", q(v)));
            }
            b.push_str(&format!("sh -c {}\n", q(cmd)));
            b
        }
        Action::Builtin { kind, .. } => {
            let req = StageRequest {
                name: stage.name.clone(),
                kind: kind.clone(),
                project_root: root.to_path_buf(),
                with: input.with.clone(),
                outs: input.outs.clone(),
                env: input.env.clone(),
                device: input.device.to_owned(),
            };
            let req_file = base.with_extension(format!("{attempt}.request"));
            write_request(&req_file, &req)?;
            let bin = match std::env::var_os("TSUMUGI_BIN") {
                Some(b) => PathBuf::from(b),
                None => std::env::current_exe().context("cannot find the tsumugi binary")?,
            };
            format!(
                "{} __stage-exec {}\n",
                q(&bin.to_string_lossy()),
                q(&req_file.to_string_lossy())
            )
        }
    };
    let mut script = String::from("#!/bin/sh\n");
    script.push_str(&format!("#SBATCH --job-name=tsumugi-{}\n", stage.name));
    script.push_str(&format!("#SBATCH --output={}\n", out_file.display()));
    for o in sbatch_options(stage) {
        script.push_str(&format!("#SBATCH {o}\n"));
    }
    let tf = q(&rd.token_file.to_string_lossy());
    script.push_str(&format!(
        "if [ \"$(cat {tf} 2>/dev/null)\" != {tok} ]; then\n  echo \"tsumugi: the project directory is not visible on node $(hostname): token file {tfp} is missing or differs (it must be on a shared file system, see docs/slurm.md)\"\n  code={EXIT_NOT_SHARED}\nelse\n  cd {root} || exit {EXIT_NOT_SHARED}\n  (\n{body}  )\n  code=$?\nfi\nprintf '%s\\n' \"$code\" > {ex}.tmp && mv {ex}.tmp {ex}\nexit \"$code\"\n",
        tok = q(&rd.token),
        tfp = rd.token_file.display(),
        root = q(&root.to_string_lossy()),
        ex = q(&exit_file.to_string_lossy()),
    ));
    tsumugi_base::atomic::write_atomic(&script_file, script.as_bytes())
        .with_context(|| format!("cannot write {}", script_file.display()))?;

    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(&stage.exec.slurm.extra)
        .arg(&script_file)
        .current_dir(root)
        .output()
        .context("cannot run sbatch (is Slurm installed and on PATH?)")?;
    if !out.status.success() {
        bail!(
            "sbatch failed for {}: {}",
            script_file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let job = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();
    report.log(&format!(
        "--- tsumugi: slurm job {job} ({}) ---",
        script_file.display()
    ));
    queue.add(&job);
    let res = wait_job(queue, &job, &out_file, &exit_file, report);
    queue.remove(&job);
    res
}

fn wait_job(
    queue: &Queue,
    job: &str,
    out_file: &Path,
    exit_file: &Path,
    report: &dyn Reporter,
) -> Result<()> {
    let mut tail = Tail {
        path: out_file,
        pos: 0,
        partial: Vec::new(),
    };
    let mut cancelled_at: Option<Instant> = None;
    let state = loop {
        tail.pump(report);
        if report.cancelled() && cancelled_at.is_none() {
            let _ = Command::new("scancel").arg(job).status();
            cancelled_at = Some(Instant::now());
        }
        if let Some(st) = queue.state(job)
            && terminal(&st)
        {
            break st;
        }
        if exit_file.exists() && cancelled_at.is_none() {
            // The script is done; squeue catches up on the next interval.
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The exit file is written before the job ends; allow a shared FS a moment to show it.
    let until = Instant::now() + Duration::from_secs(if cancelled_at.is_some() { 0 } else { 5 });
    let code = loop {
        if let Ok(t) = fs::read_to_string(exit_file) {
            break t.trim().parse::<i32>().ok();
        }
        if Instant::now() >= until {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    tail.pump(report);
    tail.finish(report);
    if cancelled_at.is_some() {
        bail!("slurm job {job} cancelled ({state})");
    }
    match code {
        Some(0) => Ok(()),
        Some(EXIT_NOT_SHARED) => Err(CommandFailed {
            code: Some(EXIT_NOT_SHARED),
            what: format!(
                "slurm job {job}: the node cannot see the project directory (shared file system check failed, see {})",
                out_file.display()
            ),
        }
        .into()),
        Some(c) => Err(CommandFailed {
            code: Some(c),
            what: format!("slurm job {job}: command exited with status {c}"),
        }
        .into()),
        None => Err(CommandFailed {
            code: None,
            what: format!(
                "slurm job {job} ended {state} without writing {} (killed, out of time, or the node cannot see the project directory)",
                exit_file.display()
            ),
        }
        .into()),
    }
}

/// Follows the job's output file, line by line, into the stage's log.
struct Tail<'a> {
    path: &'a Path,
    pos: u64,
    partial: Vec<u8>,
}

impl Tail<'_> {
    fn pump(&mut self, report: &dyn Reporter) {
        let Ok(mut f) = fs::File::open(self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if let Ok(n) = f.read_to_end(&mut buf) {
            self.pos += n as u64;
            self.partial.extend_from_slice(&buf);
            while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.partial.drain(..=i).collect();
                emit(&String::from_utf8_lossy(&line), report);
            }
        }
    }

    fn finish(&mut self, report: &dyn Reporter) {
        if !self.partial.is_empty() {
            let line = String::from_utf8_lossy(&self.partial).into_owned();
            emit(&line, report);
            self.partial.clear();
        }
    }
}

fn emit(line: &str, report: &dyn Reporter) {
    let line = line.trim_end_matches(['\n', '\r']);
    if let Some(m) = line.strip_prefix(METRIC_MARK)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(m)
        && let (Some(name), Some(value)) = (v["name"].as_str(), v["value"].as_f64())
    {
        report.metric(name, v["step"].as_u64(), value);
        return;
    }
    report.log(line);
}
