//! What an engine gets besides its input: which task and attempt it runs, a cancellation token,
//! the fencing tokens of the task's locks, and the shared key-value space.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::contracts::StorageProvider;
use crate::model::{FencingToken, TaskId, TaskLock};

/// The context of one attempt. Cheap to clone.
#[derive(Clone)]
pub struct TaskContext {
    task_id: TaskId,
    engine: Arc<str>,
    attempt: u32,
    max_attempts: u32,
    /// Fired when the attempt must stop: timeout, cancellation, lost lease or shutdown.
    cancel: CancellationToken,
    /// `None` when the task holds no locks (most tasks: saves an allocation per attempt).
    locks: Option<Arc<[TaskLock]>>,
    storage: Option<Arc<dyn StorageProvider>>,
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("task_id", &self.task_id)
            .field("engine", &self.engine)
            .field("attempt", &self.attempt)
            .field("cancelled", &self.cancel.is_cancelled())
            .field("locks", &self.locks)
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    /// A context for tests and for callers that run an engine by hand.
    pub fn new(task_id: TaskId, engine: &str) -> Self {
        TaskContext {
            task_id,
            engine: engine.into(),
            attempt: 1,
            max_attempts: 1,
            cancel: CancellationToken::new(),
            locks: None,
            storage: None,
        }
    }

    /// The context of a dispatcher attempt (shares the engine's name instead of copying it).
    pub(crate) fn for_attempt(
        task_id: TaskId,
        engine: Arc<str>,
        attempt: u32,
        max_attempts: u32,
        cancel: CancellationToken,
        storage: Arc<dyn StorageProvider>,
    ) -> Self {
        TaskContext {
            task_id,
            engine,
            attempt,
            max_attempts,
            cancel,
            locks: None,
            storage: Some(storage),
        }
    }

    /// Sets the attempt numbers.
    pub fn with_attempt(mut self, attempt: u32, max_attempts: u32) -> Self {
        self.attempt = attempt;
        self.max_attempts = max_attempts;
        self
    }

    /// Sets the cancellation token.
    pub fn with_cancellation(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Sets the task's locks and their fencing tokens.
    pub fn with_locks(mut self, locks: Vec<TaskLock>) -> Self {
        self.locks = (!locks.is_empty()).then(|| Arc::from(locks));
        self
    }

    /// Sets the key-value space.
    pub fn with_storage(mut self, storage: Arc<dyn StorageProvider>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The task being run.
    pub fn task_id(&self) -> TaskId {
        self.task_id
    }

    /// The engine it runs on.
    pub fn engine(&self) -> &str {
        &self.engine
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Attempts allowed in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether the attempt has been told to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the attempt is told to stop.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// A token that fires when the attempt must stop, to hand to child futures.
    ///
    /// It is a child of the attempt's own token: cancelling it (to stop work the engine
    /// started) does not end the attempt. Created on request, so engines that only poll
    /// [`TaskContext::is_cancelled`] or await [`TaskContext::cancelled`] pay nothing for it.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.child_token()
    }

    /// The fencing token of the task's lock on `resource`, to present to the protected resource.
    pub fn fencing_token(&self, resource: &str) -> Option<FencingToken> {
        self.locks()
            .iter()
            .find(|lock| lock.resource == resource)
            .map(|lock| lock.fencing_token)
    }

    /// The task's locks (held while the attempt runs) with their fencing tokens.
    pub fn locks(&self) -> &[TaskLock] {
        self.locks.as_deref().unwrap_or_default()
    }

    /// The key-value space shared with the orchestrator's backend, if any.
    pub fn storage(&self) -> Option<&Arc<dyn StorageProvider>> {
        self.storage.as_ref()
    }
}
