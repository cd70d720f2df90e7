//! A pipeline's cron triggers, checked: the expression parses, the time zone exists, the
//! `when:` conditions are well-formed and name real stages. Errors name the trigger's
//! file:line:col and the place inside `when:`.

use std::path::PathBuf;

use serde_json::Value;

use super::conditions::Condition;
use super::cron::CronSchedule;
use tsumugi_pipeline::{Pipeline, Span, SpecError, Trigger};

/// What to do about ticks that passed while the scheduler was not running (or was busy
/// with a run): `skip` drops them, `run-once` evaluates the trigger once for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Catchup {
    #[default]
    Skip,
    RunOnce,
}

impl Catchup {
    pub fn parse(s: &str) -> Option<Catchup> {
        match s {
            "skip" => Some(Catchup::Skip),
            "run-once" | "run_once" => Some(Catchup::RunOnce),
            _ => None,
        }
    }
}

impl std::fmt::Display for Catchup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Catchup::Skip => "skip",
            Catchup::RunOnce => "run-once",
        })
    }
}

/// How late a tick may be evaluated and still count as on time (not missed). A tick is
/// noticed within milliseconds by the daemon and within a minute by `--once` under a
/// `* * * * *` crontab line.
pub const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(90);

/// Options of a cron trigger besides the expression and `when:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CronOptions {
    /// IANA time zone the expression is read in; `None`: UTC.
    pub tz: Option<String>,
    /// `skip` (default) or `run-once`.
    pub catchup: Option<String>,
    /// How late a tick still counts as on time (`90s` by default).
    pub grace: Option<String>,
}

/// A checked cron trigger.
#[derive(Debug, Clone)]
pub struct CronTrigger {
    /// Position in the pipeline's `triggers:` list.
    pub index: usize,
    /// Stable key for the trigger's persisted state: expression and time zone (and `#n`
    /// for the n-th repeat of the same pair), so editing `when:` keeps its tick history.
    pub id: String,
    pub schedule: CronSchedule,
    pub catchup: Catchup,
    pub grace: chrono::Duration,
    pub when: Option<Condition>,
    pub span: Span,
}

impl CronTrigger {
    pub fn new(
        index: usize,
        cron: &str,
        opts: &CronOptions,
        when: Option<&Value>,
        span: &Span,
        stages: &[&str],
    ) -> Result<CronTrigger, SpecError> {
        let err = |m: String| SpecError::single(span.clone(), m);
        let (prefix_tz, expr) = split_tz_prefix(cron);
        let tz = match (prefix_tz, opts.tz.as_deref()) {
            (Some(a), Some(b)) if a != b => {
                return Err(err(format!(
                    "the cron expression says CRON_TZ={a} but 'tz' says {b}; give the time zone once"
                )));
            }
            (a, b) => a.or(b),
        };
        let schedule = CronSchedule::parse(expr, tz).map_err(err)?;
        let catchup = match opts.catchup.as_deref() {
            None => Catchup::default(),
            Some(s) => Catchup::parse(s).ok_or_else(|| {
                err(format!(
                    "unknown catchup policy {s:?}: expected skip or run-once"
                ))
            })?,
        };
        let grace = match opts.grace.as_deref() {
            None => DEFAULT_GRACE,
            Some(s) => tsumugi_base::duration::parse(s).ok_or_else(|| {
                err(format!(
                    "'grace': {s:?} is not a duration ({})",
                    tsumugi_base::duration::HINT
                ))
            })?,
        };
        let grace = chrono::Duration::from_std(grace)
            .map_err(|_| err(format!("'grace' {:?} is too long", opts.grace)))?;
        let when = match when {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                Condition::parse(v, "when", stages).map_err(|m| err(format!("in 'when': {m}")))?,
            ),
        };
        let id = format!("{} @ {}", schedule.expr(), schedule.tz().name());
        Ok(CronTrigger {
            index,
            id,
            schedule,
            catchup,
            grace,
            when,
            span: span.clone(),
        })
    }

    /// A short name for log lines: `cron[0] "0 3 * * *" Asia/Tokyo`.
    pub fn label(&self) -> String {
        format!(
            "cron[{}] \"{}\" {}",
            self.index,
            self.schedule.expr(),
            self.schedule.tz().name()
        )
    }
}

/// A cron trigger's `tz`, `catchup` and `grace`, read by name from the trigger's serialized
/// form: the pipeline model carries them once the loader accepts those keys, and until
/// then they are absent (defaults apply; the zone can ride in the expression as
/// `CRON_TZ=…`). Reading by name keeps this module independent of that step.
fn options_of(t: &Trigger) -> CronOptions {
    let v = serde_json::to_value(t).unwrap_or_default();
    let get = |k: &str| {
        v.get("cron")
            .and_then(|c| c.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    CronOptions {
        tz: get("tz"),
        catchup: get("catchup"),
        grace: get("grace"),
    }
}

/// `CRON_TZ=Asia/Tokyo 0 3 * * *` (or `TZ=…`), the cronie / robfig-cron spelling of a time
/// zone inside the expression → (`Some("Asia/Tokyo")`, `"0 3 * * *"`).
pub fn split_tz_prefix(cron: &str) -> (Option<&str>, &str) {
    let t = cron.trim();
    for p in ["CRON_TZ=", "TZ="] {
        if let Some(rest) = t.strip_prefix(p) {
            let (zone, expr) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            return (Some(zone), expr.trim());
        }
    }
    (None, t)
}

/// The cron triggers of a pipeline, checked. All errors are reported, not just the first.
pub fn cron_triggers(p: &Pipeline) -> Result<Vec<CronTrigger>, SpecError> {
    let stages: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
    let mut out: Vec<CronTrigger> = Vec::new();
    let mut errors = Vec::new();
    for (i, t) in p.triggers.iter().enumerate() {
        if let Trigger::Cron {
            cron, when, span, ..
        } = t
        {
            match CronTrigger::new(i, cron, &options_of(t), when.as_ref(), span, &stages) {
                Ok(mut t) => {
                    let same = out
                        .iter()
                        .filter(|o| o.id.split(" #").next() == Some(t.id.as_str()))
                        .count();
                    if same > 0 {
                        t.id = format!("{} #{}", t.id, same + 1);
                    }
                    out.push(t)
                }
                Err(e) => errors.extend(e.errors().iter().cloned()),
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(SpecError::new(errors))
    }
}

/// The paths of a pipeline's `watch:` triggers, in order, deduplicated.
pub fn watch_paths(p: &Pipeline) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for t in &p.triggers {
        if let Trigger::Watch { paths, .. } = t {
            for path in paths {
                if !out.contains(path) {
                    out.push(path.clone());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tz_prefix() {
        assert_eq!(
            split_tz_prefix("CRON_TZ=Asia/Tokyo 0 3 * * *"),
            (Some("Asia/Tokyo"), "0 3 * * *")
        );
        assert_eq!(
            split_tz_prefix("TZ=UTC */5 * * * *"),
            (Some("UTC"), "*/5 * * * *")
        );
        assert_eq!(split_tz_prefix(" 0 3 * * * "), (None, "0 3 * * *"));
    }
}
