//! The task rules: every change of a task's state, written once, as pure functions.
//!
//! A rule takes what a backend knows of a task (its state, its attempt counter) and what
//! happened (a claim, an attempt's outcome, a cancel, an expired lease) and returns a
//! [`Change`]: the state the task moves to, what happens to its attempt counter, run time,
//! lease, result and error, and the events to append. No clock and no I/O: the backend
//! supplies `now` when it applies the change, in the same atomic step as the events.
//!
//! Backends store what the rules decide and nothing else. The memory and SQLite backends call
//! [`Change::apply`] on the task they hold; the PostgreSQL backend, which changes rows inside
//! one statement, binds a change's fields as statement parameters (and takes the state and
//! event names its statements need from the rules themselves).
//!
//! ```text
//! dispatch ──▶ waiting ──every parent finished──▶ queued
//!                 └──a parent failed (policy fail | cancel)──▶ failed | cancelled
//!
//! dispatch ──▶ queued ──claim──▶ running ──succeeded──▶ succeeded
//!                ▲ │               │ ├──failed, no retry──▶ failed
//!                │ │               │ ├──timed out, no retry──▶ timed_out
//!                │ │               │ └──lease expired, final attempt──▶ failed
//!                │ │               │
//!                └─┼───────────────┘  failed or timed out with a retry (after a delay),
//!                  │                  abandoned by its holder (attempt given back),
//!                  │                  lease expired with attempts left (rescued)
//!                  └──▶ cancelled | succeeded | failed   (cancel, or an external system's
//!                                                         resolution; also from running
//!                                                         and waiting)
//!
//! failed | cancelled | timed_out ──a workflow's retry──▶ queued | waiting
//! ```
//!
//! When a task finishes, each task waiting for it learns the outcome by [`parent_outcome`]:
//! one parent fewer to wait for, or its end ([`dependency_failed`]); the last parent's end
//! [`release`]s it. A workflow's counts and status follow its tasks' ends ([`workflow_ended`]).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use super::{AttemptOutcome, EventKind, NewEvent, NewTask, Resolution, RetryPolicy, Task};
use super::{NewDependency, OnParentFailure, TaskId, TaskStatus, WorkflowId, WorkflowStatus};
use crate::error::{Error, Result, TaskError};

/// What a change does to a task's attempt counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptChange {
    /// Unchanged.
    Keep,
    /// A new attempt begins: the counter grows by one and `started_at` becomes now.
    Begin,
    /// The attempt is given back unrun (its holder abandoned it): the counter shrinks by one.
    GiveBack,
    /// The task starts over (a workflow's retry): the counter goes back to zero.
    Reset,
}

impl AttemptChange {
    /// The counter after the change.
    pub fn applied_to(self, attempt: u32) -> u32 {
        match self {
            AttemptChange::Keep => attempt,
            AttemptChange::Begin => attempt.saturating_add(1),
            AttemptChange::GiveBack => attempt.saturating_sub(1),
            AttemptChange::Reset => 0,
        }
    }

    /// The change as a signed step (+1, 0, -1), for backends that add it in SQL and clamp the
    /// sum at zero; a reset is the step that takes any counter to zero (`-i32::MAX`).
    pub fn step(self) -> i32 {
        match self {
            AttemptChange::Keep => 0,
            AttemptChange::Begin => 1,
            AttemptChange::GiveBack => -1,
            AttemptChange::Reset => -i32::MAX,
        }
    }
}

/// When the task may run next, after the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAt {
    /// Unchanged.
    Keep,
    /// At once.
    Now,
    /// This long after now (a retry's backoff).
    After(Duration),
    /// Now, or the current run time if that is later (a released task keeps its delay).
    NotBeforeNow,
}

impl RunAt {
    /// The delay from now, or `None` to keep the current run time (also for
    /// [`RunAt::NotBeforeNow`], which depends on it: see [`RunAt::resolve`]).
    pub fn delay(self) -> Option<Duration> {
        match self {
            RunAt::Keep | RunAt::NotBeforeNow => None,
            RunAt::Now => Some(Duration::ZERO),
            RunAt::After(delay) => Some(delay),
        }
    }

    /// The run time after the change, from the `current` one at `now`.
    pub fn resolve(self, current: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            RunAt::Keep => current,
            RunAt::Now => now,
            RunAt::After(delay) => after(now, delay),
            RunAt::NotBeforeNow => current.max(now),
        }
    }
}

/// An event a change appends; the backend fills in the task, its engine and its attempt
/// counter (after the change), the sequence number and the time.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDraft {
    /// What happened.
    pub kind: EventKind,
    /// Details (`null` when there are none).
    pub data: Value,
}

impl EventDraft {
    fn new(kind: EventKind, data: Value) -> Self {
        EventDraft { kind, data }
    }

