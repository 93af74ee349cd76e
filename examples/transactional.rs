//! Dispatching inside your own transaction: an order row and the task that ships it commit
//! together, or neither does. Shown on SQLite; `PostgresBackend::dispatch_in` takes a
//! PostgreSQL transaction the same way.
//!
//! Run it with `cargo run --example transactional --features sqlite`.

use std::sync::Arc;
use std::time::Duration;

use orch::storage::SqliteBackend;
use orch::storage::sqlx;
use orch::{Orchestrator, SharedBackend, TaskFilter, TaskSpec, processor_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("orch-transactional-{}", std::process::id()));
    let backend =
        Arc::new(SqliteBackend::open(dir.join("shop.db").to_str().unwrap_or("shop.db")).await?);
    // The application's own table lives in the same file.
    let mut tx = backend.begin_write().await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, state TEXT NOT NULL)")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    let orch = Orchestrator::builder(backend.clone() as SharedBackend)
        .engine(
            "ship",
            processor_fn(
                |_ctx, input: Value| async move { Ok(json!({ "shipped": input["order"] })) },
            ),
        )
        .build()
        .await?;

    // Committed: the order and its task both exist.
    let mut tx = backend.begin_write().await?;
    sqlx::query("INSERT INTO orders (id, state) VALUES (?, 'paid')")
        .bind(1_i64)
        .execute(&mut *tx)
        .await?;
    let created = backend
        .dispatch_in(
            &mut tx,
            vec![TaskSpec::new("ship").payload(json!({ "order": 1 }))],
        )
        .await?;
    // Wakes this process's orchestrator at once (a plain commit is found by polling).
    backend.commit_and_wake(tx).await?;
    let shipped = orch
        .wait_for(created[0].task.id, Duration::from_secs(10))
        .await?;
    println!("order 1: {:?} {:?}", shipped.status, shipped.result);

    // Rolled back: neither the order nor its task.
    let mut tx = backend.begin_write().await?;
    sqlx::query("INSERT INTO orders (id, state) VALUES (?, 'paid')")
        .bind(2_i64)
        .execute(&mut *tx)
        .await?;
    backend
        .dispatch_in(
            &mut tx,
            vec![TaskSpec::new("ship").payload(json!({ "order": 2 }))],
        )
        .await?;
    tx.rollback().await?;
    let tasks = orch.list(TaskFilter::default()).await?;
    println!(
        "tasks after the rollback: {} (the rolled-back one left no trace)",
        tasks.len()
    );
    assert_eq!(tasks.len(), 1);

    orch.shutdown(Duration::from_secs(5)).await;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
