//! Claim calls and outcome batches under way at once: the limits hold, and heavy load uses
//! them. A backend whose claims and outcome batches each take 5 ms (tokio's paused clock)
//! counts how many run at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orch_core::backend::*;
use orch_core::*;
use serde_json::Value;

/// Calls of one kind under way now, and the most seen at once.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    async fn time<T>(&self, call: impl Future<Output = T>) -> T {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let out = call.await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        out
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }

    /// Like `time`, but the call runs first and the 5 ms come after it.
    async fn time_after<T>(&self, call: impl Future<Output = T>) -> T {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        let out = call.await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        out
    }
}

/// The memory backend, with slow, counted claims and outcome batches.
#[derive(Default)]
struct Slow {
    inner: MemoryBackend,
    claims: Gauge,
    batches: Gauge,
    /// Outcomes recorded through batches.
    batched: AtomicUsize,
    /// Claims take their tasks first and spend their 5 ms after.
    claim_then_wait: bool,
    /// Calls of `next_run_at`.
    next_run_at_calls: AtomicUsize,
    /// Offers `create_claimed` (create, then claim the core's only task).
    hand_off: bool,
    /// How long an outcome batch's answer takes to come back after the batch is stored.
    answer_delay: Duration,
}

async fn run(claims_in_flight: usize, reports_in_flight: usize) -> Arc<Slow> {
    let backend = Arc::new(Slow::default());
    let orch = Orchestrator::builder(backend.clone() as SharedBackend)
        .config(
            crate::config().with_tuning(
                Tuning::default()
                    .with_poll_interval(Duration::from_millis(200))
                    .with_claims_in_flight(claims_in_flight)
                    .with_reports_in_flight(reports_in_flight),
            ),
        )
        .engine(
            "work",
            // 1 to 8 ms: slots free up one by one while a claim call is under way.
            processor_fn(|_ctx, input: Value| async move {
                let ms = input["ms"].as_u64().unwrap_or(1);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Value::Null)
            }),
        )
        .build()
        .await
        .expect("valid config");
    let specs = (0..2_000u64)
        .map(|n| TaskSpec::new("work").payload(serde_json::json!({"ms": n % 8 + 1})))
        .collect();
    let tasks = orch.dispatch_many(specs).await.expect("dispatched");
    for task in &tasks {
        let done = orch
            .wait_for(task.task.id, Duration::from_secs(600))
            .await
            .expect("finished");
        assert_eq!(done.status, TaskStatus::Succeeded);
    }
    orch.shutdown(Duration::from_secs(5)).await;
    assert_eq!(backend.batched.load(Ordering::SeqCst), 2_000);
    backend
}

#[tokio::test(start_paused = true)]
async fn several_claims_and_outcome_batches_run_at_once_under_load() {
    let backend = run(2, 3).await;
    assert_eq!(backend.claims.max(), 2, "claim calls at once");
    let batches = backend.batches.max();
    assert!(
        (2..=3).contains(&batches),
        "outcome batches at once: {batches}"
    );
}

#[tokio::test(start_paused = true)]
async fn one_at_a_time_when_so_configured() {
    let backend = run(1, 1).await;
    assert_eq!(backend.claims.max(), 1, "claim calls at once");
    assert_eq!(backend.batches.max(), 1, "outcome batches at once");
}

/// Each attempt's input and start instant, as the engine of [`probed`] reports them.
type Starts = tokio::sync::mpsc::UnboundedReceiver<(Value, tokio::time::Instant)>;

/// An orchestrator on `backend` whose engine `work` reports each start, then takes `runs`.
async fn probed(backend: Arc<Slow>, runs: Duration) -> (Orchestrator, Starts) {
    let (started, starts) = tokio::sync::mpsc::unbounded_channel();
    let orch = Orchestrator::builder(backend as SharedBackend)
        .config(crate::config())
        .engine(
            "work",
            processor_fn(move |_ctx, input: Value| {
                started.send((input, tokio::time::Instant::now())).ok();
                async move {
                    tokio::time::sleep(runs).await;
                    Ok(Value::Null)
                }
            }),
        )
        .build()
        .await
        .expect("valid config");
    (orch, starts)
}

