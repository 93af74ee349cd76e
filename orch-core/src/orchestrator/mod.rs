//! [`Orchestrator`]: the priority dispatcher, with engines per `core_id`, leases, retries,
//! task locks, schedules, external workers and graceful shutdown.
//!
//! Moving parts (all tokio tasks owned by the orchestrator):
//! - one claim loop per registered engine (`worker.rs`): takes concurrency permits, claims that
//!   many tasks in one backend call, and spawns one attempt per task;
//! - the lease keeper: renews the leases of every running attempt in one batch call, and stops
//!   an attempt whose lease was lost;
//! - the rescuer: takes back tasks whose lease expired (their holder died);
//! - the reporter: records attempt outcomes in batches;
//! - the pruner: deletes finished tasks and events past their retention;
//! - the event tail (`events.rs`) and one runner per event handler;
//! - one runner per schedule (`schedule.rs`).

mod config;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use config::{OrchestratorConfig, Retention};

use crate::backend::SharedBackend;
use crate::clock;
use crate::contracts::{EventHandler, Plugin, PluginProcessor, PluginRegistry, Processor};
use crate::error::{Error, Result, TaskError};
use crate::events::EventLog;
use crate::locks::LockManager;
use crate::model::{
    AttemptOutcome, Claimed, Created, LeaseToken, NewTask, Resolution, Task, TaskFilter, TaskId,
    TaskSpec,
};
use crate::registry::DefaultPluginRegistry;
use crate::schedule::Schedule;

/// Why a running attempt was told to stop.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopCause {
    None = 0,
    /// A caller cancelled the task (already recorded in the backend).
    Cancelled = 1,
    /// The lease was lost (rescued elsewhere, or cancelled by another process).
    LeaseLost = 2,
    /// Shutdown passed its deadline: give the task back.
    Abandoned = 3,
}

/// A running attempt, as the lease keeper and `cancel` see it.
struct Running {
    token: LeaseToken,
    cancel: CancellationToken,
    cause: AtomicU8,
}

impl Running {
    fn stop(&self, cause: StopCause) {
        let _ = self.cause.compare_exchange(
            StopCause::None as u8,
            cause as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.cancel.cancel();
    }

    fn cause(&self) -> StopCause {
        match self.cause.load(Ordering::Acquire) {
            1 => StopCause::Cancelled,
            2 => StopCause::LeaseLost,
            3 => StopCause::Abandoned,
            _ => StopCause::None,
        }
    }
}

/// An engine registered for one `core_id`.
struct Core {
    core_id: Arc<str>,
    engine: Arc<dyn Processor>,
    /// Per-core concurrency limit.
    slots: Arc<Semaphore>,
    /// The number of permits of `slots`.
    limit: usize,
    /// Local dispatches wake the claim loop at once.
    wake: Notify,
    /// Whether the claim loop is idle (its last call found nothing): a local dispatch may then
    /// start its task itself ([`TaskStore::create_claimed`](crate::backend::TaskStore)).
    idle: AtomicBool,
}

struct Inner {
    backend: SharedBackend,
    config: OrchestratorConfig,
    engines: RwLock<HashMap<String, Arc<Core>>>,
    /// Global concurrency limit.
    global: Arc<Semaphore>,
    /// Bounds claimed tasks that wait for their locks (they hold no concurrency permit).
    lock_waiters: Arc<Semaphore>,
    running: DashMap<TaskId, Arc<Running>>,
    events: EventLog,
    locks: LockManager,
    plugins: DefaultPluginRegistry,
    /// Phase 1 of shutdown: claim loops and schedules stop; new dispatches are refused.
    stop_claiming: CancellationToken,
    /// Phase 2: the lease keeper, rescuer, tail and handlers stop.
    stop_background: CancellationToken,
    /// Attempts in flight (awaited by shutdown).
    attempts: TaskTracker,
    /// Background loops.
    background: TaskTracker,
    /// Outcomes of finished attempts, recorded in batches by the reporter.
    reports: tokio::sync::mpsc::UnboundedSender<worker::Report>,
}

/// Stops the background loops when the last [`Orchestrator`] handle is dropped without
/// [`Orchestrator::shutdown`].
struct DropGuard(CancellationToken);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The orchestrator. Cheap to clone; every clone drives the same dispatcher. Build it with
/// [`Orchestrator::builder`] inside a tokio runtime.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> orch_core::Result<()> {
/// use std::sync::Arc;
/// use orch_core::{processor_fn, MemoryBackend, Orchestrator, TaskSpec, TaskStatus};
///
/// let orch = Orchestrator::builder(Arc::new(MemoryBackend::new()))
///     .engine("echo", processor_fn("echo", |_ctx, input| async move { Ok(input) }))
///     .build().await?;
/// let task = orch
///     .dispatch_and_wait(TaskSpec::new("echo").payload(serde_json::json!("hi")))
///     .await?;
/// assert_eq!(task.status, TaskStatus::Succeeded);
/// assert_eq!(task.result, Some(serde_json::json!("hi")));
/// orch.shutdown(std::time::Duration::from_secs(5)).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
    _drop_guard: Arc<DropGuard>,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("node_id", &self.inner.config.node_id)
            .field("running", &self.inner.running.len())
            .finish_non_exhaustive()
    }
}

