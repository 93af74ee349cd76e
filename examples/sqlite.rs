//! Embedding orch on SQLite: one file, nothing to install. Tasks survive a restart of the
//! process, and the counts per engine come from the file.
//!
//! Run it with `cargo run --example sqlite --features sqlite` (it writes `data/example.db`,
//! or the path given as the first argument).

use std::sync::Arc;
use std::time::Duration;

use orch::storage::SqliteBackend;
use orch::{Orchestrator, OrchestratorConfig, SharedBackend, TaskError, TaskSpec, processor_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "data/example.db".to_owned());
    // Creates the file and its folder, applies the schema, turns on WAL.
    let backend: SharedBackend = Arc::new(SqliteBackend::open(&path).await?);
    let orch = Orchestrator::builder(backend)
        .config(OrchestratorConfig::default().with_global_concurrency(8))
        .engine(
            "resize",
            processor_fn(|ctx, input: Value| async move {
                let width = input["width"]
                    .as_u64()
                    .ok_or_else(|| TaskError::fatal("payload needs a width"))?;
                // Long work checks the cancellation token (timeout, cancel, shutdown).
                if ctx.is_cancelled() {
                    return Err(TaskError::retryable("cancelled"));
                }
                Ok(json!({ "thumbnail": format!("{width}x{}", width * 3 / 4) }))
            }),
        )
        .build()
        .await?;

    // One task, waited for.
    let task = orch
        .dispatch_and_wait(TaskSpec::new("resize").payload(json!({ "width": 640 })))
        .await?;
    println!("{} -> {:?}", task.id, task.result);

    // A batch in one write, an idempotency key, a delayed task.
    let specs = (1..=5)
        .map(|n| TaskSpec::new("resize").payload(json!({ "width": n * 100 })))
        .collect();
    orch.dispatch_many(specs).await?;
    let first = orch
        .dispatch(
            TaskSpec::new("resize")
                .payload(json!({"width": 1}))
                .idempotency_key("order-7"),
        )
        .await?;
    let again = orch
        .dispatch(
            TaskSpec::new("resize")
                .payload(json!({"width": 2}))
                .idempotency_key("order-7"),
        )
        .await?;
    assert_eq!(first.id, again.id, "one task per idempotency key");
    orch.dispatch(
        TaskSpec::new("resize")
            .payload(json!({ "width": 50 }))
            .delay(Duration::from_secs(3600)),
    )
    .await?;
    // A payload the engine refuses: failed at once, no retry.
    orch.dispatch(TaskSpec::new("resize").payload(json!("no width")))
        .await?;

    tokio::time::sleep(Duration::from_millis(500)).await;
    for counts in orch.task_counts().await? {
        println!(
            "{}: {} queued, {} delayed, {} running, {} succeeded, {} failed",
            counts.engine,
            counts.queued,
            counts.delayed,
            counts.running,
            counts.succeeded,
            counts.failed
        );
    }
    let report = orch.shutdown(Duration::from_secs(10)).await;
    println!("shut down (drained: {})", report.drained);
    Ok(())
}
