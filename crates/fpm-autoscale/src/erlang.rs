//! Queueing model used to size a pool: Erlang C (M/M/c) with an
//! Allen–Cunneen correction for non-exponential service times.
//!
//! Why Erlang C and not square-root staffing: square-root staffing
//! (`c = a + beta * sqrt(a)`) is an asymptotic approximation of Erlang C
//! that is good for large pools but poor for the small ones PHP-FPM
//! usually runs (2 to 50 workers), where the exact formula is cheap anyway.
//! Erlang C answers the question the policy asks directly: "with `c`
//! workers and offered load `a`, what share of requests waits longer than
//! the target?".
//!
//! Numerical stability: the probability of waiting is computed from the
//! Erlang B recursion `B(k) = a B(k-1) / (k + a B(k-1))`, which needs no
//! factorials and no powers and stays within `[0, 1]` for any `a` and `c`.
//! The smallest sufficient `c` is found by walking `c` upwards while
//! updating `B` incrementally, so the search is `O(c)`.
//!
//! A target of 0 asks for the probability of waiting at all: `P(W > 0)`
//! is the Erlang C value itself, so the policy's default ("p99 wait = 0")
//! is the smallest `c` with `C(c, a) <= 1 %`.
//!
//! The tail of the waiting time in M/M/c is
//! `P(W > t) = C(c, a) * exp(-(c - a) * t / S)`. Service times of PHP
//! requests are not exponential; the Allen–Cunneen approximation scales
//! the waiting time by `(ca² + cs²) / 2`, with `ca² = 1` for Poisson
//! arrivals and `cs²` the squared coefficient of variation of the service
//! time, which this module applies to the exponent.

/// Probability that an arriving request has to wait (Erlang C formula).
///
/// Returns 1.0 when the pool is unstable (`servers <= offered`), 0.0 when
/// there is no load, and 1.0 for non-finite input so that a bad figure
/// never makes a pool look big enough.
pub fn prob_wait(servers: u32, offered: f64) -> f64 {
    if !offered.is_finite() {
        return 1.0;
    }
    if offered <= 0.0 {
        return 0.0;
    }
    let c = f64::from(servers);
    if c <= offered {
        return 1.0;
    }
    let mut blocking = 1.0;
    for k in 1..=servers {
        blocking = offered * blocking / (f64::from(k) + offered * blocking);
    }
    erlang_c_from_b(c, offered, blocking)
}

/// `P(W > t)`: share of requests that wait longer than `target_s`.
///
/// `mean_service_s` is the mean service time, `service_scv` the squared
/// coefficient of variation of the service time (1.0 = exponential).
pub fn wait_tail(
    servers: u32,
    offered: f64,
    mean_service_s: f64,
    service_scv: f64,
    target_s: f64,
) -> f64 {
    let p_wait = prob_wait(servers, offered);
    tail_from_c(
        p_wait,
        servers,
        offered,
        mean_service_s,
        service_scv,
        target_s,
    )
}

/// Smallest number of workers `c <= limit` such that at most `tail_prob`
/// of requests wait longer than `target_s`. `None` when even `limit`
/// workers are not enough (or the input is not finite).
///
/// `offered <= 0` needs no worker at all and returns `Some(0)`; the policy
/// applies its own minimum.
pub fn servers_for_wait(
    offered: f64,
    mean_service_s: f64,
    service_scv: f64,
    target_s: f64,
    tail_prob: f64,
    limit: u32,
) -> Option<u32> {
    let inputs_finite = offered.is_finite()
        && mean_service_s.is_finite()
        && service_scv.is_finite()
        && target_s.is_finite()
        && tail_prob.is_finite();
    if !inputs_finite {
        return None;
    }
    if offered <= 0.0 {
        return Some(0);
    }
    let mut blocking = 1.0;
    for c in 1..=limit {
        blocking = offered * blocking / (f64::from(c) + offered * blocking);
        let servers = f64::from(c);
        if servers <= offered {
            continue;
        }
        let p_wait = erlang_c_from_b(servers, offered, blocking);
        let tail = tail_from_c(p_wait, c, offered, mean_service_s, service_scv, target_s);
        if tail <= tail_prob {
            return Some(c);
        }
    }
    None
}

