//! Dependencies and workflows: tasks that wait for other tasks, and the graphs they form.
//!
//! A task names the tasks it depends on at dispatch ([`TaskSpec::after`]): existing tasks by
//! id, or tasks of the same dispatch by their [`Step`]. It waits (`waiting`) until every one
//! of them has finished; then it becomes `queued`, in the same atomic step that records the
//! last one's outcome. What a parent's failure does is chosen per dependency
//! ([`OnParentFailure`]). A [`Workflow`] is such a graph dispatched as one unit, under one
//! [`WorkflowId`]: it has a status, ends with an event, and can be cancelled or retried as a
//! whole.
//!
//! [`TaskSpec::after`]: crate::TaskSpec::after

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Created, Task, TaskId, TaskSpec, check_name, limits};
use crate::error::{Error, Result};

/// A workflow id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkflowId(pub Uuid);

impl WorkflowId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        WorkflowId(super::ids::monotonic_v7())
    }
}

impl Default for WorkflowId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for WorkflowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for WorkflowId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Uuid::parse_str(s)
            .map(WorkflowId)
            .map_err(|e| Error::invalid("workflow id", format!("{s:?} is not a UUID ({e})")))
    }
}

/// What a waiting task does when a task it depends on finishes without succeeding (fails, is
/// cancelled or times out). On the wire: `fail`, `cancel`, `run_anyway`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnParentFailure {
    /// The task fails too, without running (the default).
    #[default]
    Fail,
    /// The task is cancelled, without running.
    Cancel,
    /// The parent counts as finished: the task runs once its other parents have finished too
    /// (for clean-up steps).
    RunAnyway,
}

impl OnParentFailure {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OnParentFailure::Fail => "fail",
            OnParentFailure::Cancel => "cancel",
            OnParentFailure::RunAnyway => "run_anyway",
        }
    }
}

impl fmt::Display for OnParentFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for OnParentFailure {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fail" => Ok(OnParentFailure::Fail),
            "cancel" => Ok(OnParentFailure::Cancel),
            "run_anyway" => Ok(OnParentFailure::RunAnyway),
            other => Err(Error::invalid(
                "on_failure",
                format!("{other:?} is not one of fail, cancel, run_anyway"),
            )),
        }
    }
}

/// A task of the same dispatch, by its position: the index of its spec in a
/// [`dispatch_many`](crate::Orchestrator::dispatch_many) call, or what [`Workflow::add`]
/// returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Step(pub usize);

impl Step {
    /// Its position in the dispatch.
    pub fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {}", self.0)
    }
}

/// The task a dependency names. On the wire `{"task": "<id>"}` or `{"step": 2}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parent {
    /// A task that exists already.
    Task(TaskId),
    /// A task of the same dispatch.
    Step(Step),
}

impl From<TaskId> for Parent {
    fn from(id: TaskId) -> Self {
        Parent::Task(id)
    }
}

impl From<&Task> for Parent {
    fn from(task: &Task) -> Self {
        Parent::Task(task.id)
    }
}

impl From<Step> for Parent {
    fn from(step: Step) -> Self {
        Parent::Step(step)
    }
}

/// A dependency as a caller names it: the parent, and what its failure does.
///
/// ```
/// use orch_core::{Dependency, OnParentFailure, Parent, Step};
///
/// let wire = r#"{"step": 0, "on_failure": "run_anyway"}"#;
/// let dependency: Dependency = serde_json::from_str(wire).unwrap();
/// assert_eq!(dependency.parent, Parent::Step(Step(0)));
/// assert_eq!(dependency.on_failure, OnParentFailure::RunAnyway);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// The task waited for.
    #[serde(flatten)]
    pub parent: Parent,
    /// What its failure does to the waiting task.
    #[serde(default)]
    pub on_failure: OnParentFailure,
}

/// A dependency as a backend stores it: the parent's id, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NewDependency {
    /// The task waited for.
    pub parent: TaskId,
    /// What its failure does to the waiting task.
    #[serde(default)]
    pub on_failure: OnParentFailure,
}

