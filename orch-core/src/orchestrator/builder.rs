//! [`OrchestratorBuilder`]: engines, handlers and schedules collected, then one orchestrator
//! started with all its loops.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::attempts::Attempts;
use super::control::{self, Controls};
use super::wake::Wakeups;
use super::{DropGuard, Inner, Orchestrator, OrchestratorConfig, maintenance, report};
use crate::backend::SharedBackend;
use crate::contracts::{EventHandler, Processor};
use crate::error::{Error, Result};
use crate::events::EventLog;
use crate::locks::LockManager;
use crate::monitor::{Monitor, Notifier, Sampler};
use crate::registry::DefaultPluginRegistry;
use crate::schedule::Schedule;
use crate::trace::TracePropagator;

/// `Tuning::local_queue` where a claim costs the backend a round trip.
const DEFAULT_LOCAL_QUEUE: usize = 64;

/// Collects engines, handlers and schedules, then starts an [`Orchestrator`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> orch_core::Result<()> {
/// use std::sync::Arc;
/// use orch_core::{processor_fn, MemoryBackend, Orchestrator, OrchestratorConfig};
///
/// let orch = Orchestrator::builder(Arc::new(MemoryBackend::new()))
///     .config(OrchestratorConfig::default().with_global_concurrency(16))
///     .engine("upper", processor_fn(|_ctx, input| async move {
///         Ok(input.as_str().unwrap_or_default().to_uppercase().into())
///     }))
///     .engine_with_concurrency("slow", processor_fn(|_ctx, input| async move { Ok(input) }), 2)
///     .build()
///     .await?;
/// assert_eq!(orch.engines(), ["slow", "upper"]);
/// # Ok(()) }
/// ```
pub struct OrchestratorBuilder {
    backend: SharedBackend,
    config: OrchestratorConfig,
    engines: Vec<(String, Arc<dyn Processor>, Option<usize>)>,
    handlers: Vec<Arc<dyn EventHandler>>,
    schedules: Vec<Schedule>,
    samplers: Vec<Arc<dyn Sampler>>,
    notifiers: Vec<Arc<dyn Notifier>>,
    trace_propagator: Option<Arc<dyn TracePropagator>>,
}

impl OrchestratorBuilder {
    pub(super) fn new(backend: SharedBackend) -> Self {
        OrchestratorBuilder {
            backend,
            config: OrchestratorConfig::default(),
            engines: Vec::new(),
            handlers: Vec::new(),
            schedules: Vec::new(),
            samplers: Vec::new(),
            notifiers: Vec::new(),
            trace_propagator: None,
        }
    }

    /// Replaces the configuration.
    pub fn config(mut self, config: OrchestratorConfig) -> Self {
        self.config = config;
        self
    }

    /// Registers `processor` as the engine `name`, with the default concurrency limit. Tasks
    /// dispatched with `TaskSpec::new(name)` run on it.
    pub fn engine(mut self, name: impl Into<String>, processor: impl Processor + 'static) -> Self {
        self.engines.push((name.into(), Arc::new(processor), None));
        self
    }