    /// The event about `task` (as it is after the change).
    pub fn for_task(&self, task: &Task) -> NewEvent {
        NewEvent::for_task(self.kind.clone(), task.id, &task.engine, self.data.clone())
            .with_attempt(task.attempt)
    }
}

/// What one transition does to a task: decided by a rule of this module, applied by a backend
/// in one atomic step together with its events.
///
/// `started_at` becomes now exactly when an attempt begins; `finished_at` exactly when the
/// task reaches a terminal state; `updated_at` always. A task holds a lease exactly while it
/// is `running`: a change to any other state drops it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The state the task must be in; the backend refuses the change otherwise.
    pub from: TaskStatus,
    /// The state it moves to.
    pub to: TaskStatus,
    /// The attempt counter.
    pub attempt: AttemptChange,
    /// The next run time.
    pub run_at: RunAt,
    /// A new lease for this long (a fresh token, expiring this long after now); `None` when
    /// the task holds no lease after the change.
    pub lease: Option<Duration>,
    /// The result to store, if any (kept otherwise).
    pub result: Option<Value>,
    /// The error to store, if any (kept otherwise).
    pub error: Option<String>,
    /// The events to append, in order.
    pub events: Vec<EventDraft>,
}

impl Change {
    /// Whether the change starts an attempt (`started_at` becomes now).
    pub fn starts_attempt(&self) -> bool {
        self.attempt == AttemptChange::Begin
    }

    /// Whether the change ends the task (`finished_at` becomes now).
    pub fn finishes(&self) -> bool {
        self.to.is_terminal()
    }

    /// Whether the task becomes claimable again (queued).
    pub fn requeues(&self) -> bool {
        self.from == TaskStatus::Running && self.to == TaskStatus::Queued
    }

    /// Applies the change to `task` at `now` and returns the events to append. Refuses it
    /// ([`Error::IllegalTransition`]) and leaves `task` untouched when the task is not in
    /// [`Change::from`]. The caller checks the lease token (and grants the new one) itself.
    pub fn apply(self, task: &mut Task, now: DateTime<Utc>) -> Result<Vec<NewEvent>> {
        let mut events = Vec::with_capacity(self.events.len());
        self.apply_with(task, now, |event| events.push(event))?;
        Ok(events)
    }

    /// [`Change::apply`], handing each event to `emit` instead of collecting them.
    pub fn apply_with(
        self,
        task: &mut Task,
        now: DateTime<Utc>,
        emit: impl FnMut(NewEvent),
    ) -> Result<()> {
        self.apply_state(task, now)?;
        if self.result.is_some() {
            task.result = self.result;
        }
        if self.error.is_some() {
            task.error = self.error;
        }
        emit_events(self.events.into_iter(), task, emit);
        Ok(())
    }

    /// [`Change::apply_with`] for a change applied to many tasks (a claim of a batch): the
    /// result, error and events are cloned, the change is kept.
    pub fn apply_ref(
        &self,
        task: &mut Task,
        now: DateTime<Utc>,
        emit: impl FnMut(NewEvent),
    ) -> Result<()> {
        self.apply_state(task, now)?;
        if let Some(result) = &self.result {
            task.result = Some(result.clone());
        }
        if let Some(error) = &self.error {
            task.error = Some(error.clone());
        }
        emit_events(self.events.iter().cloned(), task, emit);
        Ok(())
    }

    /// Everything but the result, the error and the events.
    fn apply_state(&self, task: &mut Task, now: DateTime<Utc>) -> Result<()> {
        if task.status != self.from {
            return Err(Error::IllegalTransition {
                task_id: task.id,
                from: task.status,
                to: self.to,
            });
        }
        task.status = self.to;
        task.attempt = self.attempt.applied_to(task.attempt);
        task.updated_at = now;
        if self.attempt == AttemptChange::Begin {
            task.started_at = Some(now);
        }
        if self.to.is_terminal() {
            task.finished_at = Some(now);
        } else if self.from.is_terminal() {
            // Reopened (a retry): the earlier outcome is history, kept in the events.
            task.finished_at = None;
            task.result = None;
            task.error = None;
        }
        if self.to != TaskStatus::Waiting {
            task.waiting_for = 0;
        }
        task.run_at = self.run_at.resolve(task.run_at, now);
        task.lease_expires_at = self.lease.map(|lease| after(now, lease));
        Ok(())
    }
}

/// The events of a change, about `task` as it is after the change.
fn emit_events(
    drafts: impl Iterator<Item = EventDraft>,
    task: &Task,
    mut emit: impl FnMut(NewEvent),
) {
    for draft in drafts {
        emit(
            NewEvent::for_task(draft.kind, task.id, &task.engine, draft.data)
                .with_attempt(task.attempt),
        );
    }
}

