//! The monitor: it watches an orchestrator, notices what is abnormal, repairs what it safely
//! can and tells people about the rest.
//!
//! Turn it on with [`OrchestratorConfig::with_monitor`](crate::OrchestratorConfig::with_monitor)
//! and add [`Sampler`]s and [`Notifier`]s on the builder
//! ([`OrchestratorBuilder::sampler`](crate::OrchestratorBuilder::sampler),
//! [`OrchestratorBuilder::notifier`](crate::OrchestratorBuilder::notifier)). Every
//! [`MonitorConfig::interval`] a pass:
//! 1. **samples**: the orchestrator's own readings (queue depth per engine and priority,
//!    delayed and running tasks, in-flight attempts and limits, error rate and task duration
//!    percentiles over [`MonitorConfig::rate_window`], lock waits, held locks and timeouts, the
//!    database probe's result and latency, rescued tasks), then each sampler's (the machine's
//!    CPU, memory, disk and network, a pool's use, a front end's authentication failures);
//! 2. **detects**: each [`AlertRule`] per series, and [`AnomalyDetection`]'s EWMA baselines;
//!    an alert fires once when its condition has held for its duration and resolves once when
//!    it has stayed clear for its `clear_for`;
//! 3. **repairs** what [`Healing`](crate::Healing) allows: the node leaves rotation while its
//!    database probe fails or its disk is full and comes back when healthy; engines' limits
//!    follow their queues ([`Autoscale`](crate::Autoscale)); rescues are reported;
//! 4. **tells**: alerts are appended to the event log
//!    ([`event_kinds::ALERT_FIRED`](crate::event_kinds::ALERT_FIRED),
//!    [`ALERT_RESOLVED`](crate::event_kinds::ALERT_RESOLVED)) and queued for each notifier,
//!    whose deliveries run on tasks of their own ([`Delivery`]).
//!
//! Readings of the shared backend (queue depths, lock waits) are the same on every node; so
//! that a cluster raises one alert and not one per node, rules on them are evaluated by one
//! node, the monitor leader (a lock in the backend, renewed each pass). Each node evaluates
//! its own readings (machine, error rates, database probe).
//!
//! The monitor does no I/O of its own beyond the backend traits, the samplers and the
//! notifiers, and all its timing follows tokio's clock.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> orch_core::Result<()> {
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use orch_core::monitor::{Alert, MonitorConfig, Notifier, NotifyError};
//! use orch_core::{MemoryBackend, Orchestrator, OrchestratorConfig};
//!
//! struct Log;
//!
//! #[async_trait]
//! impl Notifier for Log {
//!     fn name(&self) -> &str {
//!         "log"
//!     }
//!     async fn notify(&self, alert: &Alert) -> Result<(), NotifyError> {
//!         println!("{}: {}", alert.rule, alert.summary);
//!         Ok(())
//!     }
//! }
//!
//! let orch = Orchestrator::builder(Arc::new(MemoryBackend::new()))
//!     .config(OrchestratorConfig::default()
//!         .with_monitor(Some(MonitorConfig::default()))
//!         .with_self_healing(true))
//!     .notifier(Log)
//!     .build()
//!     .await?;
//! let readings = orch.monitor().expect("configured").check_now().await?;
//! assert_eq!(readings.get(&orch_core::monitor::Metric::DatabaseUp, None), Some(1.0));
//! # orch.shutdown(std::time::Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```

mod alerts;
mod config;
mod heal;
mod notify;
mod pass;
mod readings;
mod stats;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use tokio_util::sync::CancellationToken;

pub use alerts::{Alert, AlertState};
pub use config::{AlertRule, AnomalyDetection, Comparison, Delivery, MonitorConfig, Severity};
#[cfg(feature = "mocks")]
pub use notify::MockNotifier;
pub use notify::{Notifier, NotifierStats, NotifyError};
pub use readings::{Metric, Reading, Readings, Sampler, SamplerFn, sampler_fn};
pub(crate) use stats::{EngineStats, StatsSnapshot};

