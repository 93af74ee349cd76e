//! [`Orchestrator`]: the priority dispatcher, with engines, leases, retries, task locks,
//! schedules, external workers and graceful shutdown.
//!
//! The pipeline runs in stages, data flowing one way, each in a file of its own:
//! - `claim.rs`: concurrency slots, one claim loop per engine (claims as many tasks as there
//!   are free slots, in one backend call), and the idle engine's direct start;
//! - `attempt.rs`: one claimed task on its engine, under its locks, timeout and cancellation
//!   token;
//! - `report.rs`: attempts' outcomes recorded in batches;
//! - `maintenance.rs`: the lease keeper, the rescuer and the pruner;
//! - `external.rs`: external workers' claims, heartbeats and reports;
//! - `workflows.rs`: workflows (graphs dispatched as one unit), their status, cancel and retry.
//!
//! `attempts.rs` owns the running attempts ([`Attempts`](attempts::Attempts)) and their
//! invariant; `wake.rs` is the one path by which idle loops learn of changes; `builder.rs`
//! assembles an orchestrator; `config.rs` holds its settings. The event tail (`events.rs`) and
//! schedules (`schedule.rs`) run beside the pipeline.
//!
//! Run-time controls sit beside the claim stage: `control.rs` (pause and resume, shared
//! through the backend's key-value space; concurrency; quarantine; readiness; what a claim
//! loop may start), `limit.rs` (a concurrency limit that changes while attempts run),
//! `breaker.rs` (the circuit breaker) and `supervise.rs` (claim loops restarted after a
//! panic). `healing.rs` holds the settings of the repairs the orchestrator makes itself.

mod attempt;
mod attempts;
mod breaker;
mod builder;
mod claim;
mod config;
mod control;
mod external;
mod healing;
mod limit;
mod maintenance;
mod observe;
mod report;
mod supervise;
mod versions;
mod wake;
mod workflows;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use builder::OrchestratorBuilder;
pub use config::{OrchestratorConfig, Retention, Tuning};
pub use control::{EngineState, EngineStatus, Pause, Quarantine, Readiness};
pub(crate) use control::{MONITOR, control_event};
pub use external::{ClaimedTask, WorkerReport};
pub use healing::{Autoscale, CircuitBreaker, Healing, NodeHealthCheck, RestartBackoff};
pub use maintenance::Pruned;

use self::attempts::{Attempts, StopCause};
use self::breaker::Breaker;
use self::control::Controls;
use self::limit::EngineLimit;
use self::wake::Wakeups;
use crate::backend::SharedBackend;
use crate::contracts::{EventHandler, Plugin, PluginProcessor, PluginRegistry, Processor};
use crate::error::{Error, Result};
use crate::events::EventLog;
use crate::locks::LockManager;
use crate::model::{
    Created, EngineCounts, NewTask, Resolution, Task, TaskFilter, TaskId, TaskSpec, check_name,
    limits,
};
use crate::monitor::{EngineStats, Monitor};
use crate::registry::DefaultPluginRegistry;
use crate::schedule::Schedule;

