//! Runs a pipeline: the selected stages in topological order, independent ones in parallel
//! up to `jobs`, under `resources` slots; fresh stages are skipped or restored from cache.
//!
//! A stage is *fresh* iff its fingerprint has an action cache entry. Its fingerprint is
//! computed only when all its upstream stages are done, from the *content* of their
//! outputs, so an upstream re-run that wrote identical bytes leaves it fresh (early cutoff).
//!
//! Failure policy: without `--keep-going`, the first failure stops scheduling new stages;
//! stages already running are allowed to finish (their work is valid and gets cached), and
//! the rest are recorded as `skipped`. With `--keep-going`, only the failed stage's
//! dependents are skipped. Ctrl-C (or SIGTERM) kills every running stage's process group,
//! records those stages as `cancelled`, writes no cache entry for them, and returns with
//! `cancelled` set (the CLI exits 130).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tsumugi_stages::StageInput;

use tsumugi_base::atomic::remove_path;
use tsumugi_base::lock::{ProjectLock, Wait};
use tsumugi_base::paths::path_str;
use tsumugi_base::project::Project;
use tsumugi_base::safepath;
use tsumugi_pipeline::graph::{Dag, Selection};
use tsumugi_pipeline::{Action, Pipeline, Stage};
use tsumugi_rundb::{self, MetricRow, RunDb, StageRecord};
use tsumugi_store::cache::{Cache, RestoreError};
use tsumugi_store::fingerprint::{self, Components};
use tsumugi_store::hash::{Hasher, StatCache};

use crate::commit::{apply_registration, commit, record_outputs, register_outcome};
use crate::ctx::Ctx;
use crate::freshness::{Freshness, Restore, Verdict};
use crate::process::stage_impl;
use crate::slots::{SlotPool, SlotState};
use crate::status::status_of;
use crate::ui::{StageReporter, Ui};

pub use crate::commit::read_metrics;
pub use crate::outcome::{
    ProgressMode, RunOptions, RunSummary, StageOutcome, StageState, StageStatus, TriggerKind,
};
pub use crate::process::{CmdStage, CommandFailed, builtin_stage};
pub use crate::slots::detect_gpus;
pub use crate::slurm::{StageRequest, run_request as run_stage_request, sbatch_options};
pub use crate::status::status;

/// Stages of `pipeline` to consider: `targets` and all they need (every stage when there
/// are none), in the graph's one topological order (file order where the graph allows).
pub fn select(pipeline: &Pipeline, targets: &[String]) -> Result<Selection> {
    let dag = Dag::build(pipeline)?;
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    Ok(dag.select(&targets)?)
}

fn new_run_id() -> String {
    let t = chrono::Utc::now();
    let nanos = t.timestamp_subsec_nanos();
    let salt = (std::process::id() as u64).wrapping_mul(0x9E37_79B9) ^ nanos as u64;
    format!("{}-{:04x}", t.format("%Y%m%d-%H%M%S"), salt & 0xffff)
}

