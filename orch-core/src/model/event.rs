//! Events: the append-only log every state change writes to.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::TaskId;

/// What happened. Known kinds are variants; anything else (security events from a front end,
/// an application's own) is [`EventKind::Custom`]. On the wire it is the dotted name.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `task.queued`: dispatched.
    TaskQueued,
    /// `task.started`: an attempt was leased to a worker.
    TaskStarted,
    /// `task.succeeded`: finished with a result.
    TaskSucceeded,
    /// `task.failed`: finished with an error.
    TaskFailed,
    /// `task.retrying`: an attempt failed or timed out and the task is queued again.
    TaskRetrying,
    /// `task.timed_out`: the last attempt timed out.
    TaskTimedOut,
    /// `task.cancelled`: cancelled by a caller.
    TaskCancelled,
    /// `task.rescued`: its lease expired and it was taken back from its holder.
    TaskRescued,
    /// `task.requeued`: its holder gave it back unrun (shutdown).
    TaskRequeued,
    /// `task.waiting`: dispatched, or reopened by a workflow's retry, waiting for the tasks it
    /// depends on.
    TaskWaiting,
    /// `task.released`: every task it waited for has finished; it is queued.
    TaskReleased,
    /// `task.reopened`: a workflow's retry reopened it after it failed, was cancelled or timed
    /// out; it is queued (or waiting) again with its attempts renewed.
    TaskReopened,
    /// `workflow.succeeded`: every task of a workflow succeeded.
    WorkflowSucceeded,
    /// `workflow.failed`: every task of a workflow finished and some did not succeed (its
    /// `status` is `failed` or `partly`).
    WorkflowFailed,
    /// Any other dotted name, e.g. `auth.login_failed`.
    Custom(String),
}

impl EventKind {
    /// The dotted wire name.
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::TaskQueued => "task.queued",
            EventKind::TaskStarted => "task.started",
            EventKind::TaskSucceeded => "task.succeeded",
            EventKind::TaskFailed => "task.failed",
            EventKind::TaskRetrying => "task.retrying",
            EventKind::TaskTimedOut => "task.timed_out",
            EventKind::TaskCancelled => "task.cancelled",
            EventKind::TaskRescued => "task.rescued",
            EventKind::TaskRequeued => "task.requeued",
            EventKind::TaskWaiting => "task.waiting",
            EventKind::TaskReleased => "task.released",
            EventKind::TaskReopened => "task.reopened",
            EventKind::WorkflowSucceeded => "workflow.succeeded",
            EventKind::WorkflowFailed => "workflow.failed",
            EventKind::Custom(name) => name,
        }
    }

    /// Whether this event ends a task (succeeded, failed, timed out, cancelled).
    pub fn is_terminal_task_event(&self) -> bool {
        matches!(
            self,
            EventKind::TaskSucceeded
                | EventKind::TaskFailed
                | EventKind::TaskTimedOut
                | EventKind::TaskCancelled
        )
    }

    /// Whether this event ends a workflow.
    pub fn is_workflow_end(&self) -> bool {
        matches!(
            self,
            EventKind::WorkflowSucceeded | EventKind::WorkflowFailed
        )
    }

    /// Whether this kind matches a pattern: the exact name, `prefix.*`, or `*`.
    pub fn matches(&self, pattern: &str) -> bool {
        let name = self.as_str();
        match pattern.strip_suffix('*') {
            Some("") => true,
            Some(prefix) => name.starts_with(prefix),
            None => name == pattern,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "task.queued" => EventKind::TaskQueued,
            "task.started" => EventKind::TaskStarted,
            "task.succeeded" => EventKind::TaskSucceeded,
            "task.failed" => EventKind::TaskFailed,
            "task.retrying" => EventKind::TaskRetrying,
            "task.timed_out" => EventKind::TaskTimedOut,
            "task.cancelled" => EventKind::TaskCancelled,
            "task.rescued" => EventKind::TaskRescued,
            "task.requeued" => EventKind::TaskRequeued,
            "task.waiting" => EventKind::TaskWaiting,
            "task.released" => EventKind::TaskReleased,
            "task.reopened" => EventKind::TaskReopened,
            "workflow.succeeded" => EventKind::WorkflowSucceeded,
            "workflow.failed" => EventKind::WorkflowFailed,
            other => {
                crate::model::check_name("event kind", other, 128)?;
                EventKind::Custom(other.to_owned())
            }
        })
    }
}

impl Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// An event to append; the backend assigns `seq` and `at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// What happened.
    pub kind: EventKind,
    /// The task concerned, if any.
    pub task_id: Option<TaskId>,
    /// The engine concerned, if any. `core_id` on the wire.
    #[serde(rename = "core_id", alias = "engine")]
    pub engine: Option<String>,
    /// The task's attempt number at the time, for task events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Details.
    pub data: Value,
}

impl NewEvent {
    /// An event with no task and no data.
    pub fn new(kind: EventKind) -> Self {
        NewEvent {
            kind,
            task_id: None,
            engine: None,
            attempt: None,
            data: Value::Null,
        }
    }

    /// An event about a task.
    pub fn for_task(kind: EventKind, task_id: TaskId, engine: &str, data: Value) -> Self {
        NewEvent {
            kind,
            task_id: Some(task_id),
            engine: Some(engine.to_owned()),
            attempt: None,
            data,
        }
    }

    /// Sets the attempt number.
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = Some(attempt);
        self
    }

    /// Sets the data.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
}

/// An event as stored: `seq` strictly increases in append order and has no gaps on the
/// in-memory backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic sequence number, starting at 1.
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// When, by the backend's clock.
    pub at: DateTime<Utc>,
    /// The task concerned, if any.
    pub task_id: Option<TaskId>,
    /// The engine concerned, if any. `core_id` on the wire.
    #[serde(rename = "core_id", alias = "engine")]
    pub engine: Option<String>,
    /// The task's attempt number at the time, for task events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Details (`error`, `reason`, `retry_in`, ...), `null` when there are none.
    pub data: Value,
}
