//! `GET /metrics` in Prometheus' text format (version 0.0.4): counters and histograms kept
//! with atomics and one mutex for the per-endpoint maps, written out on each scrape.
//!
//! Names (all prefixed `tsumugi_serve_`): `requests_total{endpoint,code}`,
//! `request_duration_seconds{endpoint}` (histogram), `batch_pairs` and `batch_tokens`
//! (histograms, one observation per forward call of the batcher), `queue_depth`
//! (requests waiting), `adapter_version{name}` (0 without a registry adapter),
//! `adapter_swaps_total`, `adapter_load_failures_total`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const PAIR_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
const TOKEN_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0,
];

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    batch_pairs: Histogram,
    batch_tokens: Histogram,
    adapter: Option<(String, u32)>,
}

/// The server's metrics, shared by the handlers, the batcher and the engine.
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
    queue_depth: AtomicI64,
    swaps: AtomicU64,
    load_failures: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            inner: Mutex::new(Inner {
                requests: BTreeMap::new(),
                latency: BTreeMap::new(),
                batch_pairs: Histogram::new(PAIR_BUCKETS),
                batch_tokens: Histogram::new(TOKEN_BUCKETS),
                adapter: None,
            }),
            queue_depth: AtomicI64::new(0),
            swaps: AtomicU64::new(0),
            load_failures: AtomicU64::new(0),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain counters behind: keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One answered request: its route (the pattern, not the raw path), status and time.
    pub fn request(&self, endpoint: &str, code: u16, seconds: f64) {
        let mut g = self.inner();
        *g.requests.entry((endpoint.to_string(), code)).or_default() += 1;
        g.latency
            .entry(endpoint.to_string())
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe(seconds);
    }

    /// One forward call of the batcher.
    pub fn batch(&self, pairs: usize, tokens: usize) {
        let mut g = self.inner();
        g.batch_pairs.observe(pairs as f64);
        g.batch_tokens.observe(tokens as f64);
    }

    pub fn queue_add(&self, delta: i64) {
        self.queue_depth.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn queue_depth(&self) -> i64 {
        self.queue_depth.load(Ordering::Relaxed)
    }

    /// A new version is serving: the registry name and version, if it came from there.
    pub fn swapped(&self, adapter: Option<(String, u32)>) {
        self.swaps.fetch_add(1, Ordering::Relaxed);
        self.inner().adapter = adapter;
    }

    pub fn load_failed(&self) {
        self.load_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let g = self.inner();
        let mut out = String::new();
        out.push_str("# HELP tsumugi_serve_requests_total HTTP requests answered, by route and status.\n# TYPE tsumugi_serve_requests_total counter\n");
        for ((endpoint, code), n) in &g.requests {
            let _ = writeln!(
                out,
                "tsumugi_serve_requests_total{{endpoint=\"{}\",code=\"{code}\"}} {n}",
                escape(endpoint)
            );
        }
        out.push_str("# HELP tsumugi_serve_request_duration_seconds Time from request to response, by route.\n# TYPE tsumugi_serve_request_duration_seconds histogram\n");
        for (endpoint, h) in &g.latency {
            h.write(
                &mut out,
                "tsumugi_serve_request_duration_seconds",
                &format!("endpoint=\"{}\"", escape(endpoint)),
            );
        }
        out.push_str("# HELP tsumugi_serve_batch_pairs Pairs per forward call (several requests batched together).\n# TYPE tsumugi_serve_batch_pairs histogram\n");
        g.batch_pairs
            .write(&mut out, "tsumugi_serve_batch_pairs", "");
        out.push_str("# HELP tsumugi_serve_batch_tokens Tokens per forward call, before padding.\n# TYPE tsumugi_serve_batch_tokens histogram\n");
        g.batch_tokens
            .write(&mut out, "tsumugi_serve_batch_tokens", "");
        let _ = writeln!(
            out,
            "# HELP tsumugi_serve_queue_depth Requests waiting for the model.\n# TYPE tsumugi_serve_queue_depth gauge\ntsumugi_serve_queue_depth {}",
            self.queue_depth().max(0)
        );
        out.push_str("# HELP tsumugi_serve_adapter_version The registry version serving (0: none, or an adapter loaded by path).\n# TYPE tsumugi_serve_adapter_version gauge\n");
        match &g.adapter {
            Some((name, v)) => {
                let _ = writeln!(
                    out,
                    "tsumugi_serve_adapter_version{{name=\"{}\"}} {v}",
                    escape(name)
                );
            }
            None => out.push_str("tsumugi_serve_adapter_version{name=\"\"} 0\n"),
        }
        let _ = writeln!(
            out,
            "# HELP tsumugi_serve_adapter_swaps_total Times a newly loaded model version started serving.\n# TYPE tsumugi_serve_adapter_swaps_total counter\ntsumugi_serve_adapter_swaps_total {}",
            self.swaps.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP tsumugi_serve_adapter_load_failures_total Loads that failed (the serving version stayed).\n# TYPE tsumugi_serve_adapter_load_failures_total counter\ntsumugi_serve_adapter_load_failures_total {}",
            self.load_failures.load(Ordering::Relaxed)
        );
        out
    }
}

/// A label value: backslash, quote and newline escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_the_text_names_every_series() {
        let m = Metrics::new();
        m.request("/predict", 200, 0.004);
        m.request("/predict", 200, 0.2);
        m.request("/predict", 422, 0.0001);
        m.batch(3, 40);
        m.swapped(Some(("nli".into(), 2)));
        let t = m.render();
        assert!(t.contains("tsumugi_serve_requests_total{endpoint=\"/predict\",code=\"200\"} 2"));
        assert!(t.contains("tsumugi_serve_requests_total{endpoint=\"/predict\",code=\"422\"} 1"));
        assert!(t.contains(
            "tsumugi_serve_request_duration_seconds_bucket{endpoint=\"/predict\",le=\"0.005\"} 2"
        ));
        assert!(t.contains(
            "tsumugi_serve_request_duration_seconds_bucket{endpoint=\"/predict\",le=\"+Inf\"} 3"
        ));
        assert!(t.contains("tsumugi_serve_batch_pairs_bucket{le=\"4\"} 1"));
        assert!(t.contains("tsumugi_serve_batch_pairs_bucket{le=\"2\"} 0"));
        assert!(t.contains("tsumugi_serve_adapter_version{name=\"nli\"} 2"));
        assert!(t.contains("tsumugi_serve_adapter_swaps_total 1"));
        assert!(t.contains("tsumugi_serve_queue_depth 0"));
    }
}
