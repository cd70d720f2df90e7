//! Dynamic batching: requests queue here with their pairs already tokenized, and one
//! thread scores the pairs of as many queued requests as fit a token budget in one call.
//!
//! The thread takes whatever is queued when it is free; if that is under the budget it
//! waits at most `max_wait` for more. So under no load a request waits for nothing, and
//! under load requests gather while the model is busy with the previous batch. Only
//! requests for the same model version share a call (a swap lets the old version's
//! requests finish on it). The queue is bounded: a full queue is the caller's 503.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tsumugi_stages::tokenize::EncodedPair;

use crate::engine::Version;
use crate::metrics::Metrics;

/// Logits per pair, in the request's order, or why there are none.
pub type Reply = Result<Vec<Vec<f32>>, String>;

/// One request's pairs, tokenized for `version`.
pub struct Job {
    pub version: Arc<Version>,
    pub pairs: Vec<EncodedPair>,
    pub reply: oneshot::Sender<Reply>,
}

impl Job {
    fn tokens(&self) -> usize {
        self.pairs.iter().map(|p| p.ids.len()).sum()
    }
}

/// The queue's sending side.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

/// Why a job was not queued.
pub enum Refused {
    Full,
    Closed,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Tokens (before padding) per call; a single larger request runs alone.
    pub max_tokens: usize,
    pub max_wait: Duration,
    /// Requests waiting at most.
    pub queue: usize,
}

impl Batcher {
    /// Starts the batching thread; it ends when every [`Batcher`] clone is dropped and the
    /// queue is drained.
    pub fn start(
        limits: BatchLimits,
        metrics: Arc<Metrics>,
    ) -> (Batcher, std::thread::JoinHandle<()>) {
        let (tx, rx) = sync_channel(limits.queue.max(1));
        let m = metrics.clone();
        let handle = std::thread::Builder::new()
            .name("tsumugi-batcher".into())
            .spawn(move || run(rx, limits, &m))
            .expect("spawning the batcher thread");
        (Batcher { tx, metrics }, handle)
    }

    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        // Counted before the send: the thread may take the job before try_send returns.
        self.metrics.queue_add(1);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.queue_add(-1);
                Err(match e {
                    TrySendError::Full(_) => Refused::Full,
                    TrySendError::Disconnected(_) => Refused::Closed,
                })
            }
        }
    }
}

fn run(rx: Receiver<Job>, limits: BatchLimits, metrics: &Metrics) {
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => {
                    metrics.queue_add(-1);
                    j
                }
                Err(_) => return,
            },
        };
        let mut tokens = first.tokens();
        let mut batch = vec![first];
        let deadline = Instant::now() + limits.max_wait;
        while tokens < limits.max_tokens {
            // What is queued already, then whatever arrives before the deadline.
            let next = match rx.try_recv() {
                Ok(j) => Ok(j),
                Err(_) => rx.recv_timeout(deadline.saturating_duration_since(Instant::now())),
            };
            match next {
                Ok(j) => {
                    metrics.queue_add(-1);
                    let t = j.tokens();
                    if !Arc::ptr_eq(&j.version, &batch[0].version) || tokens + t > limits.max_tokens
                    {
                        held = Some(j);
                        break;
                    }
                    tokens += t;
                    batch.push(j);
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        score(batch, tokens, metrics);
    }
}

/// One forward call over the batch's pairs; each job gets its slice of the logits.
fn score(batch: Vec<Job>, tokens: usize, metrics: &Metrics) {
    // A caller that timed out or hung up needs no answer.
    let batch: Vec<Job> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
    if batch.is_empty() {
        return;
    }
    let version = batch[0].version.clone();
    let mut all = Vec::with_capacity(batch.iter().map(|j| j.pairs.len()).sum());
    for j in &batch {
        all.extend(j.pairs.iter().cloned());
    }
    metrics.batch(all.len(), tokens);
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        version.scorer.score_encoded(&all)
    }));
    match out {
        Ok(logits) => {
            let mut rest = logits.into_iter();
            for j in batch {
                let mine: Vec<Vec<f32>> = rest.by_ref().take(j.pairs.len()).collect();
                let _ = j.reply.send(Ok(mine));
            }
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!("scoring a batch of {} pairs failed: {msg}", all.len());
            for j in batch {
                let _ = j.reply.send(Err(format!("scoring failed: {msg}")));
            }
        }
    }
}
