//! `tsumugi schedule`: cron triggers with catch-up policies and data conditions.
//!
//! One evaluation ([`Scheduler::evaluate_due`]) looks, for every trigger, at the ticks
//! since the last one it dealt with:
//!
//! 1. none: nothing to do;
//! 2. the newest tick is on time (at most `grace` old): it is evaluated; older ones are
//!    logged as missed;
//! 3. the newest tick is late (the daemon was down, or busy with a run — runs never
//!    overlap): `catchup: skip` drops them all, `catchup: run-once` evaluates once now.
//!
//! Evaluating means checking `when:`; if it holds the trigger fires. All triggers that fire
//! in one evaluation share one run. The last tick is saved before the run starts, so a
//! crash during a run does not make the run happen twice (at most once per tick).
//! A run that fails, or cannot start, is recorded and the scheduler carries on.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::Result;
use chrono::{DateTime, SecondsFormat, Utc};

use super::clock::Clock;
use super::conditions::EvalEnv;
use super::history::{Decision, DecisionKind, History};
use super::spec::{Catchup, CronTrigger};
use super::state::{SchedulerState, state_path};
use super::{Origin, PipelineRunner, RunOutcome, RunRequest};
use tsumugi_base::project::Project;
use tsumugi_store::hash::StatCache;

/// Ticks listed by name in a "missed" message; the rest are counted.
const LISTED_TICKS: usize = 3;

/// What one evaluation did.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub decisions: Vec<Decision>,
    /// The run it started and how it ended (`Err`: it could not start).
    pub run: Option<Result<RunOutcome, String>>,
}

impl Evaluation {
    pub fn fired(&self) -> bool {
        self.run.is_some()
    }
    pub fn run_failed(&self) -> bool {
        matches!(
            &self.run,
            Some(Err(_)) | Some(Ok(RunOutcome { success: false, .. }))
        )
    }
}

pub struct Scheduler<C: Clock, R: PipelineRunner> {
    project: Project,
    triggers: Vec<CronTrigger>,
    clock: C,
    runner: R,
    history: History,
    state_path: PathBuf,
    state: SchedulerState,
    stat: StatCache,
    /// When the last run this scheduler started began and ended, to tell ticks that passed
    /// during it from ticks missed while the daemon was down.
    last_run: Option<(DateTime<Utc>, DateTime<Utc>, String)>,
    /// The last evaluation started a run: ticks may have passed during it, so the next
    /// step evaluates at once instead of sleeping (`run-once` catches up right away).
    recheck: bool,
}

struct Env<'a, C: Clock> {
    root: &'a Path,
    clock: &'a C,
    history: &'a History,
    previous: &'a BTreeMap<String, String>,
    stat: &'a StatCache,
}

impl<C: Clock> EvalEnv for Env<'_, C> {
    fn project_root(&self) -> &Path {
        self.root
    }
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
    fn last_success(&self, stage: &str) -> Result<Option<DateTime<Utc>>> {
        self.history.last_success(stage)
    }
    fn previous_snapshot(&self, key: &str) -> Option<String> {
        self.previous.get(key).cloned()
    }
    fn stat_cache(&self) -> &StatCache {
        self.stat
    }
}

/// Ticks after this instant are due for `t`. After the last tick dealt with, or, on a
/// first start, just before the newest tick if it is on time: nothing from before the
/// scheduler ever ran is "missed", however frequent the schedule.
fn window_start(
    t: &CronTrigger,
    last_tick: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    if let Some(last) = last_tick {
        return last;
    }
    match t.schedule.last_at_or_before(now) {
        Some(newest) if now - newest <= t.grace => newest - chrono::Duration::nanoseconds(1),
        _ => now,
    }
}

