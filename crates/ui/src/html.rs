//! The small HTML toolkit of the pages: escaping, the page frame, query strings and links,
//! number and time formatting. Every string that comes from the database, a log, a
//! pipeline file or the request goes through [`esc`] (text and attribute values alike).

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query-string value (form encoding, as browsers send it).
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A parsed query string; a key may repeat (`?run=a&run=b`, as a form of checkboxes sends).
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The first non-empty value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, comma-separated lists split.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(','))
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// `?k=v&…` from pairs, skipping empty values.
pub fn qs(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Which navigation entry is highlighted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Runs,
    Compare,
    Dag,
    Adapters,
    None,
}

/// The page frame: head (styles and script from /static, no external resource), the
/// navigation, and `body`.
pub fn page(title: &str, nav: Nav, body: &str) -> String {
    let item = |n: Nav, href: &str, label: &str| {
        let cls = if n == nav { " class=\"on\"" } else { "" };
        format!("<a href=\"{href}\"{cls}>{label}</a>")
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{t} · tsumugi</title><link rel=\"icon\" href=\"data:,\">\
<link rel=\"stylesheet\" href=\"/static/app.css\"><script src=\"/static/app.js\" defer></script></head>\
<body><header><span class=\"brand\">tsumugi</span><nav>{}{}{}{}</nav></header><main>\n{body}\n</main></body></html>\n",
        item(Nav::Runs, "/", "Runs"),
        item(Nav::Compare, "/compare", "Compare"),
        item(Nav::Dag, "/dag", "Pipelines"),
        item(Nav::Adapters, "/adapters", "Adapters"),
        t = esc(title),
    )
}

/// A number as people read it: integers without decimals, others with up to 6
/// significant digits.
pub fn num(v: f64) -> String {
    if v.is_finite() && v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) {
        format!("{v:.4e}")
    } else {
        let s = format!("{v:.6}");
        let s = s.trim_end_matches('0');
        s.trim_end_matches('.').to_string()
    }
}

/// `1.2 s`, `3 min 4 s`, `1 h 02 min`.
pub fn duration_ms(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{} h {:02} min", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// `2026-12-04 14:27:38` from the database's RFC 3339 (UTC) timestamps.
pub fn when(ts: &str) -> String {
    let s = ts.replace('T', " ");
    s.split('.')
        .next()
        .unwrap_or(&s)
        .trim_end_matches('Z')
        .to_string()
}

/// A status word as a coloured badge (the class is one of a fixed set).
pub fn badge(status: &str) -> String {
    let cls = match status {
        "success" | "ran" | "fresh" | "current" | "ok" | "passed" => "good",
        "cached" | "restored" | "candidate" | "retired" | "skipped" => "neutral",
        "running" | "stale" => "warn",
        _ => "bad",
    };
    format!("<span class=\"badge {cls}\">{}</span>", esc(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_round_trips_queries() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        let q = Query::parse(Some("run=a%2Fb&run=c,d&sort=metric%3Aeval%2Facc&x=%zz"));
        assert_eq!(q.all("run"), ["a/b", "c", "d"]);
        assert_eq!(q.get("sort"), Some("metric:eval/acc"));
        assert_eq!(q.get("x"), Some("%zz"));
        let link = qs(&[("sort", "metric:a b"), ("p", "")]);
        assert_eq!(link, "?sort=metric%3Aa+b");
        assert_eq!(
            Query::parse(link.strip_prefix('?')).get("sort"),
            Some("metric:a b")
        );
        assert_eq!(num(1379.0), "1379");
        assert_eq!(num(0.25), "0.25");
        assert_eq!(num(1.0 / 3.0), "0.333333");
    }
}
