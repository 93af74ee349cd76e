//! Workflows on the orchestrator: dispatching a graph as one unit, its status and tasks in
//! topological order, cancel, retry of the failed part, and waiting for its end. The rules
//! and the atomic steps are the backend's ([`TaskStore`](crate::backend::TaskStore)); this
//! module plans the graph and raises the wake-ups.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tracing::Instrument;

use super::Orchestrator;
use crate::error::{Error, Result};
use crate::model::{
    CreatedWorkflow, ParentTask, TaskId, Workflow, WorkflowId, WorkflowInfo, WorkflowTask,
};

/// Least time between two reads of a workflow by [`Orchestrator::wait_for_workflow`]: the
/// event signal is raised by every change on a busy node, and a waiter reads at most this
/// often (the end is seen at most this late).
const WAIT_SPACING: Duration = Duration::from_millis(10);

impl Orchestrator {
    /// Dispatches a workflow: every task of the graph in one atomic step, under a new
    /// [`WorkflowId`]. Tasks whose dependencies have not finished wait (`waiting`); each
    /// becomes `queued` in the step that records the end of its last parent.
    ///
    /// Refused with [`Error::Invalid`] naming the task, nothing stored, for an empty workflow,
    /// a cycle, a dependency on a step it does not have, or on a task that does not exist.
    /// With an idempotency key already used, returns the earlier workflow
    /// ([`CreatedWorkflow::created`] is `false`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> orch_core::Result<()> {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use orch_core::{processor_fn, MemoryBackend, Orchestrator, TaskSpec, Workflow, WorkflowStatus};
    ///
    /// let orch = Orchestrator::builder(Arc::new(MemoryBackend::new()))
    ///     .engine("step", processor_fn(|_ctx, input| async move { Ok(input) }))
    ///     .build()
    ///     .await?;
    /// let mut flow = Workflow::new();
    /// let a = flow.add(TaskSpec::new("step"));
    /// let b = flow.add(TaskSpec::new("step").after(a));
    /// let c = flow.add(TaskSpec::new("step").after(a));
    /// flow.add(TaskSpec::new("step").after(b).after(c));
    /// let dispatched = orch.dispatch_workflow(flow).await?;
    /// let done = orch
    ///     .wait_for_workflow(dispatched.workflow.id, Duration::from_secs(5))
    ///     .await?;
    /// assert_eq!(done.status, WorkflowStatus::Succeeded);
    /// # orch.shutdown(Duration::from_secs(1)).await;
    /// # Ok(()) }
    /// ```
    pub async fn dispatch_workflow(&self, workflow: Workflow) -> Result<CreatedWorkflow> {
        if self.inner.stop_claiming.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let (workflow, tasks) = workflow.into_new()?;
        let span = tracing::debug_span!("dispatch_workflow", workflow_id = %workflow.id, count = tasks.len());
        let created = self
            .inner
            .backend
            .create_workflow(workflow, tasks)
            .instrument(span)
            .await?;
        if created.created {
            self.inner.wakeups.tasks_changed();
        }
        Ok(created)
    }

    /// The workflow's status and counts; [`Error::WorkflowNotFound`] if there is none.
    pub async fn workflow(&self, id: WorkflowId) -> Result<WorkflowInfo> {
        self.inner
            .backend
            .get_workflow(id)
            .await?
            .ok_or(Error::WorkflowNotFound(id))
    }

    /// The workflow's tasks with their dependencies, in topological order: every task after
    /// the tasks of the workflow it depends on (ties in step order).
    /// [`Error::WorkflowNotFound`] if there is none.
    pub async fn workflow_tasks(&self, id: WorkflowId) -> Result<Vec<WorkflowTask>> {
        let tasks = self.inner.backend.workflow_tasks(id).await?;
        if tasks.is_empty() {
            // An unknown workflow, or (rarely) one whose every step stood in.
            self.workflow(id).await?;
        }
        Ok(topological(tasks))
    }

