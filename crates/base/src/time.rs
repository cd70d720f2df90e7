//! Timestamps as tsumugi writes them everywhere (run database, registry, lock file):
//! RFC 3339 in UTC with milliseconds, so they sort as text.

use chrono::{DateTime, SecondsFormat, Utc};

pub fn now() -> DateTime<Utc> {
    Utc::now()
}

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}
