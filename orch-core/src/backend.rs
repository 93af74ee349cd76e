//! For backend authors: the traits a backend implements, the types they exchange with the
//! orchestrator, and the [`rules`] every backend applies.
//!
//! Each trait method is one atomic step that a SQL backend implements as a single statement
//! (or one short transaction). Every task method that changes a task appends the events its
//! [`rules`] change names in the same atomic step, so the log never misses a transition and
//! never shows one that did not happen. Worker-side writes are conditioned on the lease token:
//! a stale holder cannot write.
//!
//! [`MemoryBackend`](crate::MemoryBackend) implements all of them; `orch-storage` has SQLite and
//! PostgreSQL. Every implementation must pass the conformance suite (`orch_core::conformance`,
//! feature `test-util`).
//!
//! Backends may store times at microsecond precision, and SQL backends' event sequence numbers
//! may skip values (never repeat or go backwards); the memory backend's have no gaps.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Wall-clock time that follows tokio's (pausable) clock: the memory backend's time, and
/// what tests move with `tokio::time::advance`.
pub mod clock {
    pub use crate::clock::{now, until};
}
use crate::contracts::StorageProvider;
pub use crate::contracts::check_storage_key;
use crate::error::Result;
pub use crate::model::rules;
pub use crate::model::{
    AttemptOutcome, AttemptReport, Claimed, Created, HeldLease, LockAttempt, LockRequest, LockTurn,
    LockWaiter, LockWaiterId, NewLockWaiter, NewTask, QueueDepth, check_name,
};
use crate::model::{
    EngineCounts, Event, LockInfo, NewEvent, Resolution, Task, TaskFilter, TaskId, TaskStatus,
};
pub use crate::signal::ChangeSignal;

