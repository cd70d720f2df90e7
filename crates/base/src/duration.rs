//! The one duration grammar of tsumugi, used for `timeout:`, `retry.backoff`, trigger
//! `grace`/conditions and command-line flags alike: a number (decimals allowed) with a unit,
//! or a sum of them, spaces optional. Units: `ms`, `s`/`sec`/`secs`/`second(s)`,
//! `m`/`min`/`mins`/`minute(s)`, `h`/`hr`/`hour(s)`, `d`/`day(s)`, `w`/`week(s)`.
//!
//! ```
//! use std::time::Duration;
//! use tsumugi_base::duration::parse;
//! assert_eq!(parse("1.5h"), Some(Duration::from_secs(5400)));
//! assert_eq!(parse("1h 30m"), Some(Duration::from_secs(5400)));
//! assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
//! assert_eq!(parse("10"), None); // a unit is required
//! ```

use std::time::Duration;

/// Said after an invalid duration, in every place that reads one.
pub const HINT: &str =
    "expected a number with a unit: 500ms, 30s, 10m, 2h, 1d, or a sum like 1h30m";

/// Parses a duration (see the module doc); `None` when it is not one.
pub fn parse(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if n == 0 {
            return None;
        }
        let num: f64 = rest[..n].parse().ok()?;
        rest = rest[n..].trim_start();
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ms" | "msec" | "millis" => 0.001,
            "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            "w" | "week" | "weeks" => 7.0 * 86400.0,
            _ => return None,
        };
        rest = rest[u..].trim_start();
        total += num * scale;
    }
    if !total.is_finite() || total > 1e12 {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

/// [`parse`] as a `clap` value parser / `Result` with the grammar in the error.
pub fn parse_arg(s: &str) -> Result<Duration, String> {
    parse(s).ok_or_else(|| format!("invalid duration '{s}' ({HINT})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_units_and_spaces() {
        assert_eq!(parse("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("2 days"), Some(Duration::from_secs(2 * 86400)));
        assert_eq!(parse("1w"), Some(Duration::from_secs(7 * 86400)));
        assert_eq!(parse("0.5s"), Some(Duration::from_millis(500)));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in ["", "10", "h", "5 parsecs", "1.2.3s", "-1s"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
