//! The in-memory task queue.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{EventLogState, MemoryBackend};
use crate::backend::{ChangeSignal, TaskStore, rules};
use crate::clock;
use crate::error::{Error, Result};
use crate::model::{
    AttemptReport, Claimed, Created, CreatedWorkflow, EngineCounts, HeldLease, LeaseToken,
    NewDependency, NewTask, NewWorkflow, ParentTask, QueueDepth, Resolution, Task, TaskFilter,
    TaskId, TaskStatus, WorkflowId, WorkflowInfo, WorkflowTask,
};

/// Claim order: priority descending, then `run_at` (µs), then id.
type ReadyKey = (Reverse<i32>, i64, u128);

/// The due tasks of one core: per priority (highest first), a deque sorted by (`run_at`, id).
/// New and requeued tasks almost always belong at the back, so inserting is O(1) in practice
/// and claiming pops the front.
#[derive(Default)]
pub(super) struct ReadyQueue {
    by_priority: std::collections::BTreeMap<Reverse<i32>, VecDeque<(i64, u128)>>,
}

impl ReadyQueue {
    fn insert(&mut self, (priority, run_at, id): ReadyKey) {
        let deque = self.by_priority.entry(priority).or_default();
        let entry = (run_at, id);
        if deque.back().is_none_or(|last| *last <= entry) {
            deque.push_back(entry);
        } else {
            let at = deque.partition_point(|e| *e < entry);
            deque.insert(at, entry);
        }
    }

    fn remove(&mut self, (priority, run_at, id): &ReadyKey) {
        if let Some(deque) = self.by_priority.get_mut(priority) {
            let entry = (*run_at, *id);
            let at = deque.partition_point(|e| *e < entry);
            if deque.get(at) == Some(&entry) {
                deque.remove(at);
            }
            if deque.is_empty() {
                self.by_priority.remove(priority);
            }
        }
    }

    fn pop(&mut self) -> Option<u128> {
        let mut first = self.by_priority.first_entry()?;
        let (_, id) = first.get_mut().pop_front()?;
        if first.get().is_empty() {
            first.remove();
        }
        Some(id)
    }

    /// The priority of the first task in claim order.
    fn top_priority(&self) -> Option<i32> {
        self.by_priority
            .first_key_value()
            .map(|(Reverse(priority), _)| *priority)
    }

    fn earliest_run_at(&self) -> Option<i64> {
        self.by_priority
            .values()
            .filter_map(|deque| deque.front().map(|(run_at, _)| *run_at))
            .min()
    }
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn ready_key(task: &Task) -> ReadyKey {
    (
        Reverse(task.priority),
        micros(task.run_at),
        task.id.0.as_u128(),
    )
}

fn id_of(raw: u128) -> TaskId {
    TaskId(uuid::Uuid::from_u128(raw))
}

use super::graph::WorkflowRecord;
use crate::id_hash::{IdHashBuilder, IdMap};

pub(super) struct Record {
    pub(super) task: Task,
    lease: Option<LeaseToken>,
    /// The task's engine, as an index into [`TaskTables::engines`].
    pub(super) engine: u32,
    /// The tasks it waits for, in the order named (resolved: a task that stood in for a step
    /// is named by its own id).
    pub(super) parents: Vec<NewDependency>,
    /// The tasks that depend on it.
    pub(super) children: Vec<TaskId>,
    /// Its step in its workflow.
    pub(super) step: usize,
    /// Its entry in [`TaskTables::finished`] while it is finished and due for retention.
    finished_key: Option<i64>,
}

impl Record {
    /// A record of a new task, not numbered with its engine yet.
    pub(super) fn new(task: Task) -> Box<Self> {
        Box::new(Record {
            task,
            lease: None,
            engine: 0,
            parents: Vec::new(),
            children: Vec::new(),
            step: 0,
            finished_key: None,
        })
    }
}

/// Tasks per state, indexed like [`TaskStatus::ALL`].
type StatusCounts = [u64; TaskStatus::ALL.len()];

fn status_index(status: TaskStatus) -> usize {
    status as usize
}

/// The queues and counts of one engine.
#[derive(Default)]
struct EngineQueues {
    name: String,
    /// Due queued tasks, in claim order.
    ready: ReadyQueue,
    /// Queued tasks not due yet, by (`run_at`, id).
    delayed: BTreeSet<(i64, u128)>,
    /// Stored tasks of each state.
    counts: StatusCounts,
}

impl EngineQueues {
    /// Puts a queued task in the ready queue (due) or the delayed set.
    fn enqueue(&mut self, task: &Task, now: DateTime<Utc>) {
        if task.run_at <= now {
            self.ready.insert(ready_key(task));
        } else {
            self.delayed
                .insert((micros(task.run_at), task.id.0.as_u128()));
        }
    }

