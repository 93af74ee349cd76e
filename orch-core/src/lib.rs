//! # orch-core
//!
//! The embeddable core of orch: a priority task dispatcher, a lease-based lock manager with
//! fencing tokens, and an event log with live streaming, over pluggable backends.
//!
//! What an application uses is at the crate root:
//! - [`Orchestrator`] (built with [`Orchestrator::builder`], configured by
//!   [`OrchestratorConfig`]): engines registered by name, dispatch ([`TaskSpec`] in, [`Task`]
//!   out) with priorities, delays, limits, timeouts, retries, cancellation, idempotency keys
//!   and task locks; dispatch-and-wait; external workers ([`Orchestrator::claim`]); periodic
//!   [`Schedule`]s; counts per engine; graceful shutdown.
//! - [`Processor`] (an engine; a closure becomes one through [`processor_fn`]) and the other
//!   traits an application implements: [`EventHandler`], [`Plugin`] (with
//!   [`PluginRegistry`]), [`StorageProvider`].
//! - [`LockManager`]: acquire/try/release/extend/info/list/stats, fair waiting with aging,
//!   fencing tokens, guards that release on drop.
//! - [`EventLog`] and [`Subscription`]: ordered, gap-free live events with replay.
//! - [`MemoryBackend`]: every backend trait in memory. SQLite and PostgreSQL live in
//!   `orch-storage`.
//! - [`limits`]: the bounds a task spec is checked against.
//! - [`trace`]: the spans an attempt opens in the trace its task carries ([`TraceContext`],
//!   W3C `traceparent`/`tracestate`), through a [`TracePropagator`] the application supplies.
//!
//! What a backend author needs is under [`backend`]: the traits ([`backend::TaskStore`],
//! [`backend::EventStore`], [`backend::LockStore`]), the types they exchange, and
//! [`backend::rules`], the one place task transitions are decided. The conformance suite every
//! backend must pass is `conformance` (feature `test-util`); feature `mocks` adds `mockall`
//! mocks of every public trait (`MockProcessor` here, `backend::MockTaskStore`, ...).
//!
//! Delivery is at least once: an attempt whose holder dies is rescued when its lease expires
//! and runs again, so engines should be idempotent (or use the fencing tokens of task locks).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> orch_core::Result<()> {
//! use std::sync::Arc;
//! use orch_core::{processor_fn, MemoryBackend, Orchestrator, TaskSpec};
//!
//! let orch = Orchestrator::builder(Arc::new(MemoryBackend::new()))
//!     .engine("double", processor_fn(|_ctx, input| async move {
//!         Ok(serde_json::json!(input.as_i64().unwrap_or(0) * 2))
//!     }))
//!     .build().await?;
//! let task = orch.dispatch_and_wait(TaskSpec::new("double").payload(21.into())).await?;
//! assert_eq!(task.result, Some(serde_json::json!(42)));
//! # orch.shutdown(std::time::Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```
//!
//! ## Using the mocks in your tests (feature `mocks`)
//!
//! ```
//! # #[cfg(feature = "mocks")]
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use orch_core::{MockProcessor, Processor, TaskContext, TaskId};
//!
//! let mut engine = MockProcessor::new();
//! engine
//!     .expect_process()
//!     .times(1)
//!     .returning(|_ctx, input| Ok(input));
//! let ctx = TaskContext::new(TaskId::new(), "core");
//! let out = engine.process(ctx, serde_json::json!({"n": 1})).await.unwrap();
//! assert_eq!(out, serde_json::json!({"n": 1}));
//! # }
//! # #[cfg(not(feature = "mocks"))] fn main() {}
//! ```

pub mod backend;
mod clock;
#[cfg(feature = "test-util")]
pub mod conformance;
mod context;
mod contracts;
mod error;
pub mod event_kinds;
mod events;
mod id_hash;
mod locks;
mod memory;
mod model;
pub mod monitor;
mod orchestrator;
mod registry;
mod schedule;
mod signal;
pub mod trace;

pub use backend::SharedBackend;
pub use context::{Parents, TaskContext};
pub use contracts::{
    Capability, EventHandler, Plugin, PluginRegistry, Processor, ProcessorFn, StorageProvider,
    processor_fn,
};
#[cfg(feature = "mocks")]
pub use contracts::{
    MockEventHandler, MockPlugin, MockPluginRegistry, MockProcessor, MockStorageProvider,
};
pub use error::{Error, Result, TaskError};
pub use events::{EventLog, Subscription};
pub use locks::{LockConfig, LockGuard, LockManager, LockOptions, LockStats};
pub use memory::MemoryBackend;
pub use model::{
    Created, CreatedWorkflow, Dependency, EngineCounts, Event, EventKind, FencingToken, LeaseToken,
    LockInfo, LockOverview, LockWaiter, LockWaiterId, NewEvent, OnParentFailure, Parent,
    ParentTask, Resolution, RetryPolicy, Step, Task, TaskFilter, TaskId, TaskLock, TaskSpec,
    TaskStatus, TraceContext, Workflow, WorkflowId, WorkflowInfo, WorkflowStatus, WorkflowTask,
    check_json, check_traceparent, check_tracestate, limits,
};
pub use orchestrator::{
    Autoscale, CircuitBreaker, ClaimedTask, EngineState, EngineStatus, Healing, NodeHealthCheck,
    Orchestrator, OrchestratorBuilder, OrchestratorConfig, Pause, Pruned, Quarantine, Readiness,
    RestartBackoff, Retention, ShutdownReport, Tuning, WorkerReport,
};
pub use registry::DefaultPluginRegistry;
pub use schedule::Schedule;
pub use trace::TracePropagator;