/// One parent of a task, as the task (its engine, through
/// [`TaskContext::parents`](crate::TaskContext::parents)) reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParentTask {
    /// Its position among the task's dependencies (0 for the first named).
    pub position: u32,
    /// The parent.
    pub task_id: TaskId,
    /// What its failure does to the task.
    pub on_failure: OnParentFailure,
    /// The parent as stored now (its status, result and error); `None` once retention pruned
    /// it.
    pub task: Option<Task>,
}

/// How a workflow is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    /// Some of its tasks have not finished.
    Running,
    /// Every task succeeded.
    Succeeded,
    /// Every task finished and none succeeded.
    Failed,
    /// Every task finished, some succeeded and some did not.
    Partly,
}

impl WorkflowStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::Running => "running",
            WorkflowStatus::Succeeded => "succeeded",
            WorkflowStatus::Failed => "failed",
            WorkflowStatus::Partly => "partly",
        }
    }

    /// The status of a workflow of `tasks` tasks of which `unfinished` have not finished and
    /// `succeeded` succeeded.
    pub fn of(tasks: u32, unfinished: u32, succeeded: u32) -> Self {
        if unfinished > 0 {
            WorkflowStatus::Running
        } else if succeeded == tasks {
            WorkflowStatus::Succeeded
        } else if succeeded == 0 {
            WorkflowStatus::Failed
        } else {
            WorkflowStatus::Partly
        }
    }

    /// Whether every task of the workflow has finished.
    pub fn is_finished(self) -> bool {
        self != WorkflowStatus::Running
    }
}

impl fmt::Display for WorkflowStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for WorkflowStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "running" => Ok(WorkflowStatus::Running),
            "succeeded" => Ok(WorkflowStatus::Succeeded),
            "failed" => Ok(WorkflowStatus::Failed),
            "partly" => Ok(WorkflowStatus::Partly),
            other => Err(Error::invalid(
                "workflow status",
                format!("{other:?} is not one of running, succeeded, failed, partly"),
            )),
        }
    }
}

/// A stored workflow: its counts and status. The counts are the workflow's own tasks (a task
/// that stood in for a step because its idempotency key matched is not one of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowInfo {
    /// The workflow.
    pub id: WorkflowId,
    /// How it is doing.
    pub status: WorkflowStatus,
    /// Its idempotency key, if given.
    pub idempotency_key: Option<String>,
    /// How many tasks it has.
    pub tasks: u32,
    /// How many of them have not finished.
    pub unfinished: u32,
    /// How many of them succeeded.
    pub succeeded: u32,
    /// When it was dispatched.
    pub created_at: DateTime<Utc>,
    /// When its last task finished (cleared by a retry).
    pub finished_at: Option<DateTime<Utc>>,
}

/// A task of a workflow with the tasks it depends on, as
/// [`Orchestrator::workflow_tasks`](crate::Orchestrator::workflow_tasks) lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowTask {
    /// The step it was dispatched as.
    pub step: usize,
    /// The task.
    pub task: Task,
    /// Its dependencies, in the order named.
    pub parents: Vec<NewDependency>,
}

/// What a backend stores for a new workflow (its tasks come beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewWorkflow {
    /// The id it will have (unless its idempotency key matches an existing workflow).
    pub id: WorkflowId,
    /// A second dispatch with the same key returns the first workflow instead of a new one.
    pub idempotency_key: Option<String>,
}

/// What [`TaskStore::create_workflow`](crate::backend::TaskStore::create_workflow) and
/// [`Orchestrator::dispatch_workflow`](crate::Orchestrator::dispatch_workflow) return.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedWorkflow {
    /// The workflow as stored (the earlier one when its idempotency key matched).
    pub workflow: WorkflowInfo,
    /// `false` when an earlier workflow with the same idempotency key was returned.
    pub created: bool,
    /// One per step, in step order. When the key matched, the earlier workflow's own tasks in
    /// the order of its steps, each with `created: false`; steps of it that were stood in for
    /// by earlier tasks (matched by their idempotency keys) are not among them, so a position
    /// here need not be a step's number then: read the steps with
    /// [`Orchestrator::workflow_tasks`](crate::Orchestrator::workflow_tasks).
    pub tasks: Vec<Created>,
}

