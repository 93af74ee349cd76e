//! # orch
//!
//! An embeddable task orchestrator for Rust: a priority task dispatcher, a lease-based lock
//! manager with fencing tokens, and an event log with live streaming, over an in-memory,
//! SQLite or PostgreSQL backend.
//!
//! This is the facade crate: one dependency line for applications. Everything in
//! [`orch_core`] is re-exported at the top level; the adapters are behind features:
//!
//! | feature | crate | what |
//! |---|---|---|
//! | (always) | `orch-core` | contracts, dispatcher, locks, events, in-memory backend |
//! | `sqlite` | `orch-storage/sqlite` | [`storage::SqliteBackend`]: one file, nothing to install |
//! | `postgres` | `orch-storage/postgres` | [`storage::PostgresBackend`]: several processes, one queue |
//! | `http` | `orch-http` | [`http::router`]: the HTTP API to mount in your own axum app |
//! | `mocks` | `orch-core/mocks` | `mockall` mocks of every public trait |
//! | `test-util` | `orch-core/test-util` | the backend conformance suite |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> orch::Result<()> {
//! use std::sync::Arc;
//! use orch::{processor_fn, MemoryBackend, Orchestrator, TaskSpec, TaskStatus};
//!
//! let orch = Orchestrator::builder(Arc::new(MemoryBackend::new()))
//!     .engine("greet", processor_fn(|_ctx, name| async move {
//!         Ok(format!("hello, {}", name.as_str().unwrap_or("world")).into())
//!     }))
//!     .build().await?;
//! let task = orch.dispatch_and_wait(TaskSpec::new("greet").payload("orch".into())).await?;
//! assert_eq!(task.status, TaskStatus::Succeeded);
//! # orch.shutdown(std::time::Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```

pub use orch_core::*;

/// The durable backends (features `sqlite`, `postgres`): `orch_storage` itself.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use orch_storage as storage;

/// The HTTP API as an axum router (feature `http`): `orch_http` itself.
#[cfg(feature = "http")]
pub use orch_http as http;

/// The core crate itself, for paths like `orch::core::backend::TaskStore` (which is also
/// `orch::backend::TaskStore`).
pub use orch_core as core;
