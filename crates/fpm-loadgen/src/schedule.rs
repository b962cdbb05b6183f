//! The rate schedule and the arrival times it produces (pure: no clock, no I/O).
//!
//! A schedule is a list of phases, each a constant rate for a duration.
//! Arrivals inside a phase form a Poisson process: gaps are exponential with
//! mean `1 / rate`. Because that process is memoryless, starting afresh at
//! each phase boundary gives exactly a Poisson process with a piecewise
//! constant rate. The same seed always gives the same arrival times, so every
//! contender of a benchmark sees the identical request stream.

use std::time::Duration;

use rand_core::Rng;
use rand_pcg::Pcg32;

/// Upper bound of the arrivals one plan may produce (about 10 minutes at
/// 16 000 requests per second); a larger plan is a typo, not a benchmark.
pub const MAX_ARRIVALS: u64 = 10_000_000;

/// A constant request rate for a duration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phase {
    /// Requests per second (0 is a pause).
    pub rate: f64,
    pub duration: Duration,
}

impl Phase {
    pub fn new(rate: f64, duration: Duration) -> Phase {
        Phase { rate, duration }
    }
}

/// What is wrong with a schedule.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("phase '{0}': expected RATE:DURATION, for example 50:30s")]
    Syntax(String),
    #[error("phase '{0}': the rate must be a finite number of requests per second >= 0")]
    Rate(String),
    #[error("phase '{0}': {1}")]
    Duration(String, String),
    #[error("the schedule has no phase")]
    Empty,
    #[error("the schedule would send about {0} requests, more than the limit of {MAX_ARRIVALS}")]
    TooLarge(u64),
}

/// Parses `RATE:DURATION` (`50:30s`, `0.5:2m`, `200:500ms`).
pub fn parse_phase(text: &str) -> Result<Phase, ScheduleError> {
    let (rate, dur) = text
        .split_once(':')
        .ok_or_else(|| ScheduleError::Syntax(text.to_owned()))?;
    let rate: f64 = rate
        .trim()
        .parse()
        .map_err(|_| ScheduleError::Rate(text.to_owned()))?;
    if !rate.is_finite() || rate < 0.0 {
        return Err(ScheduleError::Rate(text.to_owned()));
    }
    let duration = humantime::parse_duration(dur.trim())
        .map_err(|e| ScheduleError::Duration(text.to_owned(), e.to_string()))?;
    Ok(Phase { rate, duration })
}

/// Total length of a schedule.
pub fn total_duration(phases: &[Phase]) -> Duration {
    phases.iter().map(|p| p.duration).sum()
}

/// Expected number of arrivals.
pub fn expected_arrivals(phases: &[Phase]) -> f64 {
    phases
        .iter()
        .map(|p| p.rate * p.duration.as_secs_f64())
        .sum()
}

/// Checks a schedule: not empty, rates valid, size bounded.
pub fn check(phases: &[Phase]) -> Result<(), ScheduleError> {
    if phases.is_empty() {
        return Err(ScheduleError::Empty);
    }
    for p in phases {
        if !p.rate.is_finite() || p.rate < 0.0 {
            return Err(ScheduleError::Rate(format!("{}", p.rate)));
        }
    }
    // A Poisson count exceeds its mean by more than a few standard
    // deviations essentially never; the margin keeps the bound honest.
    let expected = expected_arrivals(phases);
    let bound = expected + 6.0 * expected.sqrt() + 10.0;
    if bound > MAX_ARRIVALS as f64 {
        return Err(ScheduleError::TooLarge(expected as u64));
    }
    Ok(())
}

/// Arrival offsets (from the start of the run) of a Poisson process following
/// `phases`, in increasing order. `stream` selects an independent sequence for
/// the same seed (one per target of a run).
pub fn arrivals(phases: &[Phase], seed: u64, stream: u64) -> Result<Vec<Duration>, ScheduleError> {
    check(phases)?;
    let mut rng = Pcg32::new(seed, stream);
    let mut out = Vec::with_capacity(expected_arrivals(phases).ceil() as usize + 16);
    let mut start = 0.0_f64;
    for p in phases {
        let end = start + p.duration.as_secs_f64();
        if p.rate > 0.0 {
            let mut t = start;
            loop {
                t += exponential(&mut rng, p.rate);
                if t >= end {
                    break;
                }
                out.push(Duration::from_secs_f64(t));
                if out.len() as u64 >= MAX_ARRIVALS {
                    return Err(ScheduleError::TooLarge(out.len() as u64));
                }
            }
        }
        start = end;
    }
    Ok(out)
}

