//! Dependencies and workflows in memory: creating a graph of tasks, applying what finished
//! tasks mean for the tasks waiting for them (level by level, inside the step that ended
//! them), and a workflow's counts, cancel and retry.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use super::EventLogState;
use super::tasks::{Record, TaskTables};
use crate::backend::rules::{self, DependencyEnd as Doom};
use crate::error::{Error, Result};
use crate::model::{
    Created, NewDependency, NewTask, NewWorkflow, ParentTask, TaskId, TaskStatus, WorkflowId,
    WorkflowInfo, WorkflowStatus, WorkflowTask,
};

/// A workflow and its tasks, in step order.
pub(super) struct WorkflowRecord {
    pub(super) info: WorkflowInfo,
    pub(super) members: Vec<TaskId>,
}

/// What a new graph did: the tasks, one per input, and the workflow.
pub(super) struct CreatedGraph {
    pub(super) tasks: Vec<Created>,
    pub(super) workflow: Option<(WorkflowInfo, bool)>,
    /// Whether a task became claimable.
    pub(super) queued: bool,
}

/// [`rules::dependency_counts`] at a position counted by `enumerate`.
fn counts(status: TaskStatus, dependency: &NewDependency, position: usize) -> Option<Option<Doom>> {
    rules::dependency_counts(
        status,
        dependency,
        u32::try_from(position).unwrap_or(u32::MAX),
    )
}

impl TaskTables {
    /// Stores `tasks` (with dependencies, or of `workflow`) in input order; see
    /// [`TaskStore::create_tasks`](crate::backend::TaskStore::create_tasks) and
    /// [`create_workflow`](crate::backend::TaskStore::create_workflow). Refuses the whole
    /// call, storing nothing, for an unknown parent.
    pub(super) fn create_graph(
        &mut self,
        events: &mut EventLogState,
        tasks: Vec<NewTask>,
        workflow: Option<NewWorkflow>,
        now: DateTime<Utc>,
    ) -> Result<CreatedGraph> {
        if let Some(key) = workflow.as_ref().and_then(|w| w.idempotency_key.as_ref())
            && let Some(&earlier) = self.workflow_keys.get(key)
            && let Some(record) = self.workflows.get(&earlier)
        {
            let tasks = record
                .members
                .iter()
                .filter_map(|id| self.records.get(id))
                .map(|member| Created {
                    task: member.task.clone(),
                    created: false,
                })
                .collect();
            return Ok(CreatedGraph {
                tasks,
                workflow: Some((record.info.clone(), false)),
                queued: false,
            });
        }
        // Tasks whose key is taken: the holder of the key stands in for them.
        let mut stand_in: HashMap<TaskId, TaskId> = HashMap::new();
        let mut batch_keys: HashMap<&str, TaskId> = HashMap::new();
        for task in &tasks {
            if let Some(key) = &task.idempotency_key {
                if let Some(&existing) = self.idempotency.get(key) {
                    stand_in.insert(task.id, existing);
                } else if let Some(&first) = batch_keys.get(key.as_str()) {
                    stand_in.insert(task.id, first);
                } else {
                    batch_keys.insert(key, task.id);
                }
            }
        }
        let stored: BTreeSet<TaskId> = tasks
            .iter()
            .map(|task| task.id)
            .filter(|id| !stand_in.contains_key(id))
            .collect();
        let resolve = |id: TaskId| stand_in.get(&id).copied().unwrap_or(id);
        // Every parent must exist, before anything is stored.
        for task in tasks.iter().filter(|task| stored.contains(&task.id)) {
            for dependency in &task.dependencies {
                let parent = resolve(dependency.parent);
                if !stored.contains(&parent) && !self.records.contains_key(&parent) {
                    return Err(rules::unknown_parent(task, dependency.parent));
                }
            }
        }
        let mut out = Vec::with_capacity(tasks.len());
        let mut doomed = BTreeMap::new();
        let mut links: Vec<(TaskId, TaskId)> = Vec::new();
        let mut members = Vec::new();
        let mut queued = false;
        for (step, mut new) in tasks.into_iter().enumerate() {
            if let Some(&existing) = stand_in.get(&new.id) {
                let task = if let Some(record) = self.records.get(&existing) {
                    record.task.clone()
                } else {
                    // Stood in for by an earlier task of this call.
                    out.iter()
                        .find_map(|c: &Created| (c.task.id == existing).then(|| c.task.clone()))
                        .ok_or_else(|| Error::backend("create_tasks", "lost a stand-in"))?
                };
                out.push(Created {
                    task,
                    created: false,
                });
                continue;
            }
            let mut waiting_for = 0u32;
            let mut doom: Option<Doom> = None;
            for dependency in &mut new.dependencies {
                dependency.parent = resolve(dependency.parent);
            }
            for (position, dependency) in new.dependencies.iter().enumerate() {
                links.push((dependency.parent, new.id));
                let status = if stored.contains(&dependency.parent) {
                    TaskStatus::Waiting
                } else {
                    self.records
                        .get(&dependency.parent)
                        .map_or(TaskStatus::Succeeded, |record| record.task.status)
                };
                if let Some(ends) = counts(status, dependency, position) {
                    waiting_for += 1;
                    if doom.is_none() {
                        doom = ends;
                    }
                }
            }
            let run_at = rules::first_run_at(&new, now);
            let parents = std::mem::take(&mut new.dependencies);
            let (task, event) = if waiting_for > 0 {
                rules::create_waiting(new, now, run_at, waiting_for)
            } else {
                queued = true;
                rules::create(new, now, run_at)
            };
            if let Some(doom) = doom {
                doomed.insert(task.id, doom);
            }
            if let Some(key) = &task.idempotency_key {
                self.idempotency.insert(key.clone(), task.id);
            }
            let mut record = Record::new(task.clone());
            record.parents = parents;
            record.step = step;
            record.engine = self.engine_number_or_new(&task.engine);
            members.push(task.id);
            self.insert(record, events, event, now);
            out.push(Created {
                task,
                created: true,
            });
        }
        for (parent, child) in links {
            if let Some(record) = self.records.get_mut(&parent) {
                record.children.push(child);
            }
        }
        let workflow = workflow.map(|workflow| {
            let count = u32::try_from(members.len()).unwrap_or(u32::MAX);
            let info = WorkflowInfo {
                id: workflow.id,
                status: WorkflowStatus::of(count, count, 0),
                idempotency_key: workflow.idempotency_key.clone(),
                tasks: count,
                unfinished: count,
                succeeded: 0,
                created_at: now,
                finished_at: (count == 0).then_some(now),
            };
            if let Some(key) = workflow.idempotency_key {
                self.workflow_keys.insert(key, workflow.id);
            }
            self.workflows.insert(
                workflow.id,
                WorkflowRecord {
                    info: info.clone(),
                    members,
                },
            );
            (info, true)
        });
        queued |= self.settle(events, now, doomed);
        if let Some((info, _)) = &workflow {
            // Dooms at creation may have ended it already.
            let info = self.workflows.get(&info.id).map(|w| w.info.clone());
            return Ok(CreatedGraph {
                tasks: self.refreshed(out),
                workflow: info.map(|info| (info, true)),
                queued,
            });
        }
        Ok(CreatedGraph {
            tasks: self.refreshed(out),
            workflow: None,
            queued,
        })
    }