/// Collects engines, handlers and schedules, then starts an [`Orchestrator`].
pub struct OrchestratorBuilder {
    backend: SharedBackend,
    config: OrchestratorConfig,
    engines: Vec<(String, Arc<dyn Processor>, Option<usize>)>,
    handlers: Vec<Arc<dyn EventHandler>>,
    schedules: Vec<Schedule>,
}

impl OrchestratorBuilder {
    /// Replaces the configuration.
    pub fn config(mut self, config: OrchestratorConfig) -> Self {
        self.config = config;
        self
    }

    /// Registers `engine` for `core_id` with the default per-core limit.
    pub fn engine(mut self, core_id: impl Into<String>, engine: impl Processor + 'static) -> Self {
        self.engines.push((core_id.into(), Arc::new(engine), None));
        self
    }

    /// Registers `engine` for `core_id` with its own concurrency limit.
    pub fn engine_with_limit(
        mut self,
        core_id: impl Into<String>,
        engine: impl Processor + 'static,
        limit: usize,
    ) -> Self {
        self.engines
            .push((core_id.into(), Arc::new(engine), Some(limit)));
        self
    }

    /// Adds an event handler.
    pub fn event_handler(mut self, handler: impl EventHandler + 'static) -> Self {
        self.handlers.push(Arc::new(handler));
        self
    }

    /// Adds a periodic schedule.
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedules.push(schedule);
        self
    }

    /// Validates the configuration and starts the orchestrator's loops on the current tokio
    /// runtime. Event handlers see every event from the moment `build` returns.
    pub async fn build(self) -> Result<Orchestrator> {
        self.config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        let config = self.config;
        let events = EventLog::new(self.backend.clone(), config.event_buffer);
        // Stopping the background also stops claiming (a dropped orchestrator stops both).
        let stop_background = CancellationToken::new();
        let (reports, report_queue) = tokio::sync::mpsc::unbounded_channel();
        let locks = LockManager::with_config(self.backend.clone(), config.locks);
        let inner = Arc::new(Inner {
            global: Arc::new(Semaphore::new(config.global_concurrency)),
            lock_waiters: Arc::new(Semaphore::new(config.max_lock_waiters)),
            backend: self.backend,
            engines: RwLock::new(HashMap::new()),
            running: DashMap::new(),
            events,
            locks,
            plugins: DefaultPluginRegistry::new(),
            stop_claiming: stop_background.child_token(),
            stop_background,
            attempts: TaskTracker::new(),
            background: TaskTracker::new(),
            reports,
            config,
        });
        let orch = Orchestrator {
            _drop_guard: Arc::new(DropGuard(inner.stop_background.clone())),
            inner,
        };
        orch.inner.events.start_at_end().await?;
        orch.start_background();
        orch.inner.background.spawn(worker::reporter(
            orch.inner.clone(),
            report_queue,
            orch.inner.stop_background.clone(),
        ));
        for (core_id, engine, limit) in self.engines {
            orch.register_engine_arc(core_id, engine, limit)?;
        }
        for handler in self.handlers {
            orch.add_event_handler(handler).await?;
        }
        for schedule in self.schedules {
            orch.add_schedule(schedule)?;
        }
        Ok(orch)
    }
}

