//! The crate's error type, and the error an engine returns for one attempt.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{TaskId, TaskStatus, WorkflowId};

/// Result alias used across orch-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in orch-core, typed so callers can react (an HTTP front maps
/// [`Error::IllegalTransition`] to 409, [`Error::TaskNotFound`] to 404, and so on).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No task has this id.
    #[error("task {0} not found")]
    TaskNotFound(TaskId),
    /// No workflow has this id.
    #[error("workflow {0} not found")]
    WorkflowNotFound(WorkflowId),
    /// The requested state change is not allowed from the task's current state.
    #[error("illegal transition of task {task_id} from {from} to {to}")]
    IllegalTransition {
        /// The task.
        task_id: TaskId,
        /// Its current state.
        from: TaskStatus,
        /// The state that was asked for.
        to: TaskStatus,
    },
    /// The caller's lease token is not the task's current one: the lease expired and the task
    /// was rescued (or cancelled, or finished by someone else). The report is refused.
    #[error("lease on task {0} is no longer held by this token")]
    LeaseLost(TaskId),
    /// A task spec or request field is invalid; the message names the field.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field, as a user would write it (`engine`, `timeout`, ...).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An engine is already registered under this name.
    #[error("an engine named {0:?} is already registered")]
    EngineExists(String),
    /// No engine is registered under this name on this orchestrator.
    #[error("no engine named {0:?} is registered here")]
    EngineNotFound(String),
    /// The lock is not held by this owner with this fencing token.
    #[error("lock {resource:?} is not held by {owner:?}")]
    NotLockHolder {
        /// The resource.
        resource: String,
        /// The owner that asked.
        owner: String,
    },
    /// The wait deadline passed before the lock could be granted.
    #[error("timed out waiting for lock {0:?}")]
    LockTimeout(String),
    /// The lock is held by someone else (from `try_acquire`).
    #[error("lock {resource:?} is held by {holder:?}")]
    LockHeld {
        /// The resource.
        resource: String,
        /// Its current holder.
        holder: String,
    },
    /// Waiting for a task to finish took longer than allowed.
    #[error("timed out waiting for task {0} to finish")]
    WaitTimeout(TaskId),
    /// Waiting for a workflow to finish took longer than allowed.
    #[error("timed out waiting for workflow {0} to finish")]
    WorkflowWaitTimeout(WorkflowId),
    /// The orchestrator is shutting down and accepts no new work of this kind.
    #[error("orchestrator is shutting down")]
    ShuttingDown,
    /// No tokio runtime is running on this thread; the orchestrator needs one.
    #[error("no tokio runtime: build the orchestrator from inside a tokio runtime")]
    NoRuntime,
    /// No plugin is registered under this name.
    #[error("plugin {0:?} not found")]
    PluginNotFound(String),
    /// A plugin with this name is already registered.
    #[error("plugin {0:?} is already registered")]
    PluginExists(String),
    /// A plugin's `initialize` or `cleanup` failed.
    #[error("plugin {name:?}: {message}")]
    Plugin {
        /// The plugin's name.
        name: String,
        /// What it reported.
        message: String,
    },
    /// The storage backend failed; the message says which operation and why.
    ///
    /// When the backend has an error of its own (a driver's), its text is the message and the
    /// error itself is kept in `cause` ([`Error::backend_cause`]), not as this error's
    /// `source()`, so that a report walking the chain prints it once.
    #[error("backend error during {operation}: {message}")]
    Backend {
        /// The operation that failed (`claim_tasks`, `append_event`, ...).
        operation: &'static str,
        /// What went wrong.
        message: String,
        /// The backend's own error, when it has one.
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The storage backend cannot be reached right now: the connection broke or was refused,
    /// the database server is shutting down or starting, or no connection came within the
    /// acquire timeout. Unlike [`Error::Backend`], the same call may succeed later; the
    /// message starts with "the database is unreachable".
    #[error("backend error during {operation}: {message}")]
    Unavailable {
        /// The operation that failed.
        operation: &'static str,
        /// What went wrong.
        message: String,
        /// The backend's own error, when it has one.
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A value could not be (de)serialized.
    #[error("serialization failed: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// Shorthand for a [`Error::Backend`] without a source.
    pub fn backend(operation: &'static str, message: impl Into<String>) -> Self {
        Error::Backend {
            operation,
            message: message.into(),
            cause: None,
        }
    }

    /// Wraps a backend's own error.
    pub fn backend_source(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Backend {
            operation,
            message: source.to_string(),
            cause: Some(Box::new(source)),
        }
    }

    /// The backend's own error behind an [`Error::Backend`] or [`Error::Unavailable`], to
    /// inspect or downcast.
    pub fn backend_cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            Error::Backend {
                cause: Some(cause), ..
            }
            | Error::Unavailable {
                cause: Some(cause), ..
            } => Some(&**cause),
            _ => None,
        }
    }
}

/// What an engine (a [`Processor`](crate::Processor) or [`Plugin`](crate::Plugin)) returns when
/// an attempt fails. `retryable` decides whether the dispatcher tries again (while attempts are
/// left) or fails the task at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    /// A short, human readable cause.
    pub message: String,
    /// Whether another attempt may succeed. Defaults to `true`.
    #[serde(default = "default_true")]
    pub retryable: bool,
    /// Structured details for the caller, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

fn default_true() -> bool {
    true
}

impl TaskError {
    /// A failure that another attempt may fix.
    pub fn retryable(message: impl Into<String>) -> Self {
        TaskError {
            message: message.into(),
            retryable: true,
            details: None,
        }
    }

    /// A failure that no retry will fix (bad input, a refused operation).
    pub fn fatal(message: impl Into<String>) -> Self {
        TaskError {
            message: message.into(),
            retryable: false,
            details: None,
        }
    }

    /// Attaches structured details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskError {}

impl From<String> for TaskError {
    fn from(message: String) -> Self {
        TaskError::retryable(message)
    }
}

impl From<&str> for TaskError {
    fn from(message: &str) -> Self {
        TaskError::retryable(message)
    }
}

impl From<Error> for TaskError {
    fn from(error: Error) -> Self {
        TaskError::retryable(error.to_string())
    }
}
