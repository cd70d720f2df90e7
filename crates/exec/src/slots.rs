//! Slots: how many stages run at once (`-j`), and which GPUs a stage gets (`resources:
//! {gpu: N}` pins `CUDA_VISIBLE_DEVICES`, so two trainings never share a GPU by accident).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ctx::Ctx;

/// GPU slots: `--gpus`, else the entries of `CUDA_VISIBLE_DEVICES`, else `nvidia-smi -L`.
/// Returns the device ids to hand out.
pub fn detect_gpus(explicit: Option<u32>) -> Vec<String> {
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let listed: Option<Vec<String>> = visible.as_ref().map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "-1")
            .map(String::from)
            .collect()
    });
    if let Some(n) = explicit {
        // Map slot i to the parent's i-th visible device when there is one.
        return (0..n as usize)
            .map(|i| {
                listed
                    .as_ref()
                    .and_then(|l| l.get(i).cloned())
                    .unwrap_or_else(|| i.to_string())
            })
            .collect();
    }
    if let Some(l) = listed {
        return l;
    }
    match Command::new("nvidia-smi")
        .arg("-L")
        .stderr(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => {
            let n = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("GPU "))
                .count();
            (0..n).map(|i| i.to_string()).collect()
        }
        _ => Vec::new(),
    }
}

/// Execution slots: jobs, CPU and GPU. A stage takes them only once it knows it must
/// execute — checking freshness and restoring are not bounded by `--jobs`, so a run of
/// 1,000 fresh stages is not throttled to `jobs` at a time.
pub(crate) struct SlotPool {
    pub(crate) state: Mutex<SlotState>,
    pub(crate) notify: tokio::sync::Notify,
    pub(crate) cpu_total: u32,
    pub(crate) gpu_total: usize,
}

pub(crate) struct SlotState {
    pub(crate) jobs_free: usize,
    pub(crate) cpu_free: u32,
    pub(crate) gpus_free: Vec<String>,
    /// Stages (by topological index) still checking freshness: they may need slots, and an
    /// earlier stage goes first, so `-j 1` executes in topological order.
    pub(crate) deciding: std::collections::BTreeSet<usize>,
    /// Stages waiting for slots: index → (cpu, gpu).
    pub(crate) waiters: BTreeMap<usize, (u32, usize)>,
}

impl SlotState {
    pub(crate) fn fits(&self, cpu: u32, gpu: usize) -> bool {
        self.jobs_free > 0 && self.cpu_free >= cpu && self.gpus_free.len() >= gpu
    }
}

/// Held while a stage executes; gives its slots back when dropped.
pub(crate) struct Grant {
    pub(crate) pool: Arc<SlotPool>,
    pub(crate) cpu: u32,
    pub(crate) gpus: Vec<String>,
}

impl Drop for Grant {
    fn drop(&mut self) {
        let mut s = self.pool.state.lock().expect("slots");
        s.jobs_free += 1;
        s.cpu_free += self.cpu;
        s.gpus_free.append(&mut self.gpus);
        drop(s);
        self.pool.notify.notify_waiters();
    }
}

impl SlotPool {
    /// Waits for a job slot plus `cpu` CPU and `gpu` GPU slots; `None` if the run stops
    /// (failure without --keep-going, or cancel) before they are free.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        index: usize,
        cpu: u32,
        gpu: usize,
        ctx: &Ctx,
    ) -> Option<Grant> {
        let cpu = cpu.min(self.cpu_total);
        {
            let mut s = self.state.lock().expect("slots");
            s.deciding.remove(&index);
            s.waiters.insert(index, (cpu, gpu));
        }
        // Later stages may be waiting only because this one was still deciding: wake them
        // to look again now. Without this they saw the change at their next 50 ms poll, which
        // delayed most of a 16-wide layer's spawns by 50-300 ms (the diamond benchmark).
        self.notify.notify_waiters();
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a release between check and wait is not missed.
            notified.as_mut().enable();
            if ctx.stop.load(Ordering::SeqCst) || ctx.cancel.load(Ordering::SeqCst) {
                self.state.lock().expect("slots").waiters.remove(&index);
                self.notify.notify_waiters();
                return None;
            }
            {
                let mut s = self.state.lock().expect("slots");
                // An earlier stage that is still deciding, or waiting and able to start now,
                // goes first; one that cannot fit does not block later ones.
                let earlier_first = s.deciding.range(..index).next().is_some()
                    || s.waiters.range(..index).any(|(_, &(c, g))| s.fits(c, g));
                if !earlier_first && s.fits(cpu, gpu) {
                    s.waiters.remove(&index);
                    s.jobs_free -= 1;
                    s.cpu_free -= cpu;
                    let gpus: Vec<String> = s.gpus_free.drain(..gpu).collect();
                    drop(s);
                    // Later waiters that deferred to this one may fit in what is left.
                    self.notify.notify_waiters();
                    return Some(Grant {
                        pool: self.clone(),
                        cpu,
                        gpus,
                    });
                }
            }
            tokio::select! {
                _ = notified => {}
                // Stop and cancel are flags, not notifications: look again now and then.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    pub(crate) fn start_deciding(&self, index: usize) {
        self.state.lock().expect("slots").deciding.insert(index);
    }

    /// A stage that turned out fresh (or failed before needing slots) no longer holds up
    /// later ones.
    pub(crate) fn done_deciding(&self, index: usize) {
        let removed = self.state.lock().expect("slots").deciding.remove(&index);
        if removed {
            self.notify.notify_waiters();
        }
    }
}