/// An engine registered under one name.
struct Engine {
    name: Arc<str>,
    /// The version running, and the one it can roll back to.
    versions: RwLock<versions::Versions>,
    /// Per-engine concurrency limit, changeable while attempts run.
    limit: Arc<EngineLimit>,
    /// The limit it was registered with.
    registered_limit: usize,
    /// An operator set the limit: the scaler leaves it alone.
    pinned: AtomicBool,
    /// Whether the claim loop is idle (its last call found nothing): a local dispatch may then
    /// start its task itself ([`claim::start_directly`]).
    idle: AtomicBool,
    /// Paused (on every node): mirrors the pause table, read by the claim loop.
    paused: AtomicBool,
    /// This node's circuit breaker for the engine.
    breaker: Breaker,
    /// Calls, failures and durations, for the monitor.
    stats: EngineStats,
    /// Restarts of the claim loop after a panic.
    restarts: AtomicU64,
    /// A moving average of its attempts' durations in microseconds (0: none yet), which sizes
    /// its local queue (see `claim::local_capacity`).
    attempt_micros: AtomicU64,
    /// The claim loop panicked and was not restarted.
    stopped: AtomicBool,
    /// Tasks an outcome's statement claimed for this engine
    /// ([`TaskStore::finish_attempts_and_claim`](crate::backend::TaskStore::finish_attempts_and_claim)),
    /// for its claim loop to take; `None` while no claim loop runs.
    handed: parking_lot::Mutex<Option<Vec<crate::model::Claimed>>>,
    /// Raised when tasks are handed to the claim loop.
    handed_signal: crate::signal::ChangeSignal,
    /// What the claim loop holds or expects: tasks waiting in its local queue and asked for by
    /// its claims under way (how much room is left for handed tasks).
    held: std::sync::atomic::AtomicUsize,
    /// Room granted to outcome statements under way, which may hand it tasks (see
    /// `claim::room_for_handed`).
    granted: std::sync::atomic::AtomicUsize,
}

impl Engine {
    /// Counts an attempt's duration into [`attempt_micros`](Self::attempt_micros): an
    /// exponentially weighted average, each attempt weighing 1/16. Two attempts ending at
    /// once may count as one (a plain load and store, no compare-and-swap loop on the hot
    /// path): it only sizes a queue.
    fn note_attempt(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let mean = self.attempt_micros.load(Ordering::Relaxed);
        let next = if mean == 0 {
            took
        } else {
            (mean.saturating_mul(15) / 16)
                .saturating_add(took / 16)
                .max(1)
        };
        if next != mean {
            self.attempt_micros.store(next, Ordering::Relaxed);
        }
    }

    /// The processor of the version running.
    fn processor(&self) -> Arc<dyn Processor> {
        self.versions.read().current.processor.clone()
    }
}

/// What every handle, loop and attempt of one orchestrator shares.
pub(crate) struct Inner {
    backend: SharedBackend,
    config: OrchestratorConfig,
    engines: RwLock<HashMap<String, Arc<Engine>>>,
    /// Global concurrency limit.
    global: Arc<Semaphore>,
    /// Bounds claimed tasks that wait for their locks (they hold no concurrency slot).
    lock_waiters: Arc<Semaphore>,
    /// The attempts this process runs.
    attempts: Attempts,
    /// The signals idle loops wait on.
    wakeups: Wakeups,
    /// Whether the backend stores tasks already claimed (read once, at build).
    direct_start: bool,
    /// `Tuning::local_queue` resolved against the backend (read once, at build).
    local_queue: usize,
    /// Whether outcomes' statements may claim the tasks they release (read once, at build).
    claims_released: bool,
    /// Outcomes of handed tasks the reporter's next batch waits for.
    handed_outcomes: parking_lot::Mutex<report::Awaited>,
    events: EventLog,
    locks: LockManager,
    plugins: DefaultPluginRegistry,
    /// Phase 1 of shutdown: claim loops and schedules stop; new dispatches are refused.
    stop_claiming: CancellationToken,
    /// Phase 2: the lease keeper, rescuer, reporter, tail and handlers stop.
    stop_background: CancellationToken,
    /// Background loops.
    background: TaskTracker,
    /// Outcomes of finished attempts, recorded in batches by the reporter.
    reports: tokio::sync::mpsc::UnboundedSender<report::Report>,
    /// Pauses, readiness and the signal claim loops wait on while they may not claim.
    controls: Controls,
    /// The monitor, when configured.
    monitor: Option<Monitor>,
    /// Opens each attempt's spans in its task's trace; `None`: no spans at all.
    trace_propagator: Option<Arc<dyn crate::trace::TracePropagator>>,
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
///     .engine("echo", processor_fn(|_ctx, input| async move { Ok(input) }))
///     .build()
///     .await?;
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
            .field("running", &self.inner.attempts.count())
            .finish_non_exhaustive()
    }
}

/// What [`Orchestrator::shutdown`] achieved.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Every attempt finished before the deadline.
    pub drained: bool,
    /// Attempts stopped at the deadline and given back to the queue.
    pub abandoned: usize,
}

