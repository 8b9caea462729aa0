//! Deterministic workload randomness: a small seeded generator and a Zipf sampler, so that
//! every run of a scenario sees the same customer sequence for the same seed.
//!
//! Written here rather than taken from `rand`/`rand_distr`: a precomputed CDF with a
//! binary search is twenty lines, exact for any exponent ≥ 0, and keeps the sequence
//! stable across dependency upgrades.

// A sampler is floating-point arithmetic by nature; nothing here touches money.
#![allow(clippy::float_arithmetic)]

/// SplitMix64 (Steele, Lea and Flood): tiny, fast, and good enough to drive a workload.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        // The top 53 bits fit an f64 mantissa exactly.
        #[allow(clippy::cast_precision_loss)]
        let bits = (self.next_u64() >> 11) as f64;
        bits * (1.0 / (1_u64 << 53) as f64)
    }

    /// A uniform integer in `[0, bound)`; `bound` must be positive. Lemire's
    /// multiply-shift; its bias (< bound / 2^64) is far below anything a benchmark sees.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "bound must be positive");
        // The high half of a 128-bit product is below `bound`, so it fits a u64.
        #[allow(clippy::cast_possible_truncation)]
        let high = ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64;
        high
    }
}

/// Zipf over ranks `0..n`: rank `k` is drawn with probability proportional to
/// `1 / (k + 1)^exponent`. Rank 0 is the most frequent.
#[derive(Clone, Debug)]
pub struct Zipf {
    /// `cdf[k]` = Σ weights of ranks `0..=k`; the last entry is the total.
    cdf: Vec<f64>,
}

impl Zipf {
    /// A sampler over `n` ranks (`n` ≥ 1) with `exponent` ≥ 0 (0 is uniform).
    pub fn new(n: u32, exponent: f64) -> Self {
        assert!(n >= 1, "a Zipf distribution needs at least one rank");
        assert!(
            exponent.is_finite() && exponent >= 0.0,
            "the Zipf exponent must be finite and ≥ 0, found {exponent}"
        );
        let mut total = 0.0;
        let cdf = (1..=n)
            .map(|rank| {
                total += f64::from(rank).powf(-exponent);
                total
            })
            .collect();
        Self { cdf }
    }

    /// Draws one rank.
    pub fn sample(&self, rng: &mut SplitMix64) -> u32 {
        let total = self.cdf.last().copied().unwrap_or(0.0);
        let u = rng.next_f64() * total;
        let rank = self.cdf.partition_point(|&cumulative| cumulative <= u);
        // `u < total`, so the point is inside; the min guards the float edge.
        u32::try_from(rank.min(self.cdf.len() - 1)).expect("ranks fit u32")
    }

    /// Probability mass of the `top` most frequent ranks.
    pub fn head_mass(&self, top: usize) -> f64 {
        let total = self.cdf.last().copied().unwrap_or(0.0);
        match top {
            0 => 0.0,
            _ => self.cdf[top.min(self.cdf.len()) - 1] / total,
        }
    }
}

/// A fixed random permutation of `0..n` (Fisher–Yates), so that hot ranks land on
/// accounts scattered over the table, as real hot customers are.
pub fn permutation(n: u32, rng: &mut SplitMix64) -> Vec<u32> {
    let mut items: Vec<u32> = (0..n).collect();
    for i in (1..items.len()).rev() {
        let j = usize::try_from(rng.below(i as u64 + 1)).expect("index fits usize");
        items.swap(i, j);
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let zipf = Zipf::new(1_000, 1.0);
        let draw = |seed| {
            let mut rng = SplitMix64::new(seed);
            (0..100).map(|_| zipf.sample(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn frequencies_follow_the_exponent() {
        let zipf = Zipf::new(100, 1.0);
        let mut rng = SplitMix64::new(1);
        let mut counts = [0_u32; 100];
        for _ in 0..200_000 {
            counts[zipf.sample(&mut rng) as usize] += 1;
        }
        // Rank 0 is drawn about twice as often as rank 1 and ten times as often as rank 9.
        let ratio = |a: usize, b: usize| f64::from(counts[a]) / f64::from(counts[b]);
        assert!((1.8..2.2).contains(&ratio(0, 1)), "{counts:?}");
        assert!((8.5..11.5).contains(&ratio(0, 9)), "{counts:?}");
        assert!((zipf.head_mass(100) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn exponent_zero_is_uniform_and_permutations_are_permutations() {
        let zipf = Zipf::new(4, 0.0);
        assert!((zipf.head_mass(2) - 0.5).abs() < 1e-12);
        let mut sorted = permutation(1_000, &mut SplitMix64::new(3));
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1_000).collect::<Vec<_>>());
    }
}
