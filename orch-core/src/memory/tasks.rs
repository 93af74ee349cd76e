//! The in-memory task queue.

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
    AttemptReport, Claimed, Created, EngineCounts, HeldLease, LeaseToken, NewTask, QueueDepth,
    Resolution, Task, TaskFilter, TaskId, TaskStatus,
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

/// Hashes a [`TaskId`] by its random low half, mixed with a per-process key: ids are UUIDv7,
/// whose last 8 bytes are random, so this is as good as SipHash here at a fraction of the cost.
#[derive(Clone)]
pub(super) struct IdHashBuilder(u64);

impl Default for IdHashBuilder {
    fn default() -> Self {
        IdHashBuilder(fastrand::u64(..) | 1)
    }
}

pub(super) struct IdHasher {
    key: u64,
    hash: u64,
}

impl std::hash::BuildHasher for IdHashBuilder {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            key: self.0,
            hash: 0,
        }
    }
}

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.hash
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.hash =
                (self.hash.rotate_left(29) ^ u64::from_le_bytes(word)).wrapping_mul(self.key);
        }
    }
    fn write_usize(&mut self, _length_prefix: usize) {}
}

type IdMap<V> = HashMap<TaskId, V, IdHashBuilder>;

struct Record {
    task: Task,
    lease: Option<LeaseToken>,
}

/// Tasks per state, indexed like [`TaskStatus::ALL`].
type StatusCounts = [u64; TaskStatus::ALL.len()];

fn status_index(status: TaskStatus) -> usize {
    status as usize
}

/// The task tables and their indexes. Invariants: a `queued` task is in exactly one of
/// `ready[engine]` (due) or `delayed[engine]` (not yet due); a `running` task is in `running`
/// and holds a lease; a finished task is in `finished` (in the order they finished);
/// `counts[engine]` counts the stored tasks of each state.
pub(super) struct TaskTables {
    records: IdMap<Box<Record>>,
    ready: HashMap<String, ReadyQueue>,
    delayed: HashMap<String, BTreeSet<(i64, u128)>>,
    running: HashSet<TaskId, IdHashBuilder>,
    finished: VecDeque<(i64, TaskId)>,
    idempotency: HashMap<String, TaskId>,
    counts: HashMap<String, StatusCounts>,
    /// Most finished tasks kept; the oldest are dropped beyond it.
    finished_retention: usize,
}

impl TaskTables {
    pub(super) fn with_finished_retention(finished_retention: usize) -> Self {
        TaskTables {
            records: IdMap::default(),
            ready: HashMap::new(),
            delayed: HashMap::new(),
            running: HashSet::default(),
            finished: VecDeque::new(),
            idempotency: HashMap::new(),
            counts: HashMap::new(),
            finished_retention,
        }
    }

    fn count(&mut self, engine: &str, status: TaskStatus, up: bool) {
        // Look up before inserting: `entry` would allocate the key on every call.
        let counts = match self.counts.get_mut(engine) {
            Some(counts) => counts,
            None => self.counts.entry(engine.to_owned()).or_default(),
        };
        let slot = &mut counts[status_index(status)];
        *slot = if up {
            *slot + 1
        } else {
            slot.saturating_sub(1)
        };
    }

    /// Drops the oldest finished task while over the retention limit.
    fn enforce_retention(&mut self) {
        while self.finished.len() > self.finished_retention {
            let Some((_, id)) = self.finished.pop_front() else {
                break;
            };
            self.forget(id);
        }
    }

    /// Removes a finished task.
    fn forget(&mut self, id: TaskId) {
        if let Some(record) = self.records.remove(&id) {
            if let Some(key) = &record.task.idempotency_key {
                self.idempotency.remove(key);
            }
            self.count(&record.task.engine, record.task.status, false);
        }
    }

    /// Moves due delayed tasks of `engine` into its ready set.
    fn promote(&mut self, engine: &str, now: DateTime<Utc>) {
        let Some(delayed) = self.delayed.get_mut(engine) else {
            return;
        };
        let now = micros(now);
        while let Some(&(run_at, raw_id)) = delayed.first() {
            if run_at > now {
                break;
            }
            delayed.pop_first();
            if let Some(record) = self.records.get(&id_of(raw_id)) {
                let key = (Reverse(record.task.priority), run_at, raw_id);
                match self.ready.get_mut(engine) {
                    Some(ready) => ready.insert(key),
                    None => {
                        let mut queue = ReadyQueue::default();
                        queue.insert(key);
                        self.ready.insert(engine.to_owned(), queue);
                    }
                }
            }
        }
    }

    /// Stores a new queued task and its event.
    fn insert(
        &mut self,
        task: Task,
        events: &mut EventLogState,
        event: crate::model::NewEvent,
        now: DateTime<Utc>,
    ) {
        enqueue_into(&mut self.ready, &mut self.delayed, &task, now);
        self.count(&task.engine, task.status, true);
        events.push(event, now);
        self.records
            .insert(task.id, Box::new(Record { task, lease: None }));
    }

