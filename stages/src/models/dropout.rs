//! Dropout whose masks come from a generator the training run owns, drawn on the host.
//!
//! burn's `Dropout` draws from the backend's generator: one per process (so two trainings
//! in one process disturb each other's draws) and a different one per backend (so a CPU
//! and a GPU run of the same seed take different paths). Here a training step sets a
//! per-thread mask stream ([`seeded`]) for the rows (pairs) it runs; every dropout site of
//! the forward pass then takes its mask from that stream in forward order, and the mask
//! moves to the device like any input.
//!
//! A mask is drawn row by row: row `r` of the `c`-th dropout site gets its own splitmix64
//! stream seeded with `(seed, c, r)`, where `r` counts rows from the start of the whole
//! micro-batch. So a micro-batch split into shards that run on different threads (each
//! shard padded to the micro-batch's length and told its first row) draws exactly the
//! masks the unsplit micro-batch draws: the same seed gives the same masks on every
//! backend, for every thread count and sharding, and concurrent trainings on other threads
//! have their own streams. A site whose tensor is not laid out row by row (DeBERTa's
//! relative position embeddings, shared by all rows) runs inside [`shared_masks`]: its mask
//! depends on `(seed, c)` only, as one mask over the whole tensor.
//!
//! With no stream set (a forward under autodiff outside a training step) the masks come
//! from the backend's generator, as burn's `Dropout` does it.

use std::cell::{Cell, RefCell};

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::rng::SplitMix;

/// The mask stream of the training step running on this thread.
#[derive(Debug, Clone, Copy)]
struct Stream {
    seed: u64,
    /// Dropout sites visited so far in this forward pass.
    site: u64,
    /// The micro-batch row of this thread's first row.
    first_row: usize,
    /// Rows (pairs) this thread runs: every row-wise tensor's leading elements are theirs.
    rows: usize,
}

