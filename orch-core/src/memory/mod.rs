//! [`MemoryBackend`]: every backend trait in process memory.
//!
//! For tests, examples and single-process use where losing the queue on exit is fine. It follows
//! the same contract as the SQL backends (it runs the same conformance suite) and its time is
//! [`clock::now`](crate::clock::now), so tokio's paused clock drives its leases and TTLs.
//!
//! Layout: one mutex over the task tables and the event log together (a task transition and its
//! event are one atomic step, and sequence numbers are assigned in commit order, so the log has
//! no gaps), one over the lock table, one over the key-value space.

mod events;
mod kv;
mod locks;
mod tasks;

use std::collections::{BTreeMap, HashMap, VecDeque};

use parking_lot::{Mutex, RwLock};

use crate::model::{Event, TaskId};
use crate::signal::ChangeSignal;

pub(crate) use locks::LockTable;
use tasks::TaskTables;

/// The in-memory backend. Cheap to share behind an `Arc`; all methods take `&self`.
///
/// ```
/// use std::sync::Arc;
/// use orch_core::{MemoryBackend, SharedBackend};
///
/// let backend: SharedBackend = Arc::new(MemoryBackend::new());
/// ```
pub struct MemoryBackend {
    state: Mutex<State>,
    locks: LockTable,
    kv: RwLock<BTreeMap<String, Vec<u8>>>,
    /// Bumped whenever a task becomes claimable, to wake idle claim loops.
    task_wakeups: ChangeSignal,
    /// Bumped whenever events are appended, to wake the event tail.
    event_wakeups: ChangeSignal,
}

struct State {
    tasks: TaskTables,
    events: EventLogState,
}

pub(crate) struct EventLogState {
    log: VecDeque<Event>,
    /// The index by task: each task's sequence numbers in the log, oldest first (entries
    /// leave with their events, from the front).
    by_task: HashMap<TaskId, VecDeque<u64>>,
    last_seq: u64,
    retention: usize,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// Default number of events the in-memory log keeps (older ones are dropped first).
    pub const DEFAULT_EVENT_RETENTION: usize = 100_000;

    /// Default number of finished tasks the in-memory backend keeps (the oldest finished ones
    /// are dropped first, with their idempotency keys). Queued and running tasks are never
    /// dropped.
    pub const DEFAULT_FINISHED_TASK_RETENTION: usize = 100_000;

    /// An empty backend keeping the last [`Self::DEFAULT_EVENT_RETENTION`] events and
    /// [`Self::DEFAULT_FINISHED_TASK_RETENTION`] finished tasks, so memory stays bounded
    /// however long it runs.
    pub fn new() -> Self {
        Self::with_retention(
            Self::DEFAULT_EVENT_RETENTION,
            Self::DEFAULT_FINISHED_TASK_RETENTION,
        )
    }

    /// An empty backend keeping the last `events` events and `finished_tasks` finished tasks
    /// (each at least 1).
    pub fn with_retention(events: usize, finished_tasks: usize) -> Self {
        let retention = events;
        MemoryBackend {
            state: Mutex::new(State {
                tasks: TaskTables::with_finished_retention(finished_tasks.max(1)),
                events: EventLogState {
                    log: VecDeque::new(),
                    by_task: HashMap::new(),
                    last_seq: 0,
                    retention: retention.max(1),
                },
            }),
            locks: LockTable::default(),
            kv: RwLock::new(BTreeMap::new()),
            task_wakeups: ChangeSignal::new(),
            event_wakeups: ChangeSignal::new(),
        }
    }

    fn wake_tasks(&self) {
        self.task_wakeups.raise();
    }

    fn wake_events(&self) {
        self.event_wakeups.raise();
    }
}
