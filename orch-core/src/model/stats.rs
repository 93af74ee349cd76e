//! Counts of tasks: what an application or a dashboard asks to see how the queue is doing.

use serde::{Deserialize, Serialize};

/// How many tasks of one engine and priority are queued (due or delayed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepth {
    /// The engine.
    #[serde(rename = "core_id", alias = "engine")]
    pub engine: String,
    /// The priority.
    pub priority: i32,
    /// Queued tasks of that engine and priority.
    pub queued: u64,
}

/// How many tasks of one engine are in each state, as
/// [`Orchestrator::task_counts`](crate::Orchestrator::task_counts) reports them. Finished tasks
/// are counted until retention prunes them.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineCounts {
    /// The engine.
    #[serde(rename = "core_id", alias = "engine")]
    pub engine: String,
    /// Waiting for the tasks they depend on.
    pub waiting: u64,
    /// Queued and due: waiting for a free slot or a worker.
    pub queued: u64,
    /// Queued but not due yet (a delay, a later `run_at`, a retry's backoff).
    pub delayed: u64,
    /// Running an attempt.
    pub running: u64,
    /// Finished with a result.
    pub succeeded: u64,
    /// Finished with an error.
    pub failed: u64,
    /// Finished because the last attempt ran past its timeout.
    pub timed_out: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl EngineCounts {
    /// Counts of `engine`, all zero.
    pub fn new(engine: impl Into<String>) -> Self {
        EngineCounts {
            engine: engine.into(),
            ..Self::default()
        }
    }

    /// Tasks in a terminal state.
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.timed_out + self.cancelled
    }

    /// Adds `count` tasks in `status` (`delayed` for queued tasks not due yet; ignored for
    /// other states).
    pub fn add(&mut self, status: super::TaskStatus, delayed: bool, count: u64) {
        use super::TaskStatus::*;
        let slot = match status {
            Waiting => &mut self.waiting,
            Queued if delayed => &mut self.delayed,
            Queued => &mut self.queued,
            Running => &mut self.running,
            Succeeded => &mut self.succeeded,
            Failed => &mut self.failed,
            TimedOut => &mut self.timed_out,
            Cancelled => &mut self.cancelled,
        };
        *slot += count;
    }
}