thread_local! {
    static STREAM: RefCell<Option<Stream>> = const { RefCell::new(None) };
    static SHARED: Cell<bool> = const { Cell::new(false) };
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
        let shared = SHARED.with(Cell::get);
        let mask = STREAM.with(|s| {
            s.borrow_mut()
                .as_mut()
                .map(|st| stream_mask(st, shape.num_elements(), self.prob, shared))
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

impl Dropout {
    /// For an op that applies dropout itself (a fused kernel): the factors (0 or
    /// `1/(1-p)`) this site draws for a tensor of `shape`, exactly as [`Dropout::forward`]
    /// would. `Some(None)`: no dropout here (inference, or probability 0); `None`: no host
    /// stream is set, so the caller must use [`Dropout::forward`] (the backend's generator).
    pub fn host_factors<B: Backend>(
        &self,
        device: &B::Device,
        shape: &[usize],
    ) -> Option<Option<Vec<f32>>> {
        if !B::ad_enabled(device) || self.prob == 0.0 {
            return Some(None);
        }
        let n = shape.iter().product();
        let shared = SHARED.with(Cell::get);
        STREAM.with(|s| {
            s.borrow_mut()
                .as_mut()
                .map(|st| Some(stream_mask(st, n, self.prob, shared)))
        })
    }
}

/// The mask of the next site: row by row (each row's elements from `(seed, site, row)`),
/// or one draw from `(seed, site)` when `shared` or when `n` does not split into the rows.
fn stream_mask(st: &mut Stream, n: usize, p: f64, shared: bool) -> Vec<f32> {
    let site = st.site;
    st.site += 1;
    let key = |row: u64| mix(mix(st.seed, site), row);
    if shared || st.rows == 0 || !n.is_multiple_of(st.rows) {
        return host_mask(&mut SplitMix(key(u64::MAX)), n, p);
    }
    let per_row = n / st.rows;
    let mut out = Vec::with_capacity(n);
    for r in 0..st.rows {
        out.extend(host_mask(
            &mut SplitMix(key((st.first_row + r) as u64)),
            per_row,
            p,
        ));
    }
    out
}

fn mix(seed: u64, a: u64) -> u64 {
    SplitMix(seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
}

/// `n` factors, each `1/(1-p)` with probability `1-p` and 0 otherwise: two draws of 32 bits
/// per splitmix64 output.
fn host_mask(rng: &mut SplitMix, n: usize, p: f64) -> Vec<f32> {
    let threshold = (p * 4_294_967_296.0) as u64;
    let scale = (1.0 / (1.0 - p)) as f32;
    let factor = |half: u64| if half >= threshold { scale } else { 0.0 };
    // Written in place, two factors per draw (a push per factor was 5 % of a training step).
    let mut out = vec![0.0f32; n];
    let mut pairs = out.chunks_exact_mut(2);
    for pair in &mut pairs {
        let r = rng.next_u64();
        pair[0] = factor(r & 0xFFFF_FFFF);
        pair[1] = factor(r >> 32);
    }
    if let [last] = pairs.into_remainder() {
        *last = factor(rng.next_u64() & 0xFFFF_FFFF);
    }
    out
}

/// While the returned guard lives, dropout on this thread draws from the stream of `seed`
/// for `rows` rows that start at row `first_row` of the micro-batch; the previous stream
/// (if any) comes back when it drops.
pub fn seeded(seed: u64, first_row: usize, rows: usize) -> StreamGuard {
    let stream = Stream {
        seed,
        site: 0,
        first_row,
        rows,
    };
    let previous = STREAM.with(|s| s.replace(Some(stream)));
    StreamGuard { previous }
}

/// See [`seeded`].
pub struct StreamGuard {
    previous: Option<Stream>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        STREAM.with(|s| *s.borrow_mut() = previous);
    }
}

/// Runs `f` with every dropout site drawing one mask for its whole tensor (see the module
/// docs): for tensors that all rows share.
pub fn shared_masks<T>(f: impl FnOnce() -> T) -> T {
    let before = SHARED.with(|s| s.replace(true));
    let out = f();
    SHARED.with(|s| s.set(before));
    out
}
#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;

    type Ad = Autodiff<crate::device::CpuBackend>;

    fn draw(seed: u64) -> Vec<f32> {
        draw_rows(seed, 0, 64)
    }

    /// Rows `first..first + rows` of a `[64, 50]` micro-batch, then a site of `[rows·5, 10]`
    /// (a flattened tensor), then a shared site of `[7, 3]`.
    fn draw_rows(seed: u64, first: usize, rows: usize) -> Vec<f32> {
        let _g = seeded(seed, first, rows);
        let d = Dropout::new(0.25);
        let device = Default::default();
        let a = d.forward(Tensor::<Ad, 2>::ones([rows, 50], &device));
        let b = d.forward(Tensor::<Ad, 2>::ones([rows * 5, 10], &device));
        let c = shared_masks(|| d.forward(Tensor::<Ad, 2>::ones([7, 3], &device)));
        let mut out: Vec<f32> = a.into_data().to_vec().expect("f32");
        out.extend(b.into_data().to_vec::<f32>().expect("f32"));
        out.extend(c.into_data().to_vec::<f32>().expect("f32"));
        out
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
    fn shards_draw_the_rows_of_the_whole_batch() {
        let whole = draw_rows(5, 0, 64);
        let (top, bottom) = (draw_rows(5, 0, 40), draw_rows(5, 40, 24));
        let (w_a, rest) = whole.split_at(64 * 50);
        let (w_b, w_c) = rest.split_at(64 * 50);
        let (t_a, rest) = top.split_at(40 * 50);
        let (t_b, t_c) = rest.split_at(40 * 50);
        let (b_a, rest) = bottom.split_at(24 * 50);
        let (b_b, b_c) = rest.split_at(24 * 50);
        assert_eq!(w_a, [t_a, b_a].concat());
        assert_eq!(w_b, [t_b, b_b].concat());
        // The shared site: one mask, the same for every shard.
        assert_eq!(w_c, t_c);
        assert_eq!(w_c, b_c);
        // Rows differ from each other (each its own stream).
        assert_ne!(&w_a[..50], &w_a[50..100]);
    }

    #[test]
    fn streams_are_per_thread_and_restored() {
        let outer = seeded(1, 0, 1);
        let inner = draw(9); // its own guard, dropped inside
        let again = std::thread::spawn(|| draw(9)).join().expect("thread");
        assert_eq!(inner, again);
        drop(outer);
        assert!(STREAM.with(|s| s.borrow().is_none()));
    }
}
