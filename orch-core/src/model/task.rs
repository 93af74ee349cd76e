//! Tasks: ids, states and their checked transitions, the spec a caller dispatches, and the
//! stored task.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::trace::{TraceContext, check_traceparent, check_tracestate};
use super::workflow::{Dependency, NewDependency, OnParentFailure, Parent, WorkflowId};
use crate::error::{Error, Result};

/// A task id: a UUIDv7, so ids sort by creation time.
///
/// Displays as the bare UUID; parsing also accepts ORCH-Next's `task-` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub Uuid);

impl TaskId {
    /// A new time-ordered id, greater than every id made before by this process.
    pub fn new() -> Self {
        TaskId(super::ids::monotonic_v7())
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bare = s.strip_prefix("task-").unwrap_or(s);
        Uuid::parse_str(bare)
            .map(TaskId)
            .map_err(|e| Error::invalid("task id", format!("{s:?} is not a UUID ({e})")))
    }
}

/// Proof of holding a task's lease. Every worker-side write (heartbeat, report) must present the
/// current token; a rescued task gets a new one, so its old holder's writes are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseToken(pub Uuid);

impl LeaseToken {
    /// A fresh random token, from the operating system's generator.
    pub fn new() -> Self {
        LeaseToken(super::ids::secure_v4())
    }
}

impl Default for LeaseToken {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for LeaseToken {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Uuid::parse_str(s)
            .map(LeaseToken)
            .map_err(|e| Error::invalid("lease token", format!("{s:?} is not a UUID ({e})")))
    }
}

/// The state of a task. `succeeded`, `failed`, `cancelled` and `timed_out` are terminal
/// (finished); a workflow's retry reopens its unsuccessful tasks, nothing else leaves a terminal
/// state. Which changes are legal is [`TaskStatus::can_become`]; which change happens when is
/// decided by [`rules`](crate::backend::rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for the tasks it depends on to finish: not claimable until they have.
    Waiting,
    /// Waiting to run (possibly not before its `run_at`).
    Queued,
    /// Leased by a worker that is running an attempt.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Finished with an error, attempts exhausted or not retryable.
    Failed,
    /// Cancelled by a caller.
    Cancelled,
    /// The last attempt ran past the task's timeout.
    TimedOut,
}

impl TaskStatus {
    /// All states, in declaration order.
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Waiting,
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::TimedOut,
    ];

    /// The wire name (`queued`, `timed_out`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Waiting => "waiting",
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::TimedOut => "timed_out",
        }
    }

    /// Whether the task has finished: succeeded, failed, cancelled or timed out.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            TaskStatus::Waiting | TaskStatus::Queued | TaskStatus::Running
        )
    }

    /// Whether the task finished without succeeding (failed, cancelled or timed out): what a
    /// dependency's [`OnParentFailure`](crate::OnParentFailure) reacts to.
    pub fn is_unsuccessful(self) -> bool {
        self.is_terminal() && self != TaskStatus::Succeeded
    }

    /// Whether `self -> to` is a legal transition.
    pub fn can_become(self, to: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!(
            (self, to),
            (Waiting, Queued | Cancelled | Succeeded | Failed)
                | (Queued, Running | Cancelled | Succeeded | Failed)
                | (Running, Queued | Succeeded | Failed | TimedOut | Cancelled)
                | (Failed | Cancelled | TimedOut, Queued | Waiting)
        )
    }

    /// Checks `self -> to`, naming the task in the error.
    pub fn check(self, task_id: TaskId, to: TaskStatus) -> Result<()> {
        if self.can_become(to) {
            Ok(())
        } else {
            Err(Error::IllegalTransition {
                task_id,
                from: self,
                to,
            })
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "status",
                    format!(
                        "{s:?} is not one of waiting, queued, running, succeeded, failed, \
                         cancelled, timed_out"
                    ),
                )
            })
    }
}

/// Limits a spec is checked against.
pub mod limits {
    use std::time::Duration;

