//! The local queue of claimed tasks on a real SQLite file: tasks waiting in it go back to the
//! queue when their orchestrator shuts down and another backend on the file runs them, and a
//! process killed with tasks waiting in it loses none of them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use orch_core::{
    Orchestrator, OrchestratorConfig, SharedBackend, TaskFilter, TaskId, TaskSpec, TaskStatus,
    processor_fn,
};
use orch_storage::SqliteBackend;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::child;

/// Tasks the killed process is given.
const TASKS: usize = 300;
/// Its engine's slots.
const SLOTS: usize = 2;

async fn open(path: &str) -> anyhow::Result<SharedBackend> {
    Ok(Arc::new(SqliteBackend::open(path).await?))
}

/// An engine that sleeps `"sleep_ms"` and, with `"hold": true`, waits for a permit of `gate`.
fn engine(gate: Arc<Semaphore>) -> impl orch_core::Processor {
    processor_fn(move |_ctx, input: Value| {
        let gate = gate.clone();
        async move {
            if let Some(ms) = input["sleep_ms"].as_u64() {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if input["hold"] == json!(true) {
                gate.acquire().await.map_err(|e| e.to_string())?.forget();
            }
            Ok(Value::Null)
        }
    })
}

async fn running(backend: &SharedBackend) -> anyhow::Result<usize> {
    let filter = TaskFilter {
        status: Some(TaskStatus::Running),
        limit: 1000,
        ..TaskFilter::default()
    };
    Ok(backend.list_tasks(filter).await?.len())
}

async fn until(
    what: &str,
    mut done: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done().await? {
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_tasks_go_back_on_shutdown_and_another_backend_runs_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("local.db");
    let path = path.to_str().context("temp path is not UTF-8")?.to_owned();
    let first = open(&path).await?;
    let gate = Arc::new(Semaphore::new(0));
    let orch = Orchestrator::builder(first.clone())
        .config(
            OrchestratorConfig::default()
                .with_default_engine_concurrency(1)
                .with_poll_interval(Duration::from_millis(100)),
        )
        .engine("lq", engine(gate.clone()))
        .build()
        .await?;
    // A quick attempt first: the engine's attempts then count as short and its whole local
    // queue is in use.
    let warm = orch.dispatch(TaskSpec::new("lq")).await?;
    orch.wait_for(warm.id, Duration::from_secs(30)).await?;
    let held = orch
        .dispatch(TaskSpec::new("lq").payload(json!({"hold": true})))
        .await?;
    let specs = (0..5).map(|_| TaskSpec::new("lq")).collect();
    let waiting: Vec<TaskId> = orch
        .dispatch_many(specs)
        .await?
        .into_iter()
        .map(|c| c.task.id)
        .collect();
    until("the five wait in the local queue", async || {
        Ok(running(&first).await? == 6)
    })
    .await?;
    let report = orch.shutdown(Duration::from_millis(200)).await;
    ensure!(report.abandoned == 1, "{report:?}");
    for id in &waiting {
        let task = first.get_task(*id).await?.context("task gone")?;
        ensure!(
            task.status == TaskStatus::Queued && task.attempt == 0,
            "not given back unrun: {task:?}"
        );
    }

    // Another backend on the file, as another process would open it.
    let second = open(&path).await?;
    let other = Orchestrator::builder(second)
        .config(OrchestratorConfig::default().with_poll_interval(Duration::from_millis(100)))
        .engine("lq", engine(Arc::new(Semaphore::new(1_000))))
        .build()
        .await?;
    for id in waiting.iter().chain([&held.id]) {
        let done = other.wait_for(*id, Duration::from_secs(30)).await?;
        ensure!(
            done.status == TaskStatus::Succeeded && done.attempt == 1,
            "{done:?}"
        );
    }
    other.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_with_tasks_in_its_local_queue_loses_none() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("killed.db");
    let path = path.to_str().context("temp path is not UTF-8")?.to_owned();
    let backend = open(&path).await?;
    let specs = (0..TASKS)
        .map(|_| TaskSpec::new("lq").payload(json!({"sleep_ms": 3})))
        .collect();
    // Dispatched by an orchestrator that runs nothing.
    let producer = Orchestrator::builder(backend.clone()).build().await?;
    let ids: Vec<TaskId> = producer
        .dispatch_many(specs)
        .await?
        .into_iter()
        .map(|c| c.task.id)
        .collect();
    producer.shutdown(Duration::from_secs(1)).await;
    let mut child = child::spawn("local-queue", &[("ORCH_TEST_DB", path.clone())], false)?;
    // More tasks running than the child has slots: the rest wait in its local queue.
    let mut most = 0;
    until("the child keeps tasks in its local queue", async || {
        let now = running(&backend).await?;
        most = most.max(now);
        Ok(now > SLOTS + 4)
    })
    .await?;
    child.start_kill().context("SIGKILL")?;
    let status = child.wait().await?;
    ensure!(!status.success(), "the child was not killed: {status}");
    let left = running(&backend).await?;
    ensure!(
        left > SLOTS,
        "only {left} tasks were leased when the child died"
    );

    // What the dead process held is rescued once its leases expire, and runs here.
    let orch = Orchestrator::builder(backend.clone())
        .config(
            OrchestratorConfig::default()
                .with_poll_interval(Duration::from_millis(100))
                .with_rescue_interval(Duration::from_millis(200)),
        )
        .engine("lq", engine(Arc::new(Semaphore::new(0))))
        .build()
        .await?;
    let mut done = HashSet::new();
    for id in &ids {
        let task = orch.wait_for(*id, Duration::from_secs(60)).await?;
        ensure!(task.status == TaskStatus::Succeeded, "{task:?}");
        done.insert(*id);
    }
    ensure!(done.len() == TASKS);
    orch.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// The child: runs the tasks with [`SLOTS`] slots and 2 s leases until killed.
pub(crate) async fn child() -> anyhow::Result<()> {
    let path = child::env("ORCH_TEST_DB")?;
    let orch = Orchestrator::builder(open(&path).await?)
        .config(
            OrchestratorConfig::default()
                .with_default_engine_concurrency(SLOTS)
                .with_lease(Duration::from_secs(2))
                .with_poll_interval(Duration::from_millis(100)),
        )
        .engine("lq", engine(Arc::new(Semaphore::new(0))))
        .build()
        .await?;
    child::parent_gone().await;
    orch.shutdown(Duration::from_secs(1)).await;
    bail!("the local-queue child is meant to be killed")
}
