//! What a running stage reports ([`StageReporter`]: log file, metrics, progress) and how
//! the terminal shows it ([`Ui`]: a progress bar per running stage, or plain lines with
//! ETA when the output is not a terminal).

use std::collections::HashMap;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tsumugi_stages::Reporter;

use tsumugi_rundb::{self, MetricRow};

use crate::outcome::{ProgressMode, StageOutcome, StageState};

/// The engine's side of [`Reporter`] for one stage attempt.
pub(crate) struct StageReporter {
    pub(crate) cancel: Arc<AtomicBool>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) timed_out: AtomicBool,
    pub(crate) log: Mutex<Option<File>>,
    pub(crate) ui: Ui,
    pub(crate) name: String,
    pub(crate) metrics: Mutex<Vec<MetricRow>>,
}

impl Reporter for StageReporter {
    fn progress(&self, done: u64, total: Option<u64>, message: &str) {
        self.ui.progress(&self.name, done, total, message);
    }

    fn metric(&self, name: &str, step: Option<u64>, value: f64) {
        self.metrics.lock().expect("metrics").push(MetricRow {
            name: name.into(),
            step: step.map(|s| s as i64),
            value,
        });
    }

    fn log(&self, line: &str) {
        if let Some(f) = self.log.lock().expect("log").as_mut() {
            let _ = writeln!(f, "{line}");
        }
        self.ui.output_line(&self.name, line);
    }

    fn cancelled(&self) -> bool {
        if self.cancel.load(Ordering::Relaxed) {
            return true;
        }
        if let Some(d) = self.deadline
            && Instant::now() >= d
        {
            self.timed_out.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// Terminal output: live spinners on a TTY, plain lines otherwise, or nothing.
#[derive(Clone)]
pub(crate) struct Ui {
    pub(crate) inner: Arc<UiInner>,
}

pub(crate) struct UiInner {
    pub(crate) mode: ProgressMode,
    pub(crate) multi: Option<indicatif::MultiProgress>,
    pub(crate) bars: Mutex<HashMap<String, indicatif::ProgressBar>>,
    /// What each running stage last reported, for the periodic lines and the ETA.
    running: Mutex<HashMap<String, Live>>,
    /// Between two periodic lines of one stage (plain output).
    interval: Duration,
}

/// A running stage as the progress output knows it.
struct Live {
    started: Instant,
    progress: Option<Progress>,
    /// The last line it printed (a command's output), shown while it reports no progress.
    last_line: Option<String>,
    throttle: Throttle,
}

#[derive(Debug, Clone, PartialEq)]
struct Progress {
    done: u64,
    total: Option<u64>,
    message: String,
    at: Instant,
}

/// At most one line per `interval`, the first one `interval` after `start` (so that a stage
/// that ends quickly prints none).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Throttle {
    interval: Duration,
    last: Instant,
}

impl Throttle {
    pub(crate) fn new(interval: Duration, start: Instant) -> Throttle {
        Throttle {
            interval,
            last: start,
        }
    }
    /// True (and the clock restarted) when a line is due at `now`.
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.last) >= self.interval {
            self.last = now;
            true
        } else {
            false
        }
    }
}

/// Remaining time at the rate so far: from the stage's start to the last report.
fn eta(started: Instant, p: &Progress) -> Option<Duration> {
    let total = p.total?;
    if p.done == 0 || total <= p.done {
        return None;
    }
    let per = p.at.saturating_duration_since(started).as_secs_f64() / p.done as f64;
    Some(Duration::from_secs_f64(per * (total - p.done) as f64))
}

/// `42s`, `3m10s`, `1h02m`.
pub(crate) fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// `120/1000 (12%) epoch 1 loss 0.4100 35.2 pairs/s, ETA 4m10s`.
fn progress_text(started: Instant, p: &Progress) -> String {
    let mut t = match p.total {
        Some(total) if total > 0 => format!(
            "{}/{total} ({}%)",
            p.done,
            (p.done as u128 * 100 / total as u128).min(100)
        ),
        Some(total) => format!("{}/{total}", p.done),
        None => p.done.to_string(),
    };
    if !p.message.is_empty() {
        t.push(' ');
        t.push_str(&p.message);
    }
    if let Some(e) = eta(started, p) {
        t.push_str(&format!(", ETA {}", short_duration(e)));
    }
    t
}

impl Ui {
    /// With plain output (stderr not a terminal), every running stage prints a line with its
    /// progress every `interval` (none when it is zero).
    pub(crate) fn with_interval(mode: ProgressMode, interval: Duration) -> Ui {
        let live = mode == ProgressMode::Auto && std::io::stderr().is_terminal();
        let mode = if mode == ProgressMode::Auto && !live {
            ProgressMode::Plain
        } else {
            mode
        };
        let ui = Ui {
            inner: Arc::new(UiInner {
                mode,
                multi: live.then(|| {
                    indicatif::MultiProgress::with_draw_target(
                        indicatif::ProgressDrawTarget::stderr(),
                    )
                }),
                bars: Mutex::new(HashMap::new()),
                running: Mutex::new(HashMap::new()),
                interval,
            }),
        };
        if ui.inner.mode == ProgressMode::Plain && !interval.is_zero() {
            ui.tick_every(interval);
        }
        ui
    }