    pub use super::super::trace::{
        MAX_TRACEPARENT_LEN, MAX_TRACESTATE_LEN, MAX_TRACESTATE_MEMBERS,
    };
    /// Longest engine name, in characters.
    pub const MAX_ENGINE_LEN: usize = 128;
    /// Longest idempotency key, in characters.
    pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
    /// Longest lock resource name (and lock owner), in characters.
    pub const MAX_RESOURCE_LEN: usize = 256;
    /// Most lock resources one task may name.
    pub const MAX_TASK_LOCKS: usize = 16;
    /// Most tasks one task may depend on.
    pub const MAX_DEPENDENCIES: usize = 10_000;
    /// Most attempts a task may ask for.
    pub const MAX_ATTEMPTS: u32 = 1000;
    /// Longest task timeout.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
    /// Earliest year of a task's `run_at`: RFC 3339 writes years 0000 to 9999, and every
    /// backend stores them (PostgreSQL's `timestamptz` ends at 4713 BC and 294276 AD).
    pub const MIN_RUN_AT_YEAR: i32 = 0;
    /// Latest year of a task's `run_at` (see [`MIN_RUN_AT_YEAR`]).
    pub const MAX_RUN_AT_YEAR: i32 = 9999;
}

/// Checks a name-like field (engine, resource, key): non-empty, at most `max` characters (as
/// JSON Schema's `maxLength` counts them), no control characters. The error names `field`.
/// Backends use it to refuse bad input like the memory backend.
pub fn check_name(field: &'static str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    // At most 4 bytes a character: a short string needs no count.
    if value.len() > max {
        let count = value.chars().count();
        if count > max {
            return Err(Error::invalid(
                field,
                format!("is {count} characters long, at most {max} allowed"),
            ));
        }
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Checks that every backend can store a JSON value: no string and no object key in it holds
/// the character U+0000, which PostgreSQL's `jsonb` refuses (and with it the whole statement,
/// which may carry other callers' tasks). The error names `field`.
///
/// ```
/// use orch_core::check_json;
/// use serde_json::json;
///
/// assert!(check_json("payload", &json!({"text": "fine"})).is_ok());
/// let error = check_json("payload", &json!({"list": ["a\u{0}b"]})).unwrap_err();
/// assert!(error.to_string().contains("payload"));
/// ```
pub fn check_json(field: &'static str, value: &Value) -> Result<()> {
    let refused = || {
        Err(Error::invalid(
            field,
            "must not contain the character U+0000 (\\u0000) in a string or a key",
        ))
    };
    // A stack, not recursion: a value built in code may nest deeper than a parser allows.
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Value::String(text) if text.contains('\0') => return refused(),
            Value::Array(items) => pending.extend(items),
            Value::Object(map) => {
                for (key, item) in map {
                    if key.contains('\0') {
                        return refused();
                    }
                    pending.push(item);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// What a caller dispatches: a builder with ORCH-Next's defaults (priority 1, timeout 300 s,
/// 3 attempts).
///
/// ```
/// use std::time::Duration;
/// use orch_core::TaskSpec;
///
/// let spec = TaskSpec::new("WORK_AI_01")
///     .priority(2)
///     .timeout(Duration::from_secs(60))
///     .payload(serde_json::json!({"text": "hello"}))
///     .idempotency_key("order-42");
/// assert!(spec.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The engine that runs it: an engine registered under this name with an orchestrator,
    /// or external workers claiming tasks of this name. `core_id` on the wire.
    #[serde(rename = "core_id", alias = "engine")]
    pub engine: String,
    /// Higher runs first; FIFO within a priority. Default 1.
    #[serde(default = "default_priority")]
    pub priority: i32,
    /// Per-attempt timeout. Default 300 s.
    #[serde(default = "default_timeout", with = "crate::model::serde_secs")]
    pub timeout: Duration,
    /// Attempts before the task fails for good. Default 3.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Do not run before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// Do not run before this long after dispatch (measured by the backend's clock).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::model::serde_opt_secs"
    )]
    pub delay: Option<Duration>,
    /// Input for the engine.
    #[serde(default)]
    pub payload: Value,
    /// Free-form metadata (source, tags, ...), stored and returned as is.
    #[serde(default)]
    pub metadata: Value,
    /// A second dispatch with the same key returns the first task instead of a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Lock resources the task needs; the dispatcher holds them all while the engine runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<String>,
    /// The tasks this one waits for: it stays `waiting` until every one of them has finished,
    /// then becomes `queued` (see [`Dependency`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
    /// The W3C `traceparent` of the caller's span: the trace the task's claim, engine call and
    /// outcome continue (see [`TracePropagator`](crate::TracePropagator)). Checked by
    /// [`check_traceparent`](crate::check_traceparent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The W3C `tracestate` beside [`traceparent`](Self::traceparent) (never without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

fn default_priority() -> i32 {
    1
}
fn default_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_max_attempts() -> u32 {
    3
}

impl TaskSpec {
    /// A spec for `engine` with the defaults.
    pub fn new(engine: impl Into<String>) -> Self {
        TaskSpec {
            engine: engine.into(),
            priority: default_priority(),
            timeout: default_timeout(),
            max_attempts: default_max_attempts(),
            run_at: None,
            delay: None,
            payload: Value::Null,
            metadata: Value::Null,
            idempotency_key: None,
            locks: Vec::new(),
            depends_on: Vec::new(),
            traceparent: None,
            tracestate: None,
        }
    }

    /// Continues the trace of `context`: the task's claim, engine call and outcome become
    /// part of it.
    ///
    /// ```
    /// use orch_core::{TaskSpec, TraceContext};
    ///
    /// let context =
    ///     TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None)?;
    /// let spec = TaskSpec::new("report").trace_context(context);
    /// assert!(spec.traceparent.is_some());
    /// # Ok::<(), orch_core::Error>(())
    /// ```
    pub fn trace_context(mut self, context: TraceContext) -> Self {
        let (traceparent, tracestate) = context.into_parts();
        self.traceparent = Some(traceparent);
        self.tracestate = tracestate;
        self
    }

    /// Sets the priority (higher first).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the per-attempt timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the number of attempts (at least 1).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Do not run before `at`.
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Do not run before `delay` has passed.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Sets the engine's input.
    pub fn payload(mut self, payload: Value) -> Self {
        self.payload = payload;
        self
    }

    /// Sets the metadata.
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Adds a lock resource the task needs while it runs.
    pub fn lock(mut self, resource: impl Into<String>) -> Self {
        self.locks.push(resource.into());
        self
    }

    /// Waits for `parent` (an existing task, or a [`Step`](crate::Step) of the same dispatch)
    /// to succeed; if it fails, is cancelled or times out, this task fails too
    /// ([`OnParentFailure::Fail`]).
    ///
    /// ```
    /// use orch_core::{TaskId, TaskSpec};
    ///
    /// let report = TaskSpec::new("report").after(TaskId::new());
    /// assert_eq!(report.depends_on.len(), 1);
    /// ```
    pub fn after(self, parent: impl Into<Parent>) -> Self {
        self.after_with(parent, OnParentFailure::Fail)
    }

    /// Waits for `parent` to finish; what its failure does to this task is `on_failure`.
    pub fn after_with(mut self, parent: impl Into<Parent>, on_failure: OnParentFailure) -> Self {
        self.depends_on.push(Dependency {
            parent: parent.into(),
            on_failure,
        });
        self
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        check_name("engine", &self.engine, limits::MAX_ENGINE_LEN)?;
        if self.timeout.is_zero() {
            return Err(Error::invalid("timeout", "must be greater than zero"));
        }
        if self.timeout > limits::MAX_TIMEOUT {
            return Err(Error::invalid(
                "timeout",
                format!("must be at most {} s", limits::MAX_TIMEOUT.as_secs()),
            ));
        }
        if self.max_attempts == 0 || self.max_attempts > limits::MAX_ATTEMPTS {
            return Err(Error::invalid(
                "max_attempts",
                format!("must be between 1 and {}", limits::MAX_ATTEMPTS),
            ));
        }
        if let Some(delay) = self.delay
            && delay > Duration::from_secs(366 * 24 * 3600)
        {
            return Err(Error::invalid("delay", "must be at most a year"));
        }
        if let Some(run_at) = self.run_at {
            use chrono::Datelike;
            let years = limits::MIN_RUN_AT_YEAR..=limits::MAX_RUN_AT_YEAR;
            if !years.contains(&run_at.year()) {
                return Err(Error::invalid(
                    "run_at",
                    format!(
                        "must be between the years {} and {}",
                        years.start(),
                        years.end()
                    ),
                ));
            }
        }
        check_json("payload", &self.payload)?;
        check_json("metadata", &self.metadata)?;
        if let Some(key) = &self.idempotency_key {
            check_name("idempotency_key", key, limits::MAX_IDEMPOTENCY_KEY_LEN)?;
        }
        if self.locks.len() > limits::MAX_TASK_LOCKS {
            return Err(Error::invalid(
                "locks",
                format!("at most {} lock resources per task", limits::MAX_TASK_LOCKS),
            ));
        }
        for resource in &self.locks {
            check_name("locks", resource, limits::MAX_RESOURCE_LEN)?;
        }
        if self.depends_on.len() > limits::MAX_DEPENDENCIES {
            return Err(Error::invalid(
                "depends_on",
                format!("at most {} dependencies per task", limits::MAX_DEPENDENCIES),
            ));
        }
        match (&self.traceparent, &self.tracestate) {
            (Some(traceparent), _) => check_traceparent(traceparent)?,
            (None, Some(_)) => {
                return Err(Error::invalid("tracestate", "only goes with a traceparent"));
            }
            (None, None) => {}
        }
        if let Some(tracestate) = &self.tracestate {
            check_tracestate(tracestate)?;
        }
        Ok(())
    }

    /// Validates and turns the spec into what a backend stores: an id is assigned, lock
    /// resources are sorted and de-duplicated (so tasks take them in one global order and
    /// cannot deadlock). Only a spec without dependencies on [`Step`](crate::Step)s can be
    /// turned into a task alone; a graph goes through
    /// [`plan_tasks`](crate::backend::plan_tasks), which resolves them.
    pub fn into_new_task(self) -> Result<NewTask> {
        if self.depends_on.is_empty() {
            return self.into_new_task_alone();
        }
        super::graph::plan_tasks(vec![self], None)?
            .pop()
            .ok_or_else(|| Error::invalid("depends_on", "no task planned"))
    }

    /// [`TaskSpec::into_new_task`] without the dependencies: the caller resolves them.
    pub(super) fn into_new_task_alone(self) -> Result<NewTask> {
        self.validate()?;
        let mut locks = self.locks;
        locks.sort();
        locks.dedup();
        Ok(NewTask {
            id: TaskId::new(),
            engine: self.engine,
            priority: self.priority,
            timeout: self.timeout,
            max_attempts: self.max_attempts,
            not_before: self.run_at,
            delay: self.delay.unwrap_or_default(),
            payload: self.payload,
            metadata: self.metadata,
            idempotency_key: self.idempotency_key,
            locks,
            dependencies: Vec::new(),
            workflow_id: None,
            traceparent: self.traceparent,
            tracestate: self.tracestate,
        })
    }
}

/// A validated spec with its id, as handed to [`TaskStore::create_tasks`](crate::backend::TaskStore).
///
/// The backend computes `run_at = max(now + delay, not_before)` with its own clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewTask {
    /// The id the task will have (unless the idempotency key matches an existing task).
    pub id: TaskId,
    /// See [`TaskSpec::engine`].
    #[serde(rename = "core_id", alias = "engine")]
    pub engine: String,
    /// See [`TaskSpec::priority`].
    pub priority: i32,
    /// See [`TaskSpec::timeout`].
    #[serde(with = "crate::model::serde_secs")]
    pub timeout: Duration,
    /// See [`TaskSpec::max_attempts`].
    pub max_attempts: u32,
    /// Absolute earliest start.
    pub not_before: Option<DateTime<Utc>>,
    /// Relative earliest start.
    #[serde(with = "crate::model::serde_secs")]
    pub delay: Duration,
    /// See [`TaskSpec::payload`].
    pub payload: Value,
    /// See [`TaskSpec::metadata`].
    pub metadata: Value,
    /// See [`TaskSpec::idempotency_key`].
    pub idempotency_key: Option<String>,
    /// Sorted, de-duplicated lock resources.
    pub locks: Vec<String>,
    /// The tasks it waits for, in the order named. Each parent's id is smaller than the
    /// task's (parents are made first): backends lock rows in id order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<NewDependency>,
    /// The workflow it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<WorkflowId>,
    /// See [`TaskSpec::traceparent`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// See [`TaskSpec::tracestate`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// A stored task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Time-ordered id.
    pub id: TaskId,
    /// The engine that runs it (see [`TaskSpec::engine`]). `core_id` on the wire.
    #[serde(rename = "core_id", alias = "engine")]
    pub engine: String,
    /// Current state.
    pub status: TaskStatus,
    /// Higher runs first.
    pub priority: i32,
    /// Per-attempt timeout, in seconds on the wire.
    #[serde(with = "crate::model::serde_secs")]
    pub timeout: Duration,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Attempts started so far (1 during the first run).
    pub attempt: u32,
    /// Earliest start of the next attempt.
    pub run_at: DateTime<Utc>,
    /// When it was dispatched.
    pub created_at: DateTime<Utc>,
    /// Last state change.
    pub updated_at: DateTime<Utc>,
    /// When the current or last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
    /// When the current lease runs out (only while `running`).
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Engine input.
    pub payload: Value,
    /// Caller metadata.
    pub metadata: Value,
    /// Engine output, once succeeded.
    pub result: Option<Value>,
    /// Last error, if an attempt failed.
    pub error: Option<String>,
    /// Idempotency key, if given.
    pub idempotency_key: Option<String>,
    /// Lock resources held while running.
    pub locks: Vec<String>,
    /// The workflow it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<WorkflowId>,
    /// While `waiting`: how many of the tasks it depends on have not finished yet (0 in every
    /// other state).
    #[serde(default)]
    pub waiting_for: u32,
    /// The W3C trace context the task continues (see [`TaskSpec::traceparent`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The W3C `tracestate` beside `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl Task {
    /// Whether another attempt is allowed after the current one.
    pub fn has_attempts_left(&self) -> bool {
        super::rules::has_attempts_left(self.attempt, self.max_attempts)
    }

    /// The trace context the task carries, if it carries a valid one (a stored context is
    /// checked again here: a row written by other software is never trusted to be well
    /// formed).
    pub fn trace_context(&self) -> Option<TraceContext> {
        let traceparent = self.traceparent.clone()?;
        TraceContext::new(traceparent, self.tracestate.clone()).ok()
    }
}

/// What [`TaskStore::create_tasks`](crate::backend::TaskStore::create_tasks) returns per task.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// The stored task (the earlier one when the idempotency key matched).
    pub task: Task,
    /// `false` when an existing task with the same idempotency key was returned.
    pub created: bool,
}

/// A task leased to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claimed {
    /// The task, now `running`.
    pub task: Task,
    /// The token the worker must present to heartbeat and report.
    pub lease_token: LeaseToken,
}

