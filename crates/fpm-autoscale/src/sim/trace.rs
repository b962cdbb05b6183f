//! Arrival-rate traces: the built-in shapes and CSV `time,rate` files.
//!
//! Every trace becomes a piecewise-linear rate curve (requests per second
//! over seconds). Arrivals are drawn from a Poisson process with that
//! time-varying rate.

use super::SimError;

/// Base arrival rate of the built-in traces, requests per second.
pub const BASE_RATE: f64 = 40.0;

/// Which arrivals to simulate.
#[derive(Debug, Clone, PartialEq)]
pub enum TraceSpec {
    /// 40 req/s for 30 minutes.
    Steady,
    /// 40 req/s, 3x from 1/3 to 2/3 of 30 minutes.
    Step,
    /// 40 req/s for 30 minutes, 10x for 30 s in the middle.
    Spike,
    /// A day compressed into one hour: 10 req/s at night, 70 at noon.
    Diurnal,
    /// 10 to 300 req/s linearly over 30 minutes.
    Ramp,
    /// A CSV text of `time_s,rate` rows (header optional); the rate is
    /// interpolated linearly and the trace ends at the last time.
    Csv(String),
}

impl TraceSpec {
    /// The built-in traces in table order.
    pub const BUILTIN: [&'static str; 5] = ["steady", "step", "spike", "diurnal", "ramp"];

    /// A built-in trace by name.
    pub fn builtin(name: &str) -> Option<TraceSpec> {
        match name {
            "steady" => Some(TraceSpec::Steady),
            "step" => Some(TraceSpec::Step),
            "spike" => Some(TraceSpec::Spike),
            "diurnal" => Some(TraceSpec::Diurnal),
            "ramp" => Some(TraceSpec::Ramp),
            _ => None,
        }
    }

    /// Short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            TraceSpec::Steady => "steady",
            TraceSpec::Step => "step",
            TraceSpec::Spike => "spike",
            TraceSpec::Diurnal => "diurnal",
            TraceSpec::Ramp => "ramp",
            TraceSpec::Csv(_) => "csv",
        }
    }

    /// Default length of a built-in trace, seconds.
    pub fn default_duration_s(&self) -> f64 {
        match self {
            TraceSpec::Diurnal => 3600.0,
            _ => 1800.0,
        }
    }

    /// The rate curve. `duration_s` stretches or shrinks a built-in shape
    /// (the spike keeps its 30 s); CSV traces ignore it.
    pub(crate) fn curve(&self, duration_s: Option<f64>) -> Result<RateCurve, SimError> {
        let d = duration_s.unwrap_or_else(|| self.default_duration_s());
        if !(d.is_finite() && d > 0.0) {
            return Err(SimError::Duration(d));
        }
        let b = BASE_RATE;
        let points = match self {
            TraceSpec::Steady => vec![(0.0, b), (d, b)],
            TraceSpec::Step => {
                let (up, down) = (d / 3.0, 2.0 * d / 3.0);
                vec![
                    (0.0, b),
                    (up, b),
                    (up, 3.0 * b),
                    (down, 3.0 * b),
                    (down, b),
                    (d, b),
                ]
            }
            TraceSpec::Spike => {
                let start = d / 2.0;
                let end = (start + 30.0).min(d);
                vec![
                    (0.0, b),
                    (start, b),
                    (start, 10.0 * b),
                    (end, 10.0 * b),
                    (end, b),
                    (d, b),
                ]
            }
            TraceSpec::Diurnal => {
                let steps = 240;
                (0..=steps)
                    .map(|i| {
                        let t = d * f64::from(i) / f64::from(steps);
                        let phase = 2.0 * std::f64::consts::PI * t / d;
                        (t, b * (1.0 - 0.75 * phase.cos()))
                    })
                    .collect()
            }
            TraceSpec::Ramp => vec![(0.0, 0.25 * b), (d, 7.5 * b)],
            TraceSpec::Csv(text) => parse_csv(text)?,
        };
        Ok(RateCurve { points })
    }
}

/// Piecewise-linear rate over time; points sorted by time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RateCurve {
    points: Vec<(f64, f64)>,
}

impl RateCurve {
    pub(crate) fn duration_s(&self) -> f64 {
        self.points.last().map_or(0.0, |&(t, _)| t)
    }

