//! Backend traits: what the dispatcher, the lock manager and the event log persist.
//!
//! Each method is one atomic step that a SQL backend implements as a single statement (or one
//! short transaction). Every task method that changes a task appends the matching event in the
//! same atomic step, so the log never misses a transition and never shows one that did not
//! happen. Worker-side writes are conditioned on the lease token: a stale holder cannot write.
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

use crate::contracts::StorageProvider;
use crate::error::Result;
use crate::model::{
    AttemptOutcome, Claimed, Created, Event, LeaseToken, LockAttempt, LockInfo, LockRequest,
    LockTurn, LockWaiter, LockWaiterId, NewEvent, NewLockWaiter, NewTask, Resolution, Task,
    TaskFilter, TaskId, TaskStatus,
};
use crate::signal::ChangeSignal;

/// Queue operations.
///
/// Claim order, which every backend must follow: among `queued` tasks of the core whose
/// `run_at` has come, highest `priority` first, then earliest `run_at`, then lowest id.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Stores new tasks in order, each `queued` with a `task.queued` event. A task whose
    /// idempotency key already exists is not stored: the existing task is returned with
    /// `created: false` (also within one batch).
    async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<Created>>;

    /// The task, if it exists.
    async fn get_task(&self, id: TaskId) -> Result<Option<Task>>;

    /// Tasks matching the filter, ordered by id.
    async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<Task>>;

    /// Atomically leases up to `limit` available tasks of `core_id` in claim order: each becomes
    /// `running`, its attempt counter grows by one, it gets a fresh lease token expiring `lease`
    /// from now, and a `task.started` event is appended. Two concurrent claims never return the
    /// same task.
    async fn claim_tasks(
        &self,
        core_id: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>>;

    /// Creates `task` already claimed, in one atomic step: as if it were created and then
    /// leased by [`claim_tasks`](Self::claim_tasks) (running, attempt 1, a fresh lease token
    /// expiring `lease` from now, a `task.queued` then a `task.started` event). An orchestrator
    /// calls it for a task it dispatches to one of its own cores while that core's claim loop
    /// is idle, to start the task without a claim round trip.
    ///
    /// The orchestrator passes only tasks without idempotency key or delay whose `not_before`
    /// (if any) has passed. A backend that does not offer this (the default), or that declines
    /// the task, hands it back as `Err(task)` having stored nothing; the caller then creates
    /// it the usual way. (With `MockTaskStore`, expect this call returning `Ok(Err(task))` to
    /// keep the usual path.)
    async fn create_claimed(
        &self,
        task: NewTask,
        lease: Duration,
    ) -> Result<std::result::Result<Claimed, NewTask>> {
        let _ = lease;
        Ok(Err(task))
    }

    /// The earliest `run_at` among `queued` tasks of `core_id`, so an idle worker knows how long
    /// it may sleep.
    async fn next_run_at(&self, core_id: &str) -> Result<Option<DateTime<Utc>>>;

    /// Extends each lease whose token still matches to `lease` from now. Returns, in input order,
    /// the new expiry, or `None` for a lease that is no longer held.
    async fn renew_leases(
        &self,
        leases: Vec<(TaskId, LeaseToken)>,
        lease: Duration,
    ) -> Result<Vec<Option<DateTime<Utc>>>>;

    /// Ends the current attempt, only if `token` is the current lease of a `running` task:
    /// otherwise [`Error::LeaseLost`](crate::Error::LeaseLost) (or
    /// [`Error::TaskNotFound`](crate::Error::TaskNotFound)). Appends the matching event
    /// (`task.succeeded`, `task.failed`, `task.retrying`, `task.timed_out`, `task.requeued`).
    async fn finish_attempt(
        &self,
        id: TaskId,
        token: LeaseToken,
        outcome: AttemptOutcome,
    ) -> Result<Task>;

    /// Ends several attempts, each exactly as [`TaskStore::finish_attempt`] would, in one call
    /// (one lock or one round trip for all). Returns, in input order, each task's new state or
    /// the error `finish_attempt` would have given. The default calls `finish_attempt` in turn.
    async fn finish_attempts(
        &self,
        reports: Vec<(TaskId, LeaseToken, AttemptOutcome)>,
    ) -> Result<Vec<Result<TaskStatus>>> {
        let mut statuses = Vec::with_capacity(reports.len());
        for (id, token, outcome) in reports {
            statuses.push(
                self.finish_attempt(id, token, outcome)
                    .await
                    .map(|t| t.status),
            );
        }
        Ok(statuses)
    }

    /// Cancels a `queued` or `running` task (dropping any lease) with a `task.cancelled` event;
    /// [`Error::IllegalTransition`](crate::Error::IllegalTransition) for a finished one.
    async fn cancel_task(&self, id: TaskId) -> Result<Task>;

    /// Finishes a `queued` or `running` task without a lease (an external system ran it);
    /// [`Error::IllegalTransition`](crate::Error::IllegalTransition) for a finished one.
    async fn resolve_task(&self, id: TaskId, resolution: Resolution) -> Result<Task>;

    /// Takes back up to `limit` `running` tasks whose lease expired: those with attempts left go
    /// back to `queued` (runnable at once), the others become `failed`. Appends `task.rescued`
    /// (and `task.failed` for the latter). Returns the tasks as they are now.
    async fn rescue_expired(&self, limit: usize) -> Result<Vec<Task>>;

    /// Deletes up to `limit` finished tasks that finished before `before`; returns how many.
    async fn prune_tasks(&self, before: DateTime<Utc>, limit: usize) -> Result<u64>;

    /// Counts of `queued` tasks per `(core_id, priority)`.
    async fn queue_depth(&self) -> Result<Vec<(String, i32, u64)>>;

    /// A hint raised when tasks may have become available (created, requeued), across every
    /// process sharing the backend when the backend can tell. `None`: callers poll.
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

    /// The highest sequence number appended so far (0 when empty).
    async fn last_event_seq(&self) -> Result<u64>;

    /// Deletes events appended before `before`; returns how many.
    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64>;

    /// A hint raised whenever events are appended. `None`: callers poll.
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