/// Runs `pipeline` (or `opts.targets` and what they need). Takes the project lock for the
/// whole run. Errors are for things that stop the run from starting or recording (bad
/// targets, lock refused, unwritable database); stage failures are in the summary.
pub async fn run(project: &Project, pipeline: &Pipeline, opts: &RunOptions) -> Result<RunSummary> {
    let t0 = Instant::now();
    let selection = select(pipeline, &opts.targets)?;
    let order = selection.order();
    if opts.dry_run {
        let st = status_of(project, pipeline, order, &opts.forced(order))?;
        let stages = st
            .into_iter()
            .map(|s| StageOutcome {
                name: s.name,
                status: if s.fresh {
                    StageState::Cached
                } else {
                    StageState::WouldRun
                },
                fingerprint: s.fingerprint,
                duration: Duration::ZERO,
                attempts: 0,
                exit_code: None,
                log: None,
                message: (!s.reasons.is_empty()).then(|| s.reasons.join("; ")),
                registration: None,
            })
            .collect();
        return Ok(RunSummary {
            run_id: String::new(),
            pipeline: pipeline.name.clone(),
            stages,
            success: true,
            cancelled: false,
            duration: t0.elapsed(),
        });
    }

    let lock_desc = format!(
        "tsumugi {} {}",
        if opts.trigger == TriggerKind::Manual {
            "run"
        } else {
            opts.trigger.as_str()
        },
        pipeline.file.display()
    );
    let wait = if opts.wait_for_lock {
        Wait::Yes
    } else {
        Wait::No
    };
    let lp = project.clone();
    let _lock =
        tokio::task::spawn_blocking(move || ProjectLock::acquire(&lp, &lock_desc, wait)).await??;

    let run_id = new_run_id();
    tsumugi_base::supervise::set_current_run(&run_id);
    let db = RunDb::start(project)?;
    db.begin_run(
        &run_id,
        &pipeline.name,
        &path_str(&pipeline.file),
        opts.trigger.as_str(),
        &opts.targets,
    );
    db.run_params(
        &run_id,
        tsumugi_rundb::experiments::RunParams {
            exp: opts.exp.clone(),
            overrides: opts.overrides.clone(),
            params: order
                .iter()
                .filter_map(|n| pipeline.stage(n))
                .flat_map(|s| {
                    s.params
                        .iter()
                        .map(|(k, v)| (s.name.clone(), k.clone(), v.clone()))
                })
                .collect(),
        },
    );
    let params_yaml = write_params_yaml(project, &run_id, pipeline)?;
    let ctx = Arc::new(Ctx {
        project: project.clone(),
        pipeline_name: pipeline.name.clone(),
        run_id: run_id.clone(),
        cache: Cache::new(project.cache_dir()),
        stat: StatCache::load(&project.cache_dir().join("statcache.bin")),
        db,
        cancel: opts.cancel.clone(),
        forced: opts.forced(order),
        device: opts.device.clone(),
        jobs: match opts.jobs {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            j => j,
        },
        ui: Ui::with_interval(opts.progress, opts.progress_interval),
        executor: opts.executor,
        slurm: crate::slurm::Queue::new(),
        keep_going: opts.keep_going,
        stop: AtomicBool::new(false),
        stop_reason: Mutex::new(String::new()),
        registry: Mutex::new(()),
        remote: opts.remote.clone(),
        params_yaml,
    });

    let outcomes = schedule(&ctx, pipeline, &selection, opts).await;

    let cancelled = ctx.cancel.load(Ordering::SeqCst);
    let success = !cancelled && outcomes.iter().all(|o| o.status.is_ok());
    let status = if cancelled {
        "cancelled"
    } else if success {
        "success"
    } else {
        "failed"
    };
    if let Err(e) = ctx.stat.save() {
        tracing::warn!("could not save the stat cache: {e:#}");
    }
    ctx.db.end_run(&run_id, status);
    let ctx = Arc::into_inner(ctx).expect("all stage tasks have finished");
    ctx.db.close()?;
    Ok(RunSummary {
        run_id,
        pipeline: pipeline.name.clone(),
        stages: outcomes,
        success,
        cancelled,
        duration: t0.elapsed(),
    })
}

/// Writes `runs/<run>/params.yaml`: every params-file key the pipeline's stages use, with
/// its effective value (after `-S` overrides), all files merged into one document shaped
/// like params.yaml. A command that reads params.yaml itself reads this file instead when
/// `TSUMUGI_PARAMS` is set, and so sees the overrides. Not written when no stage lists
/// file params.
fn write_params_yaml(
    project: &Project,
    run_id: &str,
    pipeline: &Pipeline,
) -> Result<Option<std::path::PathBuf>> {
    if pipeline.param_files.is_empty() {
        return Ok(None);
    }
    let mut doc = serde_json::Value::Object(Default::default());
    for v in pipeline.param_files.values() {
        tsumugi_pipeline::params_file::merge(&mut doc, v);
    }
    // Absolute: an experiment's workspace runs its commands elsewhere than runs/ is.
    let path = std::path::absolute(project.runs_dir().join(run_id).join("params.yaml"))?;
    std::fs::create_dir_all(path.parent().expect("under runs/"))?;
    tsumugi_base::atomic::write_atomic(
        &path,
        tsumugi_pipeline::params_file::to_yaml(&doc).as_bytes(),
    )?;
    Ok(Some(path))
}

