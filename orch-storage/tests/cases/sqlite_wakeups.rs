//! Wake-ups between two `SqliteBackend`s on one file (two processes' view: SQLite tells
//! connections apart, not processes), and from an application's own connection: with a 30 s
//! poll interval, only the backend's watcher of other connections' commits can start the task
//! or deliver the event within the 10 s these tests allow.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use orch_core::{
    EventKind, NewEvent, Orchestrator, OrchestratorConfig, SharedBackend, TaskSpec, TaskStatus,
};
use orch_storage::SqliteBackend;

use super::recording_engine;
use crate::{create, spec};

/// Much longer than the test waits: progress within the wait proves the wake-up.
const POLL: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(10);

async fn two_backends() -> anyhow::Result<(tempfile::TempDir, SharedBackend, SharedBackend)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("shared.db");
    let path = path.to_str().context("temp path is not UTF-8")?;
    let a: SharedBackend = Arc::new(SqliteBackend::open(path).await?);
    let b: SharedBackend = Arc::new(SqliteBackend::open(path).await?);
    Ok((dir, a, b))
}

/// Lets the orchestrator's first look for work (at start-up) pass, so what the test observes
/// is a wake-up.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_dispatched_through_another_backend_on_the_file_starts_at_once() -> anyhow::Result<()>
{
    let (_dir, a, b) = two_backends().await?;
    let (ran, engine) = recording_engine();
    let orch = Orchestrator::builder(b)
        .config(OrchestratorConfig::default().with_poll_interval(POLL))
        .engine("remote", engine)
        .build()
        .await?;
    settle().await;
    for round in 0..3 {
        let task = create(&a, vec![spec("remote")]).await?;
        let task = task.first().context("no task")?;
        let done = orch.wait_for(task.id, WAIT).await;
        let done = done.with_context(|| format!("round {round}: not started within {WAIT:?}"))?;
        ensure!(done.status == TaskStatus::Succeeded, "{done:?}");
    }
    ensure!(ran.lock().len() == 3);
    orch.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_appended_through_another_backend_reach_a_subscriber() -> anyhow::Result<()> {
    let (_dir, a, b) = two_backends().await?;
    let orch = Orchestrator::builder(b)
        .config(OrchestratorConfig::default().with_poll_interval(POLL))
        .build()
        .await?;
    let mut subscription = orch.events().subscribe().await?;
    settle().await;
    for round in 0..3 {
        let kind = EventKind::Custom(format!("test.remote_{round}"));
        a.append_event(NewEvent::new(kind.clone())).await?;
        let event = tokio::time::timeout(WAIT, subscription.next())
            .await
            .with_context(|| format!("round {round}: no event within {WAIT:?}"))?
            .context("subscription ended")??;
        ensure!(
            event.kind == kind,
            "got {:?}, expected {kind:?}",
            event.kind
        );
    }
    orch.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// `dispatch_in` on a transaction the application opened on its own connection to the file
/// and commits itself: the tasks start without waiting for a poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_committed_on_the_applications_own_connection_start_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("app.db");
    let path = path.to_str().context("temp path is not UTF-8")?;
    let backend = Arc::new(SqliteBackend::open(path).await?);
    let (ran, engine) = recording_engine();
    let orch = Orchestrator::builder(backend.clone() as SharedBackend)
        .config(OrchestratorConfig::default().with_poll_interval(POLL))
        .engine("remote", engine)
        .build()
        .await?;
    settle().await;
    let app = orch_storage::sqlx::SqlitePool::connect(&format!("sqlite://{path}")).await?;
    let mut tx = app.begin_with("BEGIN IMMEDIATE").await?;
    let created = backend
        .dispatch_in(&mut tx, vec![TaskSpec::new("remote")])
        .await?;
    tx.commit().await?;
    let done = orch
        .wait_for(created[0].task.id, WAIT)
        .await
        .context("not started within the wait")?;
    ensure!(done.status == TaskStatus::Succeeded, "{done:?}");
    ensure!(ran.lock().len() == 1);
    orch.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
