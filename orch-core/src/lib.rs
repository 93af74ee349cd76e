//! # orch-core
//!
//! The embeddable core of orch: a priority task dispatcher, a lease-based lock manager with
//! fencing tokens, and an event log with live streaming, over pluggable backends.
//!
//! How the crate is laid out:
//! - [`model`]: tasks ([`TaskSpec`], [`Task`], [`TaskStatus`] with checked transitions), events
//!   ([`Event`]), locks ([`LockInfo`], [`FencingToken`]). Everything that crosses a wire is serde.
//! - [`contracts`]: the seed's traits — [`StorageProvider`], [`Processor`] (an engine; a closure
//!   becomes one through [`processor_fn`]), [`EventHandler`], [`Plugin`], [`PluginRegistry`].
//! - [`backend`]: what the dispatcher, lock manager and event log persist — [`TaskStore`],
//!   [`EventStore`], [`LockStore`], together [`Backend`]. Each method is one atomic step.
//! - [`MemoryBackend`]: all of them in memory. SQLite and PostgreSQL live in `orch-storage`.
//! - [`Orchestrator`]: the dispatcher (engines per `core_id`, priorities, delays, limits,
//!   timeouts, retries, cancellation, leases and rescue, external workers, task locks,
//!   dispatch-and-wait, graceful shutdown) and its [`Schedule`]s.
//! - [`LockManager`]: acquire/try/release/extend/info/list/stats, fair waiting with aging,
//!   guards that release on drop.
//! - [`EventLog`] and [`Subscription`]: ordered, gap-free live events with replay.
//! - [`clock`]: wall-clock time that follows tokio's (pausable) clock.
//! - `conformance` (feature `test-util`): the behavioural suite every backend must pass.
//! - Feature `mocks`: `mockall` mocks of every public trait (`MockProcessor`, `MockTaskStore`, ...).
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
//!     .engine("double", processor_fn("double", |_ctx, input| async move {
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
//! engine.expect_name().return_const("mocked".to_owned());
//! engine
//!     .expect_process()
//!     .times(1)
//!     .returning(|_ctx, input| Ok(input));
//! let ctx = TaskContext::new(TaskId::new(), "core");
//! let out = engine.process(ctx, serde_json::json!({"n": 1})).await.unwrap();
//! assert_eq!(out, serde_json::json!({"n": 1}));
//! assert_eq!(engine.name(), "mocked");
//! # }
//! # #[cfg(not(feature = "mocks"))] fn main() {}
//! ```

pub mod backend;
pub mod clock;
#[cfg(feature = "test-util")]
pub mod conformance;
pub mod context;
pub mod contracts;
mod error;
pub mod events;
pub mod locks;
mod memory;
pub mod model;
mod orchestrator;
mod registry;
mod schedule;
mod signal;

pub use backend::{Backend, EventStore, LockStore, SharedBackend, TaskStore};
#[cfg(feature = "mocks")]
pub use backend::{MockEventStore, MockLockStore, MockTaskStore};
pub use context::TaskContext;
pub use contracts::{
    Capability, EventHandler, Plugin, PluginProcessor, PluginRegistry, Processor, ProcessorFn,
    StorageProvider, check_storage_key, processor_fn,
};
#[cfg(feature = "mocks")]
pub use contracts::{
    MockEventHandler, MockPlugin, MockPluginRegistry, MockProcessor, MockStorageProvider,
};
pub use error::{Error, Result, TaskError};
pub use events::{EventLog, Subscription};
pub use locks::{LockConfig, LockGuard, LockManager, LockOptions, LockStats};
pub use memory::{DEFAULT_EVENT_RETENTION, DEFAULT_FINISHED_TASK_RETENTION, MemoryBackend};
pub use model::{
    AttemptOutcome, Claimed, Created, Event, EventKind, FencingToken, LeaseToken, LockAttempt,
    LockInfo, NewEvent, NewTask, Resolution, RetryPolicy, Task, TaskFilter, TaskId, TaskSpec,
    TaskStatus,
};
pub use orchestrator::{
    Orchestrator, OrchestratorBuilder, OrchestratorConfig, Retention, ShutdownReport, WorkerReport,
};
pub use registry::DefaultPluginRegistry;
pub use schedule::Schedule;
pub use signal::ChangeSignal;
