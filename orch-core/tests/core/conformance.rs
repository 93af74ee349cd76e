use std::sync::Arc;

use orch_core::{MemoryBackend, SharedBackend, conformance};

#[tokio::test(start_paused = true)]
async fn memory_backend_passes_the_conformance_suite() {
    conformance::assert_conformance("memory", || async {
        Arc::new(MemoryBackend::new()) as SharedBackend
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn memory_backend_agrees_with_the_model() {
    conformance::assert_model_conformance("memory", 300, || async {
        Arc::new(MemoryBackend::new()) as SharedBackend
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn conformance_suite_catches_a_broken_backend() {
    // A backend that ignores priorities must fail the suite: the suite is not vacuous.
    let report = conformance::run_conformance(|| async {
        Arc::new(broken::FifoOnly(MemoryBackend::new())) as SharedBackend
    })
    .await;
    assert!(
        report
            .failed
            .iter()
            .any(|(name, _)| *name == "claim_order_priority_then_fifo"),
        "failures: {:?}",
        report.failed
    );
}

mod broken {
    use std::time::Duration;

    use async_trait::async_trait;
    use chrono::{DateTime, Utc};
    use orch_core::backend::*;
    use orch_core::*;

    /// Delegates everything, but claims the oldest task regardless of priority.
    pub(super) struct FifoOnly(pub(super) MemoryBackend);

    #[async_trait]
    impl TaskStore for FifoOnly {
        async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<Created>> {
            let flattened = tasks
                .into_iter()
                .map(|mut t| {
                    t.priority = 1;
                    t
                })
                .collect();
            self.0.create_tasks(flattened).await
        }
        async fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
            self.0.get_task(id).await
        }
        async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<Task>> {
            self.0.list_tasks(filter).await
        }
        async fn claim_tasks(
            &self,
            core: &str,
            limit: usize,
            lease: Duration,
        ) -> Result<Vec<Claimed>> {
            self.0.claim_tasks(core, limit, lease).await
        }
        async fn next_run_at(&self, core: &str) -> Result<Option<DateTime<Utc>>> {
            self.0.next_run_at(core).await
        }
        async fn renew_leases(
            &self,
            leases: Vec<HeldLease>,
            lease: Duration,
        ) -> Result<Vec<Option<DateTime<Utc>>>> {
            self.0.renew_leases(leases, lease).await
        }
        async fn finish_attempts(
            &self,
            reports: Vec<AttemptReport>,
        ) -> Result<Vec<Result<TaskStatus>>> {
            self.0.finish_attempts(reports).await
        }
        async fn cancel_task(&self, id: TaskId) -> Result<Task> {
            self.0.cancel_task(id).await
        }
        async fn resolve_task(&self, id: TaskId, resolution: Resolution) -> Result<Task> {
            self.0.resolve_task(id, resolution).await
        }
        async fn rescue_expired(&self, limit: usize) -> Result<Vec<Task>> {
            self.0.rescue_expired(limit).await
        }
        async fn prune_tasks(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
            self.0.prune_tasks(before, limit).await
        }
        async fn queue_depth(&self) -> Result<Vec<QueueDepth>> {
            self.0.queue_depth().await
        }
        async fn count_tasks(&self) -> Result<Vec<EngineCounts>> {
            self.0.count_tasks().await
        }
    }

    delegate_all_but_tasks!(FifoOnly, 0);
}