/// `now + duration`, saturating at the latest time a backend can represent.
pub fn after(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| now.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The state a new task is stored in.
pub const CREATED: TaskStatus = TaskStatus::Queued;

/// The event a new task is stored with.
pub fn created_event() -> EventDraft {
    EventDraft::new(EventKind::TaskQueued, Value::Null)
}

/// The state a new task waiting for parents is stored in.
pub const WAITING: TaskStatus = TaskStatus::Waiting;

/// The event a new task waiting for parents is stored with (and a reopened one, waiting
/// again).
pub fn waiting_event() -> EventDraft {
    EventDraft::new(EventKind::TaskWaiting, Value::Null)
}

/// A new task as stored: `queued`, no attempt yet, created at `now`, runnable from `run_at`,
/// with its `task.queued` event. `run_at` is [`first_run_at`] by the backend's clock (and
/// precision). A task with dependencies is stored by [`create_waiting`] while any of its
/// parents has not finished.
pub fn create(new: NewTask, now: DateTime<Utc>, run_at: DateTime<Utc>) -> (Task, NewEvent) {
    create_in(new, now, run_at, CREATED, 0, created_event())
}

/// A new task that waits for `waiting_for` parents (at least one) to finish: `waiting`, with
/// a `task.waiting` event; otherwise as [`create`].
pub fn create_waiting(
    new: NewTask,
    now: DateTime<Utc>,
    run_at: DateTime<Utc>,
    waiting_for: u32,
) -> (Task, NewEvent) {
    create_in(new, now, run_at, WAITING, waiting_for, waiting_event())
}

fn create_in(
    new: NewTask,
    now: DateTime<Utc>,
    run_at: DateTime<Utc>,
    status: TaskStatus,
    waiting_for: u32,
    event: EventDraft,
) -> (Task, NewEvent) {
    let task = Task {
        id: new.id,
        engine: new.engine,
        status,
        priority: new.priority,
        timeout: new.timeout,
        max_attempts: new.max_attempts,
        attempt: 0,
        run_at,
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
        lease_expires_at: None,
        payload: new.payload,
        metadata: new.metadata,
        result: None,
        error: None,
        idempotency_key: new.idempotency_key,
        locks: new.locks,
        workflow_id: new.workflow_id,
        waiting_for,
        traceparent: new.traceparent,
        tracestate: new.tracestate,
    };
    let event = event.for_task(&task);
    (task, event)
}

/// When a new task may first run: `delay` after `now`, and not before `not_before`.
pub fn first_run_at(new: &NewTask, now: DateTime<Utc>) -> DateTime<Utc> {
    let run_at = after(now, new.delay);
    match new.not_before {
        Some(not_before) => run_at.max(not_before),
        None => run_at,
    }
}

/// A worker leases a due `queued` task for `lease`: it becomes `running`, a new attempt
/// begins, and `task.started` is appended.
pub fn claim(lease: Duration) -> Change {
    Change {
        from: TaskStatus::Queued,
        to: TaskStatus::Running,
        attempt: AttemptChange::Begin,
        run_at: RunAt::Keep,
        lease: Some(lease),
        result: None,
        error: None,
        events: vec![EventDraft::new(EventKind::TaskStarted, Value::Null)],
    }
}

/// The error stored when attempt `attempt` ran past its timeout.
pub fn timed_out_error(attempt: u32) -> String {
    format!("attempt {attempt} timed out")
}

/// The holder of a `running` task's lease reports how attempt number `attempt` ended.
///
/// - succeeded: `succeeded` with the result, `task.succeeded`;
/// - failed or timed out without a retry: `failed` (the engine's error) or `timed_out`,
///   with `task.failed` / `task.timed_out` carrying `{"error"}`;
/// - failed or timed out with a retry: `queued` again after the delay, with `task.retrying`
///   carrying `{"error", "reason": "failed" | "timed_out", "retry_in": seconds}`;
/// - abandoned (shutdown gave it back unrun): `queued` at once, the attempt given back,
///   `task.requeued`.
pub fn end_attempt(attempt: u32, outcome: AttemptOutcome) -> Change {
    let mut change = Change {
        from: TaskStatus::Running,
        to: outcome.target_status(),
        attempt: AttemptChange::Keep,
        run_at: RunAt::Keep,
        lease: None,
        result: None,
        error: None,
        events: Vec::with_capacity(1),
    };
    let (kind, data) = match outcome {
        AttemptOutcome::Succeeded { result } => {
            change.result = Some(result);
            (EventKind::TaskSucceeded, Value::Null)
        }
        AttemptOutcome::Failed {
            error,
            retry_in: None,
        } => {
            let data = json!({ "error": error });
            change.error = Some(error);
            (EventKind::TaskFailed, data)
        }
        AttemptOutcome::TimedOut { retry_in: None } => {
            let error = timed_out_error(attempt);
            let data = json!({ "error": error });
            change.error = Some(error);
            (EventKind::TaskTimedOut, data)
        }
        AttemptOutcome::Failed {
            error,
            retry_in: Some(retry_in),
        } => {
            let data = json!({
                "error": error, "reason": "failed", "retry_in": retry_in.as_secs_f64()
            });
            change.error = Some(error);
            change.run_at = RunAt::After(retry_in);
            (EventKind::TaskRetrying, data)
        }
        AttemptOutcome::TimedOut {
            retry_in: Some(retry_in),
        } => {
            let error = timed_out_error(attempt);
            let data = json!({
                "error": error, "reason": "timed_out", "retry_in": retry_in.as_secs_f64()
            });
            change.error = Some(error);
            change.run_at = RunAt::After(retry_in);
            (EventKind::TaskRetrying, data)
        }
        AttemptOutcome::Abandoned => {
            change.attempt = AttemptChange::GiveBack;
            change.run_at = RunAt::Now;
            (EventKind::TaskRequeued, Value::Null)
        }
    };
    change.events.push(EventDraft::new(kind, data));
    change
}

/// A caller cancels a `queued` or `running` task: `cancelled`, any lease dropped,
/// `task.cancelled` carrying `{"from"}`. Refused for a finished task.
pub fn cancel(id: TaskId, from: TaskStatus) -> Result<Change> {
    let to = TaskStatus::Cancelled;
    from.check(id, to)?;
    Ok(Change {
        from,
        to,
        attempt: AttemptChange::Keep,
        run_at: RunAt::Keep,
        lease: None,
        result: None,
        error: None,
        events: vec![EventDraft::new(
            EventKind::TaskCancelled,
            json!({ "from": from }),
        )],
    })
}

/// [`cancel`] by a named caller (`user:alice`): `task.cancelled` carries `{"from", "actor"}`.
pub fn cancel_by(id: TaskId, from: TaskStatus, actor: &str) -> Result<Change> {
    let mut change = cancel(id, from)?;
    for event in &mut change.events {
        event.data = json!({ "from": from, "actor": actor });
    }
    Ok(change)
}

/// An external system that ran a `queued` or `running` task reports its outcome without a
/// lease: `succeeded` with the result or `failed` with the error, any lease dropped, the
/// terminal event carrying `{"from", "external": true}`. Refused for a finished task.
pub fn resolve(id: TaskId, from: TaskStatus, resolution: Resolution) -> Result<Change> {
    let (to, kind, result, error) = match resolution {
        Resolution::Succeeded(result) => (
            TaskStatus::Succeeded,
            EventKind::TaskSucceeded,
            Some(result),
            None,
        ),
        Resolution::Failed(error) => (TaskStatus::Failed, EventKind::TaskFailed, None, Some(error)),
    };
    from.check(id, to)?;
    Ok(Change {
        from,
        to,
        attempt: AttemptChange::Keep,
        run_at: RunAt::Keep,
        lease: None,
        result,
        error,
        events: vec![EventDraft::new(
            kind,
            json!({ "from": from, "external": true }),
        )],
    })
}

/// A `running` task's lease expired (its holder died or stalled) during attempt `attempt` of
/// `max_attempts`. With attempts left it goes back to `queued`, runnable at once
/// (`task.rescued` with `{"will_retry": true}`); after the final attempt it fails
/// (`task.rescued` with `{"will_retry": false}`, then `task.failed`).
pub fn rescue(attempt: u32, max_attempts: u32) -> Change {
    let will_retry = attempt < max_attempts;
    let rescued = EventDraft::new(EventKind::TaskRescued, json!({ "will_retry": will_retry }));
    if will_retry {
        Change {
            from: TaskStatus::Running,
            to: TaskStatus::Queued,
            attempt: AttemptChange::Keep,
            run_at: RunAt::Now,
            lease: None,
            result: None,
            error: Some(format!("lease expired during attempt {attempt}")),
            events: vec![rescued],
        }
    } else {
        let error = format!("lease expired during final attempt {attempt}");
        let failed = EventDraft::new(EventKind::TaskFailed, json!({ "error": error }));
        Change {
            from: TaskStatus::Running,
            to: TaskStatus::Failed,
            attempt: AttemptChange::Keep,
            run_at: RunAt::Keep,
            lease: None,
            result: None,
            error: Some(error),
            events: vec![rescued, failed],
        }
    }
}

/// The refusal of a dispatch whose task `child` depends on `parent`, which does not exist.
pub fn unknown_parent(child: &NewTask, parent: TaskId) -> Error {
    Error::invalid(
        "depends_on",
        format!(
            "task {} (engine {:?}) depends on task {parent}, which does not exist",
            child.id, child.engine
        ),
    )
}

/// What the end of one parent means for a task waiting for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentOutcome {
    /// One parent fewer to wait for: it succeeded, or its failure lets the task run anyway.
    Satisfied,
    /// The task ends in this state ([`dependency_failed`]) without running.
    Ends(TaskStatus),
}