/// Queue operations.
///
/// Claim order, which every backend must follow: among `queued` tasks of the engine whose
/// `run_at` has come, highest `priority` first, then earliest `run_at`, then lowest id.
///
/// Every state change is one of the [`rules`]: a backend stores what the rule's
/// [`Change`](rules::Change) says (the memory and SQLite backends through
/// [`Change::apply`](rules::Change::apply)), and the rule's events with it.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Stores new tasks in order, each as [`rules::create`] makes it (`queued`, with a
    /// `task.queued` event, runnable from [`rules::first_run_at`] by the backend's clock). A
    /// task whose idempotency key already exists is not stored: the existing task is returned
    /// with `created: false` (also within one batch).
    async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<Created>>;

    /// The task, if it exists.
    async fn get_task(&self, id: TaskId) -> Result<Option<Task>>;

    /// Tasks matching the filter, ordered by id.
    async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<Task>>;

    /// Atomically leases up to `limit` due `queued` tasks of `engine` in claim order, each by
    /// [`rules::claim`]: `running`, a new attempt, a fresh lease token expiring `lease` from
    /// now, a `task.started` event. Two concurrent claims never return the same task.
    async fn claim_tasks(
        &self,
        engine: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>>;

    /// Whether this backend implements [`create_claimed`](Self::create_claimed). Read once,
    /// when an orchestrator is built; `false` (the default) and the orchestrator never calls
    /// it. (With `MockTaskStore`, expect this call.)
    fn creates_claimed(&self) -> bool {
        false
    }

    /// Creates `task` already claimed, in one atomic step: what [`create_tasks`](Self::create_tasks)
    /// and then [`claim_tasks`](Self::claim_tasks) would leave (running, attempt 1, a fresh
    /// lease token expiring `lease` from now, a `task.queued` then a `task.started` event). An
    /// orchestrator calls it, when [`creates_claimed`](Self::creates_claimed) says so, for a
    /// task it dispatches to one of its own engines while that engine's claim loop is idle,
    /// to start the task without a claim round trip.
    ///
    /// The orchestrator passes only tasks without idempotency key or delay whose `not_before`
    /// (if any) has passed. A backend that declines the task (its own clock says it is not due
    /// yet) hands it back as `Err(task)` having stored nothing; the caller then creates it the
    /// usual way. The default declines every task.
    async fn create_claimed(
        &self,
        task: NewTask,
        lease: Duration,
    ) -> Result<std::result::Result<Claimed, NewTask>> {
        let _ = lease;
        Ok(Err(task))
    }

    /// The earliest `run_at` among `queued` tasks of `engine`, so an idle worker knows how long
    /// it may sleep.
    async fn next_run_at(&self, engine: &str) -> Result<Option<DateTime<Utc>>>;

    /// Extends each lease whose token still matches a `running` task to `lease` from now.
    /// Returns, in input order, the new expiry, or `None` for a lease that is no longer held.
    /// A backend may skip a lease it cannot renew without waiting (its task busy in another
    /// statement) and return its current expiry: it is still held, and the next renewal
    /// extends it.
    async fn renew_leases(
        &self,
        leases: Vec<HeldLease>,
        lease: Duration,
    ) -> Result<Vec<Option<DateTime<Utc>>>>;

    /// Ends attempts, each by [`rules::end_attempt`] with its report's attempt number and
    /// outcome, only if the report's token is the current lease of the `running` task:
    /// otherwise that report gets [`Error::LeaseLost`](crate::Error::LeaseLost) (or
    /// [`Error::TaskNotFound`](crate::Error::TaskNotFound)) and changes nothing. Reports are
    /// applied in input order (a task reported twice is ended by the first report holding its
    /// lease), in one call: one lock or one round trip for all. Returns, in input order, each
    /// task's new state or the error.
    async fn finish_attempts(&self, reports: Vec<AttemptReport>)
    -> Result<Vec<Result<TaskStatus>>>;

    /// Cancels a `queued` or `running` task by [`rules::cancel`] (dropping any lease);
    /// [`Error::IllegalTransition`](crate::Error::IllegalTransition) for a finished one.
    async fn cancel_task(&self, id: TaskId) -> Result<Task>;

    /// Finishes a `queued` or `running` task without a lease by [`rules::resolve`] (an
    /// external system ran it); [`Error::IllegalTransition`](crate::Error::IllegalTransition)
    /// for a finished one.
    async fn resolve_task(&self, id: TaskId, resolution: Resolution) -> Result<Task>;

    /// Takes back up to `limit` `running` tasks whose lease expired, oldest expiry first, each
    /// by [`rules::rescue`]. Returns the tasks as they are now.
    async fn rescue_expired(&self, limit: usize) -> Result<Vec<Task>>;

    /// Deletes up to `limit` finished tasks that finished before `before`, oldest first;
    /// returns how many.
    async fn prune_tasks(&self, before: DateTime<Utc>, limit: usize) -> Result<u64>;

    /// Counts of `queued` tasks per engine and priority, ordered by engine, then priority.
    async fn queue_depth(&self) -> Result<Vec<QueueDepth>>;

    /// Counts of tasks per engine in each state (queued ones split into due and delayed by the
    /// backend's clock), ordered by engine; engines without tasks are left out.
    async fn count_tasks(&self) -> Result<Vec<EngineCounts>>;

    /// A hint raised when tasks may have become claimable (created, requeued), across every
    /// process sharing the backend when the backend can tell. `None`: the orchestrator raises
    /// its own signal for the changes it makes and polls for the rest.
    fn task_wakeups(&self) -> Option<ChangeSignal> {
        None
    }
}

/// The append-only event log.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends one event, assigning the next sequence number and the time.
    async fn append_event(&self, event: NewEvent) -> Result<Event>;

    /// Up to `limit` events with `seq > after`, in sequence order.
    async fn read_events(&self, after: u64, limit: usize) -> Result<Vec<Event>>;

    /// Up to `limit` events of task `task_id` with `seq > after`, in sequence order: what
    /// [`read_events`](Self::read_events) returns for the task, as a reader that filters the
    /// whole log by `task_id` would see it.
    ///
    /// A backend should find them through an index by task, so that the cost follows the
    /// task's events, not the size of the log: `GET /jobs/{id}/events` and event streams of one
    /// task call it for any task a client names. The default scans the log with
    /// `read_events` (correct, but as slow as the log is long); the memory, SQLite and
    /// PostgreSQL backends have an index.
    async fn read_task_events(
        &self,
        task_id: TaskId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        const PAGE: usize = 1024;
        let mut found = Vec::new();
        let mut cursor = after;
        while found.len() < limit {
            let page = self.read_events(cursor, PAGE).await?;
            let Some(last) = page.last() else { break };
            cursor = last.seq;
            let full = page.len() == PAGE;
            found.extend(page.into_iter().filter(|e| e.task_id == Some(task_id)));
            if !full {
                break;
            }
        }
        found.truncate(limit);
        Ok(found)
    }

    /// The highest sequence number appended so far (0 when empty).
    async fn last_event_seq(&self) -> Result<u64>;

    /// Deletes events appended before `before`; returns how many.
    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64>;

    /// A hint raised whenever events are appended, across every process sharing the backend
    /// when the backend can tell. `None`: the orchestrator raises its own signal for the
    /// events it causes and polls for the rest.
    fn event_wakeups(&self) -> Option<ChangeSignal> {
        None
    }
}