    /// The created tasks as they are now (a task ended at creation shows it).
    fn refreshed(&self, created: Vec<Created>) -> Vec<Created> {
        created
            .into_iter()
            .map(|c| Created {
                task: self
                    .records
                    .get(&c.task.id)
                    .map_or(c.task, |record| record.task.clone()),
                created: c.created,
            })
            .collect()
    }

    /// Applies what the tasks that finished in this step ([`TaskTables::ended`]), and the
    /// waiting tasks marked to end (`doomed`), mean for the tasks waiting for them, level by
    /// level, in the order the backend contract gives. Returns whether a task was released.
    pub(super) fn settle(
        &mut self,
        events: &mut EventLogState,
        now: DateTime<Utc>,
        mut doomed: BTreeMap<TaskId, Doom>,
    ) -> bool {
        let mut released = false;
        loop {
            let level = std::mem::take(&mut self.ended);
            if !level.is_empty() {
                released |= self.after_level(events, now, &level, &mut doomed);
                continue;
            }
            if doomed.is_empty() {
                return released;
            }
            for (id, doom) in std::mem::take(&mut doomed) {
                let Ok(change) = rules::dependency_failed(doom.parent, doom.parent_status, doom.to)
                else {
                    continue;
                };
                // A task no longer waiting (cancelled meanwhile) keeps its state.
                let _ = self.change(events, id, Cow::Owned(change), None, false, now, |_| ());
            }
        }
    }