    /// Moves the delayed tasks that are due into the ready queue.
    fn promote(&mut self, records: &IdMap<Box<Record>>, now: DateTime<Utc>) {
        let now = micros(now);
        while let Some(&(run_at, raw_id)) = self.delayed.first() {
            if run_at > now {
                break;
            }
            self.delayed.pop_first();
            if let Some(record) = records.get(&id_of(raw_id)) {
                self.ready
                    .insert((Reverse(record.task.priority), run_at, raw_id));
            }
        }
    }

    fn count(&mut self, status: TaskStatus, up: bool) {
        let slot = &mut self.counts[status_index(status)];
        *slot = if up {
            *slot + 1
        } else {
            slot.saturating_sub(1)
        };
    }
}

/// The task tables and their indexes. Invariants: a `queued` task is in exactly one of its
/// engine's `ready` (due) or `delayed` (not yet due); a `running` task is in `running` and
/// holds a lease; a finished task outside a workflow, and every task of a finished workflow,
/// has an entry in `finished` (in the order they finished; an entry whose key is not its
/// record's `finished_key` is stale and skipped); an engine's `counts` count its stored tasks
/// of each state; a `waiting` task's `waiting_for` counts its parents that have not finished
/// (or whose failure ends it). Engines are numbered in the order they are first seen, so the
/// hot paths index a vector instead of hashing names.
pub(super) struct TaskTables {
    pub(super) records: IdMap<Box<Record>>,
    engines: Vec<EngineQueues>,
    engine_numbers: HashMap<String, u32>,
    running: HashSet<TaskId, IdHashBuilder>,
    finished: VecDeque<(i64, TaskId)>,
    pub(super) idempotency: HashMap<String, TaskId>,
    /// Most finished tasks kept; the oldest are dropped beyond it.
    finished_retention: usize,
    /// Tasks that finished in the step under way, in order: what their ends mean for the
    /// tasks waiting for them is applied before the step ends ([`TaskTables::settle`]).
    pub(super) ended: Vec<TaskId>,
    pub(super) workflows: HashMap<WorkflowId, WorkflowRecord>,
    pub(super) workflow_keys: HashMap<String, WorkflowId>,
}

impl TaskTables {
    pub(super) fn with_finished_retention(finished_retention: usize) -> Self {
        TaskTables {
            records: IdMap::default(),
            engines: Vec::new(),
            engine_numbers: HashMap::new(),
            running: HashSet::default(),
            finished: VecDeque::new(),
            idempotency: HashMap::new(),
            finished_retention,
            ended: Vec::new(),
            workflows: HashMap::new(),
            workflow_keys: HashMap::new(),
        }
    }

    /// The number of engine `name`, if it has had tasks.
    fn engine_number(&self, name: &str) -> Option<u32> {
        self.engine_numbers.get(name).copied()
    }