/// The lock table and its waiter queue. The store grants, extends and releases atomically and
/// keeps, per resource, the queue of waiters of every process sharing it (ORCH-Next kept the
/// same in its `lock_queue` table); [`LockManager`](crate::LockManager) decides ranks, waits,
/// refreshes its entries and retries.
///
/// The queue: each entry has a rank (lower is served first, ties by waiter id: see
/// [`LockWaiter::is_ahead_of`]) and an expiry. An entry is *live* until it expires (judged by
/// the backend's clock: `now()` on PostgreSQL); an expired entry blocks nobody, so a waiter
/// whose process died holds up the others only until its entry runs out. Queue entries and
/// grants are independent rows: joining the queue never takes the lock, and
/// [`LockStore::try_acquire_lock`] ignores the queue.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait LockStore: Send + Sync {
    /// Grants `resource` to `owner` for `ttl` if it is free or its lock has expired, with a
    /// fencing token greater than any earlier grant of that resource. Locks are not re-entrant:
    /// a holder asking again gets [`LockAttempt::Held`]. Ignores the waiter queue (it can
    /// overtake queued waiters): [`LockStore::acquire_lock_in_turn`] is the grant that waits
    /// its turn, and the one [`LockManager`](crate::LockManager) uses.
    async fn try_acquire_lock(
        &self,
        resource: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockAttempt>;

    /// Releases the lock if `owner` holds it with `token`; returns whether it did.
    async fn release_lock(&self, resource: &str, owner: &str, token: u64) -> Result<bool>;

    /// Extends the lock to `ttl` from now if `owner` holds it with `token` and it has not
    /// expired; returns the new state, or `None` if not held.
    async fn extend_lock(
        &self,
        resource: &str,
        owner: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<Option<LockInfo>>;

    /// The unexpired lock on `resource`, if any.
    async fn lock_info(&self, resource: &str) -> Result<Option<LockInfo>>;

    /// Every unexpired lock, ordered by resource.
    async fn list_locks(&self) -> Result<Vec<LockInfo>>;

    /// Deletes expired locks and returns them; also deletes expired queue entries (of every
    /// resource).
    async fn reclaim_expired_locks(&self) -> Result<Vec<LockInfo>>;

    /// In one atomic step: if `request.resource` is held (unexpired), [`LockTurn::Held`];
    /// else if a live queue entry is ahead of the request ([`LockWaiter::is_ahead_of`] with
    /// `request.rank` and `request.waiter`), [`LockTurn::Behind`] with the first such entry in
    /// queue order; else grants as [`LockStore::try_acquire_lock`] does (the fencing token
    /// greater than any earlier grant of the resource) and deletes the request's own entry,
    /// [`LockTurn::Acquired`]. Refuses an invalid resource or owner name with
    /// [`Error::Invalid`](crate::Error::Invalid).
    async fn acquire_lock_in_turn(&self, request: &LockRequest) -> Result<LockTurn>;

    /// Puts `waiter` in its resource's queue, or refreshes its entry if it is there (live or
    /// expired): owner, priority, rank and expiry (`waiter.ttl` from now) are set, `enqueued_at`
    /// is kept. Expired entries of other waiters of the resource may be deleted in the same
    /// step. Returns the entry as stored. Refuses an invalid resource or owner name, or a zero
    /// TTL, with [`Error::Invalid`](crate::Error::Invalid).
    async fn join_lock_queue(&self, waiter: &NewLockWaiter) -> Result<LockWaiter>;

    /// Deletes the waiter's entry from the resource's queue; returns whether there was one.
    async fn leave_lock_queue(&self, resource: &str, waiter: LockWaiterId) -> Result<bool>;

    /// The live entries of `resource`'s queue, first in line first.
    async fn lock_waiters(&self, resource: &str) -> Result<Vec<LockWaiter>>;

    /// Every live queue entry, ordered by resource, then queue order.
    async fn list_lock_waiters(&self) -> Result<Vec<LockWaiter>>;
}

/// Everything an orchestrator needs from one backend. Implemented for every type that
/// implements the four parts.
pub trait Backend: TaskStore + EventStore + LockStore + StorageProvider {}

impl<T: TaskStore + EventStore + LockStore + StorageProvider + ?Sized> Backend for T {}

/// A shared backend handle.
pub type SharedBackend = Arc<dyn Backend>;