/// How many tasks of one engine a caller can take now (see
/// [`TaskStore::finish_attempts_and_claim`](crate::backend::TaskStore::finish_attempts_and_claim)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineRoom {
    /// The engine's name.
    pub engine: String,
    /// Most tasks of it to claim.
    pub limit: usize,
}

/// How one attempt ended, as reported by the lease holder.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    /// The engine returned a result: `succeeded`.
    Succeeded {
        /// The result.
        result: Value,
    },
    /// The engine failed. With `retry_in`, back to `queued` to run again after that delay;
    /// without, `failed`.
    Failed {
        /// The error message.
        error: String,
        /// Delay before the next attempt, if one is allowed.
        retry_in: Option<Duration>,
    },
    /// The attempt ran past its timeout. With `retry_in` back to `queued`, else `timed_out`.
    TimedOut {
        /// Delay before the next attempt, if one is allowed.
        retry_in: Option<Duration>,
    },
    /// The holder gives the task back unrun (graceful shutdown): `queued` again, and the
    /// attempt does not count.
    Abandoned,
}

impl AttemptOutcome {
    /// The state the task moves to.
    pub fn target_status(&self) -> TaskStatus {
        match self {
            AttemptOutcome::Succeeded { .. } => TaskStatus::Succeeded,
            AttemptOutcome::Failed { retry_in: None, .. } => TaskStatus::Failed,
            AttemptOutcome::TimedOut { retry_in: None } => TaskStatus::TimedOut,
            _ => TaskStatus::Queued,
        }
    }
}