/// A task dispatched while a claim that will come back empty is under way is claimed as soon
/// as that call is back, without first asking the backend for the next delayed task.
#[tokio::test(start_paused = true)]
async fn a_dispatch_during_an_empty_claim_is_claimed_at_once() {
    let backend = Arc::new(Slow {
        claim_then_wait: true,
        ..Slow::default()
    });
    let (orch, mut starts) = probed(backend.clone(), Duration::ZERO).await;
    // Idle: the first claims came back empty long ago.
    tokio::time::sleep(Duration::from_secs(1)).await;
    orch.dispatch(TaskSpec::new("work").payload(serde_json::json!("a")))
        .await
        .expect("dispatched");
    let (first, _) = starts.recv().await.expect("a started");
    assert_eq!(first, "a");
    // The loop's next claim (empty) is under way for 5 ms from now; dispatch in its middle.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let asked = backend.next_run_at_calls.load(Ordering::SeqCst);
    let dispatched = tokio::time::Instant::now();
    orch.dispatch(TaskSpec::new("work").payload(serde_json::json!("b")))
        .await
        .expect("dispatched");
    let (second, at) = starts.recv().await.expect("b started");
    assert_eq!(second, "b");
    // 3 ms left of the empty call, then 5 ms of the claim that takes b.
    assert_eq!(at - dispatched, Duration::from_millis(8));
    assert_eq!(
        backend.next_run_at_calls.load(Ordering::SeqCst),
        asked,
        "the loop asked for the next delayed task before claiming"
    );
    orch.shutdown(Duration::from_secs(5)).await;
}

/// A task dispatched to an idle core of this orchestrator starts at once, stored already
/// claimed, without a claim call; on a busy core it takes the usual path.
#[tokio::test(start_paused = true)]
async fn a_dispatch_to_an_idle_core_starts_without_a_claim() {
    let backend = Arc::new(Slow {
        hand_off: true,
        ..Slow::default()
    });
    let (orch, mut starts) = probed(backend.clone(), Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dispatched = tokio::time::Instant::now();
    let task = orch
        .dispatch(TaskSpec::new("work").payload(serde_json::json!("a")))
        .await
        .expect("dispatched");
    assert_eq!((task.status, task.attempt), (TaskStatus::Running, 1));
    let (input, at) = starts.recv().await.expect("a started");
    assert_eq!(input, "a");
    // The backend's 5 ms, and no claim call after them (another 5 ms).
    assert_eq!(
        at - dispatched,
        Duration::from_millis(5),
        "the task waited for a claim"
    );
    let done = orch
        .wait_for(task.id, Duration::from_secs(5))
        .await
        .expect("finished");
    assert_eq!(done.status, TaskStatus::Succeeded);
    let kinds: Vec<EventKind> = backend
        .inner
        .read_events(0, 100)
        .await
        .expect("events")
        .into_iter()
        .filter(|e| e.task_id == Some(task.id))
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::TaskQueued,
            EventKind::TaskStarted,
            EventKind::TaskSucceeded
        ]
    );
    // A dispatch given up on while the backend answers still starts its task at once.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(1),
        orch.dispatch(TaskSpec::new("work").payload(serde_json::json!("c"))),
    )
    .await;
    assert!(gave_up.is_err(), "the dispatch should still be under way");
    let (input, at) = starts.recv().await.expect("c started");
    assert_eq!(input, "c");
    assert!(
        at - dispatched < Duration::from_secs(1),
        "the task waited for its lease to expire"
    );
    // A delayed task never starts this way.
    let later = orch
        .dispatch(TaskSpec::new("work").delay(Duration::from_millis(10)))
        .await
        .expect("dispatched");
    assert_eq!(later.status, TaskStatus::Queued);
    orch.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn zero_in_flight_is_refused() {
    for config in [
        crate::config().with_tuning(Tuning::default().with_claims_in_flight(0)),
        crate::config().with_tuning(Tuning::default().with_reports_in_flight(0)),
    ] {
        let Err(error) = Orchestrator::builder(crate::backend())
            .config(config)
            .build()
            .await
        else {
            panic!("a zero in-flight limit was accepted");
        };
        assert!(error.to_string().contains("in_flight"), "{error}");
    }
}

