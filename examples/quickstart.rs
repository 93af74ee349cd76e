//! The quickstart: an orchestrator on the in-memory backend with two engines, tasks of mixed
//! priorities, a lock, a live event stream and a summary.
//!
//! Run it with `cargo run --example quickstart`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use orch::{
    LockOptions, MemoryBackend, Orchestrator, OrchestratorConfig, TaskError, TaskSpec, TaskStatus,
    processor_fn,
};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let orch = Orchestrator::builder(Arc::new(MemoryBackend::new()))
        .config(OrchestratorConfig::default().with_global_concurrency(4))
        // An engine that upper-cases text, refusing anything else without retry.
        .engine(
            "upper",
            processor_fn(|_ctx, input: Value| async move {
                let text = input
                    .as_str()
                    .ok_or_else(|| TaskError::fatal("payload must be a string"))?;
                Ok(json!(text.to_uppercase()))
            }),
        )
        // An engine that "works" for a while and honours cancellation.
        .engine(
            "sleep",
            processor_fn(|ctx, input: Value| async move {
                let ms = input.get("ms").and_then(Value::as_u64).unwrap_or(10);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(json!({"slept_ms": ms})),
                    _ = ctx.cancelled() => Err(TaskError::retryable("cancelled")),
                }
            }),
        )
        .build().await?;

    // Stream events while the tasks run.
    let mut events = orch.events().subscribe().await?;
    let printer = tokio::spawn(async move {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        while let Some(Ok(event)) = events.next().await {
            *counts.entry(event.kind.to_string()).or_default() += 1;
            if event.kind.is_terminal_task_event() {
                println!(
                    "  event #{:<3} {:<15} task {}",
                    event.seq,
                    event.kind,
                    event.task_id.map(|id| id.to_string()).unwrap_or_default()
                );
            }
        }
        counts
    });

    // Mixed priorities: higher runs first.
    let mut specs = Vec::new();
    for (i, word) in ["low", "normal", "urgent", "normal", "bad"]
        .iter()
        .enumerate()
    {
        let priority = match *word {
            "urgent" => 10,
            "low" => 0,
            _ => 1,
        };
        let payload = if *word == "bad" {
            json!(42)
        } else {
            json!(format!("{word} task {i}"))
        };
        specs.push(
            TaskSpec::new("upper")
                .priority(priority)
                .payload(payload)
                .max_attempts(2),
        );
    }
    for ms in [20, 40] {
        specs.push(
            TaskSpec::new("sleep")
                .payload(json!({"ms": ms}))
                .lock("printer"),
        );
    }
    let created = orch.dispatch_many(specs).await?;
    println!("dispatched {} tasks", created.len());

    // A lock taken by the application itself, with its fencing token.
    let guard = orch
        .locks()
        .acquire(
            "reports",
            "quickstart",
            LockOptions::default().ttl(Duration::from_secs(5)),
        )
        .await?;
    println!(
        "took lock {:?} with fencing token {}",
        guard.resource(),
        guard.fencing_token()
    );
    guard.release().await?;

    let mut by_status: BTreeMap<TaskStatus, usize> = BTreeMap::new();
    for c in &created {
        let task = orch.wait_for(c.task.id, Duration::from_secs(10)).await?;
        *by_status.entry(task.status).or_default() += 1;
    }
    let report = orch.shutdown(Duration::from_secs(5)).await;
    let counts = printer.await?;
    let stats = orch.locks().stats().await?;

    println!("summary:");
    for (status, n) in &by_status {
        println!("  {status:<10} {n}");
    }
    println!("  events    {}", counts.values().sum::<usize>());
    for (kind, n) in &counts {
        println!("    {kind:<15} {n}");
    }
    println!(
        "  locks     {} acquired, {} released",
        stats.acquired, stats.released
    );
    println!(
        "  shutdown  drained={} abandoned={}",
        report.drained, report.abandoned
    );
    anyhow::ensure!(
        by_status.get(&TaskStatus::Succeeded) == Some(&6),
        "expected 6 succeeded tasks"
    );
    anyhow::ensure!(
        by_status.get(&TaskStatus::Failed) == Some(&1),
        "expected 1 failed task"
    );
    Ok(())
}