    /// The number of engine `name`, numbering it if it is new.
    pub(super) fn engine_number_or_new(&mut self, name: &str) -> u32 {
        if let Some(&number) = self.engine_numbers.get(name) {
            return number;
        }
        let number = u32::try_from(self.engines.len()).unwrap_or(u32::MAX);
        self.engines.push(EngineQueues {
            name: name.to_owned(),
            ..EngineQueues::default()
        });
        self.engine_numbers.insert(name.to_owned(), number);
        number
    }

    fn queues(&mut self, engine: u32) -> &mut EngineQueues {
        &mut self.engines[engine as usize]
    }

    /// Drops the oldest finished tasks while over the retention limit (a workflow's tasks
    /// together, once it finished; never a task an unfinished task depends on).
    fn enforce_retention(&mut self) {
        if self.finished.len() > self.finished_retention {
            self.prune_finished(i64::MAX, usize::MAX, true);
        }
    }

    /// Deletes finished tasks whose entry is older than `before`, oldest first, until `limit`
    /// are deleted (or, with `to_retention`, until no more than the retention limit are
    /// kept). Entries of tasks that must stay are kept in order. Returns how many it deleted.
    fn prune_finished(&mut self, before: i64, limit: usize, to_retention: bool) -> u64 {
        let mut kept = Vec::new();
        let mut pruned = 0;
        while (pruned as usize) < limit
            && (!to_retention || self.finished.len() > self.finished_retention)
        {
            match self.finished.front() {
                Some(&(at, _)) if at < before => {}
                _ => break,
            }
            let Some((at, id)) = self.finished.pop_front() else {
                break;
            };
            let Some(record) = self.records.get(&id) else {
                continue;
            };
            if record.finished_key != Some(at) {
                continue;
            }
            match record.task.workflow_id {
                Some(workflow) => {
                    if self.workflow_is_prunable(workflow) {
                        pruned += self.forget_workflow(workflow);
                    } else {
                        kept.push((at, id));
                    }
                }
                None if self.has_unfinished_children(id) => kept.push((at, id)),
                None => {
                    self.forget(id);
                    pruned += 1;
                }
            }
        }
        for entry in kept.into_iter().rev() {
            self.finished.push_front(entry);
        }
        pruned
    }

    /// Whether a task some unfinished task depends on.
    pub(super) fn has_unfinished_children(&self, id: TaskId) -> bool {
        self.records.get(&id).is_some_and(|record| {
            record.children.iter().any(|child| {
                self.records
                    .get(child)
                    .is_some_and(|child| !child.task.status.is_terminal())
            })
        })
    }

    /// Deletes a finished task an operator named: as [`TaskTables::forget`], and its entry in
    /// the finished queue goes too (it would count towards the retention otherwise).
    pub(super) fn delete(&mut self, id: TaskId) {
        if let Some(at) = self.records.get(&id).and_then(|record| record.finished_key)
            && let Some(position) = self
                .finished
                .iter()
                .position(|&(key, entry)| key == at && entry == id)
        {
            self.finished.remove(position);
        }
        self.forget(id);
    }

    /// Removes a finished task.
    pub(super) fn forget(&mut self, id: TaskId) {
        if let Some(record) = self.records.remove(&id) {
            if let Some(key) = &record.task.idempotency_key {
                self.idempotency.remove(key);
            }
            self.queues(record.engine).count(record.task.status, false);
        }
    }

    /// Adds entries in `finished` for tasks that finished (`at` clamped so the order never
    /// goes backwards).
    pub(super) fn mark_finished(&mut self, ids: &[TaskId], now: DateTime<Utc>) {
        let at = self
            .finished
            .back()
            .map_or(micros(now), |&(last, _)| last.max(micros(now)));
        for id in ids {
            if let Some(record) = self.records.get_mut(id) {
                record.finished_key = Some(at);
                self.finished.push_back((at, *id));
            }
        }
    }