/// An exponential gap with the given rate, by inversion.
fn exponential(rng: &mut Pcg32, rate: f64) -> f64 {
    // 53 random bits give a uniform in [0, 1); 1 - u is in (0, 1], so the
    // logarithm is finite.
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    -(1.0 - u).ln() / rate
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn parses_phases() {
        assert_eq!(parse_phase("50:30s").unwrap(), Phase::new(50.0, secs(30.0)));
        assert_eq!(parse_phase("0.5:2m").unwrap(), Phase::new(0.5, secs(120.0)));
        assert_eq!(
            parse_phase(" 200 : 500ms ").unwrap(),
            Phase::new(200.0, secs(0.5))
        );
        assert!(matches!(parse_phase("50"), Err(ScheduleError::Syntax(_))));
        assert!(matches!(parse_phase("-1:1s"), Err(ScheduleError::Rate(_))));
        assert!(matches!(parse_phase("NaN:1s"), Err(ScheduleError::Rate(_))));
        assert!(matches!(
            parse_phase("5:soon"),
            Err(ScheduleError::Duration(..))
        ));
    }

    #[test]
    fn same_seed_same_arrivals_other_seed_or_stream_differs() {
        let phases = [Phase::new(100.0, secs(5.0))];
        let a = arrivals(&phases, 7, 0).unwrap();
        assert_eq!(a, arrivals(&phases, 7, 0).unwrap());
        assert_ne!(a, arrivals(&phases, 8, 0).unwrap());
        assert_ne!(a, arrivals(&phases, 7, 1).unwrap());
    }

    #[test]
    fn arrivals_are_sorted_and_inside_the_schedule() {
        let phases = [
            Phase::new(20.0, secs(2.0)),
            Phase::new(0.0, secs(1.0)),
            Phase::new(300.0, secs(1.0)),
        ];
        let a = arrivals(&phases, 1, 0).unwrap();
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert!(a.iter().all(|t| *t < secs(4.0)));
        // Nothing during the pause.
        assert!(a.iter().all(|t| *t < secs(2.0) || *t >= secs(3.0)));
    }

    #[test]
    fn counts_follow_each_phase_rate() {
        // 200/s for 50 s then 2000/s for 10 s: Poisson counts 10 000 and
        // 20 000, standard deviations 100 and ~141; 5 sigma bounds.
        let phases = [
            Phase::new(200.0, secs(50.0)),
            Phase::new(2000.0, secs(10.0)),
        ];
        let a = arrivals(&phases, 42, 0).unwrap();
        let first = a.iter().filter(|t| **t < secs(50.0)).count() as f64;
        let second = a.len() as f64 - first;
        assert!((first - 10_000.0).abs() < 500.0, "{first}");
        assert!((second - 20_000.0).abs() < 710.0, "{second}");
    }

    #[test]
    fn gaps_are_exponential() {
        // Mean gap 1/rate and coefficient of variation 1 (a Poisson process,
        // not a fixed pace): 100 000 gaps at rate 50.
        let a = arrivals(&[Phase::new(50.0, secs(2000.0))], 3, 0).unwrap();
        let gaps: Vec<f64> = a.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        let n = gaps.len() as f64;
        let mean = gaps.iter().sum::<f64>() / n;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n;
        assert!((mean - 0.02).abs() < 0.0005, "mean {mean}");
        let cv = var.sqrt() / mean;
        assert!((cv - 1.0).abs() < 0.03, "cv {cv}");
        // The share of gaps above the mean is e^-1 for an exponential.
        let above = gaps.iter().filter(|g| **g > 0.02).count() as f64 / n;
        assert!((above - (-1.0f64).exp()).abs() < 0.01, "{above}");
    }

    #[test]
    fn refuses_empty_and_huge_schedules() {
        assert_eq!(arrivals(&[], 1, 0), Err(ScheduleError::Empty));
        assert!(matches!(
            arrivals(&[Phase::new(1e6, secs(3600.0))], 1, 0),
            Err(ScheduleError::TooLarge(_))
        ));
        assert_eq!(
            total_duration(&[Phase::new(1.0, secs(2.0)), Phase::new(5.0, secs(3.0))]),
            secs(5.0)
        );
    }
}
