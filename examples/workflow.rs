//! A workflow on SQLite: fetch a document, transform its parts in parallel, merge them, and
//! clean up whatever happened. Each task waits for the tasks it names; the merge reads its
//! parents' results; the clean-up runs even if a transform fails. The first run fails one
//! part on purpose; the retry of the failed part then finishes the workflow.
//!
//! Run it with `cargo run --example workflow --features sqlite` (it writes
//! `data/workflow.db`, or the path given as the first argument).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use orch::storage::SqliteBackend;
use orch::{
    OnParentFailure, Orchestrator, SharedBackend, TaskError, TaskSpec, Workflow, WorkflowStatus,
    processor_fn,
};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "data/workflow.db".to_owned());
    let backend: SharedBackend = Arc::new(SqliteBackend::open(&path).await?);
    // The second part fails the first time it runs (an outage, say).
    let outage = Arc::new(AtomicBool::new(true));
    let failing = outage.clone();
    let orch = Orchestrator::builder(backend)
        .engine(
            "fetch",
            processor_fn(|_ctx, input: Value| async move {
                Ok(json!({ "parts": input["parts"].clone() }))
            }),
        )
        .engine(
            "transform",
            processor_fn(move |_ctx, input: Value| {
                let failing = failing.clone();
                async move {
                    let part = input["part"].as_str().unwrap_or_default().to_owned();
                    if part == "b" && failing.swap(false, Ordering::SeqCst) {
                        return Err(TaskError::fatal("the transform service is down"));
                    }
                    Ok(json!(part.to_uppercase()))
                }
            }),
        )
        .engine(
            "merge",
            processor_fn(|ctx, _input| async move {
                // A fan-in task reads its parents' results, in the order it named them (a
                // page at a time: thousands of parents are fine).
                let mut merged = String::new();
                for parent in ctx.parents().all().await? {
                    let result = parent.task.and_then(|t| t.result).unwrap_or(Value::Null);
                    merged.push_str(result.as_str().unwrap_or("?"));
                }
                Ok(json!(merged))
            }),
        )
        .engine(
            "clean-up",
            processor_fn(|_ctx, _input| async move { Ok(json!("temporary files removed")) }),
        )
        .build()
        .await?;

    // The graph, named by steps; dispatched in one atomic step.
    let mut flow = Workflow::new().idempotency_key(format!("report-{}", uuid_like()));
    let fetch = flow.add(TaskSpec::new("fetch").payload(json!({ "parts": ["a", "b", "c"] })));
    let parts: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|part| {
            flow.add(
                TaskSpec::new("transform")
                    .payload(json!({ "part": part }))
                    .after(fetch),
            )
        })
        .collect();
    let mut merge = TaskSpec::new("merge").priority(5);
    for part in &parts {
        merge = merge.after(*part);
    }
    let merge = flow.add(merge);
    flow.add(TaskSpec::new("clean-up").after_with(merge, OnParentFailure::RunAnyway));
    let dispatched = orch.dispatch_workflow(flow).await?;
    let id = dispatched.workflow.id;
    println!("workflow {id}: {} tasks", dispatched.workflow.tasks);

    let first = orch.wait_for_workflow(id, Duration::from_secs(30)).await?;
    println!(
        "first run: {} ({} of {} succeeded)",
        first.status, first.succeeded, first.tasks
    );
    assert_eq!(first.status, WorkflowStatus::Partly);

    // Retry the failed part: the failed transform and the merge that failed with it run again;
    // what succeeded keeps its result.
    orch.retry_workflow(id).await?;
    let done = orch.wait_for_workflow(id, Duration::from_secs(30)).await?;
    println!("after the retry: {}", done.status);
    assert_eq!(done.status, WorkflowStatus::Succeeded);

    for task in orch.workflow_tasks(id).await? {
        println!(
            "  step {} {:<9} {:<9} after {} -> {}",
            task.step,
            task.task.engine,
            task.task.status,
            task.parents.len(),
            task.task.result.unwrap_or(Value::Null)
        );
    }
    let merged = orch.get(dispatched.tasks[merge.index()].task.id).await?;
    assert_eq!(merged.result, Some(json!("ABC")));
    orch.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// A key of this run, so that running the example again dispatches a new workflow.
fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
