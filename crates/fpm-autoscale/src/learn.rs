//! Running estimates of a pool's behaviour: arrival rate and its
//! variability, service time distribution, per-worker memory and CPU.
//!
//! The arrival rate is read exactly from the accepted-connections counter
//! over two sliding windows of looks: a short one (a surge, the emergency
//! rule) and a long one (sizing). An exponential average with a time
//! constant of a minute reads only 39 % of a step after 30 s and keeps most
//! of a 20 s surge for a minute afterwards, which is too slow to act on.
//! The exponential averages remain for what needs smoothing: the trend,
//! the variability beyond Poisson noise and the service time.
//!
//! Everything is a plain value (no clock, bounded rings of samples) so the
//! scaler state stays cheap to clone and serialises for a restart.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// How many recent per-worker PSS samples are kept for the p95.
const PSS_RING: usize = 256;

/// Most counter samples kept for the rate windows: a minute of looks at
/// the collector's fastest pace (4 a second) fits.
const RATE_RING: usize = 512;

/// One look's share of the counter: arrivals over the interval that ended
/// at `end_ms` and lasted `dt_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct RateSample {
    end_ms: u64,
    dt_ms: u64,
    arrivals: f64,
}

/// Running estimates; part of [`crate::ScalerState`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Estimates {
    /// Time-decayed mean arrival rate (requests per second).
    rate: Option<f64>,
    /// The same with a four times shorter time constant, for the trend.
    rate_fast: Option<f64>,
    /// Time constant of `rate`, seconds (kept for the trend).
    rate_time_constant_s: f64,
    /// Time-decayed variance of interval rates beyond Poisson noise.
    rate_excess_var: f64,
    /// Intervals that contributed a rate sample.
    rate_intervals: u64,
    /// Decayed count, sum and sum of squares of service times.
    service_weight: f64,
    service_sum: f64,
    service_sum_sq: f64,
    /// Finished requests seen (not decayed), for confidence.
    service_samples: u64,
    /// Recent per-worker PSS samples (ring) and the next slot.
    pss: Vec<u64>,
    pss_next: usize,
    /// Observations that carried at least one PSS sample.
    pss_observations: u64,
    /// Time-decayed CPU cores used per busy worker.
    cpu_per_busy: Option<f64>,
    /// Counter samples of the last long window, oldest first.
    #[serde(default)]
    window: VecDeque<RateSample>,
    /// Length of the long and short windows, ms (from the policy).
    #[serde(default)]
    long_window_ms: u64,
    #[serde(default)]
    short_window_ms: u64,
}

impl Estimates {
    /// Adds an interval's arrival count. `dt_s` must be positive.
    pub(crate) fn add_arrivals(&mut self, arrivals: f64, dt_s: f64, time_constant_s: f64) {
        let interval_rate = arrivals / dt_s;
        if !interval_rate.is_finite() || interval_rate < 0.0 {
            return;
        }
        self.rate_intervals += 1;
        self.rate_time_constant_s = time_constant_s;
        let alpha_fast = 1.0 - (-4.0 * dt_s / time_constant_s).exp();
        self.rate_fast = Some(match self.rate_fast {
            None => interval_rate,
            Some(fast) => fast + alpha_fast * (interval_rate - fast),
        });
        let alpha = 1.0 - (-dt_s / time_constant_s).exp();
        match self.rate {
            None => self.rate = Some(interval_rate),
            Some(mean) => {
                let deviation = interval_rate - mean;
                let new_mean = mean + alpha * deviation;
                // Poisson noise of a rate measured over dt has variance
                // rate/dt; the queueing model already accounts for it, so
                // only the excess counts as variability.
                let excess = (deviation * deviation - mean.max(0.0) / dt_s).max(0.0);
                self.rate_excess_var += alpha * (excess - self.rate_excess_var);
                self.rate = Some(new_mean);
            }
        }
    }

    /// Adds a look's arrivals to the rate windows: `arrivals` over the
    /// `dt_ms` that ended at `end_ms`. Samples older than the long window
    /// are dropped.
    pub(crate) fn add_window_sample(
        &mut self,
        end_ms: u64,
        dt_ms: u64,
        arrivals: f64,
        short_window_ms: u64,
        long_window_ms: u64,
    ) {
        if dt_ms == 0 || !arrivals.is_finite() || arrivals < 0.0 {
            return;
        }
        self.short_window_ms = short_window_ms;
        self.long_window_ms = long_window_ms;
        self.window.push_back(RateSample {
            end_ms,
            dt_ms,
            arrivals,
        });
        // Keep what the long window needs: every sample whose interval
        // still reaches into it, and never more than the ring holds.
        let horizon = end_ms.saturating_sub(long_window_ms);
        while self.window.len() > RATE_RING
            || self
                .window
                .get(1)
                .is_some_and(|second| second.end_ms.saturating_sub(second.dt_ms) <= horizon)
        {
            self.window.pop_front();
        }
    }

