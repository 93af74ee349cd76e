//! An orchestrator that starts on a PostgreSQL database with events nobody has read yet (a
//! worker restarted after a busy day with no event consumer): PostgreSQL numbers events when
//! they are first read, and starting the event tail does not number that backlog (it starts
//! from the counter, `EventStore::tail_start_seq`). What comes next still reaches waiters and
//! subscribers, and a subscriber sees no event from before it subscribed; pruning reaches the
//! backlog.

use std::time::Duration;

use anyhow::{Context, ensure};
use orch_core::backend::{EventStore, TaskStore};
use orch_core::{EventKind, Orchestrator, TaskSpec, TaskStatus};
use orch_storage::PostgresBackend;
use sqlx::Connection as _;

use crate::support::postgres::fresh_database;

/// The count `query` reads (one `count(*)`).
async fn count(url: &str, query: &'static str) -> anyhow::Result<i64> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    Ok(sqlx::query_scalar(query).fetch_one(&mut conn).await?)
}

/// Event rows not numbered yet.
async fn unnumbered(url: &str) -> anyhow::Result<i64> {
    count(
        url,
        "SELECT count(*) FROM orch_event_batches WHERE seq IS NULL",
    )
    .await
}

/// A hundred tasks dispatched one call each (a hundred event rows), of an engine nobody runs
/// here; returns how many event rows are unnumbered after it.
async fn backlog(backend: &PostgresBackend, url: &str) -> anyhow::Result<i64> {
    for _ in 0..100 {
        backend
            .create_tasks(vec![TaskSpec::new("elsewhere").into_new_task()?])
            .await?;
    }
    let unread = unnumbered(url).await?;
    ensure!(unread >= 100, "{unread} unnumbered event rows");
    Ok(unread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_on_an_unread_backlog_numbers_none_of_it_and_misses_nothing_after()
-> anyhow::Result<()> {
    let Some(url) = fresh_database().await? else {
        return Ok(());
    };
    let backend = std::sync::Arc::new(PostgresBackend::connect(&url).await?);
    let unread = backlog(&backend, &url).await?;
    let orch = Orchestrator::builder(backend.clone())
        .engine(
            "here",
            orch_core::processor_fn(|_ctx, _input| async { Ok(serde_json::Value::Null) }),
        )
        .build()
        .await?;
    ensure!(
        unnumbered(&url).await? == unread,
        "starting the orchestrator numbered the backlog"
    );

    // A caller waiting for a task before anyone subscribed: the tail, started below the
    // backlog, reads through it and publishes the task's end.
    let task = tokio::time::timeout(
        Duration::from_secs(30),
        orch.dispatch_and_wait(TaskSpec::new("here")),
    )
    .await
    .context("the wait for a task did not end")??;
    ensure!(task.status == TaskStatus::Succeeded, "{task:?}");

    // Another backlog, then a subscriber: subscribing numbers what committed before it, and
    // its first event is the next task's, not one of the backlog.
    let mark = backend.last_event_seq().await?;
    backlog(&backend, &url).await?;
    let mut events = orch.events().subscribe().await?;
    ensure!(
        unnumbered(&url).await? == 0,
        "subscribing left events committed before it unnumbered"
    );
    ensure!(
        events.cursor() >= mark + 100,
        "the subscription starts at {}, below the backlog after {mark}",
        events.cursor()
    );
    let next = orch.dispatch(TaskSpec::new("elsewhere")).await?;
    let first = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .context("no event reached the subscriber")?
        .context("the subscription ended")??;
    ensure!(
        first.task_id == Some(next.id) && first.kind == EventKind::TaskQueued,
        "the subscriber's first event is {first:?}"
    );
    orch.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// Retention reaches events nobody has read: pruning numbers them first (only numbered events
/// are deleted, so that no reader misses one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_removes_events_nobody_read() -> anyhow::Result<()> {
    let Some(url) = fresh_database().await? else {
        return Ok(());
    };
    let backend = PostgresBackend::connect(&url).await?;
    backlog(&backend, &url).await?;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let pruned = backend.prune_events(later).await?;
    ensure!(pruned >= 100, "pruned {pruned} events of an unread backlog");
    let left = count(&url, "SELECT count(*) FROM orch_event_batches").await?;
    ensure!(left == 0, "{left} event rows left after pruning them all");
    Ok(())
}
