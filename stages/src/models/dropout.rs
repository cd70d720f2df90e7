//! Dropout whose masks come from a generator the training run owns, drawn on the host.
//!
//! burn's `Dropout` draws from the backend's generator: one per process (so two trainings
//! in one process disturb each other's draws) and a different one per backend (so a CPU
//! and a GPU run of the same seed take different paths). Here a training step seeds a
//! per-thread splitmix64 stream ([`seeded`]); every dropout site of the forward pass then
//! takes its mask from that stream in forward order, and the mask moves to the device like
//! any input. The same seed gives the same masks on every backend, and concurrent
//! trainings on other threads have their own streams.
//!
//! With no stream set (a forward under autodiff outside a training step) the masks come
//! from the backend's generator, as burn's `Dropout` does it.

use std::cell::RefCell;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::rng::SplitMix;

thread_local! {
    static STREAM: RefCell<Option<SplitMix>> = const { RefCell::new(None) };
}

/// Dropout with probability `prob` while training (autodiff), the identity otherwise.
#[derive(Module, Clone, Debug)]
pub struct Dropout {
    pub prob: f64,
}

impl Dropout {
    /// Panics on a probability outside `[0, 1)`: configs are checked before models are built.
    pub fn new(prob: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&prob),
            "dropout probability must lie in [0, 1), got {prob}"
        );
        Dropout { prob }
    }

    pub fn forward<B: Backend, const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        let device = input.device();
        if !B::ad_enabled(&device) || self.prob == 0.0 {
            return input;
        }
        let keep = 1.0 - self.prob;
        let shape = input.shape();
        let mask = STREAM.with(|s| {
            s.borrow_mut()
                .as_mut()
                .map(|rng| host_mask(rng, shape.num_elements(), self.prob))
        });
        match mask {
            Some(m) => input * Tensor::from_data(TensorData::new(m, shape), &device),
            None => {
                let random = input.random_like(Distribution::Bernoulli(keep));
                input * random * (1.0 / keep)
            }
        }
    }
}

/// `n` factors, each `1/(1-p)` with probability `1-p` and 0 otherwise: two draws of 32 bits
/// per splitmix64 output.
fn host_mask(rng: &mut SplitMix, n: usize, p: f64) -> Vec<f32> {
    let threshold = (p * 4_294_967_296.0) as u64;
    let scale = (1.0 / (1.0 - p)) as f32;
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let r = rng.next_u64();
        for half in [r & 0xFFFF_FFFF, r >> 32] {
            out.push(if half >= threshold { scale } else { 0.0 });
        }
    }
    out.truncate(n);
    out
}

/// While the returned guard lives, dropout on this thread draws from a stream seeded with
/// `seed`; the previous stream (if any) comes back when it drops.
pub fn seeded(seed: u64) -> StreamGuard {
    let previous = STREAM.with(|s| s.replace(Some(SplitMix(seed))));
    StreamGuard { previous }
}

/// See [`seeded`].
pub struct StreamGuard {
    previous: Option<SplitMix>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        STREAM.with(|s| *s.borrow_mut() = previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;

    type Ad = Autodiff<crate::device::CpuBackend>;

    fn draw(seed: u64) -> Vec<f32> {
        let _g = seeded(seed);
        let x = Tensor::<Ad, 2>::ones([64, 50], &Default::default());
        let y = Dropout::new(0.25).forward(x);
        y.into_data().to_vec().expect("f32")
    }

    #[test]
    fn the_seed_decides_the_mask_and_the_rate_is_right() {
        let (a, b, c) = (draw(3), draw(3), draw(4));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / a.len() as f64;
        assert!((kept - 0.75).abs() < 0.03, "kept {kept}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        // Outside autodiff (inference) it is the identity.
        let x = Tensor::<crate::device::CpuBackend, 1>::ones([8], &Default::default());
        let y: Vec<f32> = Dropout::new(0.5)
            .forward(x)
            .into_data()
            .to_vec()
            .expect("f32");
        assert_eq!(y, vec![1.0; 8]);
    }

    #[test]
    fn streams_are_per_thread_and_restored() {
        let outer = seeded(1);
        let inner = draw(9); // its own guard, dropped inside
        let again = std::thread::spawn(|| draw(9)).join().expect("thread");
        assert_eq!(inner, again);
        drop(outer);
        assert!(STREAM.with(|s| s.borrow().is_none()));
    }
}