    /// Forgets the rate windows: the samples before a gap do not describe
    /// the load after it.
    pub(crate) fn clear_window(&mut self) {
        self.window.clear();
    }

    /// Exact rate over the most recent looks spanning at least `window_ms`
    /// (all looks if fewer): arrivals divided by the time they cover.
    pub(crate) fn window_rate(&self, window_ms: u64) -> Option<f64> {
        let (mut arrivals, mut span_ms) = (0.0, 0u64);
        for sample in self.window.iter().rev() {
            if span_ms >= window_ms.max(1) {
                break;
            }
            arrivals += sample.arrivals;
            span_ms += sample.dt_ms;
        }
        // u64 -> f64 is exact for any realistic span.
        (span_ms > 0).then(|| arrivals / (span_ms as f64 / 1000.0))
    }

    /// Arrival rate over the short window (requests per second): follows
    /// a surge within a few looks.
    pub fn short_rate(&self) -> Option<f64> {
        self.window_rate(self.short_window_ms)
    }

    /// Arrival rate over the long window (requests per second): what the
    /// pool is sized for.
    pub fn long_rate(&self) -> Option<f64> {
        self.window_rate(self.long_window_ms)
    }

    /// Adds finished service times, decaying the old ones by `dt_s`.
    pub(crate) fn add_service(&mut self, samples: &[f64], dt_s: f64, time_constant_s: f64) {
        let decay = (-dt_s / time_constant_s).exp();
        self.service_weight *= decay;
        self.service_sum *= decay;
        self.service_sum_sq *= decay;
        for &sample in samples {
            if sample.is_finite() && sample >= 0.0 {
                self.service_weight += 1.0;
                self.service_sum += sample;
                self.service_sum_sq += sample * sample;
                self.service_samples += 1;
            }
        }
    }

    /// Adds per-worker PSS readings (zeros are ignored).
    pub(crate) fn add_pss(&mut self, samples: &[u64]) {
        let mut any = false;
        for &sample in samples.iter().filter(|&&s| s > 0) {
            any = true;
            if self.pss.len() < PSS_RING {
                self.pss.push(sample);
            } else {
                self.pss[self.pss_next] = sample;
            }
            self.pss_next = (self.pss_next + 1) % PSS_RING;
        }
        if any {
            self.pss_observations += 1;
        }
    }

    /// Adds a CPU reading: cores used by `busy` workers over the interval.
    pub(crate) fn add_cpu(&mut self, cores_used: f64, busy: u32) {
        if !cores_used.is_finite() || cores_used < 0.0 || busy == 0 {
            return;
        }
        let per_busy = cores_used / f64::from(busy);
        self.cpu_per_busy = Some(match self.cpu_per_busy {
            None => per_busy,
            Some(old) => old + 0.2 * (per_busy - old),
        });
    }

    /// Moves stored times back after a clock step.
    pub(crate) fn shift_back(&mut self, back_ms: u64) {
        for sample in &mut self.window {
            sample.end_ms = sample.end_ms.saturating_sub(back_ms);
        }
    }

    /// Mean arrival rate, requests per second: the long window's exact
    /// rate (the exponential average before any window sample, as in a
    /// state stored by an older version).
    pub fn arrival_rate(&self) -> Option<f64> {
        self.long_rate().or(self.rate)
    }

    /// The exponentially averaged arrival rate (time constant
    /// `rate_time_constant_s`), which the trend and variability use.
    pub fn smoothed_rate(&self) -> Option<f64> {
        self.rate
    }

    /// Slope of the arrival rate, requests per second per second.
    ///
    /// Two moving averages of a linear ramp lag it by their time
    /// constants, so their difference divided by the difference of the
    /// time constants is the slope (double exponential smoothing).
    pub fn rate_trend(&self) -> f64 {
        match (self.rate, self.rate_fast) {
            (Some(slow), Some(fast)) if self.rate_time_constant_s > 0.0 => {
                (fast - slow) / (0.75 * self.rate_time_constant_s)
            }
            _ => 0.0,
        }
    }

    /// Standard deviation of the arrival rate beyond Poisson noise.
    pub fn excess_rate_sd(&self) -> f64 {
        self.rate_excess_var.max(0.0).sqrt()
    }

    /// Mean service time in seconds, once at least one request finished.
    pub fn mean_service_s(&self) -> Option<f64> {
        (self.service_weight > 0.0).then(|| self.service_sum / self.service_weight)
    }

