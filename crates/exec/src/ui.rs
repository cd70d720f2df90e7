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
        let msg = match total {
            Some(t) => format!("{done}/{t} {message}"),
            None => format!("{done} {message}"),
        };
        self.ui.stage_line(&self.name, &msg);
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
        self.ui.stage_line(&self.name, line);
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
}

impl Ui {
    pub(crate) fn new(mode: ProgressMode) -> Ui {
        let live = mode == ProgressMode::Auto && std::io::stderr().is_terminal();
        let mode = if mode == ProgressMode::Auto && !live {
            ProgressMode::Plain
        } else {
            mode
        };
        Ui {
            inner: Arc::new(UiInner {
                mode,
                multi: live.then(|| {
                    indicatif::MultiProgress::with_draw_target(
                        indicatif::ProgressDrawTarget::stderr(),
                    )
                }),
                bars: Mutex::new(HashMap::new()),
            }),
        }
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