    pub(crate) fn max_rate(&self) -> f64 {
        self.points.iter().map(|&(_, r)| r).fold(0.0, f64::max)
    }

    /// Expected number of arrivals (the integral of the rate).
    pub(crate) fn expected_arrivals(&self) -> f64 {
        self.points
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
            .sum()
    }

    /// Rate at time `t` (the later value at a step).
    pub(crate) fn rate_at(&self, t: f64) -> f64 {
        let index = self.points.partition_point(|&(time, _)| time <= t);
        if index == 0 {
            return self.points.first().map_or(0.0, |&(_, r)| r);
        }
        if index >= self.points.len() {
            return self.points.last().map_or(0.0, |&(_, r)| r);
        }
        let (t0, r0) = self.points[index - 1];
        let (t1, r1) = self.points[index];
        if t1 <= t0 {
            return r1;
        }
        r0 + (r1 - r0) * (t - t0) / (t1 - t0)
    }
}

fn parse_csv(text: &str) -> Result<Vec<(f64, f64)>, SimError> {
    let mut points: Vec<(f64, f64)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(',').map(str::trim);
        let (Some(time), Some(rate), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(csv_error(
                line_no,
                line,
                "expected two fields 'time_s,rate'",
            ));
        };
        let (Ok(time), Ok(rate)) = (time.parse::<f64>(), rate.parse::<f64>()) else {
            if points.is_empty() && line_no == 1 {
                continue; // header
            }
            return Err(csv_error(line_no, line, "time and rate must be numbers"));
        };
        if !(time.is_finite() && time >= 0.0 && rate.is_finite() && rate >= 0.0) {
            return Err(csv_error(
                line_no,
                line,
                "time and rate must be finite and not negative",
            ));
        }
        if points.last().is_some_and(|&(last, _)| time < last) {
            return Err(csv_error(line_no, line, "times must not decrease"));
        }
        points.push((time, rate));
    }
    if points.len() < 2 || points.last().is_some_and(|&(t, _)| t <= 0.0) {
        return Err(SimError::Csv {
            line: 0,
            text: String::new(),
            message: "a trace needs at least two rows spanning a positive time".to_owned(),
        });
    }
    Ok(points)
}

fn csv_error(line: usize, text: &str, message: &str) -> SimError {
    SimError::Csv {
        line,
        text: text.to_owned(),
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_shapes() {
        let spike = TraceSpec::Spike.curve(None).expect("curve");
        assert_eq!(spike.duration_s(), 1800.0);
        assert_eq!(spike.rate_at(100.0), BASE_RATE);
        assert_eq!(spike.rate_at(915.0), 10.0 * BASE_RATE);
        assert_eq!(spike.rate_at(931.0), BASE_RATE);
        let ramp = TraceSpec::Ramp.curve(Some(100.0)).expect("curve");
        assert!((ramp.rate_at(50.0) - 3.875 * BASE_RATE).abs() < 1e-9);
        let diurnal = TraceSpec::Diurnal.curve(None).expect("curve");
        assert!((diurnal.rate_at(0.0) - 10.0).abs() < 1e-9);
        assert!((diurnal.rate_at(1800.0) - 70.0).abs() < 1e-9);
        let steady = TraceSpec::Steady.curve(Some(10.0)).expect("curve");
        assert!((steady.expected_arrivals() - 400.0).abs() < 1e-9);
    }

    #[test]
    fn csv_traces() {
        let curve = TraceSpec::Csv("time,rate\n0,10\n10,30\n".to_owned())
            .curve(None)
            .expect("curve");
        assert_eq!(curve.rate_at(5.0), 20.0);
        assert_eq!(curve.max_rate(), 30.0);
        for (text, line) in [
            ("0,1\n5,x\n", 2),
            ("0,1\n5,-1\n", 2),
            ("0,1\n5,2\n3,1\n", 3),
            ("0,1,2\n", 1),
        ] {
            match TraceSpec::Csv(text.to_owned()).curve(None) {
                Err(SimError::Csv { line: got, .. }) => assert_eq!(got, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(TraceSpec::Csv("0,1\n".to_owned()).curve(None).is_err());
        assert!(TraceSpec::Steady.curve(Some(f64::NAN)).is_err());
    }
}
