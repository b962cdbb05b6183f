//! Pure storage logic with the time passed in: bucket aggregates (rollups), counter
//! increases across resets, tier choice for a query, step bucketing, retention cut-offs and
//! sample admission. Nothing here touches SQLite or reads a clock.

use crate::model::{duration_ms, MetricKind, Point, Retention, Tier, TimestampMs};

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;

/// Most points one query may return (per series).
pub const MAX_POINTS: i64 = 11_000;

/// Longest step a query may use; also keeps every `t + step` far from overflow.
pub const MAX_STEP_MS: i64 = 366 * 24 * HOUR_MS;

/// Samples further in the future than this are rejected (a clock gone wrong).
pub const MAX_FUTURE_MS: i64 = 10 * MINUTE_MS;

/// Start of the bucket of width `width` that holds `ts` (floor division, negative-safe).
pub fn bucket_start(ts: TimestampMs, width: i64) -> TimestampMs {
    ts.div_euclid(width) * width
}

/// The increase of a counter from `prev` to `next`; a drop means the counter was reset
/// (php-fpm reloaded) and restarted from zero, so the increase is `next` itself.
pub fn counter_increase(prev: f64, next: f64) -> f64 {
    if next >= prev {
        next - prev
    } else {
        next.max(0.0)
    }
}

/// Summary of the samples in one bucket; mergeable in time order, so an hour equals the
/// merge of its minutes and a query bucket the merge of its rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agg {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// First and last value in time order.
    pub first: f64,
    pub last: f64,
    /// Counter increase between consecutive samples inside the bucket, across resets.
    pub increase: f64,
}

impl Agg {
    pub fn single(v: f64) -> Agg {
        Agg {
            count: 1,
            sum: v,
            min: v,
            max: v,
            first: v,
            last: v,
            increase: 0.0,
        }
    }

    /// Aggregates values given in time order; `None` for no values.
    pub fn of_values(values: impl IntoIterator<Item = f64>) -> Option<Agg> {
        let mut it = values.into_iter();
        let first = Agg::single(it.next()?);
        Some(it.fold(first, |acc, v| acc.then(&Agg::single(v))))
    }

    /// `self` followed in time by `next`.
    pub fn then(&self, next: &Agg) -> Agg {
        Agg {
            count: self.count + next.count,
            sum: self.sum + next.sum,
            min: self.min.min(next.min),
            max: self.max.max(next.max),
            first: self.first,
            last: next.last,
            increase: self.increase + counter_increase(self.last, next.first) + next.increase,
        }
    }
}

/// Samples `(ts, value)` sorted by time, with duplicates of one timestamp resolved to the
/// value written last (input order is write order).
pub fn dedupe_last_wins(mut samples: Vec<(TimestampMs, f64)>) -> Vec<(TimestampMs, f64)> {
    // A stable sort keeps write order among equal timestamps; keep the last of each run.
    samples.sort_by_key(|s| s.0);
    let mut out: Vec<(TimestampMs, f64)> = Vec::with_capacity(samples.len());
    for s in samples {
        match out.last_mut() {
            Some(last) if last.0 == s.0 => *last = s,
            _ => out.push(s),
        }
    }
    out
}

/// Groups time-ordered `(ts, agg)` rows into buckets of width `width`, merging in order.
pub fn group(rows: &[(TimestampMs, Agg)], width: i64) -> Vec<(TimestampMs, Agg)> {
    let mut out: Vec<(TimestampMs, Agg)> = Vec::new();
    for &(ts, a) in rows {
        let b = bucket_start(ts, width);
        match out.last_mut() {
            Some((lb, la)) if *lb == b => *la = la.then(&a),
            _ => out.push((b, a)),
        }
    }
    out
}