    /// Stores a new task (its record numbered with its engine) and its event: a queued one
    /// goes into its engine's queue.
    pub(super) fn insert(
        &mut self,
        record: Box<Record>,
        events: &mut EventLogState,
        event: crate::model::NewEvent,
        now: DateTime<Utc>,
    ) {
        let queues = self.queues(record.engine);
        if record.task.status == TaskStatus::Queued {
            queues.enqueue(&record.task, now);
        }
        queues.count(record.task.status, true);
        events.push(event, now);
        self.records.insert(record.task.id, record);
    }

    /// Applies one change decided by the [`rules`] to task `id`, keeping every index, and
    /// appends its events; returns what `then` makes of the changed task. A change into
    /// `running` grants `lease_token`. `dequeued`: the caller already took the (queued) task
    /// out of its engine's ready queue.
    #[allow(
        clippy::too_many_arguments,
        reason = "the one place every transition goes through; each argument is one fact"
    )]
    pub(super) fn change<R>(
        &mut self,
        events: &mut EventLogState,
        id: TaskId,
        change: Cow<'_, rules::Change>,
        lease_token: Option<LeaseToken>,
        dequeued: bool,
        now: DateTime<Utc>,
        then: impl FnOnce(&Task) -> R,
    ) -> Result<R> {
        // Field by field, so the record stays borrowed while the indexes change.
        let record = self
            .records
            .get_mut(&id)
            .map(|r| &mut **r)
            .ok_or_else(|| Error::TaskNotFound(id))?;
        let from = record.task.status;
        // The queue keys as they were, to find a queued task in the queue it leaves.
        let queued_keys = (from == TaskStatus::Queued && !dequeued).then(|| {
            (
                ready_key(&record.task),
                (micros(record.task.run_at), id.0.as_u128()),
            )
        });
        let emit = |event| events.push(event, now);
        match change {
            Cow::Borrowed(change) => change.apply_ref(&mut record.task, now, emit)?,
            Cow::Owned(change) => change.apply_with(&mut record.task, now, emit)?,
        }
        let to = record.task.status;
        record.lease = (to == TaskStatus::Running).then(|| lease_token.unwrap_or_default());
        let queues = &mut self.engines[record.engine as usize];
        if let Some((ready, delayed)) = queued_keys {
            queues.ready.remove(&ready);
            queues.delayed.remove(&delayed);
        } else if from == TaskStatus::Running {
            self.running.remove(&id);
        }
        queues.count(from, false);
        queues.count(to, true);
        let in_workflow = record.task.workflow_id.is_some();
        match to {
            TaskStatus::Queued => queues.enqueue(&record.task, now),
            TaskStatus::Running => {
                self.running.insert(id);
            }
            TaskStatus::Waiting => {}
            _ => {}
        }
        if from.is_terminal() {
            // Reopened: its entry in `finished` goes stale.
            record.finished_key = None;
        }
        let out = then(&record.task);
        if to.is_terminal() && !from.is_terminal() {
            self.ended.push(id);
            // A workflow's tasks are kept for retention together, once it finishes.
            if !in_workflow {
                self.mark_finished(&[id], now);
                self.enforce_retention();
            }
        }
        Ok(out)
    }

    fn snapshot_ref(&self, id: TaskId) -> Result<&Record> {
        self.records
            .get(&id)
            .map(|record| &**record)
            .ok_or_else(|| Error::TaskNotFound(id))
    }

    /// Ends the attempt of `report` if its token is the task's lease (see
    /// [`TaskStore::finish_attempts`]).
    fn end_attempt(
        &mut self,
        events: &mut EventLogState,
        report: AttemptReport,
        now: DateTime<Utc>,
    ) -> Result<TaskStatus> {
        let id = report.task_id;
        let record = self
            .records
            .get(&id)
            .ok_or_else(|| Error::TaskNotFound(id))?;
        if record.lease != Some(report.lease_token)
            || record.task.status != TaskStatus::Running
            || record.task.attempt != report.attempt
        {
            return Err(Error::LeaseLost(id));
        }
        let change = rules::end_attempt(report.attempt, report.outcome);
        self.change(events, id, Cow::Owned(change), None, false, now, |task| {
            task.status
        })
    }
}