/// What [`Orchestrator::shutdown`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Every attempt finished before the deadline.
    pub drained: bool,
    /// Attempts stopped at the deadline and given back to the queue.
    pub abandoned: usize,
}

/// An external worker's report of an attempt (see [`Orchestrator::report`]).
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerReport {
    /// Finished with this result.
    Succeeded(Value),
    /// Failed; retried if `retryable` and attempts are left.
    Failed(TaskError),
    /// Ran past its timeout; retried if attempts are left.
    TimedOut,
}

impl Orchestrator {
    /// Starts building an orchestrator over `backend`.
    pub fn builder(backend: SharedBackend) -> OrchestratorBuilder {
        OrchestratorBuilder {
            backend,
            config: OrchestratorConfig::default(),
            engines: Vec::new(),
            handlers: Vec::new(),
            schedules: Vec::new(),
        }
    }

    fn start_background(&self) {
        let inner = &self.inner;
        let stop = inner.stop_background.clone();
        inner.background.spawn(
            inner
                .events
                .clone()
                .run_tail(inner.config.poll_interval, stop.clone()),
        );
        inner
            .background
            .spawn(worker::lease_keeper(inner.clone(), stop.clone()));
        inner
            .background
            .spawn(worker::rescuer(inner.clone(), stop.clone()));
        if let Some(retention) = inner.config.retention {
            inner
                .background
                .spawn(worker::pruner(inner.clone(), retention, stop));
        }
    }

    /// The backend.
    pub fn backend(&self) -> &SharedBackend {
        &self.inner.backend
    }

    /// The configuration in force.
    pub fn config(&self) -> &OrchestratorConfig {
        &self.inner.config
    }

    /// The live event log.
    pub fn events(&self) -> &EventLog {
        &self.inner.events
    }

    /// The lock manager (shared with task locks).
    pub fn locks(&self) -> &LockManager {
        &self.inner.locks
    }

    /// The plugin registry.
    pub fn plugins(&self) -> &DefaultPluginRegistry {
        &self.inner.plugins
    }

    /// `core_id`s with an in-process engine, sorted.
    pub fn engines(&self) -> Vec<String> {
        let mut cores: Vec<String> = self.inner.engines.read().keys().cloned().collect();
        cores.sort();
        cores
    }

    /// Attempts running in this process right now.
    pub fn running_count(&self) -> usize {
        self.inner.running.len()
    }

    /// Registers an engine for `core_id` (default per-core limit) and starts claiming its
    /// tasks; [`Error::EngineExists`] if the core already has one.
    pub fn register_engine(
        &self,
        core_id: impl Into<String>,
        engine: impl Processor + 'static,
    ) -> Result<()> {
        self.register_engine_arc(core_id.into(), Arc::new(engine), None)
    }

    /// Registers a shared engine, optionally with its own concurrency limit.
    pub fn register_engine_arc(
        &self,
        core_id: String,
        engine: Arc<dyn Processor>,
        limit: Option<usize>,
    ) -> Result<()> {
        crate::model::check_name("core_id", &core_id, crate::model::limits::MAX_CORE_ID_LEN)?;
        let limit = limit.unwrap_or(self.inner.config.default_core_concurrency);
        if limit == 0 {
            return Err(Error::invalid("concurrency limit", "must be at least 1"));
        }
        if self.inner.stop_claiming.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let core = Arc::new(Core {
            core_id: Arc::from(core_id.as_str()),
            engine,
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            wake: Notify::new(),
            idle: AtomicBool::new(false),
        });
        {
            let mut engines = self.inner.engines.write();
            if engines.contains_key(&core_id) {
                return Err(Error::EngineExists(core_id));
            }
            engines.insert(core_id, core.clone());
        }
        self.inner
            .background
            .spawn(worker::claim_loop(self.inner.clone(), core));
        Ok(())
    }