/// Turns time-ordered rows of one series into query points at `step`.
/// Counters: the increase of a point includes the step from the previous bucket's last
/// value to its first, so a rate never goes negative and no increase is lost at bucket
/// edges; the first bucket only counts what lies inside it.
///
/// A counter's rate divides by the part of the bucket inside `[from, to)`, so the
/// partial buckets at the edges of the range are not under-reported.
pub fn points(
    rows: &[(TimestampMs, Agg)],
    from: TimestampMs,
    to: TimestampMs,
    step: i64,
    kind: MetricKind,
) -> Vec<Point> {
    let mut prev_last: Option<f64> = None;
    group(rows, step)
        .into_iter()
        .map(|(t, a)| {
            let covered = (to.min(t.saturating_add(step)) - from.max(t)).clamp(1, step.max(1));
            let secs = covered as f64 / 1000.0;
            let p = match kind {
                MetricKind::Gauge => Point {
                    t_ms: t,
                    value: a.sum / a.count.max(1) as f64,
                    min: Some(a.min),
                    max: Some(a.max),
                    increase: None,
                    count: a.count,
                },
                MetricKind::Counter => {
                    let inc = a.increase + prev_last.map_or(0.0, |p| counter_increase(p, a.first));
                    Point {
                        t_ms: t,
                        value: inc / secs,
                        min: None,
                        max: None,
                        increase: Some(inc),
                        count: a.count,
                    }
                }
            };
            prev_last = Some(a.last);
            p
        })
        .collect()
}

/// Why a query cannot be answered as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("'from' ({from_ms} ms) must be before 'to' ({to_ms} ms)")]
    Empty { from_ms: i64, to_ms: i64 },
    #[error("step must be at least 1s (got {step_ms} ms)")]
    StepTooSmall { step_ms: i64 },
    #[error("step must be at most 366 days (got {step_ms} ms)")]
    StepTooLarge { step_ms: i64 },
    #[error("the range at this step gives {points} points, more than the limit of {max}; use a step of at least {min_step_s}s")]
    TooManyPoints {
        points: i64,
        max: i64,
        min_step_s: i64,
    },
}

/// Checks a query range and returns the number of steps it spans.
pub fn check_range(from: TimestampMs, to: TimestampMs, step: i64) -> Result<i64, RangeError> {
    if step < 1000 {
        return Err(RangeError::StepTooSmall { step_ms: step });
    }
    if step > MAX_STEP_MS {
        return Err(RangeError::StepTooLarge { step_ms: step });
    }
    if from >= to {
        return Err(RangeError::Empty {
            from_ms: from,
            to_ms: to,
        });
    }
    let span = to.saturating_sub(from);
    let points = span / step + i64::from(span % step != 0);
    if points > MAX_POINTS {
        let min_step_ms = span / MAX_POINTS + 1;
        return Err(RangeError::TooManyPoints {
            points,
            max: MAX_POINTS,
            min_step_s: (min_step_ms + 999) / 1000,
        });
    }
    Ok(points)
}

/// A step when the caller gave none: about 300 points, at least 1 s, rounded to the tier
/// a coarse step would read.
pub fn default_step(from: TimestampMs, to: TimestampMs) -> i64 {
    round_step((to.saturating_sub(from) / 300).max(1000))
}

/// `a / b` rounded up, for positive `b` (`i64::div_ceil` is not stable).
fn ceil_div(a: i64, b: i64) -> i64 {
    a / b + i64::from(a % b != 0)
}

/// Rounds a step up to whole hours, minutes or seconds, whichever unit it reaches.
fn round_step(raw: i64) -> i64 {
    let up = |unit: i64| ceil_div(raw, unit).saturating_mul(unit);
    if raw >= HOUR_MS {
        up(HOUR_MS)
    } else if raw >= MINUTE_MS {
        up(MINUTE_MS)
    } else {
        up(1000)
    }
}

/// The step to query `[from, to)` with when the caller asked for `step`: `step` itself if
/// the range then fits in [`MAX_POINTS`], otherwise the smallest step of whole seconds,
/// minutes or hours (the units [`default_step`] uses) that fits. A range so long that even
/// [`MAX_STEP_MS`] gives too many points keeps `step`, and [`check_range`] refuses it.
pub fn fit_step(from: TimestampMs, to: TimestampMs, step: i64) -> i64 {
    let span = to.saturating_sub(from);
    if step <= 0 || span <= 0 || ceil_div(span, step) <= MAX_POINTS {
        return step;
    }
    let wider = round_step(ceil_div(span, MAX_POINTS).max(step));
    if wider > MAX_STEP_MS {
        step
    } else {
        wider
    }
}