fn erlang_c_from_b(servers: f64, offered: f64, blocking: f64) -> f64 {
    let denominator = servers - offered * (1.0 - blocking);
    if denominator <= 0.0 {
        return 1.0;
    }
    (servers * blocking / denominator).clamp(0.0, 1.0)
}

fn tail_from_c(
    p_wait: f64,
    servers: u32,
    offered: f64,
    mean_service_s: f64,
    service_scv: f64,
    target_s: f64,
) -> f64 {
    let spare = f64::from(servers) - offered;
    if spare <= 0.0 || !spare.is_finite() {
        return 1.0;
    }
    if mean_service_s <= 0.0 || !mean_service_s.is_finite() {
        // No service time: nothing ever waits for long.
        return 0.0;
    }
    let variability = ((1.0 + service_scv.max(0.0)) / 2.0).max(f64::EPSILON);
    let exponent = -spare * target_s.max(0.0) / (mean_service_s * variability);
    (p_wait * exponent.exp()).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Erlang C by the textbook formula with factorials, for small c only.
    fn erlang_c_direct(c: u32, a: f64) -> f64 {
        let mut sum = 0.0;
        let mut term = 1.0;
        for k in 0..c {
            if k > 0 {
                term *= a / f64::from(k);
            }
            sum += term;
        }
        let last = term * a / f64::from(c) * f64::from(c) / (f64::from(c) - a);
        last / (sum + last)
    }

    #[test]
    fn matches_direct_formula_for_small_pools() {
        for c in 1..15 {
            for tenth in 1..(c * 10) {
                let a = f64::from(tenth) / 10.0;
                let fast = prob_wait(c, a);
                let direct = erlang_c_direct(c, a);
                assert!(
                    (fast - direct).abs() < 1e-9,
                    "c={c} a={a}: {fast} vs {direct}"
                );
            }
        }
    }

    #[test]
    fn known_value() {
        // Classic call-centre example: a = 10 erlangs, 12 agents, about 45 %.
        let p = prob_wait(12, 10.0);
        assert!((p - 0.4495).abs() < 1e-3, "{p}");
    }

    #[test]
    fn unstable_and_degenerate_inputs() {
        assert_eq!(prob_wait(3, 3.0), 1.0);
        assert_eq!(prob_wait(0, 0.5), 1.0);
        assert_eq!(prob_wait(4, 0.0), 0.0);
        assert_eq!(prob_wait(4, f64::NAN), 1.0);
        assert_eq!(servers_for_wait(f64::NAN, 0.05, 1.0, 0.05, 0.01, 100), None);
        assert_eq!(servers_for_wait(0.0, 0.05, 1.0, 0.05, 0.01, 100), Some(0));
        assert_eq!(servers_for_wait(500.0, 0.05, 1.0, 0.05, 0.01, 100), None);
    }

    #[test]
    fn large_pools_stay_finite() {
        let c = servers_for_wait(2000.0, 0.1, 1.0, 0.05, 0.01, 10_000);
        let c = c.expect("a pool of 10k workers can carry 2000 erlangs");
        assert!(c > 2000 && c < 2300, "{c}");
    }

    #[test]
    fn a_zero_target_sizes_by_the_probability_of_waiting() {
        for tenth in 1..200 {
            let a = f64::from(tenth) / 10.0;
            let c = servers_for_wait(a, 0.05, 0.5, 0.0, 0.01, 1000).expect("fits");
            assert!(prob_wait(c, a) <= 0.01, "c={c} a={a}");
            assert!(prob_wait(c - 1, a) > 0.01, "c={c} a={a}");
            // The service time's variability does not matter for P(W > 0).
            assert_eq!(servers_for_wait(a, 0.05, 3.0, 0.0, 0.01, 1000), Some(c));
        }
    }

    #[test]
    fn sizing_is_minimal_and_monotone() {
        let mut previous = 0;
        for tenth in 1..200 {
            let a = f64::from(tenth) / 10.0;
            let c = servers_for_wait(a, 0.05, 0.5, 0.05, 0.01, 1000).expect("fits");
            assert!(wait_tail(c, a, 0.05, 0.5, 0.05) <= 0.01);
            assert!(c == 1 || wait_tail(c - 1, a, 0.05, 0.5, 0.05) > 0.01);
            assert!(c >= previous, "more load never needs fewer workers");
            previous = c;
        }
    }
}