    /// Initializes `plugin` with `config`, adds it to the registry, and registers it as the
    /// engine of every `core_id` in its [`Capability::engine`](crate::Capability::engine)
    /// capabilities.
    pub async fn register_plugin(&self, plugin: Arc<dyn Plugin>, config: Value) -> Result<()> {
        let core_ids: Vec<String> = plugin
            .capabilities()
            .iter()
            .filter_map(|c| c.engine_core_id().map(str::to_owned))
            .collect();
        // Refuse before initializing when a core is taken, so a refused plugin leaves no trace.
        {
            let engines = self.inner.engines.read();
            if let Some(taken) = core_ids.iter().find(|core| engines.contains_key(*core)) {
                return Err(Error::EngineExists(taken.clone()));
            }
        }
        self.inner.plugins.register(plugin.clone(), config).await?;
        for (index, core_id) in core_ids.iter().enumerate() {
            let engine = Arc::new(PluginProcessor(plugin.clone()));
            if let Err(error) = self.register_engine_arc(core_id.clone(), engine, None) {
                // Lost a race for the core: undo this plugin's engines and registration.
                for registered in &core_ids[..index] {
                    self.inner.engines.write().remove(registered);
                }
                self.inner.plugins.unregister(plugin.name()).await?;
                return Err(error);
            }
        }
        Ok(())
    }

    /// Adds an event handler; it sees every event appended after this call returns.
    pub async fn add_event_handler(&self, handler: Arc<dyn EventHandler>) -> Result<()> {
        let subscription = self.inner.events.subscribe().await?;
        self.inner.background.spawn(EventLog::run_handler(
            subscription,
            handler,
            self.inner.stop_background.clone(),
        ));
        Ok(())
    }

    /// Starts a periodic schedule.
    pub fn add_schedule(&self, schedule: Schedule) -> Result<()> {
        if self.inner.stop_claiming.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let orch = self.clone();
        let stop = self.inner.stop_claiming.clone();
        self.inner
            .background
            .spawn(async move { schedule.run(orch, stop).await });
        Ok(())
    }

    fn wake(&self, core_id: &str) {
        if let Some(core) = self.inner.engines.read().get(core_id) {
            core.wake.notify_one();
        }
    }

    /// Dispatches one task. With an idempotency key already used, returns the earlier task.
    ///
    /// A task for a core of this orchestrator whose claim loop is idle, with a free slot, may
    /// start here and now: the backend stores it already claimed (if it can, see
    /// [`TaskStore::create_claimed`](crate::backend::TaskStore)), and the task returned is
    /// then `running`.
    pub async fn dispatch(&self, spec: TaskSpec) -> Result<Task> {
        if self.inner.stop_claiming.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let task = match self.hand_off(spec.into_new_task()?).await? {
            Ok(started) => return Ok(started),
            Err(task) => task,
        };
        let mut created = self.create(vec![task]).await?;
        created
            .pop()
            .map(|c| c.task)
            .ok_or_else(|| Error::backend("create_tasks", "returned no task"))
    }

    /// Starts `task` at once if its core is served here, idle and has a free slot, and the
    /// backend can store it already claimed; else hands it back.
    async fn hand_off(&self, task: NewTask) -> Result<std::result::Result<Task, NewTask>> {
        if task.idempotency_key.is_some()
            || !task.delay.is_zero()
            || task.not_before.is_some_and(|at| at > clock::now())
        {
            return Ok(Err(task));
        }
        let core = self
            .inner
            .engines
            .read()
            .get(task.core_id.as_str())
            .cloned();
        let Some(core) = core.filter(|core| core.idle.load(Ordering::Acquire)) else {
            return Ok(Err(task));
        };
        let Some(slot) = worker::try_acquire_slot(&self.inner, &core) else {
            return Ok(Err(task));
        };
        // Keeps a shutdown that begins from here on waiting for this attempt too.
        let tracked = self.inner.attempts.token();
        if self.inner.stop_claiming.is_cancelled() {
            return Ok(Err(task));
        }
        let span = tracing::debug_span!("dispatch", count = 1, handed_off = true);
        // In a task of its own, so a caller that gives up cannot leave a task stored as
        // claimed that nothing runs (its lease would expire and spend an attempt).
        let inner = self.inner.clone();
        let handed = tokio::spawn(
            async move {
                let _tracked = tracked;
                let lease = inner.config.lease;
                match inner.backend.create_claimed(task, lease).await? {
                    Ok(claimed) => {
                        inner.events.poke();
                        let started = claimed.task.clone();
                        worker::start_attempts(&inner, &core, vec![claimed], vec![slot]);
                        Ok(Ok(started))
                    }
                    // The slot goes back as it drops.
                    Err(task) => Ok(Err(task)),
                }
            }
            .instrument(span),
        );
        handed
            .await
            .map_err(|e| Error::backend("create_claimed", format!("dispatch task failed: {e}")))?
    }

