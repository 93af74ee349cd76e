//! [`Instrumented`]: the memory backend with every key-value and lock call counted and, when
//! asked, slowed down (as a database round trip would be), so tests can see what a request
//! costs the database and how long that takes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orch_core::backend::{
    AttemptReport, ChangeSignal, Claimed, Created, EventStore, HeldLease, LockAttempt, LockRequest,
    LockStore, LockTurn, LockWaiter, LockWaiterId, NewLockWaiter, NewTask, QueueDepth, TaskStore,
};
use orch_core::{
    EngineCounts, Event, LockInfo, MemoryBackend, NewEvent, Resolution, Result, StorageProvider,
    Task, TaskFilter, TaskId, TaskStatus,
};
use parking_lot::Mutex;

#[derive(Default)]
pub(crate) struct Instrumented {
    inner: MemoryBackend,
    /// Added to every key-value and lock call, in microseconds.
    delay_micros: AtomicU64,
    calls: Mutex<BTreeMap<&'static str, usize>>,
}

impl Instrumented {
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.delay_micros
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// Calls of each kind so far.
    pub(crate) fn calls(&self) -> BTreeMap<&'static str, usize> {
        self.calls.lock().clone()
    }

    /// Calls of `name` so far.
    pub(crate) fn count(&self, name: &str) -> usize {
        self.calls.lock().get(name).copied().unwrap_or(0)
    }

    /// Writes (of the key-value space, the lock table and the event log) so far.
    pub(crate) fn writes(&self) -> usize {
        let calls = self.calls.lock();
        [
            "store",
            "delete",
            "append_event",
            "acquire_lock_in_turn",
            "try_acquire_lock",
            "release_lock",
            "extend_lock",
            "join_lock_queue",
        ]
        .iter()
        .map(|name| calls.get(name).copied().unwrap_or(0))
        .sum()
    }

    async fn call(&self, name: &'static str, slow: bool) {
        *self.calls.lock().entry(name).or_default() += 1;
        let micros = self.delay_micros.load(Ordering::SeqCst);
        if slow && micros > 0 {
            tokio::time::sleep(Duration::from_micros(micros)).await;
        }
    }
}

#[async_trait]
impl StorageProvider for Instrumented {
    async fn store(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.call("store", true).await;
        self.inner.store(key, value).await
    }
    async fn retrieve(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.call("retrieve", true).await;
        self.inner.retrieve(key).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.call("delete", true).await;
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.call("list", true).await;
        self.inner.list(prefix).await
    }
}

#[async_trait]
impl LockStore for Instrumented {
    async fn try_acquire_lock(
        &self,
        resource: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockAttempt> {
        self.call("try_acquire_lock", true).await;
        self.inner.try_acquire_lock(resource, owner, ttl).await
    }
    async fn release_lock(&self, resource: &str, owner: &str, token: u64) -> Result<bool> {
        self.call("release_lock", true).await;
        self.inner.release_lock(resource, owner, token).await
    }
    async fn extend_lock(
        &self,
        resource: &str,
        owner: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<Option<LockInfo>> {
        self.call("extend_lock", true).await;
        self.inner.extend_lock(resource, owner, token, ttl).await
    }
    async fn lock_info(&self, resource: &str) -> Result<Option<LockInfo>> {
        self.call("lock_info", true).await;
        self.inner.lock_info(resource).await
    }
    async fn list_locks(&self) -> Result<Vec<LockInfo>> {
        self.call("list_locks", false).await;
        self.inner.list_locks().await
    }
    async fn reclaim_expired_locks(&self) -> Result<Vec<LockInfo>> {
        self.call("reclaim_expired_locks", false).await;
        self.inner.reclaim_expired_locks().await
    }
    async fn acquire_lock_in_turn(&self, request: &LockRequest) -> Result<LockTurn> {
        self.call("acquire_lock_in_turn", true).await;
        self.inner.acquire_lock_in_turn(request).await
    }
    async fn join_lock_queue(&self, waiter: &NewLockWaiter) -> Result<LockWaiter> {
        self.call("join_lock_queue", true).await;
        self.inner.join_lock_queue(waiter).await
    }
    async fn leave_lock_queue(&self, resource: &str, waiter: LockWaiterId) -> Result<bool> {
        self.call("leave_lock_queue", true).await;
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
impl EventStore for Instrumented {
    async fn append_event(&self, event: NewEvent) -> Result<Event> {
        self.call("append_event", false).await;
        self.inner.append_event(event).await
    }
    async fn read_events(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.inner.read_events(after, limit).await
    }
    async fn last_event_seq(&self) -> Result<u64> {
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
impl TaskStore for Instrumented {
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
        self.inner.claim_tasks(engine, limit, lease).await
    }
    async fn claim_tasks_above(
        &self,
        engine: &str,
        limit: usize,
        lease: Duration,
        priority: i32,
    ) -> Result<Vec<Claimed>> {
        self.inner
            .claim_tasks_above(engine, limit, lease, priority)
            .await
    }
    fn claims_take_a_round_trip(&self) -> bool {
        self.inner.claims_take_a_round_trip()
    }
    fn creates_claimed(&self) -> bool {
        self.inner.creates_claimed()
    }
    async fn create_claimed(
        &self,
        task: NewTask,
        lease: Duration,
    ) -> Result<std::result::Result<Claimed, NewTask>> {
        self.inner.create_claimed(task, lease).await
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
        self.call("queue_depth", false).await;
        self.inner.queue_depth().await
    }
    async fn count_tasks(&self) -> Result<Vec<EngineCounts>> {
        self.call("count_tasks", true).await;
        self.inner.count_tasks().await
    }
    fn task_wakeups(&self) -> Option<ChangeSignal> {
        self.inner.task_wakeups()
    }
}
