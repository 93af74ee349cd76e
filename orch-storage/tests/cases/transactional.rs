//! Transactional dispatch (acceptance 4): a task dispatched in a transaction that rolls back
//! never runs (and never exists); one dispatched in a transaction that commits runs, together
//! with the application's own row, through a real `Orchestrator` with an engine.

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use orch_core::{Orchestrator, OrchestratorConfig, SharedBackend, TaskId, TaskSpec, TaskStatus};

use super::{Ran, recording_engine};

/// Waits for `committed` to succeed, then checks that every task in `rolled_back` is unknown and
/// that the engine ran exactly the committed ones.
async fn check_outcome(
    orch: &Orchestrator,
    ran: &Ran,
    committed: &[TaskId],
    rolled_back: &[TaskId],
) -> anyhow::Result<()> {
    for id in committed {
        let task = orch.wait_for(*id, Duration::from_secs(30)).await?;
        ensure!(task.status == TaskStatus::Succeeded, "{task:?}");
    }
    for id in rolled_back {
        ensure!(
            orch.backend().get_task(*id).await?.is_none(),
            "task {id} of a rolled-back transaction exists"
        );
    }
    let ran = ran.lock().clone();
    ensure!(
        ran.iter().all(|id| committed.contains(id)) && ran.len() == committed.len(),
        "the engine ran {ran:?}; committed {committed:?}, rolled back {rolled_back:?}"
    );
    Ok(())
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dispatch_follows_the_transaction() -> anyhow::Result<()> {
    use anyhow::Context as _;
    use orch_storage::SqliteBackend;
    use sqlx::sqlite::SqlitePoolOptions;

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("app.db");
    let path = path.to_str().context("temp path is not UTF-8")?;
    let backend = Arc::new(SqliteBackend::open(path).await?);
    // The application's own pool on the same file, and its own table.
    let app = SqlitePoolOptions::new()
        .max_connections(2)
        .connect(&format!("sqlite://{path}"))
        .await?;
    sqlx::query("CREATE TABLE app_orders (id INTEGER PRIMARY KEY, task TEXT NOT NULL)")
        .execute(&app)
        .await?;
    let (ran, engine) = recording_engine();
    let shared: SharedBackend = backend.clone();
    let orch = Orchestrator::builder(shared)
        .config(OrchestratorConfig::default().with_poll_interval(Duration::from_millis(200)))
        .engine("ship", engine)
        .build()
        .await?;

    // Rolled back, on the application's connection.
    let mut tx = app.begin_with("BEGIN IMMEDIATE").await?;
    let created = backend
        .dispatch_in(&mut tx, vec![TaskSpec::new("ship")])
        .await?;
    let lost = created[0].task.id;
    sqlx::query("INSERT INTO app_orders (id, task) VALUES (1, ?)")
        .bind(lost.to_string())
        .execute(&mut *tx)
        .await?;
    tx.rollback().await?;

    // Rolled back by dropping, on the backend's writer.
    let mut tx = backend.begin_write().await?;
    let dropped = backend
        .dispatch_in(&mut tx, vec![TaskSpec::new("ship")])
        .await?[0]
        .task
        .id;
    drop(tx);

    // Committed on the application's connection (found by polling).
    let mut tx = app.begin_with("BEGIN IMMEDIATE").await?;
    let first = backend
        .dispatch_in(&mut tx, vec![TaskSpec::new("ship")])
        .await?[0]
        .task
        .id;
    sqlx::query("INSERT INTO app_orders (id, task) VALUES (2, ?)")
        .bind(first.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    // Committed on the backend's writer, with a wake-up.
    let mut tx = backend.begin_write().await?;
    sqlx::query("INSERT INTO app_orders (id, task) VALUES (3, 'pending')")
        .execute(&mut *tx)
        .await?;
    let second = backend
        .dispatch_in(&mut tx, vec![TaskSpec::new("ship")])
        .await?[0]
        .task
        .id;
    backend.commit_and_wake(tx).await?;

    check_outcome(&orch, &ran, &[first, second], &[lost, dropped]).await?;
    let orders: Vec<i64> = sqlx::query_scalar("SELECT id FROM app_orders ORDER BY id")
        .fetch_all(&app)
        .await?;
    ensure!(orders == [2, 3], "application rows {orders:?}");
    orch.shutdown(Duration::from_secs(5)).await;
    app.close().await;
    Ok(())
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dispatch_follows_the_transaction() -> anyhow::Result<()> {
    use orch_storage::PostgresBackend;

    let Some(url) = crate::support::postgres::fresh_database().await? else {
        return Ok(());
    };
    let backend = Arc::new(PostgresBackend::connect(&url).await?);
    let app = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    sqlx::query("CREATE TABLE app_orders (id bigint PRIMARY KEY, task uuid NOT NULL)")
        .execute(&app)
        .await?;
    let (ran, engine) = recording_engine();
    let shared: SharedBackend = backend.clone();
    // A long poll interval: the committed task is started by the notification its
    // transaction sends at commit.
    let orch = Orchestrator::builder(shared)
        .config(OrchestratorConfig::default().with_poll_interval(Duration::from_secs(30)))
        .engine("ship", engine)
        .build()
        .await?;

    let mut tx = app.begin().await?;
    let lost = backend
        .dispatch_in(&mut tx, vec![TaskSpec::new("ship")])
        .await?[0]
        .task
        .id;
    sqlx::query("INSERT INTO app_orders (id, task) VALUES (1, $1)")
        .bind(lost.0)
        .execute(&mut *tx)
        .await?;
    tx.rollback().await?;

    let mut tx = backend.begin().await?;
    let committed = backend
        .dispatch_in(&mut tx, vec![TaskSpec::new("ship")])
        .await?[0]
        .task
        .id;
    sqlx::query("INSERT INTO app_orders (id, task) VALUES (2, $1)")
        .bind(committed.0)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    check_outcome(&orch, &ran, &[committed], &[lost]).await?;
    let orders: Vec<i64> = sqlx::query_scalar("SELECT id FROM app_orders ORDER BY id")
        .fetch_all(&app)
        .await?;
    ensure!(orders == [2], "application rows {orders:?}");
    orch.shutdown(Duration::from_secs(5)).await;
    app.close().await;
    Ok(())
}

/// The monitor's pool reading: the share of the pool's connections an application's open
/// transactions hold, through the sampler orchd registers.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_sampler_reads_the_connections_in_use() -> anyhow::Result<()> {
    use orch_core::monitor::{Metric, Sampler as _};
    let Some(url) = crate::support::postgres::fresh_database().await? else {
        return Ok(());
    };
    let backend = Arc::new(orch_storage::PostgresBackend::connect_with_pool_size(&url, 4).await?);
    let sampler = backend.pool_sampler();
    let reading = |readings: Vec<orch_core::monitor::Reading>| {
        ensure!(
            readings.len() == 1 && readings[0].metric == Metric::PoolInUse,
            "{readings:?}"
        );
        Ok::<f64, anyhow::Error>(readings[0].value)
    };
    let idle = reading(sampler.sample().await?)?;
    ensure!(idle < 0.5, "{idle} in use with nothing under way");
    let held = (
        backend.begin().await?,
        backend.begin().await?,
        backend.begin().await?,
    );
    let busy = reading(sampler.sample().await?)?;
    ensure!(
        busy >= 0.75,
        "{busy} in use with three of four connections held"
    );
    drop(held);
    Ok(())
}
