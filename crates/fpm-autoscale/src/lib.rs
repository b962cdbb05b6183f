//! Autoscaling for PHP-FPM pools: a pure, model-based policy and a
//! deterministic simulator that compares it with php-fpm's own managers.
//!
//! Architecture invariant: nothing here performs I/O, reads a clock or
//! spawns tasks. The daemon collects an [`Observation`] per pool, calls
//! [`decide`] with the pool's [`Policy`] and last [`ScalerState`], stores
//! the returned state (it serialises, so it survives a restart) and
//! applies [`Action::Resize`]: the pool runs `pm = ondemand` and `workers`
//! is its cap `pm.max_children`, moved by a hand-over to a new master (or
//! additively: an extra master beside the running one for a larger cap).
//! [`Observation::total`] is then the applied cap, so the emergency rule
//! reads "cap reached with a growing queue". The simulator in [`sim`]
//! drives the very same `decide` against a modelled pool.
//!
//! Wiring, per pool and per collection:
//!
//! ```
//! use fpm_autoscale::{accepted_delta, decide, Action, Observation, Policy, ScalerState};
//!
//! # fn main() -> Result<(), fpm_autoscale::PolicyError> {
//! let policy = Policy::from_yaml("max_workers: 16\n")?;
//! // Created when the manager takes the pool over, with its current size.
//! let mut state = ScalerState::new(0, 4);
//! let mut previous_accepted = None;
//! for (now_ms, accepted_total) in [(5_000, 200), (10_000, 410)] {
//!     let pss = [60 << 20, 62 << 20, 61 << 20, 59 << 20];
//!     let durations = [0.05, 0.04, 0.06];
//!     let observation = Observation {
//!         now_ms,
//!         accepted: accepted_delta(previous_accepted, accepted_total),
//!         queue_len: 0,
//!         busy: 1,
//!         idle: 3,
//!         total: 4,
//!         worker_pss_bytes: &pss,
//!         finished_service_s: &durations,
//!         cpu_cores_used: Some(0.3),
//!         cpu_cores_limit: None,
//!         memory_budget_bytes: Some(2 << 30),
//!         shared_memory_bytes: 128 << 20,
//!         share_cap_workers: None,
//!         change_in_flight: false,
//!     };
//!     previous_accepted = Some(accepted_total);
//!     let (decision, next) = decide(&policy, &state, &observation);
//!     state = next; // store it: the scaler has no other memory
//!     match decision.action {
//!         Action::Resize { workers, reason } => {
//!             // Hand over to a master with `pm.max_children = workers` and
//!             // record an event labelled `reason.rule()` with the figures.
//!             let _ = (workers, reason);
//!         }
//!         Action::Advise { .. } | Action::Hold(_) => {}
//!     }
//! }
//! assert_eq!(state.workers(), 4); // still learning: no change
//! # Ok(())
//! # }
//! ```
//!
//! Modules: [`erlang`] (the queueing model), `learn` (running estimates
//! and confidence), `decide` (the rules), `policy` (validated
//! configuration), `share` (one budget, several pools), [`sim`].

pub mod caps;
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
pub use share::{share_budget, share_budget_protecting_needs, PoolDemand, PoolShare};
pub use sim::{simulate_report, simulate_report_policy, SimError, TraceSpec};