/// What a parent finishing in `parent_status` means for a task that depends on it with
/// `on_failure`: success satisfies the dependency; failure, cancellation or a timeout ends the
/// task (`failed` or `cancelled`) unless the dependency runs anyway.
pub fn parent_outcome(parent_status: TaskStatus, on_failure: OnParentFailure) -> ParentOutcome {
    if !parent_status.is_unsuccessful() {
        return ParentOutcome::Satisfied;
    }
    match on_failure {
        OnParentFailure::Fail => ParentOutcome::Ends(TaskStatus::Failed),
        OnParentFailure::Cancel => ParentOutcome::Ends(TaskStatus::Cancelled),
        OnParentFailure::RunAnyway => ParentOutcome::Satisfied,
    }
}

/// A waiting task that a parent's end ends ([`dependency_failed`]): which dependency, and
/// what it makes the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DependencyEnd {
    /// The dependency's position among the task's: of several, the first one named wins.
    pub position: u32,
    /// The parent.
    pub parent: TaskId,
    /// How the parent ended.
    pub parent_status: TaskStatus,
    /// What the task becomes (`failed` or `cancelled`).
    pub to: TaskStatus,
}

/// How the dependency at `position` on a parent now in `status` counts for a task waiting for
/// it: `None`, satisfied; `Some(None)`, one more to wait for (the parent has not finished);
/// `Some(Some(end))`, one more to wait for, and the task ends as `end` says
/// ([`parent_outcome`]).
pub fn dependency_counts(
    status: TaskStatus,
    dependency: &NewDependency,
    position: u32,
) -> Option<Option<DependencyEnd>> {
    if !status.is_terminal() {
        return Some(None);
    }
    match parent_outcome(status, dependency.on_failure) {
        ParentOutcome::Satisfied => None,
        ParentOutcome::Ends(to) => Some(Some(DependencyEnd {
            position,
            parent: dependency.parent,
            parent_status: status,
            to,
        })),
    }
}

