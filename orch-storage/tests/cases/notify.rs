//! LISTEN/NOTIFY wake-ups between two `PostgresBackend`s on one database (two processes' view):
//! with a 30 s poll interval, only the notification can start the task or deliver the event
//! within the 10 s these tests allow.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use orch_core::{
    EventKind, NewEvent, Orchestrator, OrchestratorConfig, SharedBackend, TaskSpec, TaskStatus,
};
use orch_storage::PostgresBackend;

use super::recording_engine;
use crate::{create, spec};

/// Much longer than the test waits: progress within the wait proves the wake-up.
const POLL: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(10);

/// Waits until `n` sessions listen on the database, so a notification sent next is heard
/// (the listener also wakes its orchestrator once on connecting, which must not be what the
/// test observes).
async fn wait_for_listeners(url: &str, n: i64) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(url).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .fetch_one(&pool)
        .await?;
        if listening >= n {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("only {listening} of {n} listeners connected");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pool.close().await;
    // The listeners' one wake-up on connecting has been handled by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

async fn two_backends() -> anyhow::Result<Option<(String, SharedBackend, SharedBackend)>> {
    let Some(url) = crate::support::postgres::fresh_database().await? else {
        return Ok(None);
    };
    let a: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
    let b: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
    Ok(Some((url, a, b)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_dispatched_elsewhere_wakes_the_orchestrator() -> anyhow::Result<()> {
    let Some((url, a, b)) = two_backends().await? else {
        return Ok(());
    };
    let (ran, engine) = recording_engine();
    let orch = Orchestrator::builder(b)
        .config(OrchestratorConfig::default().with_poll_interval(POLL))
        .engine("remote", engine)
        .build()
        .await?;
    wait_for_listeners(&url, 2).await?;
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
async fn events_appended_elsewhere_reach_a_subscriber() -> anyhow::Result<()> {
    let Some((url, a, b)) = two_backends().await? else {
        return Ok(());
    };
    let orch = Orchestrator::builder(b)
        .config(OrchestratorConfig::default().with_poll_interval(POLL))
        .build()
        .await?;
    let mut subscription = orch.events().subscribe().await?;
    wait_for_listeners(&url, 2).await?;
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
    // Task events raised elsewhere arrive too.
    let task = create(&a, vec![TaskSpec::new("nobody")]).await?;
    let event = tokio::time::timeout(WAIT, subscription.next())
        .await
        .context("no task.queued event")?
        .context("subscription ended")??;
    ensure!(event.kind == EventKind::TaskQueued && event.task_id == Some(task[0].id));
    orch.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
