//! An open-loop HTTP load generator for loopback targets.
//!
//! Requests are sent at their scheduled times whether or not earlier ones
//! have finished, so a server that falls behind builds a visible queue (a
//! closed loop such as `wrk -c N` waits for each answer before the next
//! request and hides exactly that). Arrivals are Poisson with a piecewise
//! constant rate ([`schedule`]), drawn from a fixed seed so that every run of
//! a plan sends the identical stream. Every request is recorded (due time,
//! send time, latency, status or error) and summarised ([`stats`]).
//!
//! Only loopback targets are accepted ([`target`]), and every run is bounded
//! in count and time ([`run`]).

pub mod run;
pub mod schedule;
pub mod stats;
pub mod target;

pub use run::{get, run, Plan, PlanError, RunResult, Stream};
pub use schedule::{arrivals, parse_phase, Phase};
pub use stats::{per_second, percentile, summarize, ErrorKind, Outcome, Record, Second, Summary};
pub use target::{Target, TargetError};