/// Every parent of a `waiting` task has finished (each satisfying its dependency): it becomes
/// `queued`, runnable now unless its own run time (a delay) is later, with `task.released`.
pub fn release() -> Change {
    Change {
        from: WAITING,
        to: TaskStatus::Queued,
        attempt: AttemptChange::Keep,
        run_at: RunAt::NotBeforeNow,
        lease: None,
        result: None,
        error: None,
        events: vec![EventDraft::new(EventKind::TaskReleased, Value::Null)],
    }
}

/// The error stored when parent `parent` finished in `parent_status` and failed the task.
pub fn dependency_error(parent: TaskId, parent_status: TaskStatus) -> String {
    format!("task {parent} it depends on ended {parent_status}")
}

/// Parent `parent` finished in `parent_status` and its dependency ends a `waiting` task in
/// `to` ([`ParentOutcome::Ends`]): `failed` with the error and `task.failed` carrying
/// `{"error", "parent"}`, or `cancelled` with `task.cancelled` carrying `{"from": "waiting",
/// "parent"}`. Refused for another `to`.
pub fn dependency_failed(
    parent: TaskId,
    parent_status: TaskStatus,
    to: TaskStatus,
) -> Result<Change> {
    let mut change = Change {
        from: WAITING,
        to,
        attempt: AttemptChange::Keep,
        run_at: RunAt::Keep,
        lease: None,
        result: None,
        error: None,
        events: Vec::with_capacity(1),
    };
    match to {
        TaskStatus::Failed => {
            let error = dependency_error(parent, parent_status);
            change.events.push(EventDraft::new(
                EventKind::TaskFailed,
                json!({ "error": error, "parent": parent }),
            ));
            change.error = Some(error);
        }
        TaskStatus::Cancelled => change.events.push(EventDraft::new(
            EventKind::TaskCancelled,
            json!({ "from": WAITING, "parent": parent }),
        )),
        other => {
            return Err(Error::IllegalTransition {
                task_id: parent,
                from: WAITING,
                to: other,
            });
        }
    }
    Ok(change)
}

/// A workflow's retry reopens task `id`, which failed, was cancelled or timed out (`from`):
/// `queued` (runnable now) when none of its parents is left to wait for, else `waiting` for
/// them; its attempts start over, and `task.reopened` carries `{"from"}`. Refused for any
/// other state.
pub fn reopen(id: TaskId, from: TaskStatus, waiting_for: u32) -> Result<Change> {
    let to = if waiting_for == 0 {
        TaskStatus::Queued
    } else {
        WAITING
    };
    if !from.is_unsuccessful() {
        return Err(Error::IllegalTransition {
            task_id: id,
            from,
            to,
        });
    }
    Ok(Change {
        from,
        to,
        attempt: AttemptChange::Reset,
        run_at: RunAt::Now,
        lease: None,
        result: None,
        error: None,
        events: vec![EventDraft::new(
            EventKind::TaskReopened,
            json!({ "from": from }),
        )],
    })
}

