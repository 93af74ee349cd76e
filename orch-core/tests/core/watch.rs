//! What the control, healing and monitor tests share: a backend whose probe, claims and
//! claim loop can be made to fail or panic, a sampler the test scripts, a notifier that
//! records, and event look-ups.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use orch_core::backend::{
    AttemptReport, ChangeSignal, Claimed, HeldLease, NewTask, QueueDepth, TaskStore,
};
use orch_core::monitor::{Alert, Notifier, NotifyError, Reading, Sampler, sampler_fn};
use orch_core::{
    Created, EngineCounts, Error, Event, MemoryBackend, Orchestrator, Resolution, Result, Task,
    TaskFilter, TaskId, TaskStatus,
};

/// A memory backend whose health the test sets.
#[derive(Default)]
pub(crate) struct Faulty {
    pub(crate) inner: Arc<MemoryBackend>,
    /// `queue_depth`, the monitor's probe of the backend, fails while set (claims go on
    /// working: only the node's own health check can keep it from claiming).
    pub(crate) down: AtomicBool,
    /// `queue_depth` answers only after an hour while set (a database too slow for the probe).
    pub(crate) slow: AtomicBool,
    /// The next this many `claim_tasks` calls panic.
    pub(crate) claim_panics: AtomicUsize,
}

impl Faulty {
    /// A backend over `inner` (shared with other orchestrators, say).
    pub(crate) fn over(inner: Arc<MemoryBackend>) -> Arc<Self> {
        Arc::new(Faulty {
            inner,
            ..Faulty::default()
        })
    }

    fn unreachable(&self, operation: &'static str) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::backend(operation, "the database is unreachable"));
        }
        Ok(())
    }
}

#[async_trait]
impl TaskStore for Faulty {
    async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<Created>> {
        self.inner.create_tasks(tasks).await
    }
    async fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
        self.inner.get_task(id).await
    }
    async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<Task>> {
        self.inner.list_tasks(filter).await
    }
    async fn claim_tasks(
        &self,
        engine: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>> {
        if self
            .claim_panics
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("claim_tasks made to panic");
        }
        self.inner.claim_tasks(engine, limit, lease).await
    }
    async fn next_run_at(&self, engine: &str) -> Result<Option<DateTime<Utc>>> {
        self.inner.next_run_at(engine).await
    }
    async fn renew_leases(
        &self,
        leases: Vec<HeldLease>,
        lease: Duration,
    ) -> Result<Vec<Option<DateTime<Utc>>>> {
        self.inner.renew_leases(leases, lease).await
    }
    async fn finish_attempts(
        &self,
        reports: Vec<AttemptReport>,
    ) -> Result<Vec<Result<TaskStatus>>> {
        self.inner.finish_attempts(reports).await
    }
    async fn cancel_task(&self, id: TaskId) -> Result<Task> {
        self.inner.cancel_task(id).await
    }
    async fn resolve_task(&self, id: TaskId, resolution: Resolution) -> Result<Task> {
        self.inner.resolve_task(id, resolution).await
    }
    async fn rescue_expired(&self, limit: usize) -> Result<Vec<Task>> {
        self.inner.rescue_expired(limit).await
    }
    async fn prune_tasks(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        self.inner.prune_tasks(before, limit).await
    }
    async fn queue_depth(&self) -> Result<Vec<QueueDepth>> {
        self.unreachable("queue_depth")?;
        if self.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
        self.inner.queue_depth().await
    }
    async fn count_tasks(&self) -> Result<Vec<EngineCounts>> {
        self.inner.count_tasks().await
    }
    fn task_wakeups(&self) -> Option<ChangeSignal> {
        self.inner.task_wakeups()
    }
}

delegate_all_but_tasks!(Faulty, inner);

/// Readings the test sets, served by [`Script::sampler`].
#[derive(Clone, Default)]
pub(crate) struct Script(Arc<Mutex<Vec<Reading>>>);

impl Script {
    /// Serves `readings` from the next pass on.
    pub(crate) fn set(&self, readings: Vec<Reading>) {
        *self.0.lock() = readings;
    }

    pub(crate) fn sampler(&self) -> impl Sampler + 'static {
        let readings = self.0.clone();
        sampler_fn(move || {
            let readings = readings.lock().clone();
            async move { Ok(readings) }
        })
    }
}

/// A notifier that records what it is given and fails while told to.
#[derive(Clone, Default)]
pub(crate) struct Recorder {
    pub(crate) received: Arc<Mutex<Vec<Alert>>>,
    /// Calls so far (each attempt counts).
    pub(crate) calls: Arc<AtomicUsize>,
    /// The next this many calls fail (retryably).
    pub(crate) failures: Arc<AtomicUsize>,
    /// Calls never return while set.
    pub(crate) hang: Arc<AtomicBool>,
}

#[async_trait]
impl Notifier for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    async fn notify(&self, alert: &Alert) -> std::result::Result<(), NotifyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(NotifyError::retryable("receiver answered 503"));
        }
        self.received.lock().push(alert.clone());
        Ok(())
    }
}

/// Every event of `kind` in the log so far.
pub(crate) async fn events_of(orch: &Orchestrator, kind: &str) -> Vec<Event> {
    orch.events()
        .replay(0, 1_000_000)
        .await
        .expect("events")
        .into_iter()
        .filter(|event| event.kind.as_str() == kind)
        .collect()
}

/// Every event of `kind` whose data names `rule`.
pub(crate) async fn alerts_of(orch: &Orchestrator, kind: &str, rule: &str) -> Vec<Event> {
    events_of(orch, kind)
        .await
        .into_iter()
        .filter(|event| event.data["rule"] == rule)
        .collect()
}

/// Sleeps on tokio's (paused) clock.
pub(crate) async fn sleep_secs(seconds: f64) {
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
}
