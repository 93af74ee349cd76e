//! A memory backend behind a wrapper that the hardening tests steer: it refuses a batch of new
//! tasks holding a poisoned payload, as PostgreSQL refuses a whole statement over one bad row,
//! and it counts the events handed out by `read_events` (a scan of the log).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orch_core::backend::{
    AttemptReport, ChangeSignal, Claimed, Created, EventStore, HeldLease, LockAttempt, LockRequest,
    LockStore, LockTurn, LockWaiter, LockWaiterId, NewLockWaiter, NewTask, QueueDepth, TaskStore,
};
use orch_core::{
    EngineCounts, Error, Event, LockInfo, MemoryBackend, NewEvent, Resolution, Result,
    StorageProvider, Task, TaskFilter, TaskId, TaskStatus,
};
use serde_json::Value;

/// The wrapper. Share it behind an `Arc` and keep a clone to read its counters.
pub(crate) struct Wrapped {
    inner: MemoryBackend,
    /// A batch holding a task with this payload fails as a whole.
    poison: Option<Value>,
    /// Events returned by `read_events` so far.
    pub(crate) scanned: AtomicU64,
    /// The most tasks a `create_tasks` call refused because of the poison held.
    pub(crate) largest_poisoned_batch: AtomicU64,
    /// While `true`, `create_tasks` calls wait (so that dispatches pile up into batches).
    gate: tokio::sync::watch::Sender<bool>,
    /// `create_tasks` calls waiting at the gate now.
    pub(crate) at_gate: AtomicU64,
    /// Claim calls (`claim_tasks`, `claim_tasks_above`) that succeed before every later one
    /// fails as a database would.
    pub(crate) claims_before_failing: AtomicU64,
    /// While `true`, `create_tasks` and `last_event_seq` fail as when the database cannot be
    /// reached.
    pub(crate) unreachable: std::sync::atomic::AtomicBool,
    /// `create_tasks` calls so far.
    pub(crate) creates: AtomicU64,
}

impl Wrapped {
    pub(crate) fn new(poison: Option<Value>) -> Arc<Self> {
        Arc::new(Wrapped {
            inner: MemoryBackend::new(),
            poison,
            scanned: AtomicU64::new(0),
            largest_poisoned_batch: AtomicU64::new(0),
            gate: tokio::sync::watch::channel(false).0,
            at_gate: AtomicU64::new(0),
            claims_before_failing: AtomicU64::new(u64::MAX),
            unreachable: std::sync::atomic::AtomicBool::new(false),
            creates: AtomicU64::new(0),
        })
    }

    /// Counts a claim call down `claims_before_failing`; fails once none is left.
    fn count_claim(&self, operation: &'static str) -> Result<()> {
        self.claims_before_failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .map(|_| ())
            .map_err(|_| unreachable(operation))
    }

    /// Closes (`true`) or opens the gate `create_tasks` calls wait at.
    pub(crate) fn hold(&self, closed: bool) {
        self.gate.send_replace(closed);
    }

    pub(crate) fn scanned(&self) -> u64 {
        self.scanned.load(Ordering::SeqCst)
    }
}

/// The error a backend gives when its database cannot be reached.
fn unreachable(operation: &'static str) -> Error {
    Error::Unavailable {
        operation,
        message: "the database is unreachable: connection refused".to_owned(),
        cause: None,
    }
}

