//! The in-memory task queue.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use super::{EventLogState, MemoryBackend};
use crate::backend::TaskStore;
use crate::clock;
use crate::error::{Error, Result};
use crate::model::{
    AttemptOutcome, Claimed, Created, EventKind, LeaseToken, NewEvent, NewTask, Resolution, Task,
    TaskFilter, TaskId, TaskStatus,
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

/// The task tables and their indexes. Invariants: a `queued` task is in exactly one of
/// `ready[core]` (due) or `delayed[core]` (not yet due); a `running` task is in `running`; a
/// finished task is in `finished` (in the order they finished).
pub(super) struct TaskTables {
    records: IdMap<Box<Record>>,
    ready: HashMap<String, ReadyQueue>,
    delayed: HashMap<String, BTreeSet<(i64, u128)>>,
    running: HashSet<TaskId, IdHashBuilder>,
    finished: VecDeque<(i64, TaskId)>,
    idempotency: HashMap<String, TaskId>,
    /// Most finished tasks kept; the oldest are dropped beyond it.
    finished_retention: usize,
}

fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
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
            finished_retention,
        }
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

    fn forget(&mut self, id: TaskId) {
        if let Some(record) = self.records.remove(&id)
            && let Some(key) = &record.task.idempotency_key
        {
            self.idempotency.remove(key);
        }
    }

    fn enqueue(&mut self, task: &Task, now: DateTime<Utc>) {
        enqueue_into(&mut self.ready, &mut self.delayed, task, now);
    }

    fn dequeue_keys(&mut self, core_id: &str, ready: &ReadyKey, delayed: &(i64, u128)) {
        if let Some(queue) = self.ready.get_mut(core_id) {
            queue.remove(ready);
        }
        if let Some(set) = self.delayed.get_mut(core_id) {
            set.remove(delayed);
        }
    }

    /// Moves due delayed tasks of `core_id` into its ready set.
    fn promote(&mut self, core_id: &str, now: DateTime<Utc>) {
        let Some(delayed) = self.delayed.get_mut(core_id) else {
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
                match self.ready.get_mut(core_id) {
                    Some(ready) => ready.insert(key),
                    None => {
                        let mut queue = ReadyQueue::default();
                        queue.insert(key);
                        self.ready.insert(core_id.to_owned(), queue);
                    }
                }
            }
        }
    }

    fn get_mut(&mut self, id: TaskId) -> Result<&mut Record> {
        self.records
            .get_mut(&id)
            .map(|r| &mut **r)
            .ok_or(Error::TaskNotFound(id))
    }
}

fn task_event(kind: EventKind, task: &Task, data: Value) -> NewEvent {
    NewEvent::for_task(kind, task.id, &task.core_id, data).with_attempt(task.attempt)
}

/// What an event needs of a task that just moved, without cloning the whole task.
struct Brief {
    id: TaskId,
    core_id: String,
    attempt: u32,
}

impl Brief {
    fn of(task: &Task) -> Self {
        Brief {
            id: task.id,
            core_id: task.core_id.clone(),
            attempt: task.attempt,
        }
    }

    fn event(self, kind: EventKind, data: Value) -> NewEvent {
        NewEvent {
            kind,
            task_id: Some(self.id),
            core_id: Some(self.core_id),
            attempt: Some(self.attempt),
            data,
        }
    }
}

fn finish(
    tables: &mut TaskTables,
    id: TaskId,
    to: TaskStatus,
    now: DateTime<Utc>,
    result: Option<Value>,
    error: Option<String>,
) -> Result<(Brief, TaskStatus)> {
    let record = tables.get_mut(id)?;
    let from = record.task.status;
    from.check(id, to)?;
    let task = &mut record.task;
    record.lease = None;
    task.lease_expires_at = None;
    task.status = to;
    task.updated_at = now;
    task.finished_at = Some(now);
    if result.is_some() {
        task.result = result;
    }
    if error.is_some() {
        task.error = error;
    }
    let brief = Brief::of(task);
    if from == TaskStatus::Queued {
        let core_id = task.core_id.clone();
        let ready = ready_key(task);
        let delayed = (micros(task.run_at), id.0.as_u128());
        tables.dequeue_keys(&core_id, &ready, &delayed);
    }
    if from == TaskStatus::Running {
        tables.running.remove(&id);
    }
    // Kept in finishing order (clamped, so it never goes backwards) for retention and pruning.
    let at = tables
        .finished
        .back()
        .map_or(micros(now), |&(last, _)| last.max(micros(now)));
    tables.finished.push_back((at, id));
    tables.enforce_retention();
    Ok((brief, from))
}