async fn schedule(
    ctx: &Arc<Ctx>,
    pipeline: &Pipeline,
    selection: &Selection,
    opts: &RunOptions,
) -> Vec<StageOutcome> {
    let order = selection.order();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let gpus = opts
        .gpu_ids
        .clone()
        .unwrap_or_else(|| detect_gpus(opts.gpus));
    let pool = Arc::new(SlotPool {
        cpu_total: cores as u32,
        gpu_total: gpus.len(),
        state: Mutex::new(SlotState {
            jobs_free: if opts.jobs == 0 { cores } else { opts.jobs },
            cpu_free: cores as u32,
            gpus_free: gpus,
            deciding: Default::default(),
            waiters: BTreeMap::new(),
        }),
        notify: tokio::sync::Notify::new(),
    });
    // Freshness checks hash inputs; a few at a time per core keeps the disk busy without
    // flooding the blocking pool.
    let checks = Arc::new(tokio::sync::Semaphore::new(4 * cores));
    let index: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    // Edges from the graph's selection: how many stages each waits for, and who waits.
    let mut waiting: HashMap<&str, usize> = order
        .iter()
        .map(|n| (n.as_str(), selection.needs(n).len()))
        .collect();
    let down: HashMap<&str, Vec<&str>> = order
        .iter()
        .map(|n| {
            let d = selection.needed_by(n).iter().map(String::as_str).collect();
            (n.as_str(), d)
        })
        .collect();
    let mut ready: VecDeque<&str> = order
        .iter()
        .map(String::as_str)
        .filter(|n| waiting[n] == 0)
        .collect();
    let mut done: HashMap<String, StageOutcome> = HashMap::new();
    let mut running = tokio::task::JoinSet::new();

    let ctrl_c = async {
        if opts.handle_signals {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        } else {
            std::future::pending::<()>().await
        }
    };
    tokio::pin!(ctrl_c);
    let mut signalled = false;
    let mut tick = tokio::time::interval(Duration::from_millis(50));

    loop {
        if ctx.cancel.load(Ordering::SeqCst) {
            ctx.stop.store(true, Ordering::SeqCst);
        }
        // Everything ready starts its check now; slots are taken inside, if it must execute.
        while let Some(n) = ready.pop_front() {
            if ctx.stop.load(Ordering::SeqCst) {
                break;
            }
            let st = pipeline.stage(n).expect("stage");
            let gpu_need = st.resources.gpu as usize;
            // A Slurm stage's GPUs are the cluster's (`--gres`), not this machine's.
            if gpu_need > pool.gpu_total && !crate::launch::launcher(ctx, st).is_remote() {
                let o = outcome(
                    n,
                    StageState::Failed,
                    None,
                    format!(
                        "stage needs {gpu_need} GPU(s) but {} are available (none detected via CUDA_VISIBLE_DEVICES or nvidia-smi; pass --gpus N to override)",
                        pool.gpu_total
                    ),
                );
                ctx.ui.finished(&o);
                record_final(ctx, &o, None);
                finish(ctx, o, &mut done, &down, opts.keep_going);
                continue;
            }
            let st = st.clone();
            let (c, p, k) = (ctx.clone(), pool.clone(), checks.clone());
            let i = index[n];
            pool.start_deciding(i);
            running.spawn(async move {
                let o = run_stage(c, st, i, p.clone(), k).await;
                p.done_deciding(i);
                o
            });
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            joined = running.join_next() => {
                let Some(joined) = joined else { continue };
                let o = match joined {
                    Ok(o) => o,
                    Err(e) => {
                        // Only a panic gets here; its stage is recorded as skipped below.
                        tracing::error!("stage task panicked: {e}");
                        continue;
                    }
                };
                ctx.ui.finished(&o);
                let ok = o.status.is_ok();
                let name = o.name.clone();
                finish(ctx, o, &mut done, &down, opts.keep_going);
                if ok {
                    for d in down.get(name.as_str()).into_iter().flatten() {
                        let w = waiting.get_mut(d).expect("waiting");
                        *w -= 1;
                        if *w == 0 && !done.contains_key(*d) {
                            ready.push_back(d);
                        }
                    }
                }
            }
            _ = &mut ctrl_c, if !signalled => {
                signalled = true;
                ctx.cancel.store(true, Ordering::SeqCst);
                ctx.ui.println("interrupted: stopping running stages…");
            }
            _ = tick.tick() => {}
        }
    }
    // Whatever never started.
    let cancelled = ctx.cancel.load(Ordering::SeqCst);
    let reason = if cancelled {
        "run cancelled".to_string()
    } else {
        ctx.stop_reason.lock().expect("reason").clone()
    };
    for n in order {
        if !done.contains_key(n) {
            let o = outcome(
                n,
                StageState::Skipped,
                None,
                if reason.is_empty() {
                    "not started".into()
                } else {
                    reason.clone()
                },
            );
            ctx.ui.finished(&o);
            record_final(ctx, &o, None);
            done.insert(n.clone(), o);
        }
    }
    order
        .iter()
        .map(|n| done.remove(n).expect("every stage has an outcome"))
        .collect()
}

