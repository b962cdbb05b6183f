//! The pool actor: one per pool, the only owner of what the pool should
//! run. Desired = the config's spec ⊕ the operator's override (pin, pause)
//! ⊕ the autoscaler's cap, rendered by [`desired_spec`] and handed to the
//! supervisor, which runs it. A reload (new config), the autoscaler (after
//! each look) and the API (scaling controls) all reach it through typed
//! commands and get typed answers.
//!
//! After each look the actor feeds the model (`scale::observe`), plans the
//! pool's cap over the memory budget shared with the other pools
//! (`scale::plan`, through the [`Board`]), applies a new cap by a hand-over,
//! publishes the autoscaler's view, records decisions as events and
//! remembers what it learned in the runtime directory.
//!
//! Observed pools get an actor too: the model advises on them; pins and
//! resizes are refused because the manager does not run them.

mod trace;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fpm_core::fpm_conf::{PmMode, PoolSpec};
use fpm_core::PoolName;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::Pool;
use crate::events::{unix_ms, ManagerEvent, What};
use crate::scale::observe::{Context, Model};
use crate::scale::persist::{self, Remembered};
use crate::scale::plan::{self, CapStep, Damping, PlanMemory, PoolPlanInput, Pressure};
use crate::scale::{budget_bytes, policy_for, Override, ScalingView};
use crate::state::{AppState, Control};
use crate::supervisor::{ApplyError, ApplyReport, Stopped, SupervisorHandle};

/// How long a cap the supervisor refused is not tried again (doubles up to
/// an hour): a refused change is an event and backs off, never a loop.
const REFUSED_BACKOFF: Duration = Duration::from_secs(300);
/// How often what the model learned is written down between changes.
const SAVE_EVERY: Duration = Duration::from_secs(60);

/// Every pool's planning input, shared so that each actor plans its cap
/// against the others' applied caps and demands.
#[derive(Debug, Default)]
pub struct Board {
    pools: Mutex<BTreeMap<PoolName, PoolPlanInput>>,
}

impl Board {
    /// Records a pool's new applied cap at once, so the other pools plan
    /// against it rather than against its previous one.
    fn set_applied(&self, name: &PoolName, cap: u32) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pools.get_mut(name) {
            p.applied_cap = cap;
        }
    }

    fn set_draining(&self, name: &PoolName, workers: u32) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pools.get_mut(name) {
            p.draining = workers;
        }
    }

    /// The other pools on the board.
    fn others(&self, name: &PoolName) -> Vec<PoolName> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.keys().filter(|n| *n != name).cloned().collect()
    }

    fn set(&self, name: &PoolName, input: PoolPlanInput) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.insert(name.clone(), input);
    }

    /// Puts the pool's entry on the board and plans its cap over every
    /// entry, under one lock: two pools planning at the same moment never
    /// both grow into the same free memory, because a growth `plan`
    /// decides to make (its last answer) is reserved before the lock is let
    /// go. `plan` gets the entries and the pool's index among them.
    fn plan(
        &self,
        name: &PoolName,
        input: PoolPlanInput,
        plan: impl FnOnce(&[PoolPlanInput], usize) -> (Option<u32>, CapStep, PlanMemory, bool),
    ) -> (Option<u32>, CapStep, PlanMemory) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.insert(name.clone(), input);
        let all: Vec<PoolPlanInput> = pools.values().cloned().collect();
        let me = pools.keys().position(|n| n == name).unwrap_or(0);
        let (share, step, memory, reserve) = plan(&all, me);
        if let (CapStep::Change { to, .. }, true) = (&step, reserve) {
            if let Some(p) = pools.get_mut(name) {
                p.applied_cap = p.applied_cap.max(*to);
            }
        }
        (share, step, memory)
    }

    /// Forgets a removed pool: its memory is free for the others.
    pub fn remove(&self, name: &PoolName) {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }
}

/// An operator's scaling control.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlAction {
    Pin {
        workers: u32,
        until: Option<SystemTime>,
        reason: Option<String>,
    },
    Unpin,
    Pause {
        reason: Option<String>,
    },
    Resume,
}

impl ControlAction {
    pub fn name(&self) -> &'static str {
        match self {
            ControlAction::Pin { .. } => "pin",
            ControlAction::Unpin => "unpin",
            ControlAction::Pause { .. } => "pause",
            ControlAction::Resume => "resume",
        }
    }
}

/// Why a control was refused. Nothing changed in any case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("pool {0} is observed: the manager does not run it, so it cannot be pinned; its scaling is advice only")]
    Observed(String),
    #[error("{workers} workers is outside the pool's scaling limits {min}..{max}")]
    OutOfRange { workers: u32, min: u32, max: u32 },
    #[error("autoscaling is not enabled for pool {0} (scaling.enabled); there is nothing to pause or resume")]
    NotAutoscaled(String),
    #[error("the pin's end is in the past")]
    UntilInPast,
    #[error("{0}")]
    Apply(ApplyError),
    #[error("the pool is being stopped")]
    Gone,
}

/// What a control did.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlOutcome {
    pub override_: Override,
    /// `pm.max_children` of the running master after the control.
    pub applied_workers: Option<u32>,
}