    /// Applies one change decided by the [`rules`] to task `id`, keeping every index, and
    /// appends its events. A change into `running` grants `lease_token`.
    fn change(
        &mut self,
        events: &mut EventLogState,
        id: TaskId,
        change: rules::Change,
        lease_token: Option<LeaseToken>,
        now: DateTime<Utc>,
    ) -> Result<TaskStatus> {
        let record = self
            .records
            .get_mut(&id)
            .map(|r| &mut **r)
            .ok_or(Error::TaskNotFound(id))?;
        let from = record.task.status;
        // The queue keys as they were, to find the task in the queue it leaves.
        let ready = ready_key(&record.task);
        let delayed = (micros(record.task.run_at), id.0.as_u128());
        change.apply_with(&mut record.task, now, |event| events.push(event, now))?;
        let to = record.task.status;
        let engine = record.task.engine.clone();
        record.lease = (to == TaskStatus::Running).then(|| lease_token.unwrap_or_default());
        match from {
            TaskStatus::Queued => {
                if let Some(queue) = self.ready.get_mut(&engine) {
                    queue.remove(&ready);
                }
                if let Some(set) = self.delayed.get_mut(&engine) {
                    set.remove(&delayed);
                }
            }
            TaskStatus::Running => {
                self.running.remove(&id);
            }
            _ => {}
        }
        match to {
            TaskStatus::Queued => {
                let task = &self.records[&id].task;
                enqueue_into(&mut self.ready, &mut self.delayed, task, now);
            }
            TaskStatus::Running => {
                self.running.insert(id);
            }
            _ => {
                // Kept in finishing order (clamped, so it never goes backwards) for retention
                // and pruning.
                let at = self
                    .finished
                    .back()
                    .map_or(micros(now), |&(last, _)| last.max(micros(now)));
                self.finished.push_back((at, id));
            }
        }
        self.count(&engine, from, false);
        self.count(&engine, to, true);
        if to.is_terminal() {
            self.enforce_retention();
        }
        Ok(to)
    }

    fn snapshot_ref(&self, id: TaskId) -> Result<&Record> {
        self.records
            .get(&id)
            .map(|record| &**record)
            .ok_or(Error::TaskNotFound(id))
    }

    /// A copy of the task as stored now.
    fn snapshot(&self, id: TaskId) -> Result<Task> {
        self.records
            .get(&id)
            .map(|record| record.task.clone())
            .ok_or(Error::TaskNotFound(id))
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
        let record = self.records.get(&id).ok_or(Error::TaskNotFound(id))?;
        if record.lease != Some(report.lease_token)
            || record.task.status != TaskStatus::Running
            || record.task.attempt != report.attempt
        {
            return Err(Error::LeaseLost(id));
        }
        let change = rules::end_attempt(report.attempt, report.outcome);
        self.change(events, id, change, None, now)
    }
}

/// Puts a queued task in its engine's ready set (due) or delayed set. Takes the two maps rather
/// than the tables so callers can pass a task borrowed from the records.
fn enqueue_into(
    ready: &mut HashMap<String, ReadyQueue>,
    delayed: &mut HashMap<String, BTreeSet<(i64, u128)>>,
    task: &Task,
    now: DateTime<Utc>,
) {
    // Look up before inserting: `entry` would allocate the key on every call.
    if task.run_at <= now {
        let key = ready_key(task);
        match ready.get_mut(&task.engine) {
            Some(queue) => queue.insert(key),
            None => {
                let mut queue = ReadyQueue::default();
                queue.insert(key);
                ready.insert(task.engine.clone(), queue);
            }
        }
    } else {
        let key = (micros(task.run_at), task.id.0.as_u128());
        match delayed.get_mut(&task.engine) {
            Some(set) => {
                set.insert(key);
            }
            None => {
                delayed.insert(task.engine.clone(), BTreeSet::from([key]));
            }
        }
    }
}

impl MemoryBackend {
    fn with_state<T>(&self, f: impl FnOnce(&mut TaskTables, &mut EventLogState) -> T) -> T {
        let mut state = self.state.lock();
        let state = &mut *state;
        f(&mut state.tasks, &mut state.events)
    }

    /// One change to one task by a rule that reads its state; returns the task as it is now.
    fn transition(
        &self,
        id: TaskId,
        rule: impl FnOnce(&Task) -> Result<rules::Change>,
    ) -> Result<Task> {
        let now = clock::now();
        let task = self.with_state(|tables, events| {
            let change = rule(&tables.snapshot_ref(id)?.task)?;
            tables.change(events, id, change, None, now)?;
            tables.snapshot(id)
        })?;
        self.wake_events();
        Ok(task)
    }
}

