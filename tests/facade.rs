//! End-to-end through the facade crate: what an application that depends on `orch` alone sees.

use std::sync::Arc;
use std::time::Duration;

use orch::{
    LockOptions, MemoryBackend, Orchestrator, TaskError, TaskSpec, TaskStatus, processor_fn,
};
use serde_json::{Value, json};

#[tokio::test]
async fn an_application_dispatches_locks_and_streams_through_the_facade() {
    let orch = Orchestrator::builder(Arc::new(MemoryBackend::new()))
        .engine(
            "sum",
            processor_fn(|_ctx, input: Value| async move {
                let numbers = input
                    .as_array()
                    .ok_or_else(|| TaskError::fatal("expected an array"))?;
                Ok(json!(numbers.iter().filter_map(Value::as_i64).sum::<i64>()))
            }),
        )
        .build()
        .await
        .unwrap();
    let mut events = orch.events().subscribe().await.unwrap();
    let ok = orch
        .dispatch_and_wait(TaskSpec::new("sum").payload(json!([1, 2, 3])))
        .await
        .unwrap();
    assert_eq!(
        (ok.status, ok.result),
        (TaskStatus::Succeeded, Some(json!(6)))
    );
    let bad = orch
        .dispatch_and_wait(TaskSpec::new("sum").payload(json!("nope")))
        .await
        .unwrap();
    assert_eq!(bad.status, TaskStatus::Failed);
    assert_eq!(bad.error.as_deref(), Some("expected an array"));
    let mut kinds = Vec::new();
    while kinds.len() < 6 {
        kinds.push(events.next().await.unwrap().unwrap().kind.to_string());
    }
    assert_eq!(
        kinds,
        [
            "task.queued",
            "task.started",
            "task.succeeded",
            "task.queued",
            "task.started",
            "task.failed"
        ]
    );
    let guard = orch
        .locks()
        .acquire("ledger", "app", LockOptions::default())
        .await
        .unwrap();
    assert!(
        orch.locks()
            .try_acquire("ledger", "other", Duration::from_secs(1))
            .await
            .is_err()
    );
    guard.release().await.unwrap();
    let report = orch.shutdown(Duration::from_secs(1)).await;
    assert!(report.drained);
}