impl MemoryBackend {
    /// Claims up to `limit` due tasks of `engine` in claim order, of priority above `above`
    /// when given (`claim_tasks` and `claim_tasks_above`).
    fn claim_above(
        &self,
        engine: &str,
        limit: usize,
        lease: Duration,
        above: Option<i32>,
    ) -> Result<Vec<Claimed>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = clock::now();
        let change = rules::claim(lease);
        let claimed = self.with_state(|tables, events| {
            let Some(number) = tables.engine_number(engine) else {
                return Vec::new();
            };
            let queues = &mut tables.engines[number as usize];
            queues.promote(&tables.records, now);
            let mut picked = Vec::with_capacity(limit.min(64));
            while picked.len() < limit {
                if let Some(floor) = above
                    && queues.ready.top_priority().is_none_or(|top| top <= floor)
                {
                    break;
                }
                match queues.ready.pop() {
                    Some(raw_id) => picked.push(id_of(raw_id)),
                    None => break,
                }
            }
            let mut claimed = Vec::with_capacity(picked.len());
            for id in picked {
                let lease_token = LeaseToken::new();
                let borrowed = Cow::Borrowed(&change);
                let task = tables.change(events, id, borrowed, Some(lease_token), true, now, |t| {
                    t.clone()
                });
                if let Ok(task) = task {
                    claimed.push(Claimed { task, lease_token });
                }
            }
            claimed
        });
        if !claimed.is_empty() {
            self.wake_events();
        }
        Ok(claimed)
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut TaskTables, &mut EventLogState) -> T) -> T {
        let mut state = self.state.lock();
        let state = &mut *state;
        f(&mut state.tasks, &mut state.events)
    }

    /// One change to one task by a rule that reads its state, with what its end means for
    /// the tasks waiting for it; returns the task as it is now.
    fn transition(
        &self,
        id: TaskId,
        rule: impl FnOnce(&Task) -> Result<rules::Change>,
    ) -> Result<Task> {
        let now = clock::now();
        let (task, released) = self.with_state(|tables, events| {
            let change = rule(&tables.snapshot_ref(id)?.task)?;
            let task = tables.change(
                events,
                id,
                Cow::Owned(change),
                None,
                false,
                now,
                Task::clone,
            )?;
            let released = tables.settle(events, now, Default::default());
            Ok::<_, Error>((task, released))
        })?;
        if released {
            self.wake_tasks();
        }
        self.wake_events();
        Ok(task)
    }

    /// Stores a graph (tasks with dependencies, or a workflow's) in one step.
    fn create_graph(
        &self,
        tasks: Vec<NewTask>,
        workflow: Option<NewWorkflow>,
    ) -> Result<super::graph::CreatedGraph> {
        let now = clock::now();
        let created =
            self.with_state(|tables, events| tables.create_graph(events, tasks, workflow, now))?;
        if created.queued {
            self.wake_tasks();
        }
        if created.tasks.iter().any(|c| c.created) {
            self.wake_events();
        }
        Ok(created)
    }
}

#[async_trait]
impl TaskStore for MemoryBackend {
    fn claims_take_a_round_trip(&self) -> bool {
        false
    }