/// Records a finished stage; a failure stops the run (without --keep-going) and skips,
/// transitively, everything downstream of it.
fn finish(
    ctx: &Ctx,
    o: StageOutcome,
    done: &mut HashMap<String, StageOutcome>,
    down: &HashMap<&str, Vec<&str>>,
    keep_going: bool,
) {
    let ok = o.status.is_ok();
    let name = o.name.clone();
    let status = o.status;
    done.insert(name.clone(), o);
    if ok {
        return;
    }
    if !keep_going && !ctx.stop.swap(true, Ordering::SeqCst) {
        *ctx.stop_reason.lock().expect("reason") =
            format!("run stopped after stage {name} {}", status.as_str());
    }
    let mut q: VecDeque<(String, String)> = down
        .get(name.as_str())
        .into_iter()
        .flatten()
        .map(|d| (d.to_string(), name.clone()))
        .collect();
    while let Some((d, up)) = q.pop_front() {
        if done.contains_key(&d) {
            continue;
        }
        let up_status = done[&up].status.as_str();
        let o = outcome(
            &d,
            StageState::Skipped,
            None,
            format!("upstream stage {up} {up_status}"),
        );
        ctx.ui.finished(&o);
        record_final(ctx, &o, None);
        done.insert(d.clone(), o);
        q.extend(
            down.get(d.as_str())
                .into_iter()
                .flatten()
                .map(|x| (x.to_string(), d.clone())),
        );
    }
}

fn outcome(name: &str, status: StageState, fp: Option<String>, msg: String) -> StageOutcome {
    StageOutcome {
        name: name.to_string(),
        status,
        fingerprint: fp,
        duration: Duration::ZERO,
        attempts: 0,
        exit_code: None,
        log: None,
        message: Some(msg),
        registration: None,
    }
}

fn record_final(ctx: &Ctx, o: &StageOutcome, started: Option<chrono::DateTime<chrono::Utc>>) {
    let end = tsumugi_base::time::now();
    ctx.db.stage_finished(
        &ctx.run_id,
        StageRecord {
            stage: o.name.clone(),
            status: o.status.as_str().to_string(),
            fingerprint: o.fingerprint.clone(),
            started_at: started.map(tsumugi_base::time::ts),
            ended_at: Some(tsumugi_base::time::ts(end)),
            duration_ms: Some(o.duration.as_millis() as i64),
            exit_code: o.exit_code,
            log_path: o.log.as_ref().map(|p| p.display().to_string()),
            attempt: o.attempts.max(1),
            message: o.message.clone(),
        },
    );
}

