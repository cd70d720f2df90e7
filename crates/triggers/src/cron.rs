//! Cron expressions in an explicit time zone.
//!
//! Parsing and matching are croner's (5 fields, or 6 with seconds first; `L`, `W`, `#`,
//! names and `@daily`-style aliases). What this module adds is the time zone — a trigger's
//! `0 3 * * *` with `tz: Asia/Tokyo` fires at 03:00 in Tokyo, which is 18:00 UTC the day
//! before — and the question the scheduler asks: which ticks fall in a window.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A parsed cron expression and the time zone its fields are read in.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expr: String,
    cron: Cron,
    tz: Tz,
}

/// Ticks in a window, oldest first, with how many more there were beyond the ones kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticks {
    pub ticks: Vec<DateTime<Utc>>,
    /// Ticks in the window that were not listed (the window held more than the limit).
    pub more: usize,
    /// Counting stopped at a bound: `count()` is a lower bound.
    pub saturated: bool,
}

impl Ticks {
    pub fn is_empty(&self) -> bool {
        self.ticks.is_empty()
    }
    pub fn count(&self) -> usize {
        self.ticks.len() + self.more
    }
    /// The newest tick in the window.
    pub fn last(&self) -> Option<DateTime<Utc>> {
        self.ticks.last().copied()
    }
}

impl CronSchedule {
    /// `tz` is an IANA name (`Asia/Tokyo`, `UTC`); `None` means UTC.
    pub fn parse(expr: &str, tz: Option<&str>) -> Result<Self, String> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expr)
            .map_err(|e| format!("invalid cron expression {expr:?}: {e}"))?;
        let tz = match tz {
            None => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| {
                format!("unknown time zone {name:?}: expected an IANA name such as \"UTC\" or \"Asia/Tokyo\"")
            })?,
        };
        Ok(CronSchedule {
            expr: expr.to_string(),
            cron,
            tz,
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The first tick strictly after `t`, or `None` if the expression never matches again
    /// (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The ticks `t` with `after < t <= upto`, oldest first. At most `limit` are listed —
    /// a daemon down for a month on a per-second schedule must not build a huge list — but
    /// all are counted, up to a bound that keeps the count itself cheap.
    pub fn ticks_between(&self, after: DateTime<Utc>, upto: DateTime<Utc>, limit: usize) -> Ticks {
        const COUNT_BOUND: usize = 100_000;
        let mut ticks = Vec::new();
        let mut more = 0usize;
        let mut saturated = false;
        let mut t = after;
        // Keep the newest `limit` ticks: the newest one is the one the catch-up policy
        // looks at, the older ones only appear in the log.
        while let Some(next) = self.next_after(t) {
            if next > upto {
                break;
            }
            ticks.push(next);
            if ticks.len() > limit {
                ticks.remove(0);
                more += 1;
            }
            if ticks.len() + more >= COUNT_BOUND {
                // Jump to the newest tick at or before `upto` and stop counting exactly.
                if let Some(last) = self.last_at_or_before(upto)
                    && last > next
                {
                    ticks.push(last);
                    if ticks.len() > limit {
                        ticks.remove(0);
                    }
                    more += 1;
                }
                saturated = true;
                break;
            }
            t = next;
        }
        Ticks {
            ticks,
            more,
            saturated,
        }
    }

    /// The newest tick at or before `t`.
    pub fn last_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }
}

impl std::fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.expr, self.tz.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn tokyo_three_am_is_eighteen_utc_the_day_before() {
        let s = CronSchedule::parse("0 3 * * *", Some("Asia/Tokyo")).unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-10T00:00:00Z")),
            Some(utc("2026-01-10T18:00:00Z"))
        );
    }

    #[test]
    fn limit_keeps_the_newest_and_counts_the_rest() {
        let s = CronSchedule::parse("* * * * *", None).unwrap();
        let t = s.ticks_between(utc("2026-01-01T00:00:00Z"), utc("2026-01-01T01:00:00Z"), 3);
        assert_eq!(t.count(), 60);
        assert_eq!(
            t.ticks,
            vec![
                utc("2026-01-01T00:58:00Z"),
                utc("2026-01-01T00:59:00Z"),
                utc("2026-01-01T01:00:00Z")
            ]
        );
    }
}