/// An operator's retry of task `id`, not in a workflow, which failed, was cancelled or timed
/// out (`from`): `queued`, runnable now, its attempts starting over, as [`reopen`] with no
/// parent left to wait for; `task.reopened` carries `{"from", "actor"}`. The task's events
/// keep its earlier attempts. Refused for any other state.
pub fn retry(id: TaskId, from: TaskStatus, actor: &str) -> Result<Change> {
    let mut change = reopen(id, from, 0)?;
    for event in &mut change.events {
        event.data = json!({ "from": from, "actor": actor });
    }
    Ok(change)
}

/// An operator's requeue of a `queued` task that waits (`due` is false) for its delay, its
/// `run_at` or a retry's backoff: due at once (after the tasks already due at its priority),
/// its attempts and priority kept; `task.requeued` carries `{"from": "queued", "actor"}` (a
/// requeue by the orchestrator itself, an attempt given back unrun, carries no actor). Refused
/// for any other state, and for a task already due ([`requeue_refused_when_due`]).
pub fn requeue(id: TaskId, from: TaskStatus, due: bool, actor: &str) -> Result<Change> {
    if from != TaskStatus::Queued {
        return Err(Error::IllegalTransition {
            task_id: id,
            from,
            to: TaskStatus::Queued,
        });
    }
    if due {
        return Err(requeue_refused_when_due(id));
    }
    Ok(Change {
        from,
        to: TaskStatus::Queued,
        attempt: AttemptChange::Keep,
        run_at: RunAt::Now,
        lease: None,
        result: None,
        error: None,
        events: vec![EventDraft::new(
            EventKind::TaskRequeued,
            json!({ "from": from, "actor": actor }),
        )],
    })
}

/// Why a requeue is refused for a `queued` task that is already due: it runs as soon as a
/// slot of its engine is free, and making it due "now" would only move it behind tasks
/// queued after it.
pub fn requeue_refused_when_due(id: TaskId) -> Error {
    Error::invalid(
        "task_id",
        format!("task {id} is already due: it runs as soon as a slot of its engine is free"),
    )
}

/// Why a task with dependencies (it waits for other tasks, or others wait for it) outside a
/// workflow is not retried alone: reopened by itself it could run before its parents, or end
/// its dependents' waits a second time.
pub fn retry_refused_in_graph(id: TaskId) -> Error {
    Error::invalid(
        "task_id",
        format!(
            "task {id} has dependencies (it waits for other tasks, or others wait for it): \
             it cannot be retried alone; dispatch it again instead"
        ),
    )
}

/// Why a task of a workflow is not retried alone: its workflow's retry reopens it with the
/// part of the graph that depends on it (the error names the workflow).
pub fn retry_refused_in_workflow(id: TaskId, workflow: WorkflowId) -> Error {
    Error::invalid(
        "task_id",
        format!("task {id} belongs to workflow {workflow}: retry the workflow instead"),
    )
}

/// Why task `task` cannot be deleted, if it cannot: only a finished task outside workflows
/// (a workflow is pruned whole) that no task depends on may be (a dependent's outcome, and a
/// retry of its workflow, read the parent's). `has_dependents`: whether a task depends on it.
pub fn deletion_refused(task: &Task, has_dependents: bool) -> Option<Error> {
    let why = if !task.status.is_terminal() {
        format!(
            "task {} is {}: only a finished task can be deleted (cancel it first)",
            task.id, task.status
        )
    } else if let Some(workflow) = task.workflow_id {
        format!(
            "task {} belongs to workflow {workflow}: a workflow's tasks are pruned with it",
            task.id
        )
    } else if has_dependents {
        format!(
            "task {} cannot be deleted: other tasks depend on it",
            task.id
        )
    } else {
        return None;
    };
    Some(Error::invalid("task_id", why))
}

/// The event of a workflow whose last task finished: `workflow.succeeded` when every task
/// succeeded, else `workflow.failed`; the data carries `{"workflow_id", "status", "tasks",
/// "succeeded"}`. `None` while it is running.
pub fn workflow_ended(id: WorkflowId, tasks: u32, succeeded: u32) -> Option<NewEvent> {
    let status = WorkflowStatus::of(tasks, 0, succeeded);
    let kind = match status {
        WorkflowStatus::Running => return None,
        WorkflowStatus::Succeeded => EventKind::WorkflowSucceeded,
        WorkflowStatus::Failed | WorkflowStatus::Partly => EventKind::WorkflowFailed,
    };
    Some(NewEvent::new(kind).with_data(json!({
        "workflow_id": id,
        "status": status,
        "tasks": tasks,
        "succeeded": succeeded,
    })))
}

