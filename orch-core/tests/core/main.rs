//! orch-core's integration tests, one binary (fewer, larger test binaries link faster).
//! Timing behaviour runs on tokio's paused clock: nothing here sleeps for real.

mod conformance;
mod dispatcher;
mod events;
mod locks;
mod model_based;
mod pipelining;
mod plugins;
mod schedules;
mod task_locks;

use std::sync::Arc;
use std::time::Duration;

use orch_core::{MemoryBackend, Orchestrator, OrchestratorConfig, RetryPolicy, SharedBackend};

/// A fresh in-memory backend.
pub fn backend() -> SharedBackend {
    Arc::new(MemoryBackend::new())
}

/// A config with small, deterministic retry delays.
pub fn config() -> OrchestratorConfig {
    OrchestratorConfig::default()
        .with_retry(RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: false,
        })
        .with_poll_interval(Duration::from_millis(200))
}

/// An orchestrator with no engines.
pub async fn orch(backend: SharedBackend, config: OrchestratorConfig) -> Orchestrator {
    Orchestrator::builder(backend)
        .config(config)
        .build()
        .await
        .expect("valid config")
}