#[async_trait]
impl TaskStore for Slow {
    async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<Created>> {
        self.inner.create_tasks(tasks).await
    }
    async fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
        self.inner.get_task(id).await
    }
    async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<Task>> {
        self.inner.list_tasks(filter).await
    }
    async fn claim_tasks(&self, core: &str, limit: usize, lease: Duration) -> Result<Vec<Claimed>> {
        let call = self.inner.claim_tasks(core, limit, lease);
        if self.claim_then_wait {
            self.claims.time_after(call).await
        } else {
            self.claims.time(call).await
        }
    }
    fn creates_claimed(&self) -> bool {
        self.hand_off
    }
    async fn create_claimed(
        &self,
        task: NewTask,
        lease: Duration,
    ) -> Result<std::result::Result<Claimed, NewTask>> {
        assert!(
            self.hand_off,
            "create_claimed called on a backend that does not offer it"
        );
        let core = task.engine.clone();
        self.inner.create_tasks(vec![task]).await?;
        let mut claimed = self.inner.claim_tasks(&core, 1, lease).await?;
        // Stored; the answer takes 5 ms to come back.
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(Ok(claimed.pop().expect("the task just created")))
    }
    async fn next_run_at(&self, core: &str) -> Result<Option<DateTime<Utc>>> {
        self.next_run_at_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.next_run_at(core).await
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
        self.batched.fetch_add(reports.len(), Ordering::SeqCst);
        if !self.answer_delay.is_zero() {
            let stored = self.inner.finish_attempts(reports).await;
            tokio::time::sleep(self.answer_delay).await;
            return stored;
        }
        self.batches.time(self.inner.finish_attempts(reports)).await
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
        self.inner.queue_depth().await
    }
    async fn count_tasks(&self) -> Result<Vec<EngineCounts>> {
        self.inner.count_tasks().await
    }
    fn task_wakeups(&self) -> Option<ChangeSignal> {
        self.inner.task_wakeups()
    }
}

delegate_all_but_tasks!(Slow, inner);

/// Warnings the orchestrator logged, captured by a subscriber for the current thread.
#[derive(Clone, Default)]
struct Captured(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An outcome stored while a lease renewal is under way makes the renewal find the lease
/// gone: the attempt is over, not stopped, and nothing warns that a lease was lost. (Each
/// such race logged "lease lost; stopping the attempt" for an attempt that had succeeded.)
#[tokio::test(start_paused = true)]
async fn a_renewal_racing_the_outcome_does_not_report_a_lost_lease() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let lease = Duration::from_secs(3);
    // The answer to each outcome batch comes back two renewals after the batch was stored.
    let backend = Arc::new(Slow {
        answer_delay: lease,
        ..Slow::default()
    });
    let orch = Orchestrator::builder(backend.clone() as SharedBackend)
        .config(crate::config().with_lease(lease))
        .engine(
            "work",
            processor_fn(|_ctx, _input: Value| async { Ok(Value::Null) }),
        )
        .build()
        .await
        .expect("valid config");
    let tasks = orch
        .dispatch_many((0..20).map(|_| TaskSpec::new("work")).collect())
        .await
        .expect("dispatched");
    for task in &tasks {
        let done = orch
            .wait_for(task.task.id, Duration::from_secs(60))
            .await
            .expect("finished");
        assert_eq!(done.status, TaskStatus::Succeeded);
    }
    // Renewals ran while the answers were on their way.
    tokio::time::sleep(lease * 2).await;
    orch.shutdown(Duration::from_secs(5)).await;
    let log = String::from_utf8_lossy(&captured.0.lock()).into_owned();
    assert!(!log.contains("lease lost"), "{log}");
}