    /// What the tasks of one level mean: their waiting children (ascending id) count them,
    /// are released or marked to end; then their workflows' counts.
    fn after_level(
        &mut self,
        events: &mut EventLogState,
        now: DateTime<Utc>,
        level: &[TaskId],
        doomed: &mut BTreeMap<TaskId, Doom>,
    ) -> bool {
        let mut per_child: BTreeMap<TaskId, (u32, Option<Doom>)> = BTreeMap::new();
        for parent in level {
            let Some(record) = self.records.get(parent) else {
                continue;
            };
            let status = record.task.status;
            // A child names a parent twice when two of its steps were stood in for by the same
            // task: it is listed once, and each of its edges to the parent counts, each with
            // its own policy.
            let children: BTreeSet<TaskId> = record.children.iter().copied().collect();
            for child in children {
                let Some(waiting) = self.records.get(&child) else {
                    continue;
                };
                if waiting.task.status != TaskStatus::Waiting {
                    continue;
                }
                for (position, dependency) in waiting
                    .parents
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| d.parent == *parent)
                {
                    let entry = per_child.entry(child).or_default();
                    match counts(status, dependency, position) {
                        None => entry.0 += 1,
                        Some(doom) => {
                            if let Some(doom) = doom
                                && entry.1.is_none_or(|first| doom.position < first.position)
                            {
                                entry.1 = Some(doom);
                            }
                        }
                    }
                }
            }
        }
        let mut released = false;
        for (child, (satisfied, doom)) in per_child {
            let Some(record) = self.records.get_mut(&child) else {
                continue;
            };
            record.task.waiting_for = record.task.waiting_for.saturating_sub(satisfied);
            if let Some(doom) = doom {
                doomed.entry(child).or_insert(doom);
            } else if record.task.waiting_for == 0 && !doomed.contains_key(&child) {
                let change = rules::release();
                released |= self
                    .change(events, child, Cow::Owned(change), None, false, now, |_| ())
                    .is_ok();
            }
        }
        let mut by_workflow: BTreeMap<WorkflowId, (u32, u32)> = BTreeMap::new();
        for id in level {
            if let Some(record) = self.records.get(id)
                && let Some(workflow) = record.task.workflow_id
            {
                let entry = by_workflow.entry(workflow).or_default();
                entry.0 += 1;
                entry.1 += u32::from(record.task.status == TaskStatus::Succeeded);
            }
        }
        for (workflow, (ended, succeeded)) in by_workflow {
            let Some(record) = self.workflows.get_mut(&workflow) else {
                continue;
            };
            let info = &mut record.info;
            info.unfinished = info.unfinished.saturating_sub(ended);
            info.succeeded += succeeded;
            info.status = WorkflowStatus::of(info.tasks, info.unfinished, info.succeeded);
            if info.unfinished > 0 {
                continue;
            }
            info.finished_at = Some(now);
            if let Some(event) = rules::workflow_ended(workflow, info.tasks, info.succeeded) {
                events.push(event, now);
            }
            let members = record.members.clone();
            self.mark_finished(&members, now);
        }
        released
    }

    /// Whether a finished workflow can go, with its tasks: none of them is a task some
    /// unfinished task outside it depends on.
    pub(super) fn workflow_is_prunable(&self, workflow: WorkflowId) -> bool {
        self.workflows.get(&workflow).is_some_and(|record| {
            record.info.status.is_finished()
                && record
                    .members
                    .iter()
                    .all(|member| !self.has_unfinished_children(*member))
        })
    }

    /// Removes a workflow and its tasks; returns how many tasks.
    pub(super) fn forget_workflow(&mut self, workflow: WorkflowId) -> u64 {
        let Some(record) = self.workflows.remove(&workflow) else {
            return 0;
        };
        if let Some(key) = &record.info.idempotency_key {
            self.workflow_keys.remove(key);
        }
        let mut gone = 0;
        for member in record.members {
            if self.records.contains_key(&member) {
                self.forget(member);
                gone += 1;
            }
        }
        gone
    }

    pub(super) fn workflow_info(&self, workflow: WorkflowId) -> Option<WorkflowInfo> {
        self.workflows.get(&workflow).map(|w| w.info.clone())
    }

    pub(super) fn workflow_tasks(&self, workflow: WorkflowId) -> Vec<WorkflowTask> {
        let Some(record) = self.workflows.get(&workflow) else {
            return Vec::new();
        };
        record
            .members
            .iter()
            .filter_map(|id| self.records.get(id))
            .map(|member| WorkflowTask {
                step: member.step,
                task: member.task.clone(),
                parents: member.parents.clone(),
            })
            .collect()
    }

    pub(super) fn list_parents(&self, child: TaskId, from: u32, limit: usize) -> Vec<ParentTask> {
        let Some(record) = self.records.get(&child) else {
            return Vec::new();
        };
        record
            .parents
            .iter()
            .enumerate()
            .skip(from as usize)
            .take(limit)
            .map(|(position, dependency)| ParentTask {
                position: u32::try_from(position).unwrap_or(u32::MAX),
                task_id: dependency.parent,
                on_failure: dependency.on_failure,
                task: self
                    .records
                    .get(&dependency.parent)
                    .map(|parent| parent.task.clone()),
            })
            .collect()
    }

    /// The workflow's tasks whose state `keep` accepts.
    fn members_where(
        &self,
        workflow: WorkflowId,
        keep: impl Fn(TaskStatus) -> bool,
    ) -> Result<BTreeSet<TaskId>> {
        let record = self
            .workflows
            .get(&workflow)
            .ok_or(Error::WorkflowNotFound(workflow))?;
        Ok(record
            .members
            .iter()
            .copied()
            .filter(|id| self.records.get(id).is_some_and(|r| keep(r.task.status)))
            .collect())
    }

    /// Cancels the workflow's tasks that have not run; see
    /// [`TaskStore::cancel_workflow`](crate::backend::TaskStore::cancel_workflow). Returns
    /// the workflow and whether a task was released.
    pub(super) fn cancel_workflow(
        &mut self,
        events: &mut EventLogState,
        workflow: WorkflowId,
        now: DateTime<Utc>,
    ) -> Result<(WorkflowInfo, bool)> {
        let targets = self.members_where(workflow, |status| {
            matches!(status, TaskStatus::Queued | TaskStatus::Waiting)
        })?;
        for id in targets {
            let Some(from) = self.records.get(&id).map(|r| r.task.status) else {
                continue;
            };
            let change = rules::cancel(id, from)?;
            self.change(events, id, Cow::Owned(change), None, false, now, |_| ())?;
        }
        let released = self.settle(events, now, BTreeMap::new());
        let info = self
            .workflow_info(workflow)
            .ok_or(Error::WorkflowNotFound(workflow))?;
        Ok((info, released))
    }

    /// Reopens the workflow's unsuccessful tasks; see
    /// [`TaskStore::retry_workflow`](crate::backend::TaskStore::retry_workflow). Returns the
    /// workflow and whether a task became claimable.
    pub(super) fn retry_workflow(
        &mut self,
        events: &mut EventLogState,
        workflow: WorkflowId,
        now: DateTime<Utc>,
    ) -> Result<(WorkflowInfo, bool)> {
        let reopened = self.members_where(workflow, TaskStatus::is_unsuccessful)?;
        let mut doomed = BTreeMap::new();
        let mut queued = false;
        for &id in &reopened {
            let Some(record) = self.records.get(&id) else {
                continue;
            };
            let from = record.task.status;
            let mut waiting_for = 0u32;
            let mut doom = None;
            for (position, dependency) in record.parents.iter().enumerate() {
                let status = if reopened.contains(&dependency.parent) {
                    TaskStatus::Waiting
                } else {
                    // A parent pruned meanwhile finished long ago: it counts as done.
                    self.records
                        .get(&dependency.parent)
                        .map_or(TaskStatus::Succeeded, |parent| parent.task.status)
                };
                if let Some(ends) = counts(status, dependency, position) {
                    waiting_for += 1;
                    if doom.is_none() {
                        doom = ends;
                    }
                }
            }
            let change = rules::reopen(id, from, waiting_for)?;
            queued |= change.to == TaskStatus::Queued;
            self.change(events, id, Cow::Owned(change), None, false, now, |_| ())?;
            if let Some(record) = self.records.get_mut(&id) {
                record.task.waiting_for = waiting_for;
            }
            if let Some(doom) = doom {
                doomed.insert(id, doom);
            }
        }
        // A task waiting for a reopened task had counted its end: it waits for it again.
        for id in &reopened {
            let children = self
                .records
                .get(id)
                .map(|r| r.children.clone())
                .unwrap_or_default();
            for child in children {
                if reopened.contains(&child) {
                    continue;
                }
                if let Some(record) = self.records.get_mut(&child)
                    && record.task.status == TaskStatus::Waiting
                {
                    record.task.waiting_for += 1;
                }
            }
        }
        if let Some(record) = self.workflows.get_mut(&workflow)
            && !reopened.is_empty()
        {
            let info = &mut record.info;
            info.unfinished += u32::try_from(reopened.len()).unwrap_or(u32::MAX);
            info.status = WorkflowStatus::Running;
            info.finished_at = None;
        }
        queued |= self.settle(events, now, doomed);
        let info = self
            .workflow_info(workflow)
            .ok_or(Error::WorkflowNotFound(workflow))?;
        Ok((info, queued))
    }
}
