//! Autoscaling for PHP-FPM pools: a pure, model-based policy and a
//! deterministic simulator that compares it with php-fpm's own managers.
//!
//! Architecture invariant: nothing here performs I/O, reads a clock or
//! spawns tasks. The daemon collects an [`Observation`] per pool, calls
//! [`decide`] with the pool's [`Policy`] and last [`ScalerState`], stores
//! the returned state and applies [`Action::Resize`] (a reload with
//! `pm = static`, `pm.max_children = workers`). The simulator in [`sim`]
//! drives the very same `decide` against a modelled pool.
//!
//! Modules: [`erlang`] (the queueing model), `learn` (running estimates
//! and confidence), `decide` (the rules), `policy` (validated
//! configuration), `share` (one budget, several pools), [`sim`].

mod decide;
pub mod erlang;
mod learn;
mod observe;
mod policy;
mod share;
pub mod sim;

pub use decide::{
    decide, Action, Decision, Figures, HoldReason, Mode, Phase, ResizeReason, ScalerState,
};
pub use learn::Estimates;
pub use observe::{accepted_delta, Observation};
pub use policy::{LearningSpec, Policy, PolicyError, PolicyProblem, PolicySpec};
pub use share::{share_budget, PoolDemand, PoolShare};
pub use sim::{simulate_report, SimError, TraceSpec};