    /// The periodic lines of plain output: a thread that lives as long as the `Ui`.
    fn tick_every(&self, interval: Duration) {
        let weak = Arc::downgrade(&self.inner);
        let _ = std::thread::Builder::new()
            .name("tsumugi-progress".into())
            .spawn(move || {
                while let Some(inner) = weak.upgrade() {
                    let now = Instant::now();
                    let mut lines = Vec::new();
                    {
                        let mut running = inner.running.lock().expect("running");
                        for (name, live) in running.iter_mut() {
                            if !live.throttle.due(now) {
                                continue;
                            }
                            let elapsed =
                                short_duration(now.saturating_duration_since(live.started));
                            let what = match (&live.progress, &live.last_line) {
                                (Some(p), _) => progress_text(live.started, p),
                                (None, Some(l)) => format!("last output: {l}"),
                                (None, None) => "no progress reported".into(),
                            };
                            lines.push(format!("{name}: running {elapsed}, {what}"));
                        }
                    }
                    lines.sort();
                    for l in lines {
                        eprintln!("{l}");
                    }
                    drop(inner);
                    // Short sleeps: the thread notices the end of the run promptly.
                    std::thread::sleep(Duration::from_millis(200).min(interval));
                }
            });
    }

    /// A stage's progress report: the bar's message on a terminal (with ETA), else kept for
    /// the next periodic line.
    pub(crate) fn progress(&self, name: &str, done: u64, total: Option<u64>, message: &str) {
        let now = Instant::now();
        let text = {
            let mut running = self.inner.running.lock().expect("running");
            let Some(live) = running.get_mut(name) else {
                return;
            };
            let p = Progress {
                done,
                total,
                message: message.to_string(),
                at: now,
            };
            let text = progress_text(live.started, &p);
            live.progress = Some(p);
            text
        };
        self.stage_line(name, &text);
    }

    /// A line a stage printed: the bar's message on a terminal; in plain output, shown in the
    /// periodic line while the stage reports no progress.
    pub(crate) fn output_line(&self, name: &str, line: &str) {
        if let Some(live) = self.inner.running.lock().expect("running").get_mut(name) {
            live.last_line = Some(line.chars().take(200).collect());
            if live.progress.is_some() {
                // The bar shows progress; a log line would hide it.
                return;
            }
        }
        self.stage_line(name, line);
    }

    pub(crate) fn println(&self, line: &str) {
        match (&self.inner.mode, &self.inner.multi) {
            (ProgressMode::Quiet, _) => {}
            (_, Some(m)) => {
                let _ = m.println(line);
            }
            _ => eprintln!("{line}"),
        }
    }

    pub(crate) fn started(&self, name: &str) {
        let now = Instant::now();
        self.inner.running.lock().expect("running").insert(
            name.to_string(),
            Live {
                started: now,
                progress: None,
                last_line: None,
                throttle: Throttle::new(self.inner.interval, now),
            },
        );
        if let Some(m) = &self.inner.multi {
            let pb = m.add(indicatif::ProgressBar::new_spinner());
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {prefix:.bold} {elapsed:>4} {wide_msg}",
                )
                .expect("template"),
            );
            pb.set_prefix(name.to_string());
            pb.enable_steady_tick(Duration::from_millis(120));
            self.inner
                .bars
                .lock()
                .expect("bars")
                .insert(name.to_string(), pb);
        } else {
            self.println(&format!("{name}: running"));
        }
    }

    pub(crate) fn stage_line(&self, name: &str, line: &str) {
        if let Some(pb) = self.inner.bars.lock().expect("bars").get(name) {
            pb.set_message(line.to_string());
        }
    }

    pub(crate) fn finished(&self, o: &StageOutcome) {
        self.inner.running.lock().expect("running").remove(&o.name);
        if let Some(pb) = self.inner.bars.lock().expect("bars").remove(&o.name) {
            pb.finish_and_clear();
        }
        // Fresh stages are counted in the summary; a line each would drown the ones that ran.
        if o.status != StageState::Cached {
            let mut line = format!("{}: {}", o.name, o.status.as_str());
            if matches!(
                o.status,
                StageState::Ran | StageState::Failed | StageState::Cancelled
            ) {
                line.push_str(&format!(" ({:.1}s)", o.duration.as_secs_f64()));
            }
            if let Some(m) = &o.message {
                line.push_str(&format!(" — {m}"));
            }
            if let (StageState::Failed, Some(log)) = (o.status, &o.log) {
                line.push_str(&format!(" [log: {}]", log.display()));
            }
            self.println(&line);
        }
        if let Some(r) = &o.registration
            && r.action != crate::registry::Action::Unchanged
        {
            self.println(&format!("register {}: {}", r.name, r.message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_allows_one_line_per_interval_and_none_before_the_first() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Throttle::new(10 * s, t0);
        assert!(!t.due(t0 + 3 * s), "nothing before the first interval");
        assert!(t.due(t0 + 10 * s));
        assert!(!t.due(t0 + 15 * s), "one line per interval");
        assert!(t.due(t0 + 21 * s));
        assert!(
            !t.due(t0 + 30 * s),
            "the interval counts from the last line"
        );
        assert!(t.due(t0 + 31 * s));
    }

    #[test]
    fn progress_text_carries_share_message_and_eta() {
        let t0 = Instant::now();
        let p = Progress {
            done: 25,
            total: Some(100),
            message: "epoch 1 loss 0.4100 35.2 pairs/s".into(),
            at: t0 + Duration::from_secs(50),
        };
        // 2 s per step so far, 75 steps to go.
        assert_eq!(
            progress_text(t0, &p),
            "25/100 (25%) epoch 1 loss 0.4100 35.2 pairs/s, ETA 2m30s"
        );
        let unknown = Progress {
            total: None,
            ..p.clone()
        };
        assert_eq!(
            progress_text(t0, &unknown),
            "25 epoch 1 loss 0.4100 35.2 pairs/s"
        );
        assert_eq!(short_duration(Duration::from_secs(3725)), "1h02m");
    }
}
