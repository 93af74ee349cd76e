//! Tasks an outcome's statement claims as it releases them
//! (`TaskStore::finish_attempts_and_claim`): the orchestrator asks only for the room its
//! engines have, runs what it is handed through the engines' claim loops, gives back what no
//! claim loop can take, and records the outcomes of tasks handed together in one batch.
//!
//! The backend here is the in-memory one behind a wrapper that offers the call: after the
//! ends, it claims the engine's queued tasks up to the room (the released ones, in these
//! tests). PostgreSQL's statement, which does it atomically, is tested on a real database in
//! orch-storage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;

use orch_core::backend::{
    AttemptReport, ChangeSignal, Claimed, Created, EngineRoom, EventStore, HeldLease, NewTask,
    QueueDepth, TaskStore,
};
use orch_core::{
    EngineCounts, EventKind, MemoryBackend, Orchestrator, Resolution, Result, SharedBackend, Step,
    Task, TaskFilter, TaskId, TaskSpec, TaskStatus, processor_fn,
};

use crate::config;

const WAIT: Duration = Duration::from_secs(60);

/// The in-memory backend, offering to claim released tasks with the outcomes that release
/// them; it records every room it is given and the size of every batch of outcomes.
#[derive(Default)]
struct Handing {
    inner: MemoryBackend,
    /// The room of each call that may claim.
    rooms: Mutex<Vec<Vec<EngineRoom>>>,
    /// How many outcomes each call carried.
    batches: Mutex<Vec<usize>>,
    /// Tasks the claim loops' own claims returned.
    claimed_by_loops: Mutex<Vec<TaskId>>,
    /// When set, a call that may claim waits for `open` once it has stored the ends and
    /// claimed (its answer is late).
    gated: AtomicBool,
    entered: Notify,
    open: Notify,
}