/// A lease a worker holds on a running task, as it presents it to renew the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeldLease {
    /// The task.
    pub task_id: TaskId,
    /// The lease token the worker was given when it claimed the task.
    pub lease_token: LeaseToken,
}

/// The report of one attempt's end, as the holder of its lease hands it to
/// [`TaskStore::finish_attempts`](crate::backend::TaskStore::finish_attempts).
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptReport {
    /// The task.
    pub task_id: TaskId,
    /// The lease the attempt ran under; a report with any other token is refused.
    pub lease_token: LeaseToken,
    /// The attempt's number (the task's attempt counter while it ran).
    pub attempt: u32,
    /// How it ended.
    pub outcome: AttemptOutcome,
}

/// An outcome reported without a lease, by an external system (a signed webhook) for a task
/// that is `queued` or `running`.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Moves the task to `succeeded` with this result.
    Succeeded(Value),
    /// Moves the task to `failed` with this error.
    Failed(String),
}

/// Filters for [`TaskStore::list_tasks`](crate::backend::TaskStore::list_tasks). Results are ordered by
/// id (creation time), oldest first unless `newest_first`; page with `after`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TaskFilter {
    /// Only tasks in this state.
    pub status: Option<TaskStatus>,
    /// Only tasks of this engine.
    #[serde(rename = "core_id", alias = "engine")]
    pub engine: Option<String>,
    /// Only tasks after this one in the page order (the last id of the previous page): with a
    /// greater id, or with a smaller one when `newest_first`.
    pub after: Option<TaskId>,
    /// Page size; 0 means 100. Capped at 1000.
    pub limit: usize,
    /// Newest first (descending ids) instead of oldest first.
    #[serde(default)]
    pub newest_first: bool,
    /// Only `queued` tasks that are due (`Some(true)`) or still wait for their run time, a
    /// delay or a retry's backoff (`Some(false)`).
    #[serde(default)]
    pub due: Option<bool>,
}