    /// Dispatches several tasks in one backend call, in order.
    pub async fn dispatch_many(&self, specs: Vec<TaskSpec>) -> Result<Vec<Created>> {
        if self.inner.stop_claiming.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let tasks = specs
            .into_iter()
            .map(TaskSpec::into_new_task)
            .collect::<Result<Vec<_>>>()?;
        self.create(tasks).await
    }

    /// Creates `tasks` in one backend call and wakes the claim loops of their cores.
    async fn create(&self, tasks: Vec<NewTask>) -> Result<Vec<Created>> {
        let span = tracing::debug_span!("dispatch", count = tasks.len());
        let created = self
            .inner
            .backend
            .create_tasks(tasks)
            .instrument(span)
            .await?;
        self.inner.events.poke();
        let mut last_core: Option<&str> = None;
        for c in &created {
            if c.created && last_core != Some(c.task.core_id.as_str()) {
                self.wake(&c.task.core_id);
                last_core = Some(&c.task.core_id);
            }
        }
        Ok(created)
    }

    /// Dispatches a task and waits until it is finished (the seed's `stay: true`). The wait is
    /// bounded by the task's timeout over all its attempts plus the largest retry delays.
    pub async fn dispatch_and_wait(&self, spec: TaskSpec) -> Result<Task> {
        let retry_max = self.inner.config.retry.max;
        let attempts = spec.max_attempts.max(1);
        let bound = spec
            .timeout
            .saturating_mul(attempts)
            .saturating_add(retry_max.saturating_mul(attempts - 1))
            .saturating_add(self.inner.config.lease * 2);
        let task = self.dispatch(spec).await?;
        self.wait_for(task.id, bound).await
    }

    /// Waits up to `max_wait` for a task to finish and returns it;
    /// [`Error::WaitTimeout`] otherwise.
    pub async fn wait_for(&self, id: TaskId, max_wait: Duration) -> Result<Task> {
        let finished = self.inner.events.wait_terminal(id);
        let task = self.get(id).await?;
        if task.status.is_terminal() {
            self.inner.events.forget_waiters(id);
            return Ok(task);
        }
        match tokio::time::timeout(max_wait, finished).await {
            Ok(_) => self.get(id).await,
            Err(_) => {
                self.inner.events.forget_waiters(id);
                // It may have finished right at the deadline.
                let task = self.get(id).await?;
                if task.status.is_terminal() {
                    Ok(task)
                } else {
                    Err(Error::WaitTimeout(id))
                }
            }
        }
    }

    /// The task; [`Error::TaskNotFound`] if there is none.
    pub async fn get(&self, id: TaskId) -> Result<Task> {
        self.inner
            .backend
            .get_task(id)
            .await?
            .ok_or(Error::TaskNotFound(id))
    }

    /// Tasks matching `filter`.
    pub async fn list(&self, filter: TaskFilter) -> Result<Vec<Task>> {
        self.inner.backend.list_tasks(filter).await
    }

    /// Cancels a queued or running task. A running attempt in this process is told through
    /// its context's cancellation token at once; one in another process learns it at its next
    /// heartbeat. [`Error::IllegalTransition`] for a finished task.
    pub async fn cancel(&self, id: TaskId) -> Result<Task> {
        let task = self.inner.backend.cancel_task(id).await?;
        if let Some(running) = self.inner.running.get(&id) {
            running.stop(StopCause::Cancelled);
        }
        self.inner.events.poke();
        Ok(task)
    }

    /// Finishes a queued or running task for an external system that ran it (the seed's
    /// webhook). A running attempt in this process is stopped.
    pub async fn resolve(&self, id: TaskId, resolution: Resolution) -> Result<Task> {
        let task = self.inner.backend.resolve_task(id, resolution).await?;
        if let Some(running) = self.inner.running.get(&id) {
            running.stop(StopCause::LeaseLost);
        }
        self.inner.events.poke();
        Ok(task)
    }