#[async_trait]
impl TaskStore for Handing {
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
        let claimed = self.inner.claim_tasks(core, limit, lease).await?;
        self.claimed_by_loops
            .lock()
            .extend(claimed.iter().map(|c| c.task.id));
        Ok(claimed)
    }
    fn claims_take_a_round_trip(&self) -> bool {
        true
    }
    async fn next_run_at(&self, core: &str) -> Result<Option<DateTime<Utc>>> {
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
        self.batches.lock().push(reports.len());
        self.inner.finish_attempts(reports).await
    }
    fn claims_released_tasks(&self) -> bool {
        true
    }
    async fn finish_attempts_and_claim(
        &self,
        reports: Vec<AttemptReport>,
        room: Vec<EngineRoom>,
        lease: Duration,
    ) -> Result<(Vec<Result<TaskStatus>>, Vec<Claimed>)> {
        self.batches.lock().push(reports.len());
        self.rooms.lock().push(room.clone());
        let statuses = self.inner.finish_attempts(reports).await?;
        let mut claimed = Vec::new();
        for room in room {
            claimed.extend(
                self.inner
                    .claim_tasks(&room.engine, room.limit, lease)
                    .await?,
            );
        }
        if !claimed.is_empty() && self.gated.load(Ordering::SeqCst) {
            self.entered.notify_one();
            self.open.notified().await;
        }
        Ok((statuses, claimed))
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

delegate_all_but_tasks!(Handing, inner);

/// An engine that takes the payload's `"us"` microseconds (none: returns at once).
fn noop() -> impl orch_core::Processor {
    processor_fn(|_ctx, input: Value| async move {
        if let Some(us) = input["us"].as_u64() {
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
        Ok(Value::Null)
    })
}

/// A parent task of `parent_engine` and `n` children of `child_engine` waiting for it, the
/// `i`-th child taking `i` × 50 µs (their outcomes come within half a millisecond).
fn fan_out(parent_engine: &str, child_engine: &str, n: usize) -> Vec<TaskSpec> {
    let mut specs = vec![TaskSpec::new(parent_engine)];
    specs.extend((0..n).map(|i| {
        TaskSpec::new(child_engine)
            .payload(serde_json::json!({ "us": i as u64 * 50 }))
            .after(Step(0))
    }));
    specs
}

async fn build(backend: &Arc<Handing>) -> Orchestrator {
    let shared: SharedBackend = backend.clone();
    Orchestrator::builder(shared)
        .config(config())
        .engine("parent", noop())
        .engine("child", noop())
        .build()
        .await
        .expect("built")
}

/// Children released by their parent's outcome are handed to the engine that runs them (its
/// claim loop claims none of them), and their outcomes, which come within half a millisecond
/// of each other, are recorded in one batch rather than the first alone.
#[tokio::test(start_paused = true)]
async fn released_tasks_are_handed_to_their_engine_and_their_outcomes_share_a_batch() {
    let backend = Arc::new(Handing::default());
    let orch = build(&backend).await;
    let created = orch
        .dispatch_many(fan_out("parent", "child", 10))
        .await
        .expect("dispatched");
    for c in &created {
        let task = orch.wait_for(c.task.id, WAIT).await.expect("finished");
        assert_eq!(task.status, TaskStatus::Succeeded, "{task:?}");
    }
    let children: Vec<TaskId> = created[1..].iter().map(|c| c.task.id).collect();
    let by_loops = backend.claimed_by_loops.lock().clone();
    assert!(
        children.iter().all(|child| !by_loops.contains(child)),
        "a claim loop claimed a child the parent's outcome had been handed"
    );
    // The room named the engines served here: both, each with room for the children.
    let rooms = backend.rooms.lock().clone();
    let first = rooms.first().expect("a call that may claim");
    assert!(
        first.iter().any(|r| r.engine == "child" && r.limit >= 10),
        "{first:?}"
    );
    let batches = backend.batches.lock().clone();
    assert_eq!(batches, vec![1, 10], "outcome batches");
    orch.shutdown(Duration::from_secs(5)).await;
}

/// A paused engine has no room: the tasks a parent's outcome releases for it stay queued, and
/// run once it is resumed.
#[tokio::test(start_paused = true)]
async fn a_paused_engine_is_handed_nothing() {
    let backend = Arc::new(Handing::default());
    let orch = build(&backend).await;
    orch.pause_engine("child", "test", "maintenance")
        .await
        .expect("paused");
    let created = orch
        .dispatch_many(fan_out("parent", "child", 3))
        .await
        .expect("dispatched");
    orch.wait_for(created[0].task.id, WAIT)
        .await
        .expect("parent finished");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for c in &created[1..] {
        let task = backend.get_task(c.task.id).await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Queued, "{task:?}");
    }
    for room in backend.rooms.lock().iter() {
        assert!(
            room.iter().all(|r| r.engine != "child"),
            "a paused engine was given room: {room:?}"
        );
    }
    orch.resume_engine("child", "test", "done")
        .await
        .expect("resumed");
    for c in &created[1..] {
        let task = orch.wait_for(c.task.id, WAIT).await.expect("finished");
        assert_eq!(task.status, TaskStatus::Succeeded, "{task:?}");
    }
    orch.shutdown(Duration::from_secs(5)).await;
}

/// Tasks claimed by an outcome whose answer comes back after the engines stopped claiming
/// (a shutdown began meanwhile) go back to the queue unrun, their attempt not counted.
#[tokio::test(start_paused = true)]
async fn tasks_handed_once_claims_stopped_go_back() {
    let backend = Arc::new(Handing::default());
    backend.gated.store(true, Ordering::SeqCst);
    let orch = build(&backend).await;
    let created = orch
        .dispatch_many(fan_out("parent", "child", 3))
        .await
        .expect("dispatched");
    // The parent's outcome has stored the ends and claimed the children; its answer waits.
    backend.entered.notified().await;
    let stopping = {
        let orch = orch.clone();
        tokio::spawn(async move { orch.shutdown(Duration::from_secs(5)).await })
    };
    // The claim loops see the shutdown and end.
    tokio::time::sleep(Duration::from_millis(50)).await;
    backend.open.notify_one();
    stopping.await.expect("shut down");
    for c in &created[1..] {
        let task = backend.get_task(c.task.id).await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Queued, "{task:?}");
        assert_eq!(task.attempt, 0, "the attempt was counted: {task:?}");
        let kinds: Vec<EventKind> = backend
            .read_task_events(c.task.id, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(kinds.contains(&EventKind::TaskRequeued), "{kinds:?}");
    }
}