/// Decides and does one stage: fingerprint, then cached / restore / run + commit.
async fn run_stage(
    ctx: Arc<Ctx>,
    stage: Stage,
    index: usize,
    pool: Arc<SlotPool>,
    checks: Arc<tokio::sync::Semaphore>,
) -> StageOutcome {
    let started = tsumugi_base::time::now();
    let t0 = Instant::now();
    let c = ctx.clone();
    let st = stage.clone();
    // Hashing and cache checks are blocking file work.
    let permit = checks
        .acquire_owned()
        .await
        .expect("semaphore is never closed");
    let decision = tokio::task::spawn_blocking(move || decide(&c, &st)).await;
    drop(permit);
    tracing::debug!("{}: checked in {:?}", stage.name, t0.elapsed());
    let decision = match decision {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            let o = outcome(&stage.name, StageState::Failed, None, format!("{e:#}"));
            record_final(&ctx, &o, Some(started));
            return o;
        }
        Err(e) => {
            let o = outcome(
                &stage.name,
                StageState::Failed,
                None,
                format!("internal error: {e}"),
            );
            record_final(&ctx, &o, Some(started));
            return o;
        }
    };
    // Read-through: a stale stage's result may be on the remote; fetched, it is fresh.
    let mut from_remote = None;
    let decision = if let Decision::Run { fp, .. } = &decision
        && let Some(name) = crate::remote_cache::read_through(&ctx, &stage, fp).await
    {
        from_remote = Some(name);
        let (c, st) = (ctx.clone(), stage.clone());
        match tokio::task::spawn_blocking(move || decide(&c, &st)).await {
            Ok(Ok(d)) => d,
            _ => decision,
        }
    } else {
        decision
    };
    let (components, fp) = match decision {
        Decision::Fresh { fp, restored, outs } => {
            pool.done_deciding(index);
            let mut o = outcome(
                &stage.name,
                if restored.is_empty() && from_remote.is_none() {
                    StageState::Cached
                } else {
                    StageState::Restored
                },
                Some(fp.clone()),
                String::new(),
            );
            o.message = match &from_remote {
                Some(r) => Some(format!("restored from remote {r}")),
                None => (!restored.is_empty()).then(|| format!("restored {}", restored.join(", "))),
            };
            let c = ctx.clone();
            let st = stage.clone();
            let reg = tokio::task::spawn_blocking(move || {
                let _ = record_outputs(&c, &st, &outs, Vec::new());
                register_outcome(&c, &st, &outs)
            })
            .await;
            apply_registration(&mut o, reg);
            o.duration = t0.elapsed();
            record_final(&ctx, &o, Some(started));
            return o;
        }
        Decision::Run {
            components,
            fp,
            note,
        } => {
            if let Some(n) = note {
                ctx.ui.println(&format!("warning: {n}"));
                ctx.db
                    .event(Some(&ctx.run_id), Some(&stage.name), "cache_corrupt", &n);
            }
            (components, fp)
        }
    };

    let log_path = ctx.project.log_path(&ctx.run_id, &stage.name);
    // Shown and recorded relative to the project root, as every other path is.
    let log_shown = log_path
        .strip_prefix(ctx.project.root())
        .unwrap_or(&log_path)
        .to_path_buf();
    // A Slurm stage takes only a job slot here: its CPUs and GPUs are the cluster's
    // (`--cpus-per-task`, `--gres`), not this machine's.
    let on_slurm = crate::launch::launcher(&ctx, &stage).is_remote();
    let (cpu_slots, gpu_slots) = if on_slurm {
        (0, 0)
    } else {
        (stage.resources.cpu, stage.resources.gpu as usize)
    };
    let Some(grant) = pool.acquire(index, cpu_slots, gpu_slots, &ctx).await else {
        let reason = if ctx.cancel.load(Ordering::SeqCst) {
            "run cancelled".to_string()
        } else {
            ctx.stop_reason.lock().expect("reason").clone()
        };
        let o = outcome(&stage.name, StageState::Skipped, Some(fp), reason);
        record_final(&ctx, &o, Some(started));
        return o;
    };
    let mut env = stage.env.clone();
    if let Some(p) = &ctx.params_yaml
        && stage
            .params
            .keys()
            .any(|k| tsumugi_pipeline::params_file::split_key(k).is_some())
    {
        env.insert("TSUMUGI_PARAMS".into(), path_str(p));
    }
    if !grant.gpus.is_empty() {
        env.insert("CUDA_VISIBLE_DEVICES".into(), grant.gpus.join(","));
    }
    let max_attempts = 1 + stage.retry.attempts;
    let mut attempt = 0;
    let mut last_err: Option<(String, Option<i32>, bool, bool)> = None; // (msg, code, cancelled, timed_out)
    ctx.ui.started(&stage.name);
    while attempt < max_attempts {
        if ctx.cancel.load(Ordering::SeqCst) {
            break;
        }
        attempt += 1;
        if attempt > 1 {
            let wait = stage
                .retry
                .backoff
                .saturating_mul(1 << (attempt - 2).min(16));
            ctx.ui.println(&format!(
                "{}: retrying in {:.1}s (attempt {attempt}/{max_attempts})",
                stage.name,
                wait.as_secs_f64()
            ));
            let until = Instant::now() + wait;
            while Instant::now() < until && !ctx.cancel.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50).min(until - Instant::now())).await;
            }
            if ctx.cancel.load(Ordering::SeqCst) {
                break;
            }
        }
        ctx.db
            .stage_started(&ctx.run_id, &stage.name, Some(&log_shown), attempt);
        let c = ctx.clone();
        let st = stage.clone();
        let env2 = env.clone();
        let lp = log_path.clone();
        let res =
            tokio::task::spawn_blocking(move || execute_once(&c, &st, &env2, &lp, attempt)).await;
        tracing::debug!("{}: executed by {:?}", stage.name, t0.elapsed());
        match res {
            Ok(Ok(metrics)) => {
                // Commit: verify and store outputs, then the action entry.
                let c = ctx.clone();
                let st = stage.clone();
                let comps = components.clone();
                let fp2 = fp.clone();
                let commit = tokio::task::spawn_blocking(move || {
                    commit(&c, &st, &comps, &fp2, metrics)
                        .map(|recs| register_outcome(&c, &st, &recs))
                })
                .await;
                if matches!(commit, Ok(Ok(_))) {
                    crate::remote_cache::write_through(&ctx, &stage, &fp).await;
                }
                let mut o = outcome(
                    &stage.name,
                    StageState::Ran,
                    Some(fp.clone()),
                    String::new(),
                );
                o.message = None;
                o.attempts = attempt;
                o.exit_code = Some(0);
                o.log = Some(log_shown.clone());
                o.duration = t0.elapsed();
                tracing::debug!("{}: committed by {:?}", stage.name, t0.elapsed());
                // A failed commit fails the stage just as a failed registration does.
                apply_registration(&mut o, commit.map(|r| r.and_then(|reg| reg)));
                record_final(&ctx, &o, Some(started));
                return o;
            }
            Ok(Err(failure)) => {
                let cancelled = failure.cancelled;
                last_err = Some((failure.message, failure.code, cancelled, failure.timed_out));
                if cancelled {
                    break;
                }
            }
            Err(e) => {
                last_err = Some((format!("internal error: {e}"), None, false, false));
            }
        }
    }
    let (msg, code, cancelled, _timed_out) = last_err.unwrap_or_else(|| {
        (
            "run cancelled before the stage started".into(),
            None,
            true,
            false,
        )
    });
    // Nothing half-written stays behind as if it were an output.
    // (Through no symlink out of the project: such an output is left where it is.)
    for o in stage.outs.values() {
        let _ = safepath::remove(ctx.project.root(), &o.path);
    }
    let mut o = outcome(
        &stage.name,
        if cancelled {
            StageState::Cancelled
        } else {
            StageState::Failed
        },
        Some(fp),
        if max_attempts > 1 && !cancelled {
            format!("{msg} (after {attempt} attempts)")
        } else {
            msg
        },
    );
    o.attempts = attempt.max(1);
    o.exit_code = code;
    o.log = Some(log_shown);
    o.duration = t0.elapsed();
    record_final(&ctx, &o, Some(started));
    // Stop before the slots are given back, so no waiting stage slips in after a failure.
    if !ctx.keep_going && !ctx.stop.swap(true, Ordering::SeqCst) {
        *ctx.stop_reason.lock().expect("reason") =
            format!("run stopped after stage {} {}", o.name, o.status.as_str());
    }
    drop(grant);
    o
}