/// An operator's action on a supervised pool's master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterAction {
    /// A hand-over to a new master with the pool's current spec: every
    /// worker starts afresh, nothing is dropped.
    Reload,
    /// The same, with the pool's compiled-script cache (`opcache.file_cache`)
    /// emptied first, so the new master compiles every script again.
    Restart,
}

impl MasterAction {
    pub fn name(self) -> &'static str {
        match self {
            MasterAction::Reload => "reload",
            MasterAction::Restart => "restart",
        }
    }
}

/// Why an action on a master was refused. The running master (if any)
/// keeps serving as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MasterError {
    #[error("pool {0} is observed: the manager does not run its master, so it cannot reload or restart it; do that where the pool runs")]
    Observed(String),
    #[error("{0}")]
    Apply(ApplyError),
    #[error("the pool is being stopped")]
    Gone,
}

/// What a pool actor can be asked.
#[derive(Debug)]
pub enum PoolCommand {
    /// A reload changed the pool's config (same identity).
    ApplyConfig { pool: Box<Pool> },
    Control {
        action: ControlAction,
        actor: &'static str,
        reply: oneshot::Sender<Result<ControlOutcome, ControlError>>,
        /// The requester's span (an API request): the change is its child.
        span: tracing::Span,
    },
    /// An operator's reload or restart of the pool's master.
    Master {
        action: MasterAction,
        actor: &'static str,
        /// Why, for the `pool_change` event.
        reason: Option<String>,
        reply: oneshot::Sender<Result<ApplyReport, MasterError>>,
    },
}

/// The way to talk to a pool actor.
#[derive(Debug, Clone)]
pub struct PoolHandle {
    pub name: PoolName,
    tx: mpsc::Sender<PoolCommand>,
}

impl PoolHandle {
    pub async fn control(
        &self,
        action: ControlAction,
        actor: &'static str,
    ) -> Result<ControlOutcome, ControlError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(PoolCommand::Control {
                action,
                actor,
                reply,
                span: tracing::Span::current(),
            })
            .await
            .map_err(|_| ControlError::Gone)?;
        rx.await.map_err(|_| ControlError::Gone)?
    }

    /// Reloads or restarts the pool's master by a hand-over; answers when the
    /// new master serves (or the change was refused).
    pub async fn master(
        &self,
        action: MasterAction,
        actor: &'static str,
        reason: Option<String>,
    ) -> Result<ApplyReport, MasterError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(PoolCommand::Master {
                action,
                actor,
                reason,
                reply,
            })
            .await
            .map_err(|_| MasterError::Gone)?;
        rx.await.map_err(|_| MasterError::Gone)?
    }

    /// Hands the actor a reloaded config for its pool.
    pub async fn apply_config(&self, pool: Pool) {
        let _ = self
            .tx
            .send(PoolCommand::ApplyConfig {
                pool: Box::new(pool),
            })
            .await;
    }
}

/// The spec a supervised pool should run. Pure.
///
/// - pinned: `pm = static` with exactly the pinned workers;
/// - autoscaled: `pm = ondemand` with `pm.max_children` at the cap (the
///   running master forks warm workers on demand up to it);
/// - otherwise the config's spec as written.
pub fn desired_spec(
    base: &PoolSpec,
    autoscaled: bool,
    override_: &Override,
    cap: Option<u32>,
) -> PoolSpec {
    let mut spec = base.clone();
    match override_ {
        Override::Pinned { workers, .. } => {
            spec.pm = PmMode::Static;
            spec.max_children = *workers;
        }
        Override::Auto | Override::Paused { .. } if autoscaled => {
            spec.pm = PmMode::Ondemand;
            if let Some(cap) = cap {
                spec.max_children = cap;
            }
        }
        Override::Auto | Override::Paused { .. } => {}
    }
    spec
}

/// One pool's actor.
pub struct PoolActor {
    pool: Pool,
    state: Arc<AppState>,
    supervisor: Option<SupervisorHandle>,
    board: Arc<Board>,
    rx: mpsc::Receiver<PoolCommand>,
    model: Option<Model>,
    override_: Override,
    /// The autoscaler's cap (autoscaled pools).
    cap: Option<u32>,
    plan: PlanMemory,
    damping: Damping,
    remember_at: Option<PathBuf>,
    last_seq: u64,
    last_rule: String,
    changes: u64,
    last_change: Option<SystemTime>,
    last_error: Option<String>,
    refused: Option<(u32, tokio::time::Instant, Duration)>,
    last_saved: tokio::time::Instant,
    /// The model's last decision and the budget share of the last look,
    /// published again with every change of the control part.
    last_decision: Option<fpm_autoscale::Decision>,
    planned_cap: Option<u32>,
    /// After a hand-over to a smaller cap: the cap before, until the
    /// replaced master has exited.
    draining: Option<(u32, Stopped)>,
    /// When this pool last kicked the others' collectors.
    last_kick: Option<tokio::time::Instant>,
    /// What one more worker costs and what the workers share, from the
    /// last look that read their memory (`scale::observe::worker_memory`).
    memory: Option<(u64, u64)>,
}