fn fmt_t(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl<C: Clock, R: PipelineRunner> Scheduler<C, R> {
    /// Loads the pipeline's scheduler state (`runs/triggers/<pipeline>.json`).
    pub fn new(
        project: &Project,
        pipeline: &str,
        triggers: Vec<CronTrigger>,
        clock: C,
        runner: R,
    ) -> Result<Self> {
        let state_path = state_path(project, pipeline);
        let state = SchedulerState::load(&state_path)?;
        Ok(Scheduler {
            project: project.clone(),
            triggers,
            clock,
            runner,
            history: History::new(project, pipeline),
            state_path,
            state,
            // In memory: the daemon hashes a `changed:` file again only when its stat
            // changes, and never races the executor over cache/statcache.bin.
            stat: StatCache::in_memory(),
            last_run: None,
            recheck: false,
        })
    }

    pub fn triggers(&self) -> &[CronTrigger] {
        &self.triggers
    }

    pub fn state(&self) -> &SchedulerState {
        &self.state
    }

    pub fn runner(&self) -> &R {
        &self.runner
    }

    /// The next time a trigger has a tick, strictly after now.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        let now = self.clock.now();
        self.triggers
            .iter()
            .filter_map(|t| t.schedule.next_after(now))
            .min()
    }

    fn record(
        &self,
        ev: &mut Evaluation,
        kind: DecisionKind,
        source: &str,
        at: DateTime<Utc>,
        detail: String,
        run_id: Option<String>,
    ) {
        let d = Decision {
            at,
            origin: Origin::Cron,
            kind,
            source: source.to_string(),
            detail,
            run_id,
        };
        self.history.record(&d);
        ev.decisions.push(d);
    }

    /// Evaluates every trigger whose ticks are due now, and runs the pipeline once if any
    /// fires. Errors only when the state cannot be saved (then nothing is run).
    pub async fn evaluate_due(&mut self) -> Result<Evaluation> {
        self.recheck = false;
        let now = self.clock.now();
        let mut ev = Evaluation::default();
        // (trigger index, why it fired, snapshots to keep if the run succeeds)
        let mut firing: Vec<(usize, String, BTreeMap<String, String>)> = Vec::new();
        let mut changed_state = false;

        for (i, t) in self.triggers.iter().enumerate() {
            let st = self.state.get(&t.id);
            // First start: only a tick that is on time counts; nothing before the daemon
            // was ever started is "missed".
            let window_start = window_start(t, st.last_tick, now);
            let ticks = t.schedule.ticks_between(window_start, now, LISTED_TICKS);
            let Some(latest) = ticks.last() else { continue };
            changed_state = true;
            let on_time = now - latest <= t.grace;
            let missed: Vec<DateTime<Utc>> = if on_time {
                ticks.ticks[..ticks.ticks.len() - 1].to_vec()
            } else {
                ticks.ticks.clone()
            };
            let missed_count = ticks.count() - usize::from(on_time);
            let label = t.label();
            if missed_count > 0 {
                let during_run = match &self.last_run {
                    Some((start, end, run)) if missed.iter().all(|m| m >= start && m <= end) => {
                        Some(format!(
                            "during run {run} (runs of one pipeline never overlap)"
                        ))
                    }
                    _ => None,
                };
                let why = during_run
                    .unwrap_or_else(|| "while tsumugi schedule was not running".to_string());
                let what = match t.catchup {
                    Catchup::Skip => "catchup: skip, dropped".to_string(),
                    Catchup::RunOnce => "catchup: run-once, evaluating once now".to_string(),
                };
                let listed: Vec<String> = missed.iter().map(|m| fmt_t(*m)).collect();
                let more = if ticks.saturated {
                    " and more".to_string()
                } else {
                    String::new()
                };
                self.record(
                    &mut ev,
                    DecisionKind::Missed,
                    &label,
                    latest,
                    format!(
                        "{missed_count}{more} tick(s) missed {why} (newest: {}); {what}",
                        listed.join(", ")
                    ),
                    None,
                );
            }
            if !on_time && t.catchup == Catchup::Skip {
                continue;
            }
            match &t.when {
                None => firing.push((i, "no conditions".into(), BTreeMap::new())),
                Some(cond) => {
                    let env = Env {
                        root: self.project.root(),
                        clock: &self.clock,
                        history: &self.history,
                        previous: &st.changed,
                        stat: &self.stat,
                    };
                    match cond.eval(&env) {
                        Ok(v) if v.ok => firing.push((i, v.reason, v.snapshots)),
                        Ok(v) => self.record(
                            &mut ev,
                            DecisionKind::Skipped,
                            &label,
                            latest,
                            format!("conditions not met: {}", v.reason),
                            None,
                        ),
                        Err(e) => self.record(
                            &mut ev,
                            DecisionKind::Skipped,
                            &label,
                            latest,
                            format!("conditions could not be evaluated, not running: {e:#}"),
                            None,
                        ),
                    }
                }
            }
        }

        if !changed_state {
            return Ok(ev);
        }
        // Mark the ticks as dealt with before running: at most one run per tick, even if
        // this process dies during the run.
        for t in &self.triggers {
            let st = self.state.get(&t.id);
            let window_start = window_start(t, st.last_tick, now);
            if let Some(latest) = t
                .schedule
                .last_at_or_before(now)
                .filter(|l| *l > window_start)
            {
                self.state.entry(&t.id).last_tick = Some(latest);
            }
        }
        self.state.save(&self.state_path)?;

        if firing.is_empty() {
            return Ok(ev);
        }
        let labels: Vec<String> = firing
            .iter()
            .map(|(i, _, _)| self.triggers[*i].label())
            .collect();
        let reason = firing
            .iter()
            .map(|(i, why, _)| format!("{}: {why}", self.triggers[*i].label()))
            .collect::<Vec<_>>()
            .join("; ");
        for (i, why, _) in &firing {
            let t = &self.triggers[*i];
            let shared = if firing.len() > 1 {
                format!(" (one run for {})", labels.join(", "))
            } else {
                String::new()
            };
            let tick = t.schedule.last_at_or_before(now).unwrap_or(now);
            self.record(
                &mut ev,
                DecisionKind::Fired,
                &t.label(),
                tick,
                format!("{why}{shared}"),
                None,
            );
        }

        self.recheck = true;
        let started = self.clock.now();
        let result = self
            .runner
            .run(RunRequest {
                origin: Origin::Cron,
                targets: Vec::new(),
                reason,
            })
            .await;
        let ended = self.clock.now();
        let source = labels.join(", ");
        match result {
            Ok(o) => {
                self.last_run = Some((started, ended, o.run_id.clone()));
                if o.success {
                    self.record(
                        &mut ev,
                        DecisionKind::RunOk,
                        &source,
                        ended,
                        format!("run {} succeeded", o.run_id),
                        Some(o.run_id.clone()),
                    );
                    // Only a successful run has "seen" the changes; after a failure the
                    // `changed:` clauses still hold and the next tick tries again.
                    for (i, _, snaps) in &firing {
                        let id = self.triggers[*i].id.clone();
                        self.state.entry(&id).changed.extend(snaps.clone());
                    }
                    if let Err(e) = self.state.save(&self.state_path) {
                        self.record(
                            &mut ev,
                            DecisionKind::Error,
                            &source,
                            ended,
                            format!("could not save scheduler state: {e:#}"),
                            None,
                        );
                    }
                } else {
                    let failed = if o.failed.is_empty() {
                        "cancelled".to_string()
                    } else {
                        format!("failed stages: {}", o.failed.join(", "))
                    };
                    self.record(
                        &mut ev,
                        DecisionKind::RunFailed,
                        &source,
                        ended,
                        format!(
                            "run {} failed ({failed}); the scheduler carries on",
                            o.run_id
                        ),
                        Some(o.run_id.clone()),
                    );
                }
                ev.run = Some(Ok(o));
            }
            Err(e) => {
                self.last_run = Some((started, ended, "(not started)".into()));
                let msg = format!("{e:#}");
                self.record(
                    &mut ev,
                    DecisionKind::RunFailed,
                    &source,
                    ended,
                    format!("run could not start: {msg}; the scheduler carries on"),
                    None,
                );
                ev.run = Some(Err(msg));
            }
        }
        Ok(ev)
    }

    /// Sleeps until the next tick and evaluates it — or, right after a run, evaluates at
    /// once (ticks may have passed during the run). `None` when no trigger has a future
    /// tick (e.g. `0 0 30 2 *`).
    pub async fn step(&mut self) -> Option<Result<Evaluation>> {
        if !self.recheck {
            let wake = self.next_wake()?;
            self.clock.sleep_until(wake).await;
        }
        Some(self.evaluate_due().await)
    }

    /// The daemon: evaluate what is due now, then sleep until the next tick and evaluate,
    /// until `stop` completes (checked while sleeping; a run in progress is finished, or
    /// cancelled by the caller through its runner, first). Errors saving the state are
    /// logged and retried at the next tick, never fatal.
    pub async fn run_until(&mut self, stop: impl Future<Output = ()>) -> Result<()> {
        tokio::pin!(stop);
        let mut result = self.evaluate_due().await;
        loop {
            if let Err(e) = result {
                let d = Decision {
                    at: self.clock.now(),
                    origin: Origin::Cron,
                    kind: DecisionKind::Error,
                    source: "scheduler".into(),
                    detail: format!("{e:#}"),
                    run_id: None,
                };
                self.history.record(&d);
            }
            if self.recheck {
                // Ticks may have passed during the run that just ended.
                tokio::select! {
                    biased;
                    _ = &mut stop => return Ok(()),
                    _ = std::future::ready(()) => {}
                }
                result = self.evaluate_due().await;
                continue;
            }
            let Some(wake) = self.next_wake() else {
                eprintln!("no trigger of this pipeline has a future tick; tsumugi schedule stops");
                return Ok(());
            };
            tokio::select! {
                biased;
                _ = &mut stop => return Ok(()),
                _ = self.clock.sleep_until(wake) => {}
            }
            result = self.evaluate_due().await;
        }
    }
}
