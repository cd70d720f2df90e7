//! Where trigger decisions go and where "when did stage X last succeed" comes from: the run
//! database (`runs/tsumugi.db`), next to the runs themselves. Every decision is also a log
//! line on stderr, which systemd's journal or cron's mail picks up.

use anyhow::{Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::OptionalExtension;

use super::Origin;
use tsumugi_base::project::Project;
use tsumugi_rundb;

/// What a trigger decided, or what became of a run it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionKind {
    /// A run was started (or, for watch, is about to be).
    Fired,
    /// A tick was evaluated and its conditions said no (or could not be evaluated).
    Skipped,
    /// Ticks passed while the scheduler was down or busy.
    Missed,
    /// Changes came in during a run: one follow-up run is queued.
    Queued,
    RunOk,
    RunFailed,
    /// Something went wrong in the trigger machinery itself (state file, pipeline reload).
    Error,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Fired => "fired",
            DecisionKind::Skipped => "skipped",
            DecisionKind::Missed => "missed",
            DecisionKind::Queued => "queued",
            DecisionKind::RunOk => "run_ok",
            DecisionKind::RunFailed => "run_failed",
            DecisionKind::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Trigger time as the trigger's clock saw it.
    pub at: DateTime<Utc>,
    pub origin: Origin,
    pub kind: DecisionKind,
    /// Which trigger: `cron[0] "0 3 * * *" UTC`, or `watch`.
    pub source: String,
    pub detail: String,
    pub run_id: Option<String>,
}

impl Decision {
    /// The event kind in the run database: `cron.fired`, `watch.run_failed`, ….
    pub fn event_kind(&self) -> String {
        format!("{}.{}", self.origin, self.kind.as_str())
    }
}

/// Reads and writes a pipeline's trigger history in the run database.
#[derive(Debug, Clone)]
pub struct History {
    project: Project,
    pipeline: String,
}

impl History {
    pub fn new(project: &Project, pipeline: &str) -> Self {
        History {
            project: project.clone(),
            pipeline: pipeline.to_string(),
        }
    }

    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// When `stage` last *ran* and succeeded. A stage that was cached or restored did no
    /// work, so it does not count: "7 days since the last training" means since the
    /// training really ran, not since a run found it up to date.
    pub fn last_success(&self, stage: &str) -> Result<Option<DateTime<Utc>>> {
        let Some(conn) = tsumugi_rundb::open_read(&self.project)? else {
            return Ok(None);
        };
        let t: Option<String> = conn
            .query_row(
                "SELECT max(s.ended_at) FROM stage_runs s JOIN runs r ON r.id = s.run_id
                 WHERE r.pipeline = ?1 AND s.stage = ?2 AND s.status = 'ran'",
                rusqlite::params![self.pipeline, stage],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        t.map(|t| {
            DateTime::parse_from_rfc3339(&t)
                .map(|t| t.with_timezone(&Utc))
                .with_context(|| format!("run database: bad time {t:?} for stage {stage}"))
        })
        .transpose()
    }

    /// Records a decision as an event and prints it as a log line. A failure to record is
    /// itself logged, never fatal: a scheduler must not stop because its log is unwritable.
    pub fn record(&self, d: &Decision) {
        let message = format!(
            "pipeline={} {} at {}: {}",
            self.pipeline,
            d.source,
            d.at.to_rfc3339_opts(SecondsFormat::Secs, true),
            d.detail
        );
        eprintln!(
            "{} {} {message}",
            tsumugi_base::time::ts(tsumugi_base::time::now()),
            d.event_kind()
        );
        tracing::info!(kind = %d.event_kind(), run = ?d.run_id, "{message}");
        if let Err(e) = tsumugi_rundb::record_event(
            &self.project,
            d.run_id.as_deref(),
            None,
            &d.event_kind(),
            &message,
        ) {
            eprintln!(
                "{} error: could not record the event in {}: {e:#}",
                tsumugi_base::time::ts(tsumugi_base::time::now()),
                self.project.db_path().display()
            );
        }
    }
}
