//! [`Wakeups`]: the one path by which idle loops learn that something changed.
//!
//! A backend that raises change signals ([`TaskStore::task_wakeups`],
//! [`EventStore::event_wakeups`]) already raises them for every change this process makes
//! through it (and, for a shared database, for other processes' changes too), so the
//! orchestrator adds nothing. Only for a backend that gives no signal does the orchestrator
//! keep a local one and raise it itself after the changes it makes; other processes' changes
//! are then found by polling.
//!
//! [`TaskStore::task_wakeups`]: crate::backend::TaskStore::task_wakeups
//! [`EventStore::event_wakeups`]: crate::backend::EventStore::event_wakeups

use crate::backend::{Backend, ChangeSignal};

/// The task and event signals idle loops wait on.
pub(super) struct Wakeups {
    /// Raised when tasks may have become claimable: claim loops wait on it.
    pub(super) tasks: ChangeSignal,
    /// Raised when events were appended: the event tail waits on it.
    pub(super) events: ChangeSignal,
    /// The backend gives no task signal: `tasks` is ours to raise.
    local_tasks: bool,
    /// The backend gives no event signal: `events` is ours to raise.
    pub(super) local_events: bool,
}

impl Wakeups {
    pub(super) fn of(backend: &dyn Backend) -> Self {
        let (tasks, local_tasks) = match backend.task_wakeups() {
            Some(signal) => (signal, false),
            None => (ChangeSignal::new(), true),
        };
        let (events, local_events) = match backend.event_wakeups() {
            Some(signal) => (signal, false),
            None => (ChangeSignal::new(), true),
        };
        Wakeups {
            tasks,
            events,
            local_tasks,
            local_events,
        }
    }

    /// This process created or requeued tasks (and appended their events).
    pub(super) fn tasks_changed(&self) {
        if self.local_tasks {
            self.tasks.raise();
        }
        self.events_appended();
    }

    /// This process appended events.
    pub(super) fn events_appended(&self) {
        if self.local_events {
            self.events.raise();
        }
    }
}
