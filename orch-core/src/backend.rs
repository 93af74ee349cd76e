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
pub use crate::model::graph::plan_tasks;
pub use crate::model::rules;
pub use crate::model::{
    AttemptOutcome, AttemptReport, Claimed, Created, CreatedWorkflow, EngineRoom, HeldLease,
    LockAttempt, LockRequest, LockTurn, LockWaiter, LockWaiterId, NewDependency, NewLockWaiter,
    NewTask, NewWorkflow, QueueDepth, check_name,
};
use crate::model::{
    EngineCounts, Event, LockInfo, NewEvent, ParentTask, Resolution, Task, TaskFilter, TaskId,
    TaskStatus, WorkflowId, WorkflowInfo, WorkflowTask,
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
///
/// Dependencies: a task stored with [`NewTask::dependencies`] waits (`waiting`, with
/// `waiting_for` its parents that have not finished) until each parent has finished. Every
/// method that ends tasks (finishing attempts, cancel, resolve, rescue, a workflow's cancel)
/// then applies, in the same atomic step, what each ended task means for the tasks waiting
/// for it ([`rules::parent_outcome`]): in ascending id order, a waiting task whose last parent
/// finished is [`rules::release`]d, and one whose parent's failure ends it is marked to end;
/// then each workflow whose last task ended gets its [`rules::workflow_ended`] event (in
/// ascending workflow id order). The tasks marked to end then end by
/// [`rules::dependency_failed`] (in ascending id order, the first dependency in the child's
/// order naming the parent), and what they mean for their own waiting tasks follows the same
/// way, level by level, until nothing is left: in the same atomic step, or in steps right
/// after it and by [`TaskStore::settle_dependents`] (which an orchestrator runs with its
/// rescues), so that a crash in between loses nothing. Events follow that order.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Stores new tasks in order, each as [`rules::create`] makes it (`queued`, with a
    /// `task.queued` event, runnable from [`rules::first_run_at`] by the backend's clock). A
    /// task whose idempotency key already exists is not stored: the existing task is returned
    /// with `created: false` (also within one batch).
    ///
    /// A task with dependencies is stored by [`rules::create_waiting`] when any of its parents
    /// has not finished or ends it (`waiting_for` counting those), else by [`rules::create`]; a
    /// parent that finished already counts by [`rules::parent_outcome`] (and a task it ends is
    /// then ended as the trait's docs describe). A parent may be a task of the same call (in
    /// any position) or an existing one; a parent whose idempotency key matched an existing
    /// task is that task. An unknown parent refuses the whole call with
    /// [`Error::Invalid`](crate::Error::Invalid) ([`rules::unknown_parent`]), nothing stored.
    /// Callers plan such calls with [`plan_tasks`]: each child's id is greater than its
    /// parents', and the keys of one call differ. Tasks given here have no `workflow_id`.
    async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<Created>>;

    /// Stores `workflow` and its `tasks` (each with `workflow_id` set to it, planned by
    /// [`plan_tasks`]) in one atomic step, tasks as [`create_tasks`](Self::create_tasks) does.
    /// A workflow whose idempotency key exists is not stored, nor any of its tasks: the
    /// existing one is returned with `created: false` and its own tasks in step order. A task
    /// whose key matched stands in for its step and is not one of the new workflow's tasks.
    ///
    /// The default refuses: the backend stores no workflows.
    async fn create_workflow(
        &self,
        workflow: NewWorkflow,
        tasks: Vec<NewTask>,
    ) -> Result<CreatedWorkflow> {
        let _ = (workflow, tasks);
        Err(crate::Error::backend(
            "create_workflow",
            "this backend does not store workflows",
        ))
    }

    /// The workflow, if it exists.
    async fn get_workflow(&self, id: WorkflowId) -> Result<Option<WorkflowInfo>> {
        let _ = id;
        Ok(None)
    }

    /// The tasks of a workflow with their dependencies, in step order (empty for an unknown
    /// workflow).
    async fn workflow_tasks(&self, id: WorkflowId) -> Result<Vec<WorkflowTask>> {
        let _ = id;
        Ok(Vec::new())
    }

    /// Up to `limit` parents of `child` in the order it named them, from position `from`
    /// (0 for the first), each with the parent as stored now.
    async fn list_parents(
        &self,
        child: TaskId,
        from: u32,
        limit: usize,
    ) -> Result<Vec<ParentTask>> {
        let _ = (child, from, limit);
        Ok(Vec::new())
    }

    /// Cancels, in one atomic step, every task of the workflow that has not run (`queued` or
    /// `waiting`), each by [`rules::cancel`] in ascending id order, with what their ends mean
    /// for the tasks waiting for them; tasks running go on. Returns the workflow as it is
    /// now; [`Error::WorkflowNotFound`](crate::Error::WorkflowNotFound) for an unknown one.
    async fn cancel_workflow(&self, id: WorkflowId) -> Result<WorkflowInfo> {
        Err(crate::Error::WorkflowNotFound(id))
    }

    /// Reopens, in one atomic step, every task of the workflow that failed, was cancelled or
    /// timed out, in ascending id order, each by [`rules::reopen`] waiting for its parents
    /// that are reopened with it or have not finished (and for a parent whose earlier failure
    /// ends it again: it is then ended as the trait's docs describe). A task waiting for a
    /// reopened task waits for it again. The workflow is `running` again. Returns it;
    /// [`Error::WorkflowNotFound`](crate::Error::WorkflowNotFound) for an unknown one.
    async fn retry_workflow(&self, id: WorkflowId) -> Result<WorkflowInfo> {
        Err(crate::Error::WorkflowNotFound(id))
    }

    /// Ends up to `limit` waiting tasks already marked to end by a parent's failure (see the
    /// trait's docs), with what their ends mean for their own waiting tasks; returns how many.
    /// A backend that always ends them in the step that marks them has nothing to do here
    /// (the default).
    async fn settle_dependents(&self, limit: usize) -> Result<u64> {
        let _ = limit;
        Ok(0)
    }

    /// The task, if it exists.
    async fn get_task(&self, id: TaskId) -> Result<Option<Task>>;

    /// Tasks matching the filter, ordered by id.
    async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<Task>>;

    /// The task that holds idempotency key `key`, if any, through the backend's index of keys
    /// (the three backends of this workspace have one). The default fails
    /// ([`Error::Backend`](crate::Error::Backend)) rather than read every task.
    async fn task_by_idempotency_key(&self, key: &str) -> Result<Option<Task>> {
        let _ = key;
        Err(crate::Error::backend(
            "task_by_idempotency_key",
            "this backend cannot look tasks up by idempotency key",
        ))
    }

    /// Atomically leases up to `limit` due `queued` tasks of `engine` in claim order, each by
    /// [`rules::claim`]: `running`, a new attempt, a fresh lease token expiring `lease` from
    /// now, a `task.started` event. Two concurrent claims never return the same task.
    async fn claim_tasks(
        &self,
        engine: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>>;

    /// [`claim_tasks`](Self::claim_tasks) for tasks of priority above `priority` only: how an
    /// orchestrator whose local queue of claimed tasks is full takes a more urgent task ahead
    /// of the ones waiting there (and gives the lowest of those back). The default claims
    /// nothing: the local queue then keeps its tasks in order until it drains. (With
    /// `MockTaskStore`, expect this call where a test fills a local queue.)
    async fn claim_tasks_above(
        &self,
        engine: &str,
        limit: usize,
        lease: Duration,
        priority: i32,
    ) -> Result<Vec<Claimed>> {
        let _ = (engine, limit, lease, priority);
        Ok(Vec::new())
    }

    /// Whether a claim costs this backend a round trip (to a database file or server), so
    /// that claiming ahead of the free slots into a local queue pays (see
    /// [`Tuning::local_queue`](crate::Tuning::local_queue)). Read once, when an orchestrator
    /// is built. The default is `true`; the in-memory backend answers `false`: its claims
    /// cost less than the queue's own bookkeeping. (With `MockTaskStore`, expect this call.)
    fn claims_take_a_round_trip(&self) -> bool {
        true
    }

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

    /// Whether this backend implements
    /// [`finish_attempts_and_claim`](Self::finish_attempts_and_claim). Read once, when an
    /// orchestrator is built; `false` (the default) and the orchestrator only ever calls
    /// [`finish_attempts`](Self::finish_attempts). (With `MockTaskStore`, expect this call.)
    fn claims_released_tasks(&self) -> bool {
        false
    }

    /// [`finish_attempts`](Self::finish_attempts) that also claims, in the same atomic step,
    /// tasks those ends release: of each engine named in `room`, up to its number of the
    /// released tasks that are due, best first in claim order, each by [`rules::claim`]
    /// (leased `lease` from now) right after its [`rules::release`] (both events, in that
    /// order). Released tasks beyond the room, of other engines, or not due yet stay `queued`
    /// for any worker. Returns the statuses as `finish_attempts` does, and the tasks claimed.
    ///
    /// An orchestrator calls it, when [`claims_released_tasks`](Self::claims_released_tasks)
    /// says so, with the room its engines' free slots and local queues have: a task that
    /// waited for the ones just finished then starts without a claim's round trip. The
    /// default claims nothing.
    async fn finish_attempts_and_claim(
        &self,
        reports: Vec<AttemptReport>,
        room: Vec<EngineRoom>,
        lease: Duration,
    ) -> Result<(Vec<Result<TaskStatus>>, Vec<Claimed>)> {
        let _ = (room, lease);
        Ok((self.finish_attempts(reports).await?, Vec::new()))
    }

    /// Cancels a `waiting`, `queued` or `running` task by [`rules::cancel`] (dropping any
    /// lease); [`Error::IllegalTransition`](crate::Error::IllegalTransition) for a finished
    /// one.
    async fn cancel_task(&self, id: TaskId) -> Result<Task>;

    /// [`cancel_task`](Self::cancel_task) by a named caller, by [`rules::cancel_by`]: its
    /// `task.cancelled` event names `actor`. The default cancels without the name.
    async fn cancel_task_by(&self, id: TaskId, actor: &str) -> Result<Task> {
        let _ = actor;
        self.cancel_task(id).await
    }

    /// An operator's retry: reopens a `failed`, `cancelled` or `timed_out` task by
    /// [`rules::retry`] (`queued` at once, its attempts starting over, `actor` in its
    /// `task.reopened` event).
    /// [`Error::IllegalTransition`](crate::Error::IllegalTransition) for a task in another
    /// state; [`Error::Invalid`](crate::Error::Invalid) (`task_id`) for a task of a workflow,
    /// which [`retry_workflow`](Self::retry_workflow) reopens with its part of the graph, and
    /// for one with dependencies (it waits for other tasks, or others wait for it), which
    /// reopened alone could run before its parents or end its dependents' waits twice. The
    /// default refuses every task: the backend cannot retry.
    async fn retry_task(&self, id: TaskId, actor: &str) -> Result<Task> {
        let _ = actor;
        Err(crate::Error::backend(
            "retry_task",
            format!("this backend cannot retry task {id}"),
        ))
    }

    /// An operator's requeue: a `queued` task waiting for its delay or a retry's backoff
    /// becomes due at once by [`rules::requeue`] (`actor` in its `task.requeued` event).
    /// [`Error::IllegalTransition`](crate::Error::IllegalTransition) for a task in another
    /// state, [`Error::Invalid`](crate::Error::Invalid) (`task_id`) for one already due
    /// (decided in the same step as the change). The default refuses every task: the backend cannot requeue.
    async fn requeue_task(&self, id: TaskId, actor: &str) -> Result<Task> {
        let _ = actor;
        Err(crate::Error::backend(
            "requeue_task",
            format!("this backend cannot requeue task {id}"),
        ))
    }

    /// Deletes a finished task outside workflows that no task depends on, with the dependency
    /// rows naming it as a child; its events stay in the log. Returns it as it was.
    /// [`Error::TaskNotFound`](crate::Error::TaskNotFound) for an unknown task,
    /// [`Error::Invalid`](crate::Error::Invalid) (`task_id`, by
    /// [`rules::deletion_refused`]) for one that may not be deleted. The default refuses
    /// every task: the backend cannot delete one.
    async fn delete_task(&self, id: TaskId) -> Result<Task> {
        Err(crate::Error::backend(
            "delete_task",
            format!("this backend cannot delete task {id}"),
        ))
    }

    /// Finishes a `waiting`, `queued` or `running` task without a lease by [`rules::resolve`]
    /// (an external system ran it);
    /// [`Error::IllegalTransition`](crate::Error::IllegalTransition) for a finished one.
    async fn resolve_task(&self, id: TaskId, resolution: Resolution) -> Result<Task>;

    /// Takes back up to `limit` `running` tasks whose lease expired, oldest expiry first, each
    /// by [`rules::rescue`]. Returns the tasks as they are now.
    async fn rescue_expired(&self, limit: usize) -> Result<Vec<Task>>;

    /// Deletes up to `limit` finished tasks that finished before `before`, oldest first;
    /// returns how many. A task some unfinished task depends on is kept. The tasks of a
    /// workflow go together, with the workflow, once it finished before `before` (a workflow
    /// counts as one task towards `limit`, and adds all of its own to the count returned).
    async fn prune_tasks(&self, before: DateTime<Utc>, limit: usize) -> Result<u64>;

    /// Counts of `queued` tasks per engine and priority, ordered by engine, then priority.
    async fn queue_depth(&self) -> Result<Vec<QueueDepth>>;

    /// Counts of tasks per engine in each state (waiting ones apart; queued ones split into due
    /// and delayed by the backend's clock), ordered by engine; engines without tasks are left
    /// out.
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

    /// Where a reader that wants only what comes next may start reading, found cheaply: every
    /// event appended after this call returns gets a greater sequence number. Unlike
    /// [`last_event_seq`](Self::last_event_seq) it need not cover what was appended before:
    /// on a backend that numbers events when they are first read (PostgreSQL), events that
    /// nobody has read yet may get greater numbers too, and are not numbered here (a backlog
    /// of them would make this call as slow as the backlog is long). An orchestrator starts
    /// its event tail here. The default is `last_event_seq`.
    async fn tail_start_seq(&self) -> Result<u64> {
        self.last_event_seq().await
    }

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