#[async_trait]
impl TaskStore for Wrapped {
    async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<Created>> {
        let mut gate = self.gate.subscribe();
        if *gate.borrow_and_update() {
            self.at_gate.fetch_add(1, Ordering::SeqCst);
            let _ = gate.wait_for(|closed| !closed).await;
            self.at_gate.fetch_sub(1, Ordering::SeqCst);
        }
        self.creates.fetch_add(1, Ordering::SeqCst);
        if self.unreachable.load(Ordering::SeqCst) {
            return Err(unreachable("create_tasks"));
        }
        if let Some(poison) = &self.poison
            && tasks.iter().any(|task| &task.payload == poison)
        {
            self.largest_poisoned_batch
                .fetch_max(tasks.len() as u64, Ordering::SeqCst);
            return Err(Error::backend(
                "create_tasks",
                "unsupported Unicode escape sequence (the whole statement is refused)",
            ));
        }
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
        self.count_claim("claim_tasks")?;
        self.inner.claim_tasks(engine, limit, lease).await
    }
    async fn claim_tasks_above(
        &self,
        engine: &str,
        limit: usize,
        lease: Duration,
        priority: i32,
    ) -> Result<Vec<Claimed>> {
        self.count_claim("claim_tasks_above")?;
        self.inner
            .claim_tasks_above(engine, limit, lease, priority)
            .await
    }
    fn claims_take_a_round_trip(&self) -> bool {
        self.inner.claims_take_a_round_trip()
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
    async fn cancel_task_by(&self, id: TaskId, actor: &str) -> Result<Task> {
        self.inner.cancel_task_by(id, actor).await
    }
    async fn retry_task(&self, id: TaskId, actor: &str) -> Result<Task> {
        self.inner.retry_task(id, actor).await
    }
    async fn requeue_task(&self, id: TaskId, actor: &str) -> Result<Task> {
        self.inner.requeue_task(id, actor).await
    }
    async fn delete_task(&self, id: TaskId) -> Result<Task> {
        self.inner.delete_task(id).await
    }
    async fn task_by_idempotency_key(&self, key: &str) -> Result<Option<Task>> {
        self.inner.task_by_idempotency_key(key).await
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

#[async_trait]
impl EventStore for Wrapped {
    async fn append_event(&self, event: NewEvent) -> Result<Event> {
        self.inner.append_event(event).await
    }
    async fn read_events(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        let events = self.inner.read_events(after, limit).await?;
        self.scanned
            .fetch_add(events.len() as u64, Ordering::SeqCst);
        Ok(events)
    }
    async fn read_task_events(
        &self,
        task_id: TaskId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        self.inner.read_task_events(task_id, after, limit).await
    }
    async fn last_event_seq(&self) -> Result<u64> {
        if self.unreachable.load(Ordering::SeqCst) {
            return Err(unreachable("last_event_seq"));
        }
        self.inner.last_event_seq().await
    }
    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64> {
        self.inner.prune_events(before).await
    }
    fn event_wakeups(&self) -> Option<ChangeSignal> {
        self.inner.event_wakeups()
    }
}

#[async_trait]
impl LockStore for Wrapped {
    async fn try_acquire_lock(
        &self,
        resource: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockAttempt> {
        self.inner.try_acquire_lock(resource, owner, ttl).await
    }
    async fn release_lock(&self, resource: &str, owner: &str, token: u64) -> Result<bool> {
        self.inner.release_lock(resource, owner, token).await
    }
    async fn extend_lock(
        &self,
        resource: &str,
        owner: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<Option<LockInfo>> {
        self.inner.extend_lock(resource, owner, token, ttl).await
    }
    async fn lock_info(&self, resource: &str) -> Result<Option<LockInfo>> {
        self.inner.lock_info(resource).await
    }
    async fn list_locks(&self) -> Result<Vec<LockInfo>> {
        self.inner.list_locks().await
    }
    async fn reclaim_expired_locks(&self) -> Result<Vec<LockInfo>> {
        self.inner.reclaim_expired_locks().await
    }
    async fn acquire_lock_in_turn(&self, request: &LockRequest) -> Result<LockTurn> {
        self.inner.acquire_lock_in_turn(request).await
    }
    async fn join_lock_queue(&self, waiter: &NewLockWaiter) -> Result<LockWaiter> {
        self.inner.join_lock_queue(waiter).await
    }
    async fn leave_lock_queue(&self, resource: &str, waiter: LockWaiterId) -> Result<bool> {
        self.inner.leave_lock_queue(resource, waiter).await
    }
    async fn lock_waiters(&self, resource: &str) -> Result<Vec<LockWaiter>> {
        self.inner.lock_waiters(resource).await
    }
    async fn list_lock_waiters(&self) -> Result<Vec<LockWaiter>> {
        self.inner.list_lock_waiters().await
    }
}

#[async_trait]
impl StorageProvider for Wrapped {
    async fn store(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.inner.store(key, value).await
    }
    async fn retrieve(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.retrieve(key).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list(prefix).await
    }
}
