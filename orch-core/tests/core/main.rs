//! orch-core's integration tests, one binary (fewer, larger test binaries link faster).
//! Timing behaviour runs on tokio's paused clock: nothing here sleeps for real.

/// Implements `EventStore`, `LockStore` and `StorageProvider` for a test backend wrapper by
/// delegating every call to its field `$inner` (the wrappers differ in `TaskStore` only).
macro_rules! delegate_all_but_tasks {
    ($wrapper:ty, $inner:tt) => {
        #[async_trait::async_trait]
        impl orch_core::backend::EventStore for $wrapper {
            async fn append_event(
                &self,
                event: orch_core::NewEvent,
            ) -> orch_core::Result<orch_core::Event> {
                self.$inner.append_event(event).await
            }
            async fn read_events(
                &self,
                after: u64,
                limit: usize,
            ) -> orch_core::Result<Vec<orch_core::Event>> {
                self.$inner.read_events(after, limit).await
            }
            async fn last_event_seq(&self) -> orch_core::Result<u64> {
                self.$inner.last_event_seq().await
            }
            async fn prune_events(
                &self,
                before: chrono::DateTime<chrono::Utc>,
            ) -> orch_core::Result<u64> {
                self.$inner.prune_events(before).await
            }
            fn event_wakeups(&self) -> Option<orch_core::backend::ChangeSignal> {
                self.$inner.event_wakeups()
            }
        }

        #[async_trait::async_trait]
        impl orch_core::backend::LockStore for $wrapper {
            async fn try_acquire_lock(
                &self,
                r: &str,
                o: &str,
                ttl: std::time::Duration,
            ) -> orch_core::Result<orch_core::backend::LockAttempt> {
                self.$inner.try_acquire_lock(r, o, ttl).await
            }
            async fn release_lock(&self, r: &str, o: &str, t: u64) -> orch_core::Result<bool> {
                self.$inner.release_lock(r, o, t).await
            }
            async fn extend_lock(
                &self,
                r: &str,
                o: &str,
                t: u64,
                ttl: std::time::Duration,
            ) -> orch_core::Result<Option<orch_core::LockInfo>> {
                self.$inner.extend_lock(r, o, t, ttl).await
            }
            async fn lock_info(&self, r: &str) -> orch_core::Result<Option<orch_core::LockInfo>> {
                self.$inner.lock_info(r).await
            }
            async fn list_locks(&self) -> orch_core::Result<Vec<orch_core::LockInfo>> {
                self.$inner.list_locks().await
            }
            async fn reclaim_expired_locks(&self) -> orch_core::Result<Vec<orch_core::LockInfo>> {
                self.$inner.reclaim_expired_locks().await
            }
            async fn acquire_lock_in_turn(
                &self,
                request: &orch_core::backend::LockRequest,
            ) -> orch_core::Result<orch_core::backend::LockTurn> {
                self.$inner.acquire_lock_in_turn(request).await
            }
            async fn join_lock_queue(
                &self,
                waiter: &orch_core::backend::NewLockWaiter,
            ) -> orch_core::Result<orch_core::backend::LockWaiter> {
                self.$inner.join_lock_queue(waiter).await
            }
            async fn leave_lock_queue(
                &self,
                r: &str,
                waiter: orch_core::backend::LockWaiterId,
            ) -> orch_core::Result<bool> {
                self.$inner.leave_lock_queue(r, waiter).await
            }
            async fn lock_waiters(
                &self,
                r: &str,
            ) -> orch_core::Result<Vec<orch_core::backend::LockWaiter>> {
                self.$inner.lock_waiters(r).await
            }
            async fn list_lock_waiters(
                &self,
            ) -> orch_core::Result<Vec<orch_core::backend::LockWaiter>> {
                self.$inner.list_lock_waiters().await
            }
        }

        #[async_trait::async_trait]
        impl orch_core::StorageProvider for $wrapper {
            async fn store(&self, k: &str, v: Vec<u8>) -> orch_core::Result<()> {
                self.$inner.store(k, v).await
            }
            async fn retrieve(&self, k: &str) -> orch_core::Result<Option<Vec<u8>>> {
                self.$inner.retrieve(k).await
            }
            async fn delete(&self, k: &str) -> orch_core::Result<bool> {
                self.$inner.delete(k).await
            }
            async fn list(&self, p: &str) -> orch_core::Result<Vec<String>> {
                self.$inner.list(p).await
            }
        }
    };
}

mod conformance;
mod controls;
mod dispatcher;
mod events;
mod handoff;
mod healing;
mod local_queue;
mod locks;
mod model_based;
mod monitor;
mod pipelining;
mod plugins;
mod schedules;
mod task_locks;
mod traces;
mod watch;
mod workflows;

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
