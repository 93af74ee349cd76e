//! [`Attempts`]: the attempts this process runs, from claim to recorded outcome.
//!
//! Invariant: an attempt is registered from the moment its task is claimed for this process
//! (before its future is spawned) until its outcome is recorded or known lost. While it is
//! registered the lease keeper renews its lease and `cancel`, `resolve` and shutdown can stop
//! it; once it is gone nothing renews the lease, so a task never outlives its registration
//! in this process by more than one lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::id_hash::IdMap;
use crate::model::{HeldLease, LeaseToken, TaskId};

/// Why a running attempt was told to stop.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopCause {
    None = 0,
    /// A caller cancelled the task (already recorded in the backend).
    Cancelled = 1,
    /// The lease was lost (rescued elsewhere, resolved, or cancelled by another process).
    LeaseLost = 2,
    /// Shutdown passed its deadline: give the task back.
    Abandoned = 3,
}

/// One running attempt, as the lease keeper, `cancel` and shutdown see it.
pub(super) struct Running {
    pub(super) lease_token: LeaseToken,
    /// Fired when the attempt must stop; the engine sees it through its context.
    pub(super) cancel: CancellationToken,
    cause: AtomicU8,
    /// The engine is done and the outcome is on its way to the backend: a renewal that finds
    /// the lease gone has most likely raced the outcome's own commit.
    reporting: std::sync::atomic::AtomicBool,
}

impl Running {
    /// The outcome has been handed to the reporter.
    pub(super) fn mark_reporting(&self) {
        self.reporting.store(true, Ordering::Release);
    }

    /// Tells the attempt to stop; the first cause given wins.
    pub(super) fn stop(&self, cause: StopCause) {
        let _ = self.cause.compare_exchange(
            StopCause::None as u8,
            cause as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.cancel.cancel();
    }

    /// Why the attempt was stopped ([`StopCause::None`] while it runs).
    pub(super) fn cause(&self) -> StopCause {
        match self.cause.load(Ordering::Acquire) {
            1 => StopCause::Cancelled,
            2 => StopCause::LeaseLost,
            3 => StopCause::Abandoned,
            _ => StopCause::None,
        }
    }
}

/// The registered attempts and the tracker shutdown waits on.
pub(super) struct Attempts {
    running: Mutex<IdMap<Arc<Running>>>,
    /// Raised when an attempt is told to stop: a claim loop drops such attempts from its
    /// local queue at once.
    pub(super) stopped: crate::signal::ChangeSignal,
    /// Every attempt's future, and the direct starts that are about to register one.
    pub(super) tracker: TaskTracker,
}

impl Attempts {
    pub(super) fn new() -> Self {
        Attempts {
            running: Mutex::new(IdMap::default()),
            stopped: crate::signal::ChangeSignal::new(),
            tracker: TaskTracker::new(),
        }
    }

    /// Registers the attempt of a task just claimed under `lease_token`.
    pub(super) fn register(&self, task_id: TaskId, lease_token: LeaseToken) -> Arc<Running> {
        let running = Arc::new(Running {
            lease_token,
            cancel: CancellationToken::new(),
            cause: AtomicU8::new(StopCause::None as u8),
            reporting: std::sync::atomic::AtomicBool::new(false),
        });
        self.running.lock().insert(task_id, running.clone());
        running
    }

    /// Forgets an attempt whose outcome is recorded (or lost), if it is still the one
    /// registered for its task: a later attempt of the same task (the task was retried and
    /// claimed here again while this one wound down) stays registered.
    pub(super) fn finished(&self, task_id: TaskId, lease_token: LeaseToken) {
        let mut running = self.running.lock();
        if running
            .get(&task_id)
            .is_some_and(|attempt| attempt.lease_token == lease_token)
        {
            running.remove(&task_id);
        }
    }

    /// Forgets several attempts, each if it is still the one registered for its task.
    pub(super) fn finished_all(&self, attempts: impl IntoIterator<Item = (TaskId, LeaseToken)>) {
        let mut running = self.running.lock();
        for (id, token) in attempts {
            if running
                .get(&id)
                .is_some_and(|attempt| attempt.lease_token == token)
            {
                running.remove(&id);
            }
        }
    }

    /// Stops the attempt of `task_id`, if this process runs it.
    pub(super) fn stop(&self, task_id: TaskId, cause: StopCause) {
        if let Some(running) = self.running.lock().get(&task_id) {
            running.stop(cause);
            self.stopped.raise();
        }
    }

    /// The backend no longer holds `lease`: stops its attempt if it is still registered under
    /// that lease and still running. Returns whether it stopped one (`false` when the attempt
    /// is gone or its outcome is being recorded, which the renewal raced).
    pub(super) fn lease_lost(&self, lease: HeldLease) -> bool {
        match self.running.lock().get(&lease.task_id) {
            Some(running)
                if running.lease_token == lease.lease_token
                    && !running.reporting.load(Ordering::Acquire) =>
            {
                running.stop(StopCause::LeaseLost);
                self.stopped.raise();
                true
            }
            _ => false,
        }
    }

    /// Stops every attempt whose outcome is not being recorded already; returns how many.
    pub(super) fn stop_all(&self, cause: StopCause) -> usize {
        let running = self.running.lock();
        let mut stopped = 0;
        for attempt in running.values() {
            // Not an attempt whose outcome is being recorded, nor one already stopped for
            // another cause (cancelled, lease lost): it is forgotten, not given back.
            if !attempt.reporting.load(Ordering::Acquire) && !attempt.cancel.is_cancelled() {
                attempt.stop(cause);
                stopped += 1;
            }
        }
        if stopped > 0 {
            self.stopped.raise();
        }
        stopped
    }

    /// The leases to renew.
    pub(super) fn leases(&self) -> Vec<HeldLease> {
        self.running
            .lock()
            .iter()
            .map(|(task_id, running)| HeldLease {
                task_id: *task_id,
                lease_token: running.lease_token,
            })
            .collect()
    }

    /// How many attempts are registered.
    pub(super) fn count(&self) -> usize {
        self.running.lock().len()
    }
}