/// Oldest timestamp each tier still holds at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    pub raw: TimestampMs,
    pub minute: TimestampMs,
    pub hour: TimestampMs,
    pub events: TimestampMs,
}

pub fn cutoffs(now: TimestampMs, r: &Retention) -> Cutoffs {
    Cutoffs {
        raw: now.saturating_sub(duration_ms(r.raw)),
        minute: now.saturating_sub(duration_ms(r.minute)),
        hour: now.saturating_sub(duration_ms(r.hour)),
        events: now.saturating_sub(duration_ms(r.events)),
    }
}

/// The tier a query reads: the coarsest whose resolution fits in the step and that still
/// holds `from`; if none of those reaches back that far, the one with the longest
/// retention that does, else the hour tier.
pub fn choose_tier(now: TimestampMs, from: TimestampMs, step: i64, r: &Retention) -> Tier {
    let c = cutoffs(now, r);
    let covers = |t: Tier| match t {
        Tier::Raw => from >= c.raw,
        Tier::Minute => from >= c.minute,
        Tier::Hour => from >= c.hour,
    };
    let coarse_to_fine = [Tier::Hour, Tier::Minute, Tier::Raw];
    if let Some(t) = coarse_to_fine
        .into_iter()
        .find(|&t| t.resolution_ms() <= step && covers(t))
    {
        return t;
    }
    // The step is finer than every tier that still holds `from`: the finest one that does.
    [Tier::Raw, Tier::Minute]
        .into_iter()
        .find(|&t| covers(t))
        .unwrap_or(Tier::Hour)
}

/// Why a sample was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    NotFinite,
    /// Older than the raw retention: its minute may already be pruned, so it would make
    /// rollups disagree with the raw data.
    TooOld,
    TooNew,
}

