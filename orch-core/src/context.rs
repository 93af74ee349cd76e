//! What an engine gets besides its input: which task and attempt it runs, a cancellation token,
//! the fencing tokens of the task's locks, the outcomes of the tasks it depends on, and the
//! shared key-value space.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::backend::SharedBackend;
use crate::contracts::StorageProvider;
use crate::error::{Error, Result};
use crate::model::{FencingToken, ParentTask, TaskId, TaskLock};

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
    /// Where the parents' outcomes are read (`None` for a context built by hand).
    backend: Option<SharedBackend>,
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
            backend: None,
        }
    }

    /// The context of a dispatcher attempt (shares the engine's name instead of copying it).
    pub(crate) fn for_attempt(
        task_id: TaskId,
        engine: Arc<str>,
        attempt: u32,
        max_attempts: u32,
        cancel: CancellationToken,
        backend: SharedBackend,
    ) -> Self {
        let storage: Arc<dyn StorageProvider> = backend.clone();
        TaskContext {
            task_id,
            engine,
            attempt,
            max_attempts,
            cancel,
            locks: None,
            storage: Some(storage),
            backend: Some(backend),
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

    /// Sets the backend the parents' outcomes are read from (and the key-value space).
    pub fn with_backend(mut self, backend: SharedBackend) -> Self {
        let storage: Arc<dyn StorageProvider> = backend.clone();
        self.storage = Some(storage);
        self.backend = Some(backend);
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

    /// The tasks this one depends on, with their outcomes (status, result, error), in the
    /// order it named them, read from the backend a page at a time: a fan-in task with
    /// thousands of parents loads them as it goes.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> orch_core::Result<()> {
    /// use std::sync::Arc;
    /// use orch_core::{processor_fn, MemoryBackend, Orchestrator, TaskSpec, Workflow};
    ///
    /// let orch = Orchestrator::builder(Arc::new(MemoryBackend::new()))
    ///     .engine("number", processor_fn(|_ctx, input| async move { Ok(input) }))
    ///     .engine("sum", processor_fn(|ctx, _input| async move {
    ///         let mut sum = 0;
    ///         for parent in ctx.parents().all().await? {
    ///             sum += parent.task.and_then(|t| t.result).and_then(|r| r.as_i64()).unwrap_or(0);
    ///         }
    ///         Ok(sum.into())
    ///     }))
    ///     .build()
    ///     .await?;
    /// let mut flow = Workflow::new();
    /// let one = flow.add(TaskSpec::new("number").payload(1.into()));
    /// let two = flow.add(TaskSpec::new("number").payload(2.into()));
    /// let sum = flow.add(TaskSpec::new("sum").after(one).after(two));
    /// let dispatched = orch.dispatch_workflow(flow).await?;
    /// let sum = orch
    ///     .wait_for(dispatched.tasks[sum.index()].task.id, std::time::Duration::from_secs(5))
    ///     .await?;
    /// assert_eq!(sum.result, Some(3.into()));
    /// # orch.shutdown(std::time::Duration::from_secs(1)).await;
    /// # Ok(()) }
    /// ```
    pub fn parents(&self) -> Parents {
        Parents {
            backend: self.backend.clone(),
            task_id: self.task_id,
            next: 0,
            done: false,
        }
    }
}

/// The parents of a task, read a page at a time ([`TaskContext::parents`]).
pub struct Parents {
    backend: Option<SharedBackend>,
    task_id: TaskId,
    /// The position of the next parent to read.
    next: u32,
    done: bool,
}

impl std::fmt::Debug for Parents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parents")
            .field("task_id", &self.task_id)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Parents {
    /// Parents read per page.
    pub const PAGE: usize = 500;

    /// The next page of parents, in the order the task named them; `None` after the last.
    /// [`Error::Invalid`] for a context built without a backend.
    pub async fn next_page(&mut self) -> Result<Option<Vec<ParentTask>>> {
        if self.done {
            return Ok(None);
        }
        let backend = self.backend.as_ref().ok_or_else(|| {
            Error::invalid("parents", "this task context was built without a backend")
        })?;
        let page = backend
            .list_parents(self.task_id, self.next, Self::PAGE)
            .await?;
        if page.len() < Self::PAGE {
            self.done = true;
        }
        match page.last() {
            Some(last) => {
                self.next = last.position.saturating_add(1);
                Ok(Some(page))
            }
            None => Ok(None),
        }
    }

    /// Every parent left, in order.
    pub async fn all(mut self) -> Result<Vec<ParentTask>> {
        let mut all = Vec::new();
        while let Some(page) = self.next_page().await? {
            all.extend(page);
        }
        Ok(all)
    }
}