    /// Registers `processor` as the engine `name` with a concurrency limit of its own.
    pub fn engine_with_concurrency(
        mut self,
        name: impl Into<String>,
        processor: impl Processor + 'static,
        concurrency: usize,
    ) -> Self {
        self.engines
            .push((name.into(), Arc::new(processor), Some(concurrency)));
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

    /// Adds a source of readings for the monitor (the machine's, a front end's); used when
    /// [`OrchestratorConfig::monitor`] configures one.
    pub fn sampler(mut self, sampler: impl Sampler + 'static) -> Self {
        self.samplers.push(Arc::new(sampler));
        self
    }

    /// Adds a receiver of the monitor's alerts; used when [`OrchestratorConfig::monitor`]
    /// configures one. Each notifier gets its own delivery queue.
    pub fn notifier(mut self, notifier: impl Notifier + 'static) -> Self {
        self.notifiers.push(Arc::new(notifier));
        self
    }

    /// Opens the spans of [`trace`](crate::trace) for every attempt this orchestrator runs,
    /// each continuing the trace its task carries through `propagator`. Without one (the
    /// default) no span is opened and a task's trace context is only stored.
    pub fn trace_propagator(mut self, propagator: impl TracePropagator) -> Self {
        self.trace_propagator = Some(Arc::new(propagator));
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
        let backend = self.backend;
        let wakeups = Wakeups::of(&*backend);
        let events = EventLog::new(
            backend.clone(),
            config.tuning.event_buffer,
            wakeups.events.clone(),
            wakeups.local_events,
        );
        // Stopping the background also stops claiming (a dropped orchestrator stops both).
        let stop_background = CancellationToken::new();
        let (reports, report_queue) = tokio::sync::mpsc::unbounded_channel();
        let locks = LockManager::with_config(backend.clone(), config.locks);
        let (monitor, deliveries) = match &config.monitor {
            Some(monitor) => {
                let (monitor, deliveries) = Monitor::new(
                    monitor.clone(),
                    self.samplers,
                    self.notifiers,
                    &stop_background,
                );
                (Some(monitor), deliveries)
            }
            None => (None, Vec::new()),
        };
        let inner = Arc::new(Inner {
            global: Arc::new(Semaphore::new(config.global_concurrency)),
            lock_waiters: Arc::new(Semaphore::new(config.tuning.max_lock_waiters)),
            direct_start: backend.creates_claimed(),
            claims_released: backend.claims_released_tasks(),
            handed_outcomes: Default::default(),
            local_queue: config.tuning.local_queue.unwrap_or_else(|| {
                if backend.claims_take_a_round_trip() {
                    DEFAULT_LOCAL_QUEUE
                } else {
                    0
                }
            }),
            backend,
            engines: RwLock::new(HashMap::new()),
            attempts: Attempts::new(),
            wakeups,
            events,
            locks,
            plugins: DefaultPluginRegistry::new(),
            stop_claiming: stop_background.child_token(),
            stop_background,
            background: TaskTracker::new(),
            reports,
            controls: Controls::new(),
            monitor,
            trace_propagator: self.trace_propagator,
            config,
        });
        let orch = Orchestrator {
            _drop_guard: Arc::new(DropGuard(inner.stop_background.clone())),
            inner,
        };
        orch.inner.events.start_at_end().await?;
        // Pauses made before this node started hold from its first claim.
        if let Err(error) = control::refresh_once(&orch.inner).await {
            tracing::warn!(%error, "reading the shared engine pauses failed; retrying in the background");
        }
        start_background(&orch.inner, report_queue);
        for delivery in deliveries {
            orch.inner.background.spawn(delivery);
        }
        if let Some(monitor) = orch.inner.monitor.clone() {
            monitor.attach(&orch.inner);
            orch.inner
                .background
                .spawn(monitor.run(orch.inner.clone(), orch.inner.stop_background.clone()));
        }
        for (name, processor, concurrency) in self.engines {
            orch.add_engine(name, processor, concurrency)?;
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

/// Starts the loops that run beside the engines: the event tail, the reporter, the lease
/// keeper, the rescuer, the reader of shared controls and (with a retention) the pruner.
fn start_background(
    inner: &Arc<Inner>,
    report_queue: tokio::sync::mpsc::UnboundedReceiver<report::Report>,
) {
    let stop = inner.stop_background.clone();
    inner.background.spawn(
        inner
            .events
            .clone()
            .run_tail(inner.config.tuning.poll_interval, stop.clone()),
    );
    inner
        .background
        .spawn(report::reporter(inner.clone(), report_queue, stop.clone()));
    inner
        .background
        .spawn(maintenance::lease_keeper(inner.clone(), stop.clone()));
    inner
        .background
        .spawn(maintenance::rescuer(inner.clone(), stop.clone()));
    inner
        .background
        .spawn(control::refresher(inner.clone(), stop.clone()));
    if let Some(retention) = inner.config.retention {
        inner
            .background
            .spawn(maintenance::pruner(inner.clone(), retention, stop));
    }
}