#[async_trait]
impl TaskStore for MemoryBackend {
    async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<Created>> {
        let now = clock::now();
        // Build tasks, copies and events before taking the lock, so it is held only for the
        // index updates.
        let prepared: Vec<_> = tasks
            .into_iter()
            .map(|new| {
                let run_at = rules::first_run_at(&new, now);
                let (task, event) = rules::create(new, now, run_at);
                let copy = task.clone();
                (task, copy, event)
            })
            .collect();
        let created = self.with_state(|tables, events| {
            let mut out = Vec::with_capacity(prepared.len());
            for (task, copy, event) in prepared {
                if let Some(key) = &task.idempotency_key {
                    if let Some(existing) = tables.idempotency.get(key)
                        && let Some(earlier) = tables.records.get(existing)
                    {
                        out.push(Created {
                            task: earlier.task.clone(),
                            created: false,
                        });
                        continue;
                    }
                    tables.idempotency.insert(key.clone(), task.id);
                }
                tables.insert(task, events, event, now);
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

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
        Ok(self
            .state
            .lock()
            .tasks
            .records
            .get(&id)
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
            .filter(|t| filter.after.is_none_or(|after| t.id > after))
            .collect();
        tasks.sort_unstable_by_key(|t| t.id);
        Ok(tasks.into_iter().take(limit).cloned().collect())
    }

    async fn claim_tasks(
        &self,
        engine: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = clock::now();
        let claimed = self.with_state(|tables, events| {
            tables.promote(engine, now);
            let mut picked = Vec::new();
            if let Some(ready) = tables.ready.get_mut(engine) {
                while picked.len() < limit {
                    match ready.pop() {
                        Some(raw_id) => picked.push(id_of(raw_id)),
                        None => break,
                    }
                }
            }
            let mut claimed = Vec::with_capacity(picked.len());
            for id in picked {
                let lease_token = LeaseToken::new();
                // Popped from the ready queue already: the change finds nothing to remove there.
                if tables
                    .change(events, id, rules::claim(lease), Some(lease_token), now)
                    .is_ok()
                {
                    claimed.push(Claimed {
                        task: tables.records[&id].task.clone(),
                        lease_token,
                    });
                }
            }
            claimed
        });
        if !claimed.is_empty() {
            self.wake_events();
        }
        Ok(claimed)
    }

    async fn next_run_at(&self, engine: &str) -> Result<Option<DateTime<Utc>>> {
        let state = self.state.lock();
        let ready = state
            .tasks
            .ready
            .get(engine)
            .and_then(ReadyQueue::earliest_run_at)
            .and_then(DateTime::from_timestamp_micros);
        let delayed = state
            .tasks
            .delayed
            .get(engine)
            .and_then(|delayed| delayed.first().map(|(run_at, _)| *run_at))
            .and_then(DateTime::from_timestamp_micros);
        Ok(match (ready, delayed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
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
        let statuses = self.with_state(|tables, events| {
            reports
                .into_iter()
                .map(|report| tables.end_attempt(events, report, now))
                .collect::<Vec<_>>()
        });
        if statuses
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

    async fn resolve_task(&self, id: TaskId, resolution: Resolution) -> Result<Task> {
        self.transition(id, |task| rules::resolve(id, task.status, resolution))
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
                if tables.change(events, id, change, None, now).is_ok() {
                    rescued.extend(tables.snapshot(id));
                }
            }
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
        let tables = &mut state.tasks;
        let mut pruned = 0;
        while pruned < limit as u64 {
            match tables.finished.front() {
                Some(&(at, id)) if at < micros(before) => {
                    tables.finished.pop_front();
                    tables.forget(id);
                    pruned += 1;
                }
                _ => break,
            }
        }
        Ok(pruned)
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
        let tables = &state.tasks;
        let mut out: Vec<EngineCounts> = tables
            .counts
            .iter()
            .filter(|(_, counts)| counts.iter().any(|&n| n > 0))
            .map(|(engine, counts)| {
                let mut engine_counts = EngineCounts::new(engine.clone());
                for status in TaskStatus::ALL {
                    engine_counts.add(status, false, counts[status_index(status)]);
                }
                // Delayed: queued tasks whose run time is still ahead (the delayed set is
                // promoted lazily, so some of its tasks may be due already).
                let delayed = tables
                    .delayed
                    .get(engine)
                    .map_or(0, |set| set.range((now + 1, 0)..).count() as u64);
                engine_counts.queued -= delayed.min(engine_counts.queued);
                engine_counts.delayed = delayed;
                engine_counts
            })
            .collect();
        out.sort_by(|a, b| a.engine.cmp(&b.engine));
        Ok(out)
    }

    fn task_wakeups(&self) -> Option<ChangeSignal> {
        Some(self.task_wakeups.clone())
    }
}