    /// Cancels every task of the workflow that has not run (queued or waiting), in one atomic
    /// step; tasks running go on, and the workflow ends once they have. Returns the workflow as
    /// it is now.
    pub async fn cancel_workflow(&self, id: WorkflowId) -> Result<WorkflowInfo> {
        let info = self.inner.backend.cancel_workflow(id).await?;
        self.inner.wakeups.tasks_changed();
        Ok(info)
    }

    /// Retries the failed part of the workflow: every task that failed, was cancelled or timed
    /// out is reopened with its attempts renewed, queued, or waiting for the reopened tasks it
    /// depends on. Tasks that succeeded keep their results. Returns the workflow, running
    /// again.
    pub async fn retry_workflow(&self, id: WorkflowId) -> Result<WorkflowInfo> {
        let info = self.inner.backend.retry_workflow(id).await?;
        self.inner.wakeups.tasks_changed();
        Ok(info)
    }

    /// Waits up to `max_wait` for the workflow to finish and returns it;
    /// [`Error::WorkflowWaitTimeout`] otherwise.
    pub async fn wait_for_workflow(
        &self,
        id: WorkflowId,
        max_wait: Duration,
    ) -> Result<WorkflowInfo> {
        let deadline = tokio::time::Instant::now() + max_wait;
        let poll = self.inner.config.tuning.poll_interval;
        // Woken by the event signal (the workflow's end appends an event), not by reading the
        // log: a wait costs one read of the workflow per wake-up, however busy the log is.
        let signal = self.inner.wakeups.events.clone();
        loop {
            let seen = signal.version();
            let info = self.workflow(id).await?;
            if info.status.is_finished() {
                return Ok(info);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::WorkflowWaitTimeout(id));
            }
            // A poll covers a change whose signal did not reach this process.
            tokio::select! {
                _ = signal.changed_since(seen) => {}
                _ = tokio::time::sleep(poll.min(deadline - now)) => {}
            }
            // At most one read per WAIT_SPACING, however often the signal is raised.
            tokio::time::sleep(
                WAIT_SPACING.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
            )
            .await;
        }
    }

    /// The tasks `id` depends on, in the order it named them, with their outcomes (for a
    /// running engine, [`TaskContext::parents`](crate::TaskContext::parents) reads them a page
    /// at a time).
    pub async fn parents(&self, id: TaskId) -> Result<Vec<ParentTask>> {
        let mut all = Vec::new();
        loop {
            let from = all
                .last()
                .map_or(0, |last: &ParentTask| last.position.saturating_add(1));
            let page = self
                .inner
                .backend
                .list_parents(id, from, crate::context::Parents::PAGE)
                .await?;
            let done = page.len() < crate::context::Parents::PAGE;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }
}

/// `tasks` (in step order) in topological order: Kahn's algorithm over the dependencies
/// within the workflow, ties by step.
fn topological(tasks: Vec<WorkflowTask>) -> Vec<WorkflowTask> {
    let index: HashMap<TaskId, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.task.id, i))
        .collect();
    let mut pending = vec![0usize; tasks.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    for (i, task) in tasks.iter().enumerate() {
        for parent in &task.parents {
            if let Some(&p) = index.get(&parent.parent) {
                pending[i] += 1;
                children[p].push(i);
            }
        }
    }
    let mut ready: BTreeSet<(usize, usize)> = (0..tasks.len())
        .filter(|&i| pending[i] == 0)
        .map(|i| (tasks[i].step, i))
        .collect();
    let mut order = Vec::with_capacity(tasks.len());
    while let Some((_, i)) = ready.pop_first() {
        order.push(i);
        for &child in &children[i] {
            pending[child] -= 1;
            if pending[child] == 0 {
                ready.insert((tasks[child].step, child));
            }
        }
    }
    // A stored graph has no cycle; should one appear, what is left keeps its step order.
    let placed: BTreeSet<usize> = order.iter().copied().collect();
    order.extend((0..tasks.len()).filter(|i| !placed.contains(i)));
    let mut slots: Vec<Option<WorkflowTask>> = tasks.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}
