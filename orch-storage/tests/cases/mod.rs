//! Tests added for issue 3's acceptance, one file per concern: batch completion, transactional
//! dispatch, cross-process wake-ups, processes that share one PostgreSQL (and one of them
//! killed), a SQLite writer killed mid-run, a PostgreSQL restart under load, and pruning; and
//! lock waiters of two processes served by priority through the backend's queue; workflows
//! (upgrades, parents ending at once, a cascade cut short); engine pauses and node health
//! between orchestrators on one database.
//! Tests that need child processes re-run this test binary (see `child`).

pub(crate) mod batch;
pub(crate) mod child;
#[cfg(feature = "postgres")]
mod claim_resume;
mod controls;
#[cfg(feature = "sqlite")]
mod crash;
#[cfg(feature = "postgres")]
mod event_backlog;
#[cfg(feature = "sqlite")]
pub(crate) mod local_queue;
pub(crate) mod lock_queue;
#[cfg(feature = "postgres")]
mod multiprocess;
#[cfg(feature = "postgres")]
mod notify;
mod prune;
#[cfg(feature = "postgres")]
mod restart;
#[cfg(feature = "sqlite")]
mod sqlite_rowids;
#[cfg(feature = "sqlite")]
mod sqlite_wakeups;
mod task_locks;
mod transactional;
#[cfg(feature = "postgres")]
mod unreachable;
#[cfg(feature = "postgres")]
mod workflow_crash;
mod workflows;

use std::sync::Arc;

use orch_core::{TaskId, processor_fn};
use parking_lot::Mutex;

/// The ids of the tasks an engine ran, in order.
pub(crate) type Ran = Arc<Mutex<Vec<TaskId>>>;

/// An engine that records each task it runs and succeeds.
pub(crate) fn recording_engine() -> (Ran, impl orch_core::Processor + 'static) {
    let ran: Ran = Arc::default();
    let seen = ran.clone();
    let engine = processor_fn(move |ctx, _input| {
        let seen = seen.clone();
        async move {
            seen.lock().push(ctx.task_id());
            Ok(serde_json::Value::Null)
        }
    });
    (ran, engine)
}