    /// For external workers: leases up to `limit` tasks of `core_id` for `lease` (default:
    /// the configured lease). The worker must heartbeat before the lease runs out and report
    /// with the token.
    pub async fn claim(
        &self,
        core_id: &str,
        limit: usize,
        lease: Option<Duration>,
    ) -> Result<Vec<Claimed>> {
        crate::model::check_name("core_id", core_id, crate::model::limits::MAX_CORE_ID_LEN)?;
        if self.inner.stop_claiming.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let lease = lease.unwrap_or(self.inner.config.lease);
        if lease.is_zero() {
            return Err(Error::invalid("lease", "must be greater than zero"));
        }
        let limit = limit.clamp(1, 1000);
        let span = tracing::debug_span!("claim", core_id, limit);
        let claimed = self
            .inner
            .backend
            .claim_tasks(core_id, limit, lease)
            .instrument(span)
            .await?;
        self.inner.events.poke();
        Ok(claimed)
    }

    /// For external workers: extends a lease; [`Error::LeaseLost`] if it is no longer held.
    pub async fn heartbeat(
        &self,
        id: TaskId,
        token: LeaseToken,
        lease: Option<Duration>,
    ) -> Result<DateTime<Utc>> {
        let lease = lease.unwrap_or(self.inner.config.lease);
        let renewed = self
            .inner
            .backend
            .renew_leases(vec![(id, token)], lease)
            .await?;
        match renewed.first() {
            Some(Some(expires)) => Ok(*expires),
            _ => Err(self.lease_error(id).await),
        }
    }

    async fn lease_error(&self, id: TaskId) -> Error {
        match self.inner.backend.get_task(id).await {
            Ok(None) => Error::TaskNotFound(id),
            _ => Error::LeaseLost(id),
        }
    }

    /// For external workers: reports the outcome of an attempt with its lease token.
    /// A stale token is refused with [`Error::LeaseLost`].
    pub async fn report(
        &self,
        id: TaskId,
        token: LeaseToken,
        report: WorkerReport,
    ) -> Result<Task> {
        let task = self.get(id).await?;
        let retry_in = |retryable: bool| {
            (retryable && task.has_attempts_left())
                .then(|| self.inner.config.retry.delay(task.attempt))
        };
        let outcome = match report {
            WorkerReport::Succeeded(result) => AttemptOutcome::Succeeded { result },
            WorkerReport::Failed(error) => AttemptOutcome::Failed {
                retry_in: retry_in(error.retryable),
                error: error.message,
            },
            WorkerReport::TimedOut => AttemptOutcome::TimedOut {
                retry_in: retry_in(true),
            },
        };
        let task = self
            .inner
            .backend
            .finish_attempt(id, token, outcome)
            .await?;
        self.inner.events.poke();
        if task.status == crate::model::TaskStatus::Queued {
            self.wake(&task.core_id);
        }
        Ok(task)
    }

    /// Runs one rescue pass now (the rescuer does this every `rescue_interval`): tasks whose
    /// lease expired are requeued or failed. Returns them.
    pub async fn rescue_expired(&self) -> Result<Vec<Task>> {
        worker::rescue_once(&self.inner).await
    }

    /// Runs one pruning pass now with `retention` (the pruner does this every
    /// `retention.interval` when configured). Returns how many tasks and events were deleted.
    pub async fn prune(&self, retention: Retention) -> Result<(u64, u64)> {
        worker::prune_once(&self.inner, retention).await
    }

    /// Graceful shutdown (the seed's sequence): stop claiming and scheduling, let running
    /// attempts finish for up to `deadline`, then stop the rest and give their tasks back to the
    /// queue, then stop the background loops. Safe to call more than once.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let inner = &self.inner;
        inner.stop_claiming.cancel();
        inner.attempts.close();
        let drained = tokio::time::timeout(deadline, inner.attempts.wait())
            .await
            .is_ok();
        let mut abandoned = 0;
        if !drained {
            for entry in inner.running.iter() {
                entry.value().stop(StopCause::Abandoned);
                abandoned += 1;
            }
            // Abandoned attempts report promptly; bound the wait anyway.
            let _ = tokio::time::timeout(Duration::from_secs(5), inner.attempts.wait()).await;
        }
        inner.stop_background.cancel();
        inner.background.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), inner.background.wait()).await;
        inner.events.close();
        tracing::info!(drained, abandoned, "orchestrator shut down");
        ShutdownReport { drained, abandoned }
    }
}