impl TaskFilter {
    /// The page size to use.
    pub fn effective_limit(&self) -> usize {
        match self.limit {
            0 => 100,
            n => n.min(1000),
        }
    }
}

/// The retry delay policy: exponential backoff with "equal jitter", so the delay before
/// attempt `n + 1` lies in `[d/2, d]` with `d = min(base * 2^(n-1), max)`: it never shrinks from one
/// attempt to the next, and concurrent failures spread out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay scale after the first failed attempt.
    pub base: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
    /// Whether to add jitter.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(600),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1u32 << exponent).min(self.max);
        if !self.jitter || full.is_zero() {
            return full;
        }
        let half = full / 2;
        let spread = full - half;
        half + spread.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_state_diagram() {
        use TaskStatus::*;
        assert!(Queued.can_become(Running));
        assert!(Running.can_become(Queued));
        assert!(Waiting.can_become(Queued));
        assert!(
            !Waiting.can_become(Running),
            "a waiting task is never claimed"
        );
        assert!(!Succeeded.can_become(Running));
        assert!(!Queued.can_become(TimedOut));
        for terminal in [Succeeded, Failed, Cancelled, TimedOut] {
            for to in TaskStatus::ALL {
                // Only a workflow's retry reopens a task, and never a successful one.
                let reopens = terminal != Succeeded && matches!(to, Queued | Waiting);
                assert_eq!(terminal.can_become(to), reopens, "{terminal} -> {to}");
            }
        }
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>().ok(), Some(status));
        }
    }

    #[test]
    fn backoff_never_shrinks() {
        let policy = RetryPolicy::default();
        for attempt in 1..12 {
            let upper_of_this = policy
                .base
                .saturating_mul(1 << (attempt - 1))
                .min(policy.max);
            let next = policy.delay(attempt + 1);
            assert!(next >= upper_of_this / 2);
            assert!(policy.delay(attempt) <= upper_of_this);
        }
    }

    #[test]
    fn spec_validation_names_the_field() {
        let err = TaskSpec::new("").validate().unwrap_err();
        assert!(err.to_string().contains("engine"), "{err}");
        let err = TaskSpec::new("a").max_attempts(0).validate().unwrap_err();
        assert!(err.to_string().contains("max_attempts"), "{err}");
        let err = TaskSpec::new("a")
            .timeout(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");
    }

    #[test]
    fn spec_validation_refuses_what_a_backend_cannot_store() {
        use chrono::TimeZone;
        let nul = TaskSpec::new("a")
            .payload(serde_json::json!({"k": ["x", {"y": "a\u{0}"}]}))
            .validate()
            .unwrap_err();
        assert!(nul.to_string().contains("payload"), "{nul}");
        let key = TaskSpec::new("a")
            .metadata(serde_json::json!({"\u{0}": 1}))
            .validate()
            .unwrap_err();
        assert!(key.to_string().contains("metadata"), "{key}");
        for year in [-5000, -1, 10_000] {
            let at = Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0).unwrap();
            let err = TaskSpec::new("a").run_at(at).validate().unwrap_err();
            assert!(err.to_string().contains("run_at"), "{err}");
        }
        for (year, month, day) in [(0, 1, 1), (9999, 12, 31)] {
            let at = Utc.with_ymd_and_hms(year, month, day, 0, 0, 0).unwrap();
            assert!(TaskSpec::new("a").run_at(at).validate().is_ok());
        }
    }

    #[test]
    fn task_id_parses_with_seed_prefix() {
        let id = TaskId::new();
        let parsed: TaskId = format!("task-{id}").parse().unwrap();
        assert_eq!(parsed, id);
        assert!("nope".parse::<TaskId>().is_err());
    }
}