enum Decision {
    Fresh {
        fp: String,
        restored: Vec<String>,
        outs: BTreeMap<String, tsumugi_store::cache::OutRecord>,
    },
    Run {
        components: Box<Components>,
        fp: String,
        note: Option<String>,
    },
}

fn decide(ctx: &Ctx, stage: &Stage) -> Result<Decision> {
    let hasher = Hasher::new(&ctx.stat);
    let components = Box::new(fingerprint::compute(&ctx.project, &hasher, stage)?);
    let fp = components.fingerprint();
    let check = Freshness {
        project: &ctx.project,
        hasher: &hasher,
        cache: &ctx.cache,
        force: ctx.forced.contains(&stage.name),
    };
    let (entry, restore) = match check.decide(stage, &components, &fp, None) {
        Verdict::Dirty(reasons) => {
            if tracing::enabled!(tracing::Level::DEBUG) {
                let why: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
                tracing::debug!("{}: running ({})", stage.name, why.join("; "));
            }
            return Ok(Decision::Run {
                components,
                fp,
                note: None,
            });
        }
        Verdict::Fresh { entry, restore } => (entry, restore),
    };
    let mut restored = Vec::new();
    for Restore { key, rec, .. } in &restore {
        let abs = ctx.project.root().join(&rec.path);
        let current = hasher.hash(&abs).ok();
        if current.as_deref() == Some(rec.hash.as_str()) {
            continue;
        }
        match ctx.cache.restore(ctx.project.root(), rec) {
            Ok(_) => restored.push(rec.path.clone()),
            Err(e @ (RestoreError::Corrupt { .. } | RestoreError::NotAFile { .. })) => {
                let (object, actual) = match e {
                    RestoreError::Corrupt { object, actual } => (object, actual),
                    RestoreError::NotAFile { object, kind } => (object, format!("a {kind}")),
                    _ => unreachable!("matched above"),
                };
                ctx.cache.discard_object(&object);
                ctx.cache.remove_action(&fp);
                let note = format!(
                    "cache object {object} (output {key} of stage {}) is corrupt (content hashes to {}); re-running {}",
                    stage.name,
                    &actual[..12.min(actual.len())],
                    stage.name
                );
                return Ok(Decision::Run {
                    components,
                    fp,
                    note: Some(note),
                });
            }
            Err(RestoreError::Missing { object }) => {
                ctx.cache.remove_action(&fp);
                let note = format!(
                    "cache object {object} (output {key} of stage {}) is missing; re-running {}",
                    stage.name, stage.name
                );
                return Ok(Decision::Run {
                    components,
                    fp,
                    note: Some(note),
                });
            }
            Err(RestoreError::Io(e)) => {
                return Err(e.context(format!(
                    "cannot restore {} of stage {}",
                    rec.path, stage.name
                )));
            }
        }
    }
    Ok(Decision::Fresh {
        fp,
        restored,
        outs: entry.outs,
    })
}