    async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<Created>> {
        if tasks.iter().any(|task| !task.dependencies.is_empty()) {
            return Ok(self.create_graph(tasks, None)?.tasks);
        }
        let now = clock::now();
        // Build tasks, copies and events before taking the lock, so it is held only for the
        // index updates.
        let prepared: Vec<_> = tasks
            .into_iter()
            .map(|new| {
                let run_at = rules::first_run_at(&new, now);
                let (task, event) = rules::create(new, now, run_at);
                let copy = task.clone();
                // Boxed here, so that taking the lock moves a pointer, not the task.
                let record = Record::new(task);
                (record, copy, event)
            })
            .collect();
        let created = self.with_state(|tables, events| {
            let mut out = Vec::with_capacity(prepared.len());
            // Tasks of a batch are mostly for one engine: its number is looked up once.
            let mut last_engine: Option<(String, u32)> = None;
            for (mut record, copy, event) in prepared {
                if let Some(key) = &record.task.idempotency_key {
                    if let Some(existing) = tables.idempotency.get(key)
                        && let Some(earlier) = tables.records.get(existing)
                    {
                        out.push(Created {
                            task: earlier.task.clone(),
                            created: false,
                        });
                        continue;
                    }
                    tables.idempotency.insert(key.clone(), record.task.id);
                }
                record.engine = match &last_engine {
                    Some((name, number)) if *name == record.task.engine => *number,
                    _ => {
                        let number = tables.engine_number_or_new(&record.task.engine);
                        last_engine = Some((record.task.engine.clone(), number));
                        number
                    }
                };
                tables.insert(record, events, event, now);
                out.push(Created {
                    task: copy,
                    created: true,
                });
            }
            out
        });
        if created.iter().any(|c| c.created) {
            self.wake_tasks();
            self.wake_events();
        }
        Ok(created)
    }

    async fn create_workflow(
        &self,
        workflow: NewWorkflow,
        tasks: Vec<NewTask>,
    ) -> Result<CreatedWorkflow> {
        let id = workflow.id;
        let created = self.create_graph(tasks, Some(workflow))?;
        let (workflow, was_created) = created.workflow.ok_or(crate::Error::WorkflowNotFound(id))?;
        Ok(CreatedWorkflow {
            workflow,
            created: was_created,
            tasks: created.tasks,
        })
    }

    async fn get_workflow(&self, id: WorkflowId) -> Result<Option<WorkflowInfo>> {
        Ok(self.state.lock().tasks.workflow_info(id))
    }

    async fn workflow_tasks(&self, id: WorkflowId) -> Result<Vec<WorkflowTask>> {
        Ok(self.state.lock().tasks.workflow_tasks(id))
    }

    async fn list_parents(
        &self,
        child: TaskId,
        from: u32,
        limit: usize,
    ) -> Result<Vec<ParentTask>> {
        Ok(self.state.lock().tasks.list_parents(child, from, limit))
    }

    async fn cancel_workflow(&self, id: WorkflowId) -> Result<WorkflowInfo> {
        let now = clock::now();
        let (info, released) =
            self.with_state(|tables, events| tables.cancel_workflow(events, id, now))?;
        if released {
            self.wake_tasks();
        }
        self.wake_events();
        Ok(info)
    }

    async fn retry_workflow(&self, id: WorkflowId) -> Result<WorkflowInfo> {
        let now = clock::now();
        let (info, queued) =
            self.with_state(|tables, events| tables.retry_workflow(events, id, now))?;
        if queued {
            self.wake_tasks();
        }
        self.wake_events();
        Ok(info)
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
        Ok(self
            .state
            .lock()
            .tasks
            .records
            .get(&id)
            .map(|r| r.task.clone()))
    }

    async fn task_by_idempotency_key(&self, key: &str) -> Result<Option<Task>> {
        let state = self.state.lock();
        Ok(state
            .tasks
            .idempotency
            .get(key)
            .and_then(|id| state.tasks.records.get(id))
            .map(|r| r.task.clone()))
    }

    async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<Task>> {
        let limit = filter.effective_limit();
        let state = self.state.lock();
        let mut tasks: Vec<&Task> = state
            .tasks
            .records
            .values()
            .map(|r| &r.task)
            .filter(|t| filter.status.is_none_or(|s| t.status == s))
            .filter(|t| filter.engine.as_deref().is_none_or(|e| t.engine == e))
            .filter(|t| {
                filter.due.is_none_or(|due| {
                    t.status == TaskStatus::Queued && (t.run_at <= clock::now()) == due
                })
            })
            .filter(|t| {
                filter.after.is_none_or(|after| {
                    if filter.newest_first {
                        t.id < after
                    } else {
                        t.id > after
                    }
                })
            })
            .collect();
        tasks.sort_unstable_by_key(|t| t.id);
        if filter.newest_first {
            tasks.reverse();
        }
        Ok(tasks.into_iter().take(limit).cloned().collect())
    }

