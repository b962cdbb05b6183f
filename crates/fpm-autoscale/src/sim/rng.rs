//! A tiny PCG32 random number generator for the simulator.
//!
//! Self-written on purpose: the simulator's tables are recorded in the docs
//! with their seed, so the stream must never change when a dependency is
//! updated (the `rand` crates do not promise value stability of their
//! convenience generators across versions), and it saves a dependency.
//! PCG-XSH-RR 64/32 as described by M. O'Neill (2014).

const MULTIPLIER: u64 = 6_364_136_223_846_793_005;

/// PCG-XSH-RR 64/32 generator.
#[derive(Debug, Clone)]
pub(crate) struct Pcg32 {
    state: u64,
    increment: u64,
}

impl Pcg32 {
    /// A generator for `seed` on stream `stream` (independent sequences for
    /// arrivals, service times and memory).
    pub(crate) fn new(seed: u64, stream: u64) -> Pcg32 {
        let mut rng = Pcg32 {
            state: 0,
            increment: (stream << 1) | 1,
        };
        rng.next_u32();
        rng.state = rng.state.wrapping_add(seed);
        rng.next_u32();
        rng
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(MULTIPLIER).wrapping_add(self.increment);
        // Truncations are the algorithm: take the high bits.
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rotation = (old >> 59) as u32;
        xorshifted.rotate_right(rotation)
    }

    /// Uniform in `(0, 1]` (never 0, so `ln` is always finite).
    pub(crate) fn unit(&mut self) -> f64 {
        let high = u64::from(self.next_u32()) << 21;
        let low = u64::from(self.next_u32()) >> 11;
        let bits = high | low; // 53 random bits
        (bits as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Exponential with the given rate (> 0).
    pub(crate) fn exponential(&mut self, rate: f64) -> f64 {
        -self.unit().ln() / rate
    }

    /// Standard normal (Box–Muller; one of the pair is discarded for
    /// simplicity, the simulator is not RNG-bound).
    pub(crate) fn normal(&mut self) -> f64 {
        let radius = (-2.0 * self.unit().ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * self.unit();
        radius * angle.cos()
    }

    /// Lognormal with the given mean and log-space standard deviation.
    pub(crate) fn lognormal(&mut self, mean: f64, sigma: f64) -> f64 {
        let mu = mean.ln() - sigma * sigma / 2.0;
        (mu + sigma * self.normal()).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_stream_separated() {
        let first: Vec<u32> = {
            let mut rng = Pcg32::new(42, 1);
            (0..5).map(|_| rng.next_u32()).collect()
        };
        let again: Vec<u32> = {
            let mut rng = Pcg32::new(42, 1);
            (0..5).map(|_| rng.next_u32()).collect()
        };
        let other: Vec<u32> = {
            let mut rng = Pcg32::new(42, 2);
            (0..5).map(|_| rng.next_u32()).collect()
        };
        assert_eq!(first, again);
        assert_ne!(first, other);
    }

    #[test]
    fn distributions_have_the_right_means() {
        let mut rng = Pcg32::new(7, 0);
        let n = 200_000;
        let unit: f64 = (0..n).map(|_| rng.unit()).sum::<f64>() / f64::from(n);
        assert!((unit - 0.5).abs() < 0.01, "{unit}");
        let exp: f64 = (0..n).map(|_| rng.exponential(4.0)).sum::<f64>() / f64::from(n);
        assert!((exp - 0.25).abs() < 0.01, "{exp}");
        let logn: f64 = (0..n).map(|_| rng.lognormal(0.05, 0.6)).sum::<f64>() / f64::from(n);
        assert!((logn - 0.05).abs() < 0.002, "{logn}");
    }
}