    /// Squared coefficient of variation of the service time (1 when unknown).
    pub fn service_scv(&self) -> f64 {
        match self.mean_service_s() {
            Some(mean) if mean > 0.0 && self.service_weight > 1.0 => {
                let second = self.service_sum_sq / self.service_weight;
                ((second - mean * mean).max(0.0) / (mean * mean)).min(100.0)
            }
            _ => 1.0,
        }
    }

    /// 95th percentile of recent per-worker PSS, in bytes.
    pub fn p95_pss_bytes(&self) -> Option<u64> {
        if self.pss.is_empty() {
            return None;
        }
        let mut sorted = self.pss.clone();
        sorted.sort_unstable();
        let index = (sorted.len() * 95).div_ceil(100).saturating_sub(1);
        sorted.get(index).copied()
    }

    /// CPU cores one busy worker uses on average.
    pub fn cpu_per_busy_worker(&self) -> Option<f64> {
        self.cpu_per_busy
    }

    /// Finished requests seen so far.
    pub fn service_samples(&self) -> u64 {
        self.service_samples
    }

    /// Confidence in the estimates, 0 to 1: the weakest of the service
    /// time, arrival rate and memory estimates, each `n / (n + k)` of its
    /// sample count (k = 100 requests, 10 intervals, 3 memory readings).
    pub fn confidence(&self) -> f64 {
        fn saturating(n: u64, k: f64) -> f64 {
            // u64 -> f64 loses precision only above 2^53 samples.
            let n = n as f64;
            n / (n + k)
        }
        let service = saturating(self.service_samples, 100.0);
        let rate = saturating(self.rate_intervals, 10.0);
        let memory = saturating(self.pss_observations, 3.0);
        service.min(rate).min(memory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_poisson_like_rate_has_no_excess_variability() {
        let mut estimates = Estimates::default();
        // Alternating 95 and 105 arrivals per second: deviations well within
        // Poisson noise (sd 10 at rate 100 over 1 s).
        for i in 0..200 {
            let arrivals = if i % 2 == 0 { 95.0 } else { 105.0 };
            estimates.add_arrivals(arrivals, 1.0, 60.0);
        }
        let rate = estimates.arrival_rate().expect("rate");
        assert!((rate - 100.0).abs() < 3.0, "{rate}");
        let excess = estimates.excess_rate_sd();
        assert!(excess < 1.0, "{excess}");
    }

    #[test]
    fn trend_follows_a_ramp() {
        let mut estimates = Estimates::default();
        for second in 0..600 {
            estimates.add_arrivals(10.0 + 0.5 * f64::from(second), 1.0, 60.0);
        }
        let trend = estimates.rate_trend();
        assert!((trend - 0.5).abs() < 0.05, "{trend}");
        let mut flat = Estimates::default();
        for _ in 0..600 {
            flat.add_arrivals(10.0, 1.0, 60.0);
        }
        assert!(flat.rate_trend().abs() < 1e-9);
    }

    #[test]
    fn bursty_rate_has_excess_variability() {
        let mut estimates = Estimates::default();
        for i in 0..200 {
            let arrivals = if i % 2 == 0 { 20.0 } else { 180.0 };
            estimates.add_arrivals(arrivals, 1.0, 60.0);
        }
        assert!(estimates.excess_rate_sd() > 50.0);
    }

    #[test]
    fn service_statistics() {
        let mut estimates = Estimates::default();
        assert_eq!(estimates.mean_service_s(), None);
        assert_eq!(estimates.service_scv(), 1.0);
        estimates.add_service(&[0.1, 0.3, f64::NAN, -1.0, f64::INFINITY], 1.0, 300.0);
        let mean = estimates.mean_service_s().expect("mean");
        assert!((mean - 0.2).abs() < 1e-12);
        assert!((estimates.service_scv() - 0.25).abs() < 1e-9);
        assert_eq!(estimates.service_samples(), 2);
    }

    #[test]
    fn pss_percentile_uses_recent_samples() {
        let mut estimates = Estimates::default();
        assert_eq!(estimates.p95_pss_bytes(), None);
        let samples: Vec<u64> = (1..=100).collect();
        estimates.add_pss(&samples);
        assert_eq!(estimates.p95_pss_bytes(), Some(95));
        estimates.add_pss(&[0, 0]);
        assert_eq!(estimates.pss_observations, 1);
        // Old samples are pushed out by new ones.
        estimates.add_pss(&vec![1000; PSS_RING]);
        assert_eq!(estimates.p95_pss_bytes(), Some(1000));
    }
}