/// Whether a task that just ran attempt `attempt` of `max_attempts` may run again.
pub fn has_attempts_left(attempt: u32, max_attempts: u32) -> bool {
    attempt < max_attempts
}

/// How an attempt ended, from what its engine returned: a result succeeds; an error is
/// retried after the policy's backoff when it is retryable and attempts are left, else it
/// fails the task.
pub fn engine_outcome(
    returned: std::result::Result<Value, TaskError>,
    attempt: u32,
    max_attempts: u32,
    retry: &RetryPolicy,
) -> AttemptOutcome {
    match returned {
        Ok(result) => AttemptOutcome::Succeeded { result },
        Err(error) => AttemptOutcome::Failed {
            retry_in: retry_delay(error.retryable, attempt, max_attempts, retry),
            error: error.message,
        },
    }
}

/// How an attempt that ran past its timeout ended: retried after the policy's backoff while
/// attempts are left, else the task is `timed_out`.
pub fn timed_out_outcome(attempt: u32, max_attempts: u32, retry: &RetryPolicy) -> AttemptOutcome {
    AttemptOutcome::TimedOut {
        retry_in: retry_delay(true, attempt, max_attempts, retry),
    }
}

fn retry_delay(
    retryable: bool,
    attempt: u32,
    max_attempts: u32,
    retry: &RetryPolicy,
) -> Option<Duration> {
    (retryable && has_attempts_left(attempt, max_attempts)).then(|| retry.delay(attempt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(status: TaskStatus, attempt: u32) -> Task {
        let new = crate::model::TaskSpec::new("e")
            .max_attempts(3)
            .into_new_task()
            .unwrap();
        let now = Utc::now();
        let (mut task, _) = create(new, now, now);
        task.status = status;
        task.attempt = attempt;
        task
    }

    #[test]
    fn every_change_a_rule_makes_is_a_legal_transition() {
        let outcomes = [
            AttemptOutcome::Succeeded { result: json!(1) },
            AttemptOutcome::Failed {
                error: "x".into(),
                retry_in: None,
            },
            AttemptOutcome::Failed {
                error: "x".into(),
                retry_in: Some(Duration::from_secs(1)),
            },
            AttemptOutcome::TimedOut { retry_in: None },
            AttemptOutcome::TimedOut {
                retry_in: Some(Duration::from_secs(1)),
            },
            AttemptOutcome::Abandoned,
        ];
        let mut changes = vec![claim(Duration::from_secs(1)), rescue(1, 3), rescue(3, 3)];
        changes.extend(outcomes.into_iter().map(|o| end_attempt(1, o)));
        let id = TaskId::new();
        for from in [TaskStatus::Waiting, TaskStatus::Queued, TaskStatus::Running] {
            changes.push(cancel(id, from).unwrap());
            changes.push(resolve(id, from, Resolution::Failed("no".into())).unwrap());
        }
        changes.push(release());
        for to in [TaskStatus::Failed, TaskStatus::Cancelled] {
            changes.push(dependency_failed(id, TaskStatus::TimedOut, to).unwrap());
        }
        for from in [
            TaskStatus::Failed,
            TaskStatus::Cancelled,
            TaskStatus::TimedOut,
        ] {
            changes.push(reopen(id, from, 0).unwrap());
            changes.push(reopen(id, from, 2).unwrap());
        }
        for change in changes {
            assert!(change.from.can_become(change.to), "{change:?}");
            assert_eq!(change.lease.is_some(), change.to == TaskStatus::Running);
            assert!(!change.events.is_empty());
        }
    }

    #[test]
    fn parents_end_children_by_their_dependency() {
        use OnParentFailure::*;
        for policy in [Fail, Cancel, RunAnyway] {
            assert_eq!(
                parent_outcome(TaskStatus::Succeeded, policy),
                ParentOutcome::Satisfied
            );
        }
        for parent in [
            TaskStatus::Failed,
            TaskStatus::Cancelled,
            TaskStatus::TimedOut,
        ] {
            assert_eq!(
                parent_outcome(parent, Fail),
                ParentOutcome::Ends(TaskStatus::Failed)
            );
            assert_eq!(
                parent_outcome(parent, Cancel),
                ParentOutcome::Ends(TaskStatus::Cancelled)
            );
            assert_eq!(parent_outcome(parent, RunAnyway), ParentOutcome::Satisfied);
        }
        assert!(dependency_failed(TaskId::new(), TaskStatus::Failed, TaskStatus::Queued).is_err());
        assert!(reopen(TaskId::new(), TaskStatus::Succeeded, 0).is_err());
        for from in [
            TaskStatus::Queued,
            TaskStatus::Running,
            TaskStatus::Succeeded,
        ] {
            assert!(retry(TaskId::new(), from, "user:ops").is_err(), "{from}");
        }
        let retried = retry(TaskId::new(), TaskStatus::TimedOut, "user:ops").unwrap();
        assert_eq!(retried.to, TaskStatus::Queued);
        assert_eq!(
            retried.events[0].data,
            json!({"from": "timed_out", "actor": "user:ops"})
        );
        // A released task keeps a later run time of its own.
        let now = Utc::now();
        let mut waiting = task(TaskStatus::Waiting, 0);
        waiting.run_at = now + TimeDelta::hours(1);
        let later = waiting.run_at;
        release().apply(&mut waiting, now).unwrap();
        assert_eq!(
            (waiting.status, waiting.run_at),
            (TaskStatus::Queued, later)
        );
        let mut failed = task(TaskStatus::Failed, 3);
        failed.finished_at = Some(now);
        reopen(failed.id, TaskStatus::Failed, 0)
            .unwrap()
            .apply(&mut failed, now)
            .unwrap();
        assert_eq!(
            (failed.status, failed.attempt, failed.finished_at),
            (TaskStatus::Queued, 0, None)
        );
        let ended = workflow_ended(WorkflowId::new(), 3, 1).unwrap();
        assert_eq!(ended.kind, EventKind::WorkflowFailed);
        assert_eq!(ended.data["status"], "partly");
        assert!(
            workflow_ended(WorkflowId::new(), 2, 2)
                .is_some_and(|e| e.kind == EventKind::WorkflowSucceeded)
        );
    }

    #[test]
    fn finished_tasks_refuse_cancel_and_resolve() {
        for from in [TaskStatus::Succeeded, TaskStatus::Cancelled] {
            assert!(cancel(TaskId::new(), from).is_err());
            assert!(resolve(TaskId::new(), from, Resolution::Succeeded(json!(1))).is_err());
        }
    }

    #[test]
    fn apply_checks_the_state_and_fills_the_events() {
        let now = Utc::now();
        let mut queued = task(TaskStatus::Queued, 0);
        let events = claim(Duration::from_secs(10))
            .apply(&mut queued, now)
            .unwrap();
        assert_eq!(queued.status, TaskStatus::Running);
        assert_eq!(queued.attempt, 1);
        assert_eq!(queued.started_at, Some(now));
        assert_eq!(
            queued.lease_expires_at,
            Some(after(now, Duration::from_secs(10)))
        );
        assert_eq!(events[0].kind, EventKind::TaskStarted);
        assert_eq!(events[0].attempt, Some(1));
        // The same claim again: the task is no longer queued.
        let before = queued.clone();
        assert!(
            claim(Duration::from_secs(10))
                .apply(&mut queued, now)
                .is_err()
        );
        assert_eq!(queued, before);

        let events = end_attempt(1, AttemptOutcome::Abandoned)
            .apply(&mut queued, now)
            .unwrap();
        assert_eq!(queued.status, TaskStatus::Queued);
        assert_eq!(queued.attempt, 0);
        assert_eq!(queued.lease_expires_at, None);
        assert_eq!(events[0].attempt, Some(0));
    }

    #[test]
    fn rescue_of_the_final_attempt_fails_the_task() {
        let now = Utc::now();
        let mut running = task(TaskStatus::Running, 3);
        let events = rescue(3, 3).apply(&mut running, now).unwrap();
        assert_eq!(running.status, TaskStatus::Failed);
        assert_eq!(running.finished_at, Some(now));
        let kinds: Vec<_> = events.iter().map(|e| e.kind.clone()).collect();
        assert_eq!(kinds, [EventKind::TaskRescued, EventKind::TaskFailed]);
    }

    #[test]
    fn engine_outcomes_retry_only_while_attempts_are_left() {
        let policy = RetryPolicy::default();
        let retried = engine_outcome(Err(TaskError::retryable("x")), 1, 2, &policy);
        assert!(matches!(
            retried,
            AttemptOutcome::Failed {
                retry_in: Some(_),
                ..
            }
        ));
        let last = engine_outcome(Err(TaskError::retryable("x")), 2, 2, &policy);
        assert!(matches!(
            last,
            AttemptOutcome::Failed { retry_in: None, .. }
        ));
        let fatal = engine_outcome(Err(TaskError::fatal("x")), 1, 2, &policy);
        assert!(matches!(
            fatal,
            AttemptOutcome::Failed { retry_in: None, .. }
        ));
        assert!(matches!(
            timed_out_outcome(2, 2, &policy),
            AttemptOutcome::TimedOut { retry_in: None }
        ));
    }
}