impl Orchestrator {
    /// Starts building an orchestrator over `backend`.
    pub fn builder(backend: SharedBackend) -> OrchestratorBuilder {
        OrchestratorBuilder::new(backend)
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

    /// The monitor, when [`OrchestratorConfig::monitor`] configures one.
    pub fn monitor(&self) -> Option<&Monitor> {
        self.inner.monitor.as_ref()
    }

    /// The trace propagator, when one was given to
    /// [`OrchestratorBuilder::trace_propagator`].
    pub fn trace_propagator(&self) -> Option<&Arc<dyn crate::trace::TracePropagator>> {
        self.inner.trace_propagator.as_ref()
    }

    /// The names of the engines registered here, sorted.
    pub fn engines(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.engines.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// Attempts this process holds right now: running, and claimed and waiting for a slot in
    /// an engine's local queue (see [`Tuning::local_queue`]).
    pub fn running_count(&self) -> usize {
        self.inner.attempts.count()
    }

    /// How many tasks each engine has queued (due and delayed), running and finished, in one
    /// backend call. Every engine registered here is listed (with zeros when it has no
    /// tasks), and every engine the backend has tasks for, sorted by name.
    pub async fn task_counts(&self) -> Result<Vec<EngineCounts>> {
        let mut counts: BTreeMap<String, EngineCounts> = self
            .engines()
            .into_iter()
            .map(|name| (name.clone(), EngineCounts::new(name)))
            .collect();
        for engine in self.inner.backend.count_tasks().await? {
            counts.insert(engine.engine.clone(), engine);
        }
        Ok(counts.into_values().collect())
    }

    /// Registers `processor` as the engine `name` (with the default concurrency limit) and
    /// starts claiming its tasks; [`Error::EngineExists`] if the name is taken.
    pub fn register_engine(
        &self,
        name: impl Into<String>,
        processor: impl Processor + 'static,
    ) -> Result<()> {
        self.add_engine(name.into(), Arc::new(processor), None)
    }

    /// [`Orchestrator::register_engine`] with a concurrency limit of its own.
    pub fn register_engine_with_concurrency(
        &self,
        name: impl Into<String>,
        processor: impl Processor + 'static,
        concurrency: usize,
    ) -> Result<()> {
        self.add_engine(name.into(), Arc::new(processor), Some(concurrency))
    }

    fn add_engine(
        &self,
        name: String,
        processor: Arc<dyn Processor>,
        concurrency: Option<usize>,
    ) -> Result<()> {
        check_name("engine", &name, limits::MAX_ENGINE_LEN)?;
        let limit = concurrency.unwrap_or(self.inner.config.default_engine_concurrency);
        if limit == 0 {
            return Err(Error::invalid("concurrency", "must be at least 1"));
        }
        if self.inner.stop_claiming.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let engine = Arc::new(Engine {
            name: Arc::from(name.as_str()),
            versions: RwLock::new(versions::Versions::new(processor)),
            limit: Arc::new(EngineLimit::new(limit)),
            registered_limit: limit,
            pinned: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            breaker: Breaker::new(self.inner.config.healing.breaker().copied()),
            stats: EngineStats::new(),
            restarts: AtomicU64::new(0),
            attempt_micros: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            handed: parking_lot::Mutex::new(None),
            handed_signal: crate::signal::ChangeSignal::new(),
            held: std::sync::atomic::AtomicUsize::new(0),
            granted: std::sync::atomic::AtomicUsize::new(0),
        });
        {
            let mut engines = self.inner.engines.write();
            if engines.contains_key(&name) {
                return Err(Error::EngineExists(name));
            }
            engines.insert(name, engine.clone());
        }
        // After inserting: a pause from now on sets the flag itself.
        control::init_engine(&self.inner, &engine);
        self.inner
            .background
            .spawn(supervise::claim_loop(self.inner.clone(), engine));
        Ok(())
    }

    /// Initializes `plugin` with `config`, adds it to the registry, and registers it as the
    /// engine of every name in its [`Capability::engine`](crate::Capability::engine)
    /// capabilities.
    pub async fn register_plugin(
        &self,
        plugin: Arc<dyn Plugin>,
        config: serde_json::Value,
    ) -> Result<()> {
        let names: Vec<String> = plugin
            .capabilities()
            .iter()
            .filter_map(|c| c.engine_name().map(str::to_owned))
            .collect();
        // Refuse before initializing when a name is taken, so a refused plugin leaves no trace.
        {
            let engines = self.inner.engines.read();
            if let Some(taken) = names.iter().find(|name| engines.contains_key(*name)) {
                return Err(Error::EngineExists(taken.clone()));
            }
        }
        self.inner.plugins.register(plugin.clone(), config).await?;
        for (index, name) in names.iter().enumerate() {
            let processor = Arc::new(PluginProcessor(plugin.clone()));
            let added = self.add_engine(name.clone(), processor, None);
            if added.is_ok()
                && let Some(engine) = self.inner.engines.read().get(name)
            {
                let mut versions = engine.versions.write();
                versions.current.version = Some(plugin.version().to_owned());
                versions.current.plugin = Some(plugin.clone());
            }
            if let Err(error) = added {
                // Lost a race for the name: undo this plugin's engines and registration.
                for registered in &names[..index] {
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

    /// Dispatches one task. With an idempotency key already used, returns the earlier task.
    ///
    /// A task for an engine of this orchestrator whose claim loop is idle, with a free slot,
    /// may start here and now: when the backend can store it already claimed, the task
    /// returned is then `running`.
    pub async fn dispatch(&self, spec: TaskSpec) -> Result<Task> {
        if self.inner.stop_claiming.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let task = match claim::start_directly(&self.inner, spec.into_new_task()?).await? {
            Ok(started) => return Ok(started),
            Err(task) => task,
        };
        let mut created = self.create(vec![task]).await?;
        created
            .pop()
            .map(|c| c.task)
            .ok_or_else(|| Error::backend("create_tasks", "returned no task"))
    }

    /// Dispatches several tasks in one backend call, in order.
    ///
    /// The tasks may depend on each other ([`TaskSpec::after`] a [`Step`](crate::Step): the
    /// index of a spec in `specs`) and on existing tasks: the whole graph is stored in one
    /// atomic step, or refused with [`Error::Invalid`] naming the task (a cycle, an unknown
    /// step or task), nothing stored. [`Orchestrator::dispatch_workflow`] stores a graph under
    /// a workflow id of its own.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> orch_core::Result<()> {
    /// use std::sync::Arc;
    /// use orch_core::{MemoryBackend, Orchestrator, Step, TaskSpec, TaskStatus};
    ///
    /// let orch = Orchestrator::builder(Arc::new(MemoryBackend::new())).build().await?;
    /// let created = orch
    ///     .dispatch_many(vec![TaskSpec::new("fetch"), TaskSpec::new("parse").after(Step(0))])
    ///     .await?;
    /// assert_eq!(created[1].task.status, TaskStatus::Waiting);
    /// # orch.shutdown(std::time::Duration::from_secs(1)).await;
    /// # Ok(()) }
    /// ```
    pub async fn dispatch_many(&self, specs: Vec<TaskSpec>) -> Result<Vec<Created>> {
        if self.inner.stop_claiming.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let tasks = if specs.iter().any(|spec| !spec.depends_on.is_empty()) {
            crate::backend::plan_tasks(specs, None)?
        } else {
            specs
                .into_iter()
                .map(TaskSpec::into_new_task)
                .collect::<Result<Vec<_>>>()?
        };
        self.create(tasks).await
    }

    /// Creates `tasks` in one backend call.
    async fn create(&self, tasks: Vec<NewTask>) -> Result<Vec<Created>> {
        let span = tracing::debug_span!("dispatch", count = tasks.len());
        let created = self
            .inner
            .backend
            .create_tasks(tasks)
            .instrument(span)
            .await?;
        if created.iter().any(|c| c.created) {
            self.inner.wakeups.tasks_changed();
        }
        Ok(created)
    }

    /// Dispatches a task and waits until it is finished (ORCH-Next's `stay: true`). The wait
    /// is bounded by the task's timeout over all its attempts plus the largest retry delays.
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
    /// [`Error::WaitTimeout`] otherwise. Each call waits on its own: one caller timing out or
    /// giving up (its future dropped) leaves the others waiting.
    pub async fn wait_for(&self, id: TaskId, max_wait: Duration) -> Result<Task> {
        let deadline = tokio::time::Instant::now()
            .checked_add(max_wait)
            .unwrap_or_else(far_future);
        loop {
            let finished = self.inner.events.wait_terminal(id);
            let task = self.get(id).await?;
            if task.status.is_terminal() {
                return Ok(task);
            }
            if tokio::time::timeout_at(deadline, finished).await.is_err() {
                // It may have finished right at the deadline.
                let task = self.get(id).await?;
                return if task.status.is_terminal() {
                    Ok(task)
                } else {
                    Err(Error::WaitTimeout(id))
                };
            }
            // A terminal event of the task was published: the next read shows it finished.
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

    /// The task dispatched with idempotency key `key`, or `None` when no stored task holds it
    /// (never used, or its task was pruned or deleted).
    /// [`Error::Invalid`] (`idempotency_key`) for a key no task could hold (empty, too long,
    /// control characters).
    pub async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<Task>> {
        check_name("idempotency_key", key, limits::MAX_IDEMPOTENCY_KEY_LEN)?;
        self.inner.backend.task_by_idempotency_key(key).await
    }

    /// Tasks matching `filter`.
    pub async fn list(&self, filter: TaskFilter) -> Result<Vec<Task>> {
        self.inner.backend.list_tasks(filter).await
    }

    /// Cancels a waiting, queued or running task. A running attempt in this process is told
    /// through its context's cancellation token at once; one in another process learns it at
    /// its next heartbeat. Tasks waiting for it follow their dependency's
    /// [`OnParentFailure`](crate::OnParentFailure). [`Error::IllegalTransition`] for a
    /// finished task.
    pub async fn cancel(&self, id: TaskId) -> Result<Task> {
        let task = self.inner.backend.cancel_task(id).await?;
        self.cancelled(id);
        Ok(task)
    }

    /// [`Orchestrator::cancel`] by a named caller (`user:alice`): its `task.cancelled` event
    /// carries `actor` beside the state it left (on a backend that implements
    /// [`TaskStore::cancel_task_by`](crate::backend::TaskStore::cancel_task_by)).
    pub async fn cancel_by(&self, id: TaskId, actor: &str) -> Result<Task> {
        control::check_actor(actor, "")?;
        let task = self.inner.backend.cancel_task_by(id, actor).await?;
        self.cancelled(id);
        Ok(task)
    }

    fn cancelled(&self, id: TaskId) {
        self.inner.attempts.stop(id, StopCause::Cancelled);
        // Tasks waiting for it may have been released.
        self.inner.wakeups.tasks_changed();
    }

    /// Retries a task that failed, was cancelled or timed out: it is `queued` again at once,
    /// its attempts starting over, and its `task.reopened` event names `actor` (`user:alice`)
    /// beside the state it left; its events keep the earlier attempts.
    /// [`Error::IllegalTransition`] for a task in another state; [`Error::Invalid`]
    /// (`task_id`) for a task of a workflow (retry the workflow with
    /// [`Orchestrator::retry_workflow`], which reopens the graph around it) and for a task with
    /// dependencies outside workflows (dispatch it again).
    pub async fn retry(&self, id: TaskId, actor: &str) -> Result<Task> {
        control::check_actor(actor, "")?;
        let task = self.inner.backend.retry_task(id, actor).await?;
        self.inner.wakeups.tasks_changed();
        Ok(task)
    }

    /// Requeues a `queued` task that waits for its delay, its `run_at` or a retry's backoff: it
    /// is due at once, after the tasks already due at its priority
    /// ([`rules::requeue`](crate::backend::rules::requeue)); its `task.requeued` event names
    /// `actor`.
    /// [`Error::TaskNotFound`] for an unknown task, [`Error::IllegalTransition`] for a task that
    /// is not queued, [`Error::Invalid`] (`task_id`) for one already due.
    pub async fn requeue(&self, id: TaskId, actor: &str) -> Result<Task> {
        control::check_actor(actor, "")?;
        let task = self.inner.backend.requeue_task(id, actor).await?;
        self.inner.wakeups.tasks_changed();
        Ok(task)
    }

    /// Deletes a finished task outside workflows that no task depends on (a workflow's tasks
    /// are pruned with it), and records
    /// [`event_kinds::TASK_DELETED`](crate::event_kinds::TASK_DELETED) naming `actor`; the
    /// task's earlier events stay in the log. Returns the task as it was.
    /// [`Error::TaskNotFound`] for an unknown task, [`Error::Invalid`] (`task_id`) for one
    /// that may not be deleted, saying why.
    pub async fn delete(&self, id: TaskId, actor: &str) -> Result<Task> {
        control::check_actor(actor, "")?;
        let task = self.inner.backend.delete_task(id).await?;
        // The task is gone either way: a failure to record it is logged, not returned.
        if let Err(error) = self
            .inner
            .record_control(
                crate::event_kinds::TASK_DELETED,
                Some(&task.engine),
                actor,
                "",
                serde_json::json!({"task_id": task.id, "status": task.status}),
            )
            .await
        {
            tracing::warn!(task_id = %task.id, %error, "task deleted; its task.deleted event was not recorded");
        }
        Ok(task)
    }

    /// Finishes a waiting, queued or running task for an external system that ran it (a
    /// signed webhook, say). A running attempt in this process is stopped; tasks waiting for
    /// it learn its outcome.
    pub async fn resolve(&self, id: TaskId, resolution: Resolution) -> Result<Task> {
        let task = self.inner.backend.resolve_task(id, resolution).await?;
        self.inner.attempts.stop(id, StopCause::LeaseLost);
        self.inner.wakeups.tasks_changed();
        Ok(task)
    }

    /// Runs one rescue pass now (the rescuer does this every `rescue_interval`): tasks whose
    /// lease expired are requeued or failed, and waiting tasks a failed parent ends (when a
    /// backend left them for later, see
    /// [`TaskStore::settle_dependents`](crate::backend::TaskStore::settle_dependents)) end.
    /// Returns the rescued tasks.
    pub async fn rescue_expired(&self) -> Result<Vec<Task>> {
        maintenance::rescue_once(&self.inner).await
    }

    /// Runs one pruning pass now with `retention` (the pruner does this every
    /// `retention.interval` when configured). Returns how many tasks and events it deleted.
    pub async fn prune(&self, retention: Retention) -> Result<Pruned> {
        maintenance::prune_once(&self.inner, retention).await
    }

    /// Graceful shutdown: stop claiming and scheduling, let running attempts finish for up to
    /// `deadline`, then stop the rest and give their tasks back to the queue, then stop the
    /// background loops. Safe to call more than once.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let inner = &self.inner;
        inner.stop_claiming.cancel();
        inner.attempts.tracker.close();
        let drained = tokio::time::timeout(deadline, inner.attempts.tracker.wait())
            .await
            .is_ok();
        let mut abandoned = 0;
        if !drained {
            abandoned = inner.attempts.stop_all(StopCause::Abandoned);
            // Abandoned attempts report promptly; bound the wait anyway.
            let _ =
                tokio::time::timeout(Duration::from_secs(5), inner.attempts.tracker.wait()).await;
        }
        inner.stop_background.cancel();
        inner.background.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), inner.background.wait()).await;
        inner.events.close();
        tracing::info!(drained, abandoned, "orchestrator shut down");
        ShutdownReport { drained, abandoned }
    }
}

/// A deadline no wait reaches: about thirty years from now (`Instant` cannot hold "never").
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(30 * 365 * 24 * 3600)
}
