//! Pruning with retention, through the orchestrator (`Orchestrator::prune` and the scheduled
//! pruner of `OrchestratorConfig::with_retention`, over the backends' batched `prune_tasks` /
//! `prune_events`): finished tasks and events past their retention go, in several batches;
//! queued and running tasks and recent events stay.

use std::time::Duration;

use anyhow::ensure;
use orch_core::{
    Orchestrator, OrchestratorConfig, Pruned, Retention, SharedBackend, TaskFilter, TaskSpec,
    TaskStatus, processor_fn,
};

/// More than one pruning batch of events (three events per task).
const FINISHED: usize = 2_000;

async fn count(backend: &SharedBackend, status: TaskStatus) -> anyhow::Result<usize> {
    let mut n = 0;
    let mut after = None;
    loop {
        let page = backend
            .list_tasks(TaskFilter {
                status: Some(status),
                after,
                limit: 1000,
                ..TaskFilter::default()
            })
            .await?;
        n += page.len();
        match page.last() {
            Some(last) if page.len() == 1000 => after = Some(last.id),
            _ => return Ok(n),
        }
    }
}

async fn retention_prunes_only_what_is_old(backend: SharedBackend) -> anyhow::Result<()> {
    let orch = Orchestrator::builder(backend.clone())
        .config(
            OrchestratorConfig::default()
                .with_retention(None)
                .with_poll_interval(Duration::from_millis(100)),
        )
        .engine(
            "p",
            processor_fn(|_, _| async { Ok(serde_json::Value::Null) }),
        )
        .build()
        .await?;
    let specs = (0..FINISHED).map(|_| TaskSpec::new("p")).collect();
    let created = orch.dispatch_many(specs).await?;
    for c in &created {
        orch.wait_for(c.task.id, Duration::from_secs(60)).await?;
    }
    // Kept whatever their age: a queued task (no engine) and a running one.
    let queued = orch.dispatch(TaskSpec::new("idle")).await?;
    orch.dispatch(TaskSpec::new("held")).await?;
    let held = backend
        .claim_tasks("held", 1, Duration::from_secs(600))
        .await?;
    ensure!(held.len() == 1);
    tokio::time::sleep(Duration::from_millis(50)).await;

    // A long retention prunes nothing.
    let long = Retention::default()
        .with_finished_tasks(Duration::from_secs(3600))
        .with_events(Duration::from_secs(3600))
        .with_interval(Duration::from_secs(3600));
    ensure!(orch.prune(long).await? == Pruned::default());
    let events_before = backend.last_event_seq().await?;
    ensure!(events_before >= 3 * FINISHED as u64);

    // Finished tasks older than 10 ms go; events are kept an hour.
    let tasks_only = long.with_finished_tasks(Duration::from_millis(10));
    let Pruned { tasks, events, .. } = orch.prune(tasks_only).await?;
    ensure!(
        tasks == FINISHED as u64 && events == 0,
        "pruned {tasks} tasks, {events} events"
    );
    ensure!(count(&backend, TaskStatus::Succeeded).await? == 0);
    ensure!(backend.get_task(queued.id).await?.is_some());
    ensure!(backend.get_task(held[0].task.id).await?.is_some());
    ensure!(backend.read_events(0, 10).await?.len() == 10);

    // Then the events, by the scheduled pruner this time: a fresh orchestrator on the same
    // backend with a short interval.
    orch.shutdown(Duration::from_secs(5)).await;
    let scheduled = Retention::default()
        .with_finished_tasks(Duration::from_millis(10))
        .with_events(Duration::from_millis(10))
        .with_interval(Duration::from_millis(100));
    let orch = Orchestrator::builder(backend.clone())
        .config(OrchestratorConfig::default().with_retention(Some(scheduled)))
        .build()
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !backend.read_events(0, 1).await?.is_empty() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the scheduled pruner left old events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Sequence numbers are never reused after pruning.
    ensure!(backend.last_event_seq().await? >= events_before);
    ensure!(backend.get_task(queued.id).await?.is_some());
    ensure!(backend.get_task(held[0].task.id).await?.is_some());
    orch.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_retention_prunes_only_what_is_old() -> anyhow::Result<()> {
    let fixture = crate::support::sqlite().await?;
    retention_prunes_only_what_is_old(fixture.backend.clone()).await
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_retention_prunes_only_what_is_old() -> anyhow::Result<()> {
    let Some(fixture) = crate::support::postgres().await? else {
        return Ok(());
    };
    retention_prunes_only_what_is_old(fixture.backend.clone()).await
}