use self::notify::Outbox;
use self::pass::PassState;
use crate::error::{Error, Result};
use crate::orchestrator::Inner;

struct Shared {
    config: MonitorConfig,
    samplers: Vec<Arc<dyn Sampler>>,
    outboxes: Vec<Outbox>,
    /// The last pass's readings.
    latest: parking_lot::Mutex<Readings>,
    /// The alerts firing after the last pass.
    firing: parking_lot::Mutex<Vec<Alert>>,
    /// Whether this node held the monitor leadership at the last pass.
    leader: AtomicBool,
    /// What passes carry from one to the next; one pass at a time.
    state: tokio::sync::Mutex<PassState>,
    /// The orchestrator, for [`Monitor::check_now`] (weak: the orchestrator owns the monitor).
    inner: OnceLock<Weak<Inner>>,
}

/// A handle on an orchestrator's monitor ([`Orchestrator::monitor`](crate::Orchestrator::monitor)):
/// its latest readings, the alerts firing, its notifiers' counters. Cheap to clone.
#[derive(Clone)]
pub struct Monitor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("interval", &self.shared.config.interval)
            .field("leader", &self.is_leader())
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// A monitor, and the delivery loops of its notifiers (to spawn; they end when `stop`
    /// fires).
    pub(crate) fn new(
        config: MonitorConfig,
        samplers: Vec<Arc<dyn Sampler>>,
        notifiers: Vec<Arc<dyn Notifier>>,
        stop: &CancellationToken,
    ) -> (Monitor, Vec<impl Future<Output = ()> + Send + 'static>) {
        let mut outboxes = Vec::with_capacity(notifiers.len());
        let mut deliveries = Vec::with_capacity(notifiers.len());
        for notifier in notifiers {
            let (outbox, delivery) = notify::outbox(notifier, config.delivery, stop.clone());
            outboxes.push(outbox);
            deliveries.push(delivery);
        }
        let monitor = Monitor {
            shared: Arc::new(Shared {
                state: tokio::sync::Mutex::new(PassState::new(&config)),
                config,
                samplers,
                outboxes,
                latest: parking_lot::Mutex::new(Readings::default()),
                firing: parking_lot::Mutex::new(Vec::new()),
                leader: AtomicBool::new(false),
                inner: OnceLock::new(),
            }),
        };
        (monitor, deliveries)
    }

    /// Attaches the orchestrator the monitor watches.
    pub(crate) fn attach(&self, inner: &Arc<Inner>) {
        let _ = self.shared.inner.set(Arc::downgrade(inner));
    }

    /// The settings in force.
    pub fn config(&self) -> &MonitorConfig {
        &self.shared.config
    }

    /// The readings of the last pass (empty before the first).
    pub fn readings(&self) -> Readings {
        self.shared.latest.lock().clone()
    }

    /// The alerts firing now, sorted by rule and series.
    pub fn alerts(&self) -> Vec<Alert> {
        self.shared.firing.lock().clone()
    }

    /// Each notifier's delivery counters, in the order they were added.
    pub fn notifier_stats(&self) -> Vec<NotifierStats> {
        self.shared.outboxes.iter().map(Outbox::stats).collect()
    }

    /// Whether this node raised alerts on cluster-wide readings at the last pass.
    pub fn is_leader(&self) -> bool {
        self.shared.leader.load(Ordering::Acquire)
    }

    /// Runs one pass now (sample, detect, repair, tell) and returns its readings. Passes never
    /// overlap: this waits for one under way. [`Error::ShuttingDown`] once the orchestrator is
    /// gone.
    pub async fn check_now(&self) -> Result<Readings> {
        let inner = self
            .shared
            .inner
            .get()
            .and_then(Weak::upgrade)
            .ok_or(Error::ShuttingDown)?;
        Ok(self.pass(&inner).await)
    }

    /// Runs a pass every interval until `stop` fires.
    pub(crate) async fn run(self, inner: Arc<Inner>, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(self.shared.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.cancelled() => break,
            }
            self.pass(&inner).await;
        }
    }
}