/// A pool whose requests wait for memory other pools hold kicks their
/// collectors at most this often, so that they look (and give way) now
/// instead of at their next regular look.
const KICK_EVERY: Duration = Duration::from_secs(1);

impl PoolActor {
    /// Builds the actor and restores what an earlier manager remembered.
    /// Returns the spec the supervisor should start with (so an adopted
    /// master that runs the remembered cap is kept as it is).
    pub fn new(
        pool: Pool,
        state: Arc<AppState>,
        supervisor: Option<SupervisorHandle>,
        board: Arc<Board>,
        remember_at: Option<PathBuf>,
    ) -> (PoolActor, PoolHandle) {
        let (tx, rx) = mpsc::channel(16);
        let handle = PoolHandle {
            name: pool.name.clone(),
            tx,
        };
        let remembered = match remember_at.as_deref().map(persist::load) {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                tracing::warn!(
                    pool = pool.name.as_str(),
                    "Cannot read the autoscaler's remembered state: {e}; starting afresh."
                );
                None
            }
            None => None,
        };
        let model = match policy_for(&pool) {
            Ok(policy) => {
                let restored = remembered
                    .as_ref()
                    .and_then(|r| r.model.clone())
                    .and_then(|v| serde_json::from_value(v).ok());
                Some(Model::new(policy, restored))
            }
            Err(e) => {
                tracing::warn!(
                    pool = pool.name.as_str(),
                    "No autoscaler for this pool: {e}."
                );
                None
            }
        };
        // The operator's last word (an API control) stands unless the
        // config's own pin or pause changed since it was written.
        let configured = Override::from_config(&pool);
        let override_ = match &remembered {
            Some(r) if r.configured == configured => r.override_.clone(),
            _ => configured,
        };
        let cap = remembered.as_ref().and_then(|r| r.cap).map(|c| {
            c.clamp(
                pool.scaling.min_workers.max(1),
                pool.scaling.max_workers.max(1),
            )
        });
        let plan = remembered.as_ref().map(|r| r.plan).unwrap_or_default();
        let actor = PoolActor {
            pool,
            state,
            supervisor,
            board,
            rx,
            model,
            override_,
            cap,
            plan,
            damping: Damping::default(),
            remember_at,
            last_seq: 0,
            last_rule: String::new(),
            changes: 0,
            last_change: None,
            last_error: None,
            refused: None,
            last_saved: tokio::time::Instant::now(),
            last_decision: None,
            planned_cap: None,
            draining: None,
            last_kick: None,
            memory: None,
        };
        (actor, handle)
    }

    fn name(&self) -> &str {
        self.pool.name.as_str()
    }

    /// Workers a replaced master may still run (its cap), 0 once it has
    /// exited.
    fn draining_workers(&mut self) -> u32 {
        if self.draining.as_ref().is_some_and(|(_, s)| s.is_set()) {
            self.draining = None;
        }
        self.draining.as_ref().map_or(0, |(n, _)| *n)
    }

    /// Kicks the other pools' collectors (at most every [`KICK_EVERY`]).
    fn kick_others(&mut self) {
        let now = tokio::time::Instant::now();
        if self.last_kick.is_some_and(|t| now - t < KICK_EVERY) {
            return;
        }
        self.last_kick = Some(now);
        for other in self.board.others(&self.pool.name) {
            self.state.kick(&other);
        }
    }

    /// The memory budget of all autoscaled pools now.
    fn budget(&self) -> Option<u64> {
        let host = self.state.host.read().unwrap_or_else(|e| e.into_inner());
        budget_bytes(
            &self.state.config().scaling.memory_budget,
            host.as_ref().and_then(|h| h.as_ref().ok()),
        )
    }

    fn autoscaled(&self) -> bool {
        self.pool.spec.is_some() && self.pool.scaling.enabled
    }

    /// The cap an autoscaled pool starts with before the planner has
    /// looked: the remembered one, else what the budget allows for the
    /// scaling maximum at the assumed worker size.
    fn initial_cap(&self) -> u32 {
        let min = self.pool.scaling.min_workers.max(1);
        let max = self.pool.scaling.max_workers.max(min);
        if let Some(cap) = self.cap {
            return cap;
        }
        let budget = self.budget();
        // Pools that start together split the budget until their shares are
        // planned, so they do not all start at the whole of it.
        let autoscaled = self
            .state
            .config()
            .pools
            .iter()
            .filter(|p| p.spec.is_some() && p.scaling.enabled)
            .count()
            .max(1) as u64;
        let fits = budget.map_or(max, |b| {
            u32::try_from(b / plan::ASSUMED_WORKER_BYTES / autoscaled).unwrap_or(u32::MAX)
        });
        fits.clamp(min, max)
    }

    /// The spec the pool should run now, if supervised.
    pub fn desired(&mut self) -> Option<PoolSpec> {
        let base = self.pool.spec.as_ref()?;
        let autoscaled = self.autoscaled();
        if autoscaled && self.cap.is_none() {
            self.cap = Some(self.initial_cap());
        }
        Some(desired_spec(base, autoscaled, &self.override_, self.cap))
    }

    /// Runs until cancelled or until every handle is dropped.
    pub async fn run(mut self, cancel: CancellationToken) {
        let looked = self.state.look_handle(&self.pool.name);
        self.publish(None);
        loop {
            let pin_ends = self.pin_ends_in();
            tokio::select! {
                _ = cancel.cancelled() => break,
                cmd = self.rx.recv() => match cmd {
                    None => break,
                    Some(PoolCommand::ApplyConfig { pool }) => self.on_config(*pool).await,
                    Some(PoolCommand::Control { action, actor, reply, span }) => {
                        let res = self.on_control(action, actor).instrument(span).await;
                        let _ = reply.send(res);
                    }
                    Some(PoolCommand::Master { action, actor, reason, reply }) => {
                        let res = self.on_master(action, actor, reason).await;
                        let _ = reply.send(res);
                    }
                },
                _ = looked.notified() => self.on_look().await,
                _ = sleep_for(pin_ends) => {
                    tracing::info!(pool = self.name(), "The pin has ended; the autoscaler decides again.");
                    let _ = self.on_control(ControlAction::Unpin, "schedule").await;
                }
            }
        }
        self.save();
        self.board.remove(&self.pool.name);
    }

    fn pin_ends_in(&self) -> Option<Duration> {
        match &self.override_ {
            Override::Pinned {
                until_ms: Some(until),
                ..
            } => {
                let left = *until - unix_ms(SystemTime::now());
                Some(Duration::from_millis(u64::try_from(left).unwrap_or(0)))
            }
            _ => None,
        }
    }

    /// A reload: keep what was learned, the applied cap and the operator's
    /// override unless the config now says otherwise; apply the new spec.
    async fn on_config(&mut self, pool: Pool) {
        let configured = Override::from_config(&pool);
        let was_configured = Override::from_config(&self.pool);
        if configured != was_configured {
            self.override_ = configured;
        }
        if let (Some(model), Ok(policy)) = (self.model.as_mut(), policy_for(&pool)) {
            model.set_policy(policy);
        }
        if let Some(cap) = self.cap {
            let min = pool.scaling.min_workers.max(1);
            self.cap = Some(cap.clamp(min, pool.scaling.max_workers.max(min)));
        }
        self.pool = pool;
        if let Some(spec) = self.desired() {
            let _ = self.apply(spec, "configuration reloaded").await;
        }
        self.publish(None);
    }

    async fn on_control(
        &mut self,
        action: ControlAction,
        actor: &'static str,
    ) -> Result<ControlOutcome, ControlError> {
        let name = self.name().to_owned();
        let (min, max) = {
            let min = self.pool.scaling.min_workers.max(1);
            (min, self.pool.scaling.max_workers.max(min))
        };
        let next = match &action {
            ControlAction::Pin {
                workers,
                until,
                reason,
            } => {
                if self.pool.spec.is_none() {
                    return Err(ControlError::Observed(name));
                }
                if *workers < min || *workers > max {
                    return Err(ControlError::OutOfRange {
                        workers: *workers,
                        min,
                        max,
                    });
                }
                if until.is_some_and(|u| u <= SystemTime::now()) {
                    return Err(ControlError::UntilInPast);
                }
                Override::Pinned {
                    workers: *workers,
                    until_ms: until.map(unix_ms),
                    reason: reason.clone(),
                }
            }
            ControlAction::Unpin | ControlAction::Resume => {
                if self.pool.spec.is_none() {
                    return Err(ControlError::Observed(name));
                }
                Override::Auto
            }
            ControlAction::Pause { reason } => {
                if self.pool.spec.is_none() {
                    return Err(ControlError::Observed(name));
                }
                if !self.pool.scaling.enabled {
                    return Err(ControlError::NotAutoscaled(name));
                }
                Override::Paused {
                    reason: reason.clone(),
                }
            }
        };
        let before = std::mem::replace(&mut self.override_, next);
        if let Some(spec) = self.desired() {
            if let Err(e) = self
                .apply(spec, &format!("{} by {actor}", action.name()))
                .await
            {
                self.override_ = before;
                self.publish(None);
                return Err(ControlError::Apply(e));
            }
        }
        let (workers, until_ms, reason) = match &action {
            ControlAction::Pin {
                workers,
                until,
                reason,
            } => (Some(*workers), until.map(unix_ms), reason.clone()),
            ControlAction::Pause { reason } => (None, None, reason.clone()),
            _ => (None, None, None),
        };
        self.state.events.emit(ManagerEvent::new(
            Some(self.name()),
            actor,
            What::ScalingControl {
                action: action.name(),
                workers,
                until_ms,
                reason,
            },
        ));
        self.save();
        self.publish(None);
        Ok(ControlOutcome {
            override_: self.override_.clone(),
            applied_workers: self.applied_workers(),
        })
    }

    /// A reload or restart asked by an operator: a hand-over with the spec
    /// the pool should run now (a failed pool is started again).
    async fn on_master(
        &mut self,
        action: MasterAction,
        actor: &'static str,
        reason: Option<String>,
    ) -> Result<ApplyReport, MasterError> {
        let (Some(sup), Some(spec)) = (self.supervisor.clone(), self.desired()) else {
            return Err(MasterError::Observed(self.name().to_owned()));
        };
        if action == MasterAction::Restart {
            // The supervisor creates the directory again for the new master.
            let cache =
                crate::supervisor::files::Layout::new(&self.state.config().phpfpm.runtime_dir)
                    .opcache_file_cache(&self.pool.name);
            match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(cache)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Ok(Err(e)) => tracing::warn!(
                    pool = self.name(),
                    "Cannot empty the pool's OPcache file cache before the restart: {e}; the new master may reuse compiled scripts."
                ),
                Err(e) => tracing::warn!(pool = self.name(), "Cannot empty the OPcache file cache: {e}."),
            }
        }
        let why = match &reason {
            Some(r) => format!("{} by {actor}: {r}", action.name()),
            None => format!("{} by {actor}", action.name()),
        };
        match sup.renew(spec, &why).await {
            Ok(report) => {
                self.last_error = None;
                Ok(report)
            }
            Err(e) => {
                tracing::error!(
                    pool = self.name(),
                    "Pool {} not done: {e}; the pool keeps running as it was.",
                    action.name()
                );
                self.last_error = Some(e.to_string());
                Err(MasterError::Apply(e))
            }
        }
    }

    fn applied_workers(&self) -> Option<u32> {
        self.state
            .pool(&self.pool.name)
            .and_then(|s| s.master.applied.as_ref().map(|a| a.max_children))
    }

    /// Hands a spec to the supervisor; records a refusal. Returns the
    /// workers of the masters it stops and the flag set once they exited.
    async fn apply(
        &mut self,
        spec: PoolSpec,
        reason: &str,
    ) -> Result<Option<(Option<u32>, Stopped)>, ApplyError> {
        let Some(sup) = &self.supervisor else {
            return Ok(None);
        };
        match sup.apply(spec, reason).await {
            Ok(report) => {
                self.last_error = None;
                let workers = report.stopping_workers;
                Ok(report.previous_stopped.map(|s| (workers, s)))
            }
            Err(e) => {
                tracing::error!(
                    pool = self.name(),
                    "Pool change not applied ({reason}): {e}; the pool keeps running as it was."
                );
                self.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    async fn on_look(&mut self) {
        let Some(current) = self.state.pool(&self.pool.name) else {
            return;
        };
        let look = current.look.clone();
        if look.seq == self.last_seq || look.seq == 0 {
            return;
        }
        self.last_seq = look.seq;
        if let Some(memory) = crate::scale::observe::worker_memory(&look) {
            self.memory = Some(memory);
        }
        let now_ms = u64::try_from(unix_ms(SystemTime::now())).unwrap_or(0);
        let budget = self.budget();
        let cpu_limit = {
            let host = self.state.host.read().unwrap_or_else(|e| e.into_inner());
            host.as_ref()
                .and_then(|h| h.as_ref().ok())
                .and_then(|b| b.cpu_quota_cores.or(Some(f64::from(b.cpus))))
        };
        let applied = current.master.applied.as_ref().map(|a| a.max_children);
        // The most workers the pool can have now: the autoscaler's cap, the
        // running master's max_children, or for an observed pool (whose
        // settings are not known) the workers its status page lists.
        let cap = if self.autoscaled() {
            self.cap.or(applied)
        } else if self.pool.spec.is_some() {
            applied.or(current.spec().map(|s| s.max_children))
        } else {
            u32::try_from(look.derived.total).ok().filter(|n| *n > 0)
        }
        .unwrap_or(self.pool.max_workers);
        let Some(model) = self.model.as_mut() else {
            return;
        };
        let Some(decision) = model.observe(
            &look,
            Context {
                now_ms,
                cap,
                memory_budget: budget,
                cpu_cores_limit: cpu_limit,
                change_in_flight: false,
            },
        ) else {
            return;
        };
        let f = &decision.figures;
        let fixed = !self.autoscaled() || !matches!(self.override_, Override::Auto);
        let pressure = Pressure {
            busy: u32::try_from(look.derived.active).unwrap_or(u32::MAX),
            queue: look.kernel.accept_queue.as_ref().map(|q| q.0).unwrap_or(0),
            workers: u32::try_from(look.derived.total).unwrap_or(u32::MAX),
        };
        let limits = (
            self.pool.scaling.min_workers.max(1),
            self.pool.scaling.max_workers.max(1),
        );
        let (claim, plan) = plan::board_demand(
            now_ms,
            plan::ModelSizes::from(f),
            pressure,
            cap,
            limits,
            self.damping,
            self.plan,
        );
        self.plan = plan;
        let input = PoolPlanInput {
            name: self.pool.name.to_string(),
            priority: self.pool.scaling.priority,
            weight: self.pool.scaling.weight,
            min_workers: limits.0,
            max_workers: limits.1,
            wanted_workers: None,
            needed_workers: None,
            pressing: false,
            worker_bytes: self.memory.map(|(private, _)| private).or(f.p95_pss_bytes),
            shared_bytes: self.memory.map_or(0, |(_, shared)| shared),
            applied_cap: cap,
            draining: self.draining_workers(),
            fixed,
        }
        .claiming(claim);
        self.planned_cap = None;
        let mut rule: &'static str = if fixed {
            match (&self.override_, self.autoscaled(), self.pool.spec.is_some()) {
                (_, _, false) => "observed",
                (Override::Pinned { .. }, ..) => "pinned",
                (Override::Paused { .. }, ..) => "paused",
                (_, false, _) => "not_autoscaled",
                _ => "fixed",
            }
        } else {
            "hold"
        };
        let mut change_to = None;
        let mut renew = false;
        if self.pool.spec.is_some() || !fixed {
            if let (Some(budget), false) = (budget, fixed) {
                let (damping, memory) = (self.damping, self.plan);
                let refused = self.refused;
                let (share, step, memory) = self.board.plan(&self.pool.name, input, |all, me| {
                    let share = plan::shares(budget, all).get(me).map(|s| s.0);
                    let (step, memory) =
                        plan::next_cap(now_ms, budget, all, me, pressure, damping, memory);
                    // A change backing off after a refusal reserves nothing.
                    let backing_off = matches!(step, CapStep::Change { to, .. }
                    if refused.is_some_and(|(target, until, _)| {
                        target == to && tokio::time::Instant::now() < until
                    }));
                    (share, step, memory, !backing_off)
                });
                self.planned_cap = share;
                match step {
                    CapStep::Hold(r) => {
                        self.plan = memory;
                        rule = r;
                        if r == "waiting_for_memory" && claim.pressing {
                            self.kick_others();
                        }
                    }
                    CapStep::Renew { rule: r } => {
                        rule = r;
                        self.plan = memory;
                        renew = true;
                    }
                    CapStep::Change { to, rule: r } => {
                        rule = r;
                        let refused = self.refused.is_some_and(|(target, until, _)| {
                            target == to && tokio::time::Instant::now() < until
                        });
                        if refused {
                            rule = "refused_backing_off";
                        } else {
                            self.plan = memory;
                            change_to = Some(to);
                        }
                    }
                }
            } else {
                self.board.set(&self.pool.name, input);
                if budget.is_none() && !fixed {
                    rule = "no_budget";
                }
            }
        }
        let view = self.view(self.planned_cap, rule).with_decision(&decision);
        let span = trace::decision(self.name(), cap, change_to, renew, &view);
        if let Some(to) = change_to {
            self.change_cap(cap, to, rule, &view).instrument(span).await;
        } else if renew {
            self.renew_master(cap, rule, &view).instrument(span).await;
        } else if rule != self.last_rule {
            // A decision is an event when its rule changes; the same hold
            // repeated every look is not news.
            self.decision_event(&view, cap, None);
        }
        self.last_rule = rule.to_owned();
        if self.last_saved.elapsed() >= SAVE_EVERY {
            self.save();
        }
        self.publish(Some(decision));
    }

    async fn change_cap(&mut self, from: u32, to: u32, rule: &'static str, view: &ScalingView) {
        let before = self.cap;
        self.cap = Some(to);
        let Some(spec) = self.desired() else { return };
        let reason = format!("autoscaler: {rule} ({from} -> {to} workers)");
        match self.apply(spec, &reason).await {
            Ok(stopped) => {
                self.board.set_applied(&self.pool.name, to);
                // The previous master's workers hold their memory until
                // they finish; until then it is not free for other pools.
                if to < from {
                    // A master whose cap the supervisor did not know (an
                    // adopted one) holds up to what the pool had.
                    self.draining = stopped.map(|(w, s)| (w.unwrap_or(from), s));
                    let held = self.draining.as_ref().map_or(0, |(n, _)| *n);
                    self.board.set_draining(&self.pool.name, held);
                }
                self.changes += 1;
                self.last_change = Some(SystemTime::now());
                self.refused = None;
                self.state
                    .metrics
                    .scale_changes
                    .with_label_values(&[self.pool.name.as_str(), rule])
                    .inc();
                self.decision_event(view, from, Some(to));
                self.save();
            }
            Err(e) => {
                self.cap = before;
                self.board.set_applied(&self.pool.name, from);
                let wait = self
                    .refused
                    .map(|(_, _, w)| (w * 2).min(Duration::from_secs(3600)))
                    .unwrap_or(REFUSED_BACKOFF);
                self.refused = Some((to, tokio::time::Instant::now() + wait, wait));
                let mut failed = view.clone();
                failed.last_error = Some(e.to_string());
                self.decision_event(&failed, from, None);
            }
        }
    }

    /// A new master with the same cap, to shed idle workers.
    async fn renew_master(&mut self, cap: u32, rule: &'static str, view: &ScalingView) {
        let (Some(sup), Some(spec)) = (self.supervisor.clone(), self.desired()) else {
            return;
        };
        let reason =
            format!("autoscaler: {rule} (a new master with the cap of {cap} sheds idle workers)");
        match sup.renew(spec, &reason).await {
            Ok(_) => {
                self.changes += 1;
                self.last_change = Some(SystemTime::now());
                self.state
                    .metrics
                    .scale_changes
                    .with_label_values(&[self.pool.name.as_str(), rule])
                    .inc();
                self.decision_event(view, cap, Some(cap));
                self.save();
            }
            Err(e) => {
                self.last_error = Some(e.to_string());
                let mut failed = view.clone();
                failed.last_error = Some(e.to_string());
                self.decision_event(&failed, cap, None);
            }
        }
    }

    fn decision_event(&self, view: &ScalingView, from: u32, to: Option<u32>) {
        let summary = match to {
            Some(to) if to == from => format!(
                "autoscaler renewed the master at {to} workers to shed idle ones ({})",
                view.rule
            ),
            Some(to) => format!(
                "autoscaler changed the cap from {from} to {to} workers ({})",
                view.rule
            ),
            None => match &view.last_error {
                Some(e) => format!("autoscaler could not apply its change ({}): {e}", view.rule),
                None => format!("autoscaler holds at {from} workers ({})", view.rule),
            },
        };
        let details = serde_json::json!({
            "summary": summary,
            "rule": view.rule,
            "reason": view.reason,
            "model_rule": view.model_rule,
            "cpu_bound": view.cpu_bound,
            "from_workers": from,
            "to_workers": to,
            "override": view.override_.name(),
            "phase": view.phase,
            "confidence": view.confidence,
            "recommended_workers": view.recommended_workers,
            "planned_cap": view.planned_cap,
            "short_rate_per_s": view.short_rate,
            "long_rate_per_s": view.long_rate,
            "mean_service_s": view.mean_service_s,
            "offered_load": view.offered_load,
            "p95_pss_bytes": view.p95_pss_bytes,
            "memory_budget_bytes": view.memory_budget_bytes,
            "memory_ceiling": view.memory_ceiling,
            "cpu_ceiling": view.cpu_ceiling,
            "error": view.last_error,
        });
        self.state.events.emit(ManagerEvent::new(
            Some(self.name()),
            "autoscaler",
            What::ScaleDecision(Box::new(details)),
        ));
    }

    fn view(&self, planned_cap: Option<u32>, rule: &str) -> ScalingView {
        let budget = self.budget();
        ScalingView {
            mode: if self.autoscaled() { "apply" } else { "advise" },
            override_: self.override_.clone(),
            phase: "learning",
            confidence: 0.0,
            applied_workers: self.applied_workers(),
            recommended_workers: None,
            planned_cap,
            rule: rule.to_owned(),
            reason: String::new(),
            model_rule: "",
            action: "hold",
            cpu_bound: false,
            short_rate: None,
            long_rate: None,
            mean_service_s: None,
            offered_load: None,
            p95_pss_bytes: None,
            memory_budget_bytes: budget,
            memory_ceiling: None,
            cpu_ceiling: None,
            changes: self.changes,
            last_change: self.last_change,
            last_error: self.last_error.clone(),
        }
    }

    /// Publishes the control part: the desired spec and the scaling view.
    fn publish(&mut self, decision: Option<fpm_autoscale::Decision>) {
        if decision.is_some() {
            self.last_decision = decision;
        }
        let rule = if self.last_rule.is_empty() {
            "starting".to_owned()
        } else {
            self.last_rule.clone()
        };
        let mut view = self.view(self.planned_cap, &rule);
        // Between looks the model's last figures stand.
        if let Some(d) = &self.last_decision {
            view = view.with_decision(d);
        }
        let spec = self.desired();
        self.state.publish_control(
            &self.pool.name,
            Control {
                spec,
                scaling: self.model.is_some().then_some(view),
            },
        );
    }

    /// Writes down the cap, the override and what the model learned.
    fn save(&mut self) {
        let Some(path) = &self.remember_at else {
            return;
        };
        self.last_saved = tokio::time::Instant::now();
        let state = Remembered {
            cap: self.cap,
            override_: self.override_.clone(),
            configured: Override::from_config(&self.pool),
            plan: self.plan,
            model: self
                .model
                .as_ref()
                .and_then(|m| m.state.as_ref())
                .and_then(|s| serde_json::to_value(s).ok()),
            saved_at_ms: unix_ms(SystemTime::now()),
        };
        if let Err(e) = persist::save(path, &state) {
            tracing::warn!(
                pool = self.name(),
                "Cannot write the autoscaler's state to {}: {e}.",
                path.display()
            );
        }
    }
}

async fn sleep_for(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use fpm_core::PoolName;

    /// A pool's spec as the config gives it, for tests.
    pub(crate) fn base() -> PoolSpec {
        PoolSpec {
            name: PoolName::new("www").unwrap(),
            listen: "/tmp/x.sock".into(),
            status_listen: None,
            status_path: "/status".into(),
            ping_path: "/ping".into(),
            ping_response: "pong".into(),
            user: None,
            group: None,
            listen_mode: "0660".into(),
            pm: PmMode::Dynamic,
            max_children: 10,
            start_servers: 3,
            min_spare_servers: 2,
            max_spare_servers: 5,
            max_requests: 500,
            process_idle_timeout_secs: 10,
            request_terminate_timeout_secs: 60,
            chdir: None,
            php_values: vec![],
            php_admin_values: vec![],
            extra: vec![],
            env: vec![],
        }
    }

    /// A pool actor whose supervisor refuses every change.
    fn refusing_pool() -> (
        PoolActor,
        Arc<AppState>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let yaml = "scaling:\n  memory_budget: 256MiB\npools:\n  - name: a\n    max_workers: 12\n    scaling:\n      enabled: true\n      max_workers: 12\n";
        let cfg = crate::config::load(&crate::config::LoadInput {
            file: Some(("test.yaml".into(), yaml.to_owned())),
            env: Vec::new(),
            cwd: std::env::temp_dir(),
            runtime_dir: None,
        })
        .unwrap();
        let pool = cfg.pools[0].clone();
        let state = AppState::new(cfg);
        let (handle, mut rx) = SupervisorHandle::detached(pool.name.clone());
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = attempts.clone();
        tokio::spawn(async move {
            while let Some(crate::supervisor::Command::Apply { reply, .. }) = rx.recv().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = reply.send(Err(ApplyError::Refused("ERROR: bad value".into())));
            }
        });
        let (actor, _h) = PoolActor::new(
            pool,
            state.clone(),
            Some(handle),
            Arc::new(Board::default()),
            None,
        );
        (actor, state, attempts)
    }

    /// A look at a pool with `workers` idle workers of `pss` bytes each.
    fn look(seq: u64, workers: u32, pss: u64) -> crate::state::Look {
        let procs: Vec<String> = (0..workers)
            .map(|i| format!("{{\"pid\":{},\"state\":\"Idle\",\"start time\":1,\"start since\":1,\"requests\":{},\"request duration\":20000,\"request method\":\"GET\",\"request uri\":\"/\",\"content length\":0,\"user\":\"-\",\"script\":\"-\",\"last request cpu\":0,\"last request memory\":0}}", 100 + i, seq * 10))
            .collect();
        let body = format!(
            "Content-type: application/json\r\n\r\n{{\"pool\":\"a\",\"process manager\":\"ondemand\",\"start time\":1,\"start since\":10,\"accepted conn\":{},\"listen queue\":0,\"max listen queue\":0,\"listen queue len\":0,\"idle processes\":{workers},\"active processes\":0,\"total processes\":{workers},\"max active processes\":1,\"max children reached\":0,\"slow requests\":0,\"processes\":[{}]}}",
            seq * 100,
            procs.join(",")
        );
        let status = fpm_core::status::parse_status(body.as_bytes()).unwrap();
        crate::state::Look {
            seq,
            up: true,
            derived: status.derived(None),
            status: Some(status),
            kernel: crate::state::KernelView {
                accept_queue: Ok((0, Some(511))),
                per_worker: (0..workers)
                    .map(|i| crate::state::WorkerView {
                        pid: 100 + i,
                        proc_state: 'S',
                        age_secs: Some(1),
                        cpu_percent: Some(0.0),
                        rss_bytes: Some(pss * 2),
                        pss_bytes: Some(pss),
                        uss_bytes: Some(pss / 2),
                    })
                    .collect(),
                ..crate::state::KernelView::default()
            },
            ..crate::state::Look::default()
        }
    }

    #[tokio::test]
    async fn a_refused_change_is_not_retried_in_a_loop() {
        let (mut actor, state, attempts) = refusing_pool();
        // No cooldown: only the refusal's back-off can hold the change.
        actor.damping.cooldown_ms = 0;
        // Before any worker is measured: 256 MiB / 64 MiB assumed = 4.
        assert_eq!(actor.desired().map(|s| s.max_children), Some(4));
        let name = actor.pool.name.clone();
        for seq in 1..=6 {
            state.publish_look(&name, look(seq, 2, 5 << 20));
            actor.on_look().await;
        }
        // Workers of 5 MiB: the budget holds the maximum of 12, so the
        // planner asks once; the supervisor refuses; the same change is
        // not asked again while backing off.
        assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(actor.desired().map(|s| s.max_children), Some(4), "cap kept");
        let view = state.pool(&name).unwrap().control.scaling.clone().unwrap();
        assert_eq!(view.rule, "refused_backing_off");
        assert!(view.last_error.is_some_and(|e| e.contains("bad value")));
        let refused: Vec<_> = state
            .recent_events
            .snapshot()
            .into_iter()
            .filter(|e| e.kind() == "scale_decision" && e.details()["error"].is_string())
            .collect();
        assert!(refused.len() <= 1, "{refused:?}");
    }

    #[test]
    fn desired_combines_config_override_and_cap() {
        let b = base();
        assert_eq!(desired_spec(&b, false, &Override::Auto, Some(7)), b);
        let auto = desired_spec(&b, true, &Override::Auto, Some(7));
        assert_eq!((auto.pm, auto.max_children), (PmMode::Ondemand, 7));
        let paused = desired_spec(&b, true, &Override::Paused { reason: None }, Some(9));
        assert_eq!((paused.pm, paused.max_children), (PmMode::Ondemand, 9));
        let pinned = desired_spec(
            &b,
            true,
            &Override::Pinned {
                workers: 4,
                until_ms: None,
                reason: None,
            },
            Some(9),
        );
        assert_eq!((pinned.pm, pinned.max_children), (PmMode::Static, 4));
        // A pin also holds on a pool the autoscaler does not manage.
        let pinned = desired_spec(
            &b,
            false,
            &Override::Pinned {
                workers: 6,
                until_ms: None,
                reason: None,
            },
            None,
        );
        assert_eq!((pinned.pm, pinned.max_children), (PmMode::Static, 6));
    }
}