    async fn claim_tasks(
        &self,
        engine: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>> {
        self.claim_above(engine, limit, lease, None)
    }

    async fn claim_tasks_above(
        &self,
        engine: &str,
        limit: usize,
        lease: Duration,
        priority: i32,
    ) -> Result<Vec<Claimed>> {
        self.claim_above(engine, limit, lease, Some(priority))
    }

    async fn next_run_at(&self, engine: &str) -> Result<Option<DateTime<Utc>>> {
        let state = self.state.lock();
        let tables = &state.tasks;
        let Some(number) = tables.engine_number(engine) else {
            return Ok(None);
        };
        let queues = &tables.engines[number as usize];
        let ready = queues.ready.earliest_run_at();
        let delayed = queues.delayed.first().map(|(run_at, _)| *run_at);
        Ok(match (ready, delayed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .and_then(DateTime::from_timestamp_micros))
    }

    async fn renew_leases(
        &self,
        leases: Vec<HeldLease>,
        lease: Duration,
    ) -> Result<Vec<Option<DateTime<Utc>>>> {
        let expires = rules::after(clock::now(), lease);
        let mut state = self.state.lock();
        let tables = &mut state.tasks;
        Ok(leases
            .into_iter()
            .map(|held| {
                let record = tables.records.get_mut(&held.task_id)?;
                if record.lease != Some(held.lease_token)
                    || record.task.status != TaskStatus::Running
                {
                    return None;
                }
                record.task.lease_expires_at = Some(expires);
                Some(expires)
            })
            .collect())
    }

    async fn finish_attempts(
        &self,
        reports: Vec<AttemptReport>,
    ) -> Result<Vec<Result<TaskStatus>>> {
        let now = clock::now();
        let (statuses, released) = self.with_state(|tables, events| {
            let statuses = reports
                .into_iter()
                .map(|report| tables.end_attempt(events, report, now))
                .collect::<Vec<_>>();
            let released = tables.settle(events, now, Default::default());
            (statuses, released)
        });
        if released
            || statuses
                .iter()
                .any(|status| matches!(status, Ok(TaskStatus::Queued)))
        {
            self.wake_tasks();
        }
        if statuses.iter().any(Result::is_ok) {
            self.wake_events();
        }
        Ok(statuses)
    }

    async fn cancel_task(&self, id: TaskId) -> Result<Task> {
        self.transition(id, |task| rules::cancel(id, task.status))
    }

    async fn cancel_task_by(&self, id: TaskId, actor: &str) -> Result<Task> {
        self.transition(id, |task| rules::cancel_by(id, task.status, actor))
    }

    async fn resolve_task(&self, id: TaskId, resolution: Resolution) -> Result<Task> {
        self.transition(id, |task| rules::resolve(id, task.status, resolution))
    }

    async fn delete_task(&self, id: TaskId) -> Result<Task> {
        let mut state = self.state.lock();
        let tables = &mut state.tasks;
        let (task, has_dependents) = tables
            .records
            .get(&id)
            .map(|record| {
                // Children deleted before it no longer count.
                let has_dependents = record
                    .children
                    .iter()
                    .any(|child| tables.records.contains_key(child));
                (record.task.clone(), has_dependents)
            })
            .ok_or(Error::TaskNotFound(id))?;
        if let Some(refused) = rules::deletion_refused(&task, has_dependents) {
            return Err(refused);
        }
        tables.delete(id);
        Ok(task)
    }

    async fn retry_task(&self, id: TaskId, actor: &str) -> Result<Task> {
        let in_graph = {
            let state = self.state.lock();
            state
                .tasks
                .records
                .get(&id)
                .is_some_and(|record| !record.parents.is_empty() || !record.children.is_empty())
        };
        let task = self.transition(id, |task| match task.workflow_id {
            None if in_graph => Err(rules::retry_refused_in_graph(id)),
            Some(workflow) => Err(rules::retry_refused_in_workflow(id, workflow)),
            None => rules::retry(id, task.status, actor),
        })?;
        self.wake_tasks();
        Ok(task)
    }

    async fn requeue_task(&self, id: TaskId, actor: &str) -> Result<Task> {
        let now = clock::now();
        let task = self.transition(id, |task| {
            rules::requeue(id, task.status, task.run_at <= now, actor)
        })?;
        self.wake_tasks();
        Ok(task)
    }

    async fn rescue_expired(&self, limit: usize) -> Result<Vec<Task>> {
        let now = clock::now();
        let rescued = self.with_state(|tables, events| {
            let mut expired: Vec<(DateTime<Utc>, TaskId)> = tables
                .running
                .iter()
                .filter_map(|id| {
                    let expires = tables.records.get(id)?.task.lease_expires_at?;
                    (expires <= now).then_some((expires, *id))
                })
                .collect();
            expired.sort_unstable();
            expired.truncate(limit);
            let mut rescued = Vec::with_capacity(expired.len());
            for (_, id) in expired {
                let Ok(record) = tables.snapshot_ref(id) else {
                    continue;
                };
                let change = rules::rescue(record.task.attempt, record.task.max_attempts);
                let task = tables.change(
                    events,
                    id,
                    Cow::Owned(change),
                    None,
                    false,
                    now,
                    Task::clone,
                );
                rescued.extend(task);
            }
            tables.settle(events, now, Default::default());
            rescued
        });
        if !rescued.is_empty() {
            self.wake_tasks();
            self.wake_events();
        }
        Ok(rescued)
    }

    async fn prune_tasks(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        let mut state = self.state.lock();
        Ok(state.tasks.prune_finished(micros(before), limit, false))
    }

    async fn queue_depth(&self) -> Result<Vec<QueueDepth>> {
        let state = self.state.lock();
        let mut counts: HashMap<(&str, i32), u64> = HashMap::new();
        for record in state.tasks.records.values() {
            if record.task.status == TaskStatus::Queued {
                *counts
                    .entry((record.task.engine.as_str(), record.task.priority))
                    .or_default() += 1;
            }
        }
        let mut out: Vec<QueueDepth> = counts
            .into_iter()
            .map(|((engine, priority), queued)| QueueDepth {
                engine: engine.to_owned(),
                priority,
                queued,
            })
            .collect();
        out.sort_by(|a, b| (&a.engine, a.priority).cmp(&(&b.engine, b.priority)));
        Ok(out)
    }

    async fn count_tasks(&self) -> Result<Vec<EngineCounts>> {
        let now = micros(clock::now());
        let state = self.state.lock();
        let mut out: Vec<EngineCounts> = state
            .tasks
            .engines
            .iter()
            .filter(|queues| queues.counts.iter().any(|&n| n > 0))
            .map(|queues| {
                let mut counts = EngineCounts::new(queues.name.clone());
                for status in TaskStatus::ALL {
                    counts.add(status, false, queues.counts[status_index(status)]);
                }
                // Delayed: queued tasks whose run time is still ahead (the delayed set is
                // promoted lazily, so some of its tasks may be due already).
                let delayed = queues.delayed.range((now + 1, 0)..).count() as u64;
                counts.queued -= delayed.min(counts.queued);
                counts.delayed = delayed;
                counts
            })
            .collect();
        out.sort_by(|a, b| a.engine.cmp(&b.engine));
        Ok(out)
    }

    fn task_wakeups(&self) -> Option<ChangeSignal> {
        Some(self.task_wakeups.clone())
    }
}
