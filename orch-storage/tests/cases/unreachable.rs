//! PostgreSQL down or not up yet: calls fail within the configured timeouts with an error
//! saying the database is unreachable, and a backend opened before its server starts connects
//! once the server is up. Each test runs a server of its own, which it stops and starts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use orch_core::backend::{NewTask, TaskStore as _};
use orch_core::{SharedBackend, TaskSpec};
use orch_storage::{PostgresBackend, PostgresOptions};

use crate::support::postgres::{PrivateServer, private_server};

/// A private server and a fresh database on it, or `None` when the test must be skipped.
async fn server() -> anyhow::Result<Option<(PrivateServer, String)>> {
    if std::env::var("ORCH_TEST_DATABASE_URL").is_ok_and(|url| !url.is_empty()) {
        println!("skipped: this test needs a server it starts and stops itself");
        return Ok(None);
    }
    let Some(server) = private_server(&["fsync=off"])? else {
        return Ok(None);
    };
    let url = server.fresh_database().await?;
    Ok(Some((server, url)))
}

async fn stop(server: PrivateServer) -> anyhow::Result<PrivateServer> {
    tokio::task::spawn_blocking(move || server.stop().map(|()| server)).await?
}

async fn start(server: PrivateServer) -> anyhow::Result<PrivateServer> {
    tokio::task::spawn_blocking(move || server.start_again().map(|()| server)).await?
}

fn task() -> anyhow::Result<Vec<NewTask>> {
    Ok(vec![TaskSpec::new("work").into_new_task()?])
}

/// With the server stopped, every call fails within the acquire timeout (not the pool's
/// 30 s default) and says the database is unreachable; once it is back, calls succeed
/// again with no help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_fast_saying_the_database_is_unreachable() -> anyhow::Result<()> {
    let Some((server, url)) = server().await? else {
        return Ok(());
    };
    let acquire_timeout = Duration::from_secs(1);
    let options = PostgresOptions::default()
        .with_pool_size(2)
        .with_acquire_timeout(acquire_timeout);
    let backend: SharedBackend = Arc::new(PostgresBackend::connect_with(&url, options).await?);
    backend.create_tasks(task()?).await?;
    let server = stop(server).await?;
    // The first calls find the pooled connections closed by the shutdown, the later ones
    // find no server to open new ones to.
    for call in 0..4 {
        let started = Instant::now();
        let Err(error) = backend.create_tasks(task()?).await else {
            bail!("call {call} succeeded with the server stopped");
        };
        let took = started.elapsed();
        ensure!(
            took < acquire_timeout + Duration::from_secs(4),
            "call {call} took {took:?} to fail"
        );
        println!("call {call} failed after {took:?}: {error}");
        ensure!(
            error.to_string().contains("the database is unreachable"),
            "call {call}: {error}"
        );
        // Told apart from a refused statement, so that callers (orchd answers 503) know a
        // retry may succeed.
        ensure!(
            matches!(error, orch_core::Error::Unavailable { .. }),
            "call {call}: {error:?}"
        );
    }
    let server = start(server).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(error) = backend.create_tasks(task()?).await {
        if Instant::now() > deadline {
            return Err(error).context("no call succeeded after the server came back");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(server);
    Ok(())
}

/// A backend opened while the server is down waits for it (the start-up wait) and connects
/// once it is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_opened_before_its_server_connects_once_it_is_up() -> anyhow::Result<()> {
    let Some((server, url)) = server().await? else {
        return Ok(());
    };
    let server = stop(server).await?;
    let options = PostgresOptions::default()
        .with_acquire_timeout(Duration::from_millis(500))
        .with_startup_wait(Duration::from_secs(60));
    let opening = tokio::spawn(async move { PostgresBackend::connect_with(&url, options).await });
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    ensure!(
        !opening.is_finished(),
        "the backend did not wait for its server: {:?}",
        opening.await?.err()
    );
    let server = start(server).await?;
    let backend = opening.await?.context("opening once the server was up")?;
    let created = backend.create_tasks(task()?).await?;
    ensure!(created.len() == 1);
    drop(server);
    Ok(())
}

/// The start-up wait is bounded: with no server at all, opening fails once it has passed,
/// saying how often it tried; an error waiting cannot fix (a database that does not exist)
/// fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_gives_up_after_its_startup_wait() -> anyhow::Result<()> {
    let Some((server, url)) = server().await? else {
        return Ok(());
    };
    let missing = format!("{}_missing", url);
    let started = Instant::now();
    let Err(error) = PostgresBackend::connect_with(&missing, PostgresOptions::default()).await
    else {
        bail!("opened a database that does not exist");
    };
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "a missing database was retried for {:?}: {error}",
        started.elapsed()
    );
    ensure!(error.to_string().contains("refused"), "{error}");
    let server = stop(server).await?;
    let options = PostgresOptions::default()
        .with_acquire_timeout(Duration::from_millis(300))
        .with_startup_wait(Duration::from_secs(2));
    let started = Instant::now();
    let Err(error) = PostgresBackend::connect_with(&url, options).await else {
        bail!("opened a backend with the server stopped");
    };
    let took = started.elapsed();
    ensure!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "gave up after {took:?}"
    );
    let message = error.to_string();
    println!("{message}");
    ensure!(
        message.contains("is unreachable") && message.contains("tried"),
        "{message}"
    );
    ensure!(
        matches!(error, orch_core::Error::Unavailable { .. }),
        "{error:?}"
    );
    drop(server);
    Ok(())
}

/// orch's sessions report the configured `application_name`, and a statement stuck behind a
/// row lock longer than the statement timeout fails instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_carry_their_name_and_statement_timeout() -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let Some(url) = crate::support::postgres::fresh_database().await? else {
        return Ok(());
    };
    let options = PostgresOptions::default()
        .with_application_name("orch-timeouts-test")
        .with_statement_timeout(Some(Duration::from_millis(500)));
    let backend: SharedBackend = Arc::new(PostgresBackend::connect_with(&url, options).await?);
    let created = backend.create_tasks(task()?).await?;
    let id = created.first().context("created")?.task.id;
    let mut other = sqlx::PgConnection::connect(&url).await?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT application_name FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut other)
    .await?;
    ensure!(names == ["orch-timeouts-test"], "{names:?}");
    let mut holding = other.begin().await?;
    sqlx::query("SELECT 1 FROM orch_tasks WHERE id = $1 FOR UPDATE")
        .bind(id.0)
        .execute(&mut *holding)
        .await?;
    let started = Instant::now();
    let cancelled = tokio::time::timeout(Duration::from_secs(20), backend.cancel_task(id)).await;
    let took = started.elapsed();
    let Ok(Err(error)) = cancelled else {
        bail!("the cancel did not fail on the statement timeout: {cancelled:?}");
    };
    ensure!(
        error.to_string().contains("statement timeout"),
        "{error} (after {took:?})"
    );
    holding.rollback().await?;
    ensure!(backend.cancel_task(id).await.is_ok());
    Ok(())
}