/// Decides whether a sample taken at `ts` may be stored at `now`.
pub fn admit(ts: TimestampMs, value: f64, now: TimestampMs, r: &Retention) -> Result<(), Reject> {
    if !value.is_finite() {
        Err(Reject::NotFinite)
    } else if ts < cutoffs(now, r).raw.saturating_add(MINUTE_MS) {
        // One minute of margin, so a sample never lands in a chunk being pruned.
        Err(Reject::TooOld)
    } else if ts > now.saturating_add(MAX_FUTURE_MS) {
        Err(Reject::TooNew)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counter_rate_across_a_reload_is_never_negative() {
        // 0, 10, 20, then php-fpm reloads and the counter restarts: 3, 8.
        let rows: Vec<_> = [0.0, 10.0, 20.0, 3.0, 8.0]
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as i64 * 1000, Agg::single(v)))
            .collect();
        let pts = points(&rows, 0, 5000, 1000, MetricKind::Counter);
        assert!(pts.iter().all(|p| p.value >= 0.0), "{pts:?}");
        let total: f64 = pts.iter().filter_map(|p| p.increase).sum();
        assert_eq!(total, 10.0 + 10.0 + 3.0 + 5.0);
        // The same through one coarse bucket.
        let one = points(&rows, 0, 60_000, 60_000, MetricKind::Counter);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].increase, Some(28.0));
        assert_eq!(one[0].value, 28.0 / 60.0);
    }

    #[test]
    fn merging_minutes_equals_aggregating_everything() {
        let vals = [5.0, 1.0, 9.0, 2.0, 2.0, 7.0, 0.0, 4.0];
        let direct = Agg::of_values(vals).unwrap();
        let a = Agg::of_values(vals[..3].iter().copied()).unwrap();
        let b = Agg::of_values(vals[3..].iter().copied()).unwrap();
        assert_eq!(a.then(&b), direct);
        // 5→1 reset (+1), 1→9 (+8), 9→2 reset (+2), 2→2 (+0), 2→7 (+5), 7→0 reset (+0), 0→4 (+4).
        assert_eq!(direct.increase, 20.0);
    }

    #[test]
    fn last_write_wins_for_duplicate_timestamps() {
        let d = dedupe_last_wins(vec![(5, 1.0), (1, 2.0), (5, 3.0), (1, 4.0)]);
        assert_eq!(d, vec![(1, 4.0), (5, 3.0)]);
    }

    #[test]
    fn bucket_start_floors_negative_times() {
        assert_eq!(bucket_start(-1, 60_000), -60_000);
        assert_eq!(bucket_start(119_999, 60_000), 60_000);
    }

    #[test]
    fn tier_choice_follows_step_and_retention() {
        let r = Retention::default();
        let now = 400 * 86_400_000;
        let h = HOUR_MS;
        assert_eq!(choose_tier(now, now - 24 * h + 1, 60_000, &r), Tier::Minute);
        assert_eq!(choose_tier(now, now - h, 1000, &r), Tier::Raw);
        assert_eq!(choose_tier(now, now - h, 10_000, &r), Tier::Raw);
        assert_eq!(choose_tier(now, now - h, 3_600_000, &r), Tier::Hour);
        // Two days back at 1 s: raw no longer holds it, the minute tier does.
        assert_eq!(choose_tier(now, now - 48 * h, 1000, &r), Tier::Minute);
        // Thirty days back at 1 min: only the hour tier holds it.
        assert_eq!(choose_tier(now, now - 30 * 24 * h, 60_000, &r), Tier::Hour);
    }

    #[test]
    fn range_checks_name_the_problem() {
        assert_eq!(
            check_range(10, 10, 1000),
            Err(RangeError::Empty {
                from_ms: 10,
                to_ms: 10
            })
        );
        assert_eq!(
            check_range(0, 1, 999),
            Err(RangeError::StepTooSmall { step_ms: 999 })
        );
        assert_eq!(check_range(0, 86_400_000, 60_000), Ok(1440));
        let e = check_range(0, 7 * 86_400_000, 1000).unwrap_err();
        assert!(e.to_string().contains("use a step of at least 55s"), "{e}");
        assert!(check_range(0, 7 * 86_400_000, 55_000).is_ok());
    }

    #[test]
    fn admission_rejects_old_future_and_non_finite() {
        let r = Retention {
            raw: Duration::from_secs(3600),
            ..Retention::default()
        };
        let now = 10 * HOUR_MS;
        assert_eq!(admit(now, f64::NAN, now, &r), Err(Reject::NotFinite));
        assert_eq!(admit(now - HOUR_MS, 1.0, now, &r), Err(Reject::TooOld));
        assert_eq!(
            admit(now + MAX_FUTURE_MS + 1, 1.0, now, &r),
            Err(Reject::TooNew)
        );
        assert_eq!(admit(now - HOUR_MS + 2 * MINUTE_MS, 1.0, now, &r), Ok(()));
    }

    #[test]
    fn fit_step_widens_only_what_does_not_fit() {
        // Fits: unchanged, whatever the unit.
        assert_eq!(fit_step(0, 3_600_000, 1000), 1000);
        assert_eq!(fit_step(0, 3_600_000, 1500), 1500);
        // 30 days at 1 s is 2.6 M points: the smallest whole-minute step that fits.
        let month = 30 * 86_400_000;
        let s = fit_step(0, month, 1000);
        assert!(check_range(0, month, s).is_ok(), "{s}");
        assert_eq!(s % MINUTE_MS, 0);
        assert!(check_range(0, month, s - MINUTE_MS).is_err());
        // 11 001 s at 1 s: one point too many; 2 s is enough.
        assert_eq!(fit_step(0, 11_001_000, 1000), 2000);
        // Two thousand years still fits at some step under 366 days.
        let s = fit_step(-62_135_596_800_000, 1_764_151_200_000, HOUR_MS);
        assert!(
            check_range(-62_135_596_800_000, 1_764_151_200_000, s).is_ok(),
            "{s}"
        );
        // Beyond what any step can serve: left for check_range to refuse.
        assert_eq!(fit_step(0, i64::MAX, 1000), 1000);
        assert!(check_range(0, i64::MAX, fit_step(0, i64::MAX, 1000)).is_err());
    }

    #[test]
    fn default_step_gives_a_few_hundred_points() {
        assert_eq!(default_step(0, 3_600_000), 12_000);
        assert_eq!(default_step(0, 86_400_000), 300_000);
        assert_eq!(default_step(0, 1000), 1000);
        assert_eq!(default_step(0, 365 * 86_400_000), 30 * HOUR_MS);
    }
}
