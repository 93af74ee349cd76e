//! The in-memory event log.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{EventLogState, MemoryBackend};
use crate::backend::EventStore;
use crate::clock;
use crate::error::Result;
use crate::model::{Event, NewEvent, TaskId};

impl EventLogState {
    /// Appends under the caller's lock and returns a copy of the stored event.
    pub(crate) fn append(&mut self, event: NewEvent, at: DateTime<Utc>) -> Event {
        self.push(event, at);
        self.log
            .back()
            .cloned()
            .expect("push leaves at least one event in the log")
    }

    /// Appends under the caller's lock; sequence numbers are gapless. The hot path of task
    /// transitions, which need no copy back.
    pub(crate) fn push(&mut self, event: NewEvent, at: DateTime<Utc>) {
        self.last_seq += 1;
        if self.log.len() >= self.retention {
            self.pop_oldest();
        }
        if let Some(task_id) = event.task_id {
            self.by_task
                .entry(task_id)
                .or_default()
                .push_back(self.last_seq);
        }
        self.log.push_back(Event {
            seq: self.last_seq,
            kind: event.kind,
            at,
            task_id: event.task_id,
            engine: event.engine,
            attempt: event.attempt,
            data: event.data,
        });
    }

    /// Drops the oldest event, and its entry in the index by task.
    fn pop_oldest(&mut self) -> Option<Event> {
        let event = self.log.pop_front()?;
        if let Some(task_id) = event.task_id
            && let Some(seqs) = self.by_task.get_mut(&task_id)
        {
            // The task's oldest entry is this event: both lists are in sequence order.
            seqs.pop_front();
            if seqs.is_empty() {
                self.by_task.remove(&task_id);
            }
        }
        Some(event)
    }

    /// The task's events after `after`, through the index by task.
    fn read_task(&self, task_id: TaskId, after: u64, limit: usize) -> Vec<Event> {
        let (Some(seqs), Some(first)) = (self.by_task.get(&task_id), self.log.front()) else {
            return Vec::new();
        };
        let first = first.seq;
        let start = seqs.partition_point(|&seq| seq <= after);
        seqs.iter()
            .skip(start)
            .take(limit)
            .filter_map(|&seq| self.log.get(usize::try_from(seq - first).ok()?))
            .cloned()
            .collect()
    }

    fn read(&self, after: u64, limit: usize) -> Vec<Event> {
        let Some(first) = self.log.front().map(|e| e.seq) else {
            return Vec::new();
        };
        // Sequence numbers are contiguous in the deque, so the start is an index computation.
        let start = after.saturating_add(1).saturating_sub(first) as usize;
        self.log.iter().skip(start).take(limit).cloned().collect()
    }
}

#[async_trait]
impl EventStore for MemoryBackend {
    async fn append_event(&self, event: NewEvent) -> Result<Event> {
        let event = self.state.lock().events.append(event, clock::now());
        self.wake_events();
        Ok(event)
    }

    async fn read_events(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        Ok(self.state.lock().events.read(after, limit))
    }

    async fn read_task_events(
        &self,
        task_id: TaskId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        Ok(self.state.lock().events.read_task(task_id, after, limit))
    }

    async fn last_event_seq(&self) -> Result<u64> {
        Ok(self.state.lock().events.last_seq)
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut state = self.state.lock();
        let mut pruned = 0;
        while state.events.log.front().is_some_and(|e| e.at < before) {
            state.events.pop_oldest();
            pruned += 1;
        }
        Ok(pruned)
    }

    fn event_wakeups(&self) -> Option<crate::signal::ChangeSignal> {
        Some(self.event_wakeups.clone())
    }
}