/// A copy of the task as stored now.
fn snapshot(tables: &TaskTables, id: TaskId) -> Result<Task> {
    tables
        .records
        .get(&id)
        .map(|record| record.task.clone())
        .ok_or(Error::TaskNotFound(id))
}

fn terminal_event_kind(status: TaskStatus) -> EventKind {
    match status {
        TaskStatus::Succeeded => EventKind::TaskSucceeded,
        TaskStatus::Failed => EventKind::TaskFailed,
        TaskStatus::TimedOut => EventKind::TaskTimedOut,
        _ => EventKind::TaskCancelled,
    }
}

impl MemoryBackend {
    fn with_state<T>(&self, f: impl FnOnce(&mut TaskTables, &mut EventLogState) -> T) -> T {
        let mut state = self.state.lock();
        let state = &mut *state;
        f(&mut state.tasks, &mut state.events)
    }
}

#[async_trait]
impl TaskStore for MemoryBackend {
    async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<Created>> {
        let now = clock::now();
        // Build records, copies and events before taking the lock, so it is held only for the
        // index updates.
        let prepared: Vec<(Box<Record>, Task, NewEvent)> = tasks
            .into_iter()
            .map(|new| {
                let mut run_at = now + delta(new.delay);
                if let Some(not_before) = new.not_before {
                    run_at = run_at.max(not_before);
                }
                let task = new.into_queued(now, run_at);
                let event = task_event(EventKind::TaskQueued, &task, Value::Null);
                let copy = task.clone();
                (Box::new(Record { task, lease: None }), copy, event)
            })
            .collect();
        let created = self.with_state(|tables, events| {
            let mut out = Vec::with_capacity(prepared.len());
            for (record, copy, event) in prepared {
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
                tables.enqueue(&record.task, now);
                events.push(event, now);
                tables.records.insert(record.task.id, record);
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
            .filter(|t| filter.core_id.as_deref().is_none_or(|c| t.core_id == c))
            .filter(|t| filter.after.is_none_or(|after| t.id > after))
            .collect();
        tasks.sort_unstable_by_key(|t| t.id);
        Ok(tasks.into_iter().take(limit).cloned().collect())
    }

    async fn claim_tasks(
        &self,
        core_id: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = clock::now();
        let expires = now + delta(lease);
        let claimed = self.with_state(|tables, events| {
            tables.promote(core_id, now);
            let mut picked = Vec::new();
            if let Some(ready) = tables.ready.get_mut(core_id) {
                while picked.len() < limit {
                    match ready.pop() {
                        Some(raw_id) => picked.push(id_of(raw_id)),
                        None => break,
                    }
                }
            }
            let mut claimed = Vec::with_capacity(picked.len());
            for id in picked {
                let Some(record) = tables.records.get_mut(&id) else {
                    continue;
                };
                let token = LeaseToken::new();
                record.lease = Some(token);
                let task = &mut record.task;
                task.status = TaskStatus::Running;
                task.attempt += 1;
                task.started_at = Some(now);
                task.updated_at = now;
                task.lease_expires_at = Some(expires);
                tables.running.insert(id);
                events.push(task_event(EventKind::TaskStarted, task, Value::Null), now);
                claimed.push(Claimed {
                    task: task.clone(),
                    lease_token: token,
                });
            }
            claimed
        });
        if !claimed.is_empty() {
            self.wake_events();
        }
        Ok(claimed)
    }

    async fn next_run_at(&self, core_id: &str) -> Result<Option<DateTime<Utc>>> {
        let state = self.state.lock();
        let ready = state
            .tasks
            .ready
            .get(core_id)
            .and_then(ReadyQueue::earliest_run_at)
            .and_then(DateTime::from_timestamp_micros);
        let delayed = state
            .tasks
            .delayed
            .get(core_id)
            .and_then(|delayed| delayed.first().map(|(run_at, _)| *run_at))
            .and_then(DateTime::from_timestamp_micros);
        Ok(match (ready, delayed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn renew_leases(
        &self,
        leases: Vec<(TaskId, LeaseToken)>,
        lease: Duration,
    ) -> Result<Vec<Option<DateTime<Utc>>>> {
        let now = clock::now();
        let expires = now + delta(lease);
        let mut state = self.state.lock();
        let tables = &mut state.tasks;
        Ok(leases
            .into_iter()
            .map(|(id, token)| {
                let record = tables.records.get_mut(&id)?;
                if record.lease != Some(token) || record.task.status != TaskStatus::Running {
                    return None;
                }
                record.task.lease_expires_at = Some(expires);
                Some(expires)
            })
            .collect())
    }

    async fn finish_attempt(
        &self,
        id: TaskId,
        token: LeaseToken,
        outcome: AttemptOutcome,
    ) -> Result<Task> {
        let now = clock::now();
        let (task, requeued) = self.with_state(|tables, events| {
            let requeued = end_attempt(tables, events, now, id, token, outcome)?;
            let task = tables.get_mut(id)?.task.clone();
            Ok::<_, Error>((task, requeued))
        })?;
        if requeued {
            self.wake_tasks();
        }
        self.wake_events();
        Ok(task)
    }

    async fn finish_attempts(
        &self,
        reports: Vec<(TaskId, LeaseToken, AttemptOutcome)>,
    ) -> Result<Vec<Result<TaskStatus>>> {
        let now = clock::now();
        let mut any_requeued = false;
        let statuses = self.with_state(|tables, events| {
            reports
                .into_iter()
                .map(|(id, token, outcome)| {
                    let target = outcome.target_status();
                    let requeued = end_attempt(tables, events, now, id, token, outcome)?;
                    any_requeued |= requeued;
                    Ok(target)
                })
                .collect::<Vec<_>>()
        });
        if any_requeued {
            self.wake_tasks();
        }
        self.wake_events();
        Ok(statuses)
    }

    async fn cancel_task(&self, id: TaskId) -> Result<Task> {
        let now = clock::now();
        let task = self.with_state(|tables, events| {
            let (brief, from) = finish(tables, id, TaskStatus::Cancelled, now, None, None)?;
            events.push(
                brief.event(EventKind::TaskCancelled, json!({"from": from})),
                now,
            );
            snapshot(tables, id)
        })?;
        self.wake_events();
        Ok(task)
    }

    async fn resolve_task(&self, id: TaskId, resolution: Resolution) -> Result<Task> {
        let now = clock::now();
        let task = self.with_state(|tables, events| {
            let (to, result, error) = match resolution {
                Resolution::Succeeded(result) => (TaskStatus::Succeeded, Some(result), None),
                Resolution::Failed(error) => (TaskStatus::Failed, None, Some(error)),
            };
            let (brief, from) = finish(tables, id, to, now, result, error)?;
            events.push(
                brief.event(
                    terminal_event_kind(to),
                    json!({"from": from, "external": true}),
                ),
                now,
            );
            snapshot(tables, id)
        })?;
        self.wake_events();
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
            let expired: Vec<TaskId> = expired.into_iter().map(|(_, id)| id).collect();
            let mut rescued = Vec::with_capacity(expired.len());
            for id in expired {
                let Some(record) = tables.records.get(&id) else {
                    continue;
                };
                let attempt = record.task.attempt;
                if record.task.has_attempts_left() {
                    let error = format!("lease expired during attempt {attempt}");
                    let brief = requeue(tables, id, now, now, Some(error), false);
                    events.push(
                        brief.event(EventKind::TaskRescued, json!({"will_retry": true})),
                        now,
                    );
                    rescued.extend(snapshot(tables, id));
                } else {
                    let error = format!("lease expired during final attempt {attempt}");
                    let Ok((brief, _)) = finish(
                        tables,
                        id,
                        TaskStatus::Failed,
                        now,
                        None,
                        Some(error.clone()),
                    ) else {
                        continue;
                    };
                    let failed = Brief {
                        id: brief.id,
                        core_id: brief.core_id.clone(),
                        attempt: brief.attempt,
                    };
                    events.push(
                        brief.event(EventKind::TaskRescued, json!({"will_retry": false})),
                        now,
                    );
                    events.push(
                        failed.event(EventKind::TaskFailed, json!({"error": error})),
                        now,
                    );
                    rescued.extend(snapshot(tables, id));
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

    async fn queue_depth(&self) -> Result<Vec<(String, i32, u64)>> {
        let state = self.state.lock();
        let mut counts: HashMap<(String, i32), u64> = HashMap::new();
        for record in state.tasks.records.values() {
            if record.task.status == TaskStatus::Queued {
                *counts
                    .entry((record.task.core_id.clone(), record.task.priority))
                    .or_default() += 1;
            }
        }
        let mut out: Vec<_> = counts.into_iter().map(|((c, p), n)| (c, p, n)).collect();
        out.sort();
        Ok(out)
    }

    fn task_wakeups(&self) -> Option<crate::signal::ChangeSignal> {
        Some(self.task_wakeups.clone())
    }
}

/// Ends the current attempt of `id` if `token` is its lease (see `finish_attempt`), appending
/// the event. Returns whether the task went back to the queue.
fn end_attempt(
    tables: &mut TaskTables,
    events: &mut EventLogState,
    now: DateTime<Utc>,
    id: TaskId,
    token: LeaseToken,
    outcome: AttemptOutcome,
) -> Result<bool> {
    let record = tables.get_mut(id)?;
    if record.lease != Some(token) || record.task.status != TaskStatus::Running {
        return Err(Error::LeaseLost(id));
    }
    let attempt = record.task.attempt;
    match outcome {
        AttemptOutcome::Succeeded { result } => {
            let (brief, _) = finish(tables, id, TaskStatus::Succeeded, now, Some(result), None)?;
            events.push(brief.event(EventKind::TaskSucceeded, Value::Null), now);
            Ok(false)
        }
        AttemptOutcome::Failed {
            error,
            retry_in: None,
        } => {
            let data = json!({"error": error});
            let (brief, _) = finish(tables, id, TaskStatus::Failed, now, None, Some(error))?;
            events.push(brief.event(EventKind::TaskFailed, data), now);
            Ok(false)
        }
        AttemptOutcome::TimedOut { retry_in: None } => {
            let error = format!("attempt {attempt} timed out");
            let data = json!({"error": error});
            let (brief, _) = finish(tables, id, TaskStatus::TimedOut, now, None, Some(error))?;
            events.push(brief.event(EventKind::TaskTimedOut, data), now);
            Ok(false)
        }
        AttemptOutcome::Failed {
            error,
            retry_in: Some(retry_in),
        } => {
            let data =
                json!({"error": error, "reason": "failed", "retry_in": retry_in.as_secs_f64()});
            let brief = requeue(tables, id, now, now + delta(retry_in), Some(error), false);
            events.push(brief.event(EventKind::TaskRetrying, data), now);
            Ok(true)
        }
        AttemptOutcome::TimedOut {
            retry_in: Some(retry_in),
        } => {
            let error = format!("attempt {attempt} timed out");
            let data =
                json!({"error": error, "reason": "timed_out", "retry_in": retry_in.as_secs_f64()});
            let brief = requeue(tables, id, now, now + delta(retry_in), Some(error), false);
            events.push(brief.event(EventKind::TaskRetrying, data), now);
            Ok(true)
        }
        AttemptOutcome::Abandoned => {
            let brief = requeue(tables, id, now, now, None, true);
            events.push(brief.event(EventKind::TaskRequeued, Value::Null), now);
            Ok(true)
        }
    }
}

/// Puts a running task back in the queue to run at `run_at`. `undo_attempt` gives the attempt
/// back (the holder never ran it).
/// Puts a queued task in its core's ready set (due) or delayed set. Takes the two maps rather
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
        match ready.get_mut(&task.core_id) {
            Some(queue) => queue.insert(key),
            None => {
                let mut queue = ReadyQueue::default();
                queue.insert(key);
                ready.insert(task.core_id.clone(), queue);
            }
        }
    } else {
        let key = (micros(task.run_at), task.id.0.as_u128());
        match delayed.get_mut(&task.core_id) {
            Some(set) => {
                set.insert(key);
            }
            None => {
                delayed.insert(task.core_id.clone(), BTreeSet::from([key]));
            }
        }
    }
}

fn requeue(
    tables: &mut TaskTables,
    id: TaskId,
    now: DateTime<Utc>,
    run_at: DateTime<Utc>,
    error: Option<String>,
    undo_attempt: bool,
) -> Brief {
    let record = tables
        .records
        .get_mut(&id)
        .expect("caller checked the record exists");
    record.lease = None;
    let task = &mut record.task;
    task.lease_expires_at = None;
    task.status = TaskStatus::Queued;
    task.run_at = run_at;
    task.updated_at = now;
    if undo_attempt {
        task.attempt = task.attempt.saturating_sub(1);
    }
    if error.is_some() {
        task.error = error;
    }
    let brief = Brief::of(task);
    tables.running.remove(&id);
    if let Some(record) = tables.records.get(&id) {
        enqueue_into(&mut tables.ready, &mut tables.delayed, &record.task, now);
    }
    brief
}
