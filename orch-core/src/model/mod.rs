//! The data model: tasks, events and locks, and [`rules`], the one place task transitions
//! are decided. Everything that crosses a wire is serde.

mod event;
pub(crate) mod graph;
mod ids;
mod lock;
pub mod rules;
mod stats;
mod task;
mod trace;
mod workflow;

pub use event::{Event, EventKind, NewEvent};
pub use lock::{
    FencingToken, LockAttempt, LockInfo, LockOverview, LockRequest, LockTurn, LockWaiter,
    LockWaiterId, NewLockWaiter, TaskLock,
};
pub use stats::{EngineCounts, QueueDepth};
pub use task::{
    AttemptOutcome, AttemptReport, Claimed, Created, EngineRoom, HeldLease, LeaseToken, NewTask,
    Resolution, RetryPolicy, Task, TaskFilter, TaskId, TaskSpec, TaskStatus, check_json,
    check_name, limits,
};
pub use trace::{TraceContext, check_traceparent, check_tracestate};
pub use workflow::{
    CreatedWorkflow, Dependency, NewDependency, NewWorkflow, OnParentFailure, Parent, ParentTask,
    Step, Workflow, WorkflowId, WorkflowInfo, WorkflowStatus, WorkflowTask,
};

/// Serde for `Duration` as (fractional) seconds, the unit of timeouts on the wire.
pub(crate) mod serde_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(crate) fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if value.subsec_nanos() == 0 {
            s.serialize_u64(value.as_secs())
        } else {
            s.serialize_f64(value.as_secs_f64())
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs)
            .map_err(|_| D::Error::custom(format!("{secs} is not a valid number of seconds")))
    }
}

/// Like [`serde_secs`] for `Option<Duration>`.
pub(crate) mod serde_opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => super::serde_secs::serialize(value, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            None => Ok(None),
            Some(secs) => Duration::try_from_secs_f64(secs)
                .map(Some)
                .map_err(|_| D::Error::custom(format!("{secs} is not a valid number of seconds"))),
        }
    }
}
