//! A small, portable PRNG (splitmix64) for everything tsumugi draws itself: LoRA's and a
//! new head's initial weights, shuffles, dropout masks. A seed means the same on every
//! machine and backend, and a resumed run can re-derive any state from (seed, step).
//! No imports: models, LoRA and the trainer all draw from it.

/// splitmix64 (Steele, Lea, Flood 2014; Vigna's reference implementation).
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fisher–Yates shuffle of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_pinned_and_shuffles_are_permutations() {
        // Reference values of splitmix64 seeded with 0 (Vigna's reference implementation).
        let mut r = SplitMix(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut p = SplitMix(13).permutation(100);
        assert_ne!(p, (0..100).collect::<Vec<_>>());
        p.sort();
        assert_eq!(p, (0..100).collect::<Vec<_>>());
    }
}
