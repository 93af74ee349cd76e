//! Acceptance 5: PostgreSQL is restarted (`pg_ctl restart -m immediate`, which cuts every
//! session as a crash would) while an orchestrator is busy; with no manual step the
//! orchestrator reconnects and every task succeeds, including tasks dispatched after the
//! restart.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use orch_core::{Orchestrator, OrchestratorConfig, SharedBackend, TaskSpec, TaskStatus};
use orch_storage::PostgresBackend;

use super::recording_engine;

const BEFORE: usize = 2_000;
const AFTER: usize = 200;

async fn count_succeeded(url: &str) -> anyhow::Result<i64> {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
    let n = sqlx::query_scalar("SELECT count(*) FROM orch_tasks WHERE status = 'succeeded'")
        .fetch_one(&mut conn)
        .await?;
    sqlx::Connection::close(conn).await.ok();
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrator_rides_out_a_postgres_restart() -> anyhow::Result<()> {
    if std::env::var("ORCH_TEST_DATABASE_URL").is_ok_and(|url| !url.is_empty()) {
        println!("skipped: the restart test needs a server it starts itself");
        return Ok(());
    }
    // Commits must survive the immediate shutdown (fsync only matters if the OS crashes).
    let Some(server) = crate::support::postgres::private_server(&["fsync=off"])? else {
        return Ok(());
    };
    let url = server.fresh_database().await?;
    let backend: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
    let (ran, engine) = recording_engine();
    let orch = Orchestrator::builder(backend)
        .config(
            OrchestratorConfig::default()
                .with_lease(Duration::from_secs(3))
                .with_rescue_interval(Duration::from_millis(500))
                .with_poll_interval(Duration::from_millis(200)),
        )
        .engine("r", engine)
        .build()
        .await?;
    let specs = |n: usize| (0..n).map(|_| TaskSpec::new("r")).collect::<Vec<_>>();
    for _ in 0..BEFORE / 500 {
        orch.dispatch_many(specs(500)).await?;
    }
    // Restart once the orchestrator is well into the work.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ran.lock().len() < BEFORE / 5 {
        if tokio::time::Instant::now() > deadline {
            bail!("only {} tasks ran before the restart", ran.lock().len());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let server = tokio::task::spawn_blocking(move || {
        server.restart_immediately()?;
        anyhow::Ok(server)
    })
    .await??;
    // The application retries its own call until the server is back; the orchestrator needs
    // no help.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match orch.dispatch_many(specs(AFTER)).await {
            Ok(created) if created.len() == AFTER => break,
            Ok(created) => bail!("{} of {AFTER} dispatched", created.len()),
            Err(error) if tokio::time::Instant::now() > deadline => {
                return Err(error).context("dispatch after the restart");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let total = (BEFORE + AFTER) as i64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done = count_succeeded(&url).await.unwrap_or(0);
        if done == total {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("only {done} of {total} tasks succeeded after the restart");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tasks = orch
        .list(orch_core::TaskFilter {
            status: Some(TaskStatus::Succeeded),
            limit: 10,
            ..Default::default()
        })
        .await?;
    anyhow::ensure!(
        !tasks.is_empty(),
        "the backend does not answer after the restart"
    );
    orch.shutdown(Duration::from_secs(5)).await;
    drop(server);
    Ok(())
}