struct Failure {
    message: String,
    code: Option<i32>,
    cancelled: bool,
    timed_out: bool,
}

/// One attempt: clear outputs, run the stage with its log, return metrics it reported.
fn execute_once(
    ctx: &Ctx,
    stage: &Stage,
    env: &BTreeMap<String, String>,
    log_path: &Path,
    attempt: u32,
) -> std::result::Result<Vec<MetricRow>, Failure> {
    let fail = |m: String| Failure {
        message: m,
        code: None,
        cancelled: false,
        timed_out: false,
    };
    let imp = stage_impl(stage).map_err(|e| fail(format!("{e:#}")))?;
    let root = ctx.project.root();
    // Outputs are removed first (as DVC does): a stage never appends to a stale output, and
    // never writes through a hardlink into the cache.
    // Each path is resolved now, refusing a symlink out of the project that an earlier
    // stage may have made since the pipeline was loaded.
    let mut outs = BTreeMap::new();
    for (k, o) in &stage.outs {
        let abs = safepath::resolve(root, &o.path, false, safepath::Op::RemoveOrWrite)
            .map_err(|e| fail(e.to_string()))?;
        if !o.persist {
            remove_path(&abs).map_err(|e| fail(format!("{e:#}")))?;
        }
        if let Some(p) = abs.parent() {
            fs::create_dir_all(p)
                .map_err(|e| fail(format!("cannot create {}: {e}", p.display())))?;
        }
        outs.insert(k.clone(), abs);
    }
    for m in &stage.metrics {
        safepath::remove(root, m).map_err(|e| fail(format!("{e:#}")))?;
        if let Some(p) = root.join(m).parent() {
            let _ = fs::create_dir_all(p);
        }
    }
    // A built-in kind writes its metrics output like any other output: the loader files it
    // under `metrics` (so the run database records it), and the kind needs its path by key.
    if let Action::Builtin { kind, .. } = &stage.action
        && let Some(info) = tsumugi_stages::kind(kind)
        && let Some(key) = info.metrics
        && let Some((_, file)) = info.outputs.iter().find(|(k, _)| *k == key)
        && let Some(m) = stage.metrics.iter().find(|m| m.ends_with(file))
    {
        outs.insert(key.to_string(), root.join(m));
    }
    if let Some(p) = log_path.parent() {
        fs::create_dir_all(p).map_err(|e| fail(format!("cannot create {}: {e}", p.display())))?;
    }
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| fail(format!("cannot open log {}: {e}", log_path.display())))?;
    if attempt > 1 {
        let _ = writeln!(log, "--- tsumugi: attempt {attempt} ---");
    }
    let with = match &stage.action {
        Action::Builtin { with, .. } => with.clone(),
        Action::Cmd { .. } => serde_json::Value::Null,
    };
    let reporter = StageReporter {
        cancel: ctx.cancel.clone(),
        deadline: stage.timeout.map(|t| Instant::now() + t),
        timed_out: AtomicBool::new(false),
        log: Mutex::new(Some(log)),
        ui: ctx.ui.clone(),
        name: stage.name.clone(),
        metrics: Mutex::new(Vec::new()),
    };
    let input = StageInput {
        name: &stage.name,
        project_root: root,
        with: &with,
        outs: &outs,
        env,
        device: &ctx.device,
    };
    let res = match &stage.map {
        Some(_) => crate::map::run(
            &crate::map::MapRun {
                project: &ctx.project,
                cache: &ctx.cache,
                stat: &ctx.stat,
                pipeline: &ctx.pipeline_name,
                jobs: ctx.jobs,
                force: ctx.forced.contains(&stage.name),
                run_id: &ctx.run_id,
                db: &ctx.db,
            },
            stage,
            imp.as_ref(),
            &input,
            &reporter,
        ),
        None => crate::launch::launcher(ctx, stage).launch(
            ctx,
            stage,
            imp.as_ref(),
            &input,
            &reporter,
            attempt,
        ),
    };
    let timed_out = reporter.timed_out.load(Ordering::Relaxed);
    let cancelled = ctx.cancel.load(Ordering::SeqCst);
    match res {
        Ok(()) => Ok(reporter.metrics.into_inner().expect("metrics")),
        Err(e) => {
            let code = e.downcast_ref::<CommandFailed>().and_then(|c| c.code);
            let message = if timed_out {
                format!(
                    "timed out after {:.1}s",
                    stage.timeout.unwrap_or_default().as_secs_f64()
                )
            } else if cancelled {
                "cancelled".to_string()
            } else {
                format!("{e:#}")
            };
            if let Some(f) = reporter.log.lock().expect("log").as_mut() {
                let _ = writeln!(f, "--- tsumugi: {message} ---");
            }
            Err(Failure {
                message,
                code,
                cancelled: cancelled && !timed_out,
                timed_out,
            })
        }
    }
}