/// A graph of tasks dispatched as one unit: [`Workflow::add`] each task (naming the steps it
/// waits for with [`TaskSpec::after`]), then
/// [`Orchestrator::dispatch_workflow`](crate::Orchestrator::dispatch_workflow).
///
/// ```
/// use orch_core::{OnParentFailure, TaskSpec, Workflow};
///
/// let mut flow = Workflow::new().idempotency_key("import-2026-05-01");
/// let fetch = flow.add(TaskSpec::new("fetch"));
/// let left = flow.add(TaskSpec::new("transform").after(fetch));
/// let right = flow.add(TaskSpec::new("transform").after(fetch));
/// flow.add(TaskSpec::new("merge").after(left).after(right));
/// flow.add(TaskSpec::new("clean-up").after_with(fetch, OnParentFailure::RunAnyway));
/// assert_eq!(flow.len(), 5);
/// ```
///
/// [`TaskSpec::after`]: crate::TaskSpec::after
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Workflow {
    steps: Vec<TaskSpec>,
    idempotency_key: Option<String>,
}

impl Workflow {
    /// An empty workflow.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a task; returns its step, for the tasks that wait for it.
    pub fn add(&mut self, spec: TaskSpec) -> Step {
        self.steps.push(spec);
        Step(self.steps.len() - 1)
    }

    /// Sets the workflow's idempotency key: a second dispatch with the same key returns the
    /// first workflow and stores nothing.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// How many tasks it has.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether it has no task.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The specs, in step order.
    pub fn steps(&self) -> &[TaskSpec] {
        &self.steps
    }

    /// Checks the workflow and turns it into what a backend stores: a new workflow id, and
    /// its tasks planned by [`plan_tasks`](crate::backend::plan_tasks) (steps resolved, ids
    /// given parents first).
    pub fn into_new(self) -> Result<(NewWorkflow, Vec<super::NewTask>)> {
        if self.steps.is_empty() {
            return Err(Error::invalid("workflow", "has no task"));
        }
        if let Some(key) = &self.idempotency_key {
            check_name("idempotency_key", key, limits::MAX_IDEMPOTENCY_KEY_LEN)?;
        }
        let workflow = NewWorkflow {
            id: WorkflowId::new(),
            idempotency_key: self.idempotency_key,
        };
        let tasks = super::graph::plan_tasks(self.steps, Some(workflow.id))?;
        Ok((workflow, tasks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_read_and_write_the_wire_form() {
        let id = TaskId::new();
        let spec = TaskSpec::new("e")
            .after(id)
            .after_with(Step(2), OnParentFailure::Cancel);
        let wire = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            wire["depends_on"],
            serde_json::json!([
                {"task": id.to_string(), "on_failure": "fail"},
                {"step": 2, "on_failure": "cancel"}
            ])
        );
        let back: TaskSpec = serde_json::from_value(wire).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn workflow_status_follows_the_counts() {
        assert_eq!(WorkflowStatus::of(3, 1, 2), WorkflowStatus::Running);
        assert_eq!(WorkflowStatus::of(3, 0, 3), WorkflowStatus::Succeeded);
        assert_eq!(WorkflowStatus::of(3, 0, 0), WorkflowStatus::Failed);
        assert_eq!(WorkflowStatus::of(3, 0, 1), WorkflowStatus::Partly);
        assert_eq!(WorkflowStatus::of(0, 0, 0), WorkflowStatus::Succeeded);
        for name in ["running", "succeeded", "failed", "partly"] {
            assert_eq!(name.parse::<WorkflowStatus>().unwrap().as_str(), name);
        }
        for policy in [
            OnParentFailure::Fail,
            OnParentFailure::Cancel,
            OnParentFailure::RunAnyway,
        ] {
            assert_eq!(policy.as_str().parse::<OnParentFailure>().unwrap(), policy);
        }
    }
}
