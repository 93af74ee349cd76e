//! Engine controls and node health between orchestrators on one database (two processes'
//! view: each has its own backend connection): a pause made by one holds for the other
//! (SQLite and PostgreSQL), and of two nodes on one PostgreSQL, one whose health fails
//! reports not ready and claims nothing while the other finishes the work, then rejoins.
//!
//! The other orchestrator polls every 100 ms: were it to ignore a pause, it would claim within
//! the seconds these tests watch it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::ensure;
use orch_core::monitor::{Metric, MonitorConfig, Reading, sampler_fn};
use orch_core::{
    EngineStatus, Healing, NodeHealthCheck, Orchestrator, OrchestratorConfig, SharedBackend,
    TaskSpec, TaskStatus, Tuning, event_kinds,
};

use super::recording_engine;
use crate::eventually;

fn quick() -> OrchestratorConfig {
    OrchestratorConfig::default().with_tuning(
        Tuning::default()
            .with_poll_interval(Duration::from_millis(100))
            .with_control_refresh(Duration::from_millis(200)),
    )
}

/// `first` pauses the engine `work` that only `second` serves; `second` claims none of its
/// tasks until `first` resumes it, whether the pause came before `second` started or while
/// it ran.
async fn a_pause_holds_for_another_orchestrator(
    first: SharedBackend,
    second: SharedBackend,
) -> anyhow::Result<()> {
    let pauser = Orchestrator::builder(first)
        .config(quick().with_node_id("pauser"))
        .build()
        .await?;
    ensure!(
        pauser
            .pause_engine("work", "user:alice", "maintenance")
            .await?
    );
    let (ran, engine) = recording_engine();
    let worker = Orchestrator::builder(second)
        .config(quick().with_node_id("worker"))
        .engine("work", engine)
        .build()
        .await?;
    let task = worker.dispatch(TaskSpec::new("work")).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        ran.lock().is_empty(),
        "the worker ran a paused engine's task"
    );
    ensure!(worker.get(task.id).await?.status == TaskStatus::Queued);
    let state = worker.engine_state("work")?;
    ensure!(state.status == EngineStatus::Paused, "{state:?}");
    ensure!(state.pause.as_ref().is_some_and(|p| p.node == "pauser"));

    pauser.resume_engine("work", "user:alice", "done").await?;
    let done = worker.wait_for(task.id, Duration::from_secs(30)).await?;
    ensure!(done.status == TaskStatus::Succeeded);

    // Paused while the worker runs: it learns within a refresh.
    pauser.pause_engine("work", "user:alice", "again").await?;
    eventually("the worker sees the pause", || async {
        Ok((worker.engine_state("work")?.status == EngineStatus::Paused).then_some(()))
    })
    .await?;
    let late = worker.dispatch(TaskSpec::new("work")).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(worker.get(late.id).await?.status == TaskStatus::Queued);
    pauser.resume_engine("work", "user:alice", "go").await?;
    let done = worker.wait_for(late.id, Duration::from_secs(30)).await?;
    ensure!(done.status == TaskStatus::Succeeded);
    ensure!(ran.lock().len() == 2);

    let paused = pauser.events().replay(0, 10_000).await?;
    let pauses: Vec<_> = paused
        .iter()
        .filter(|e| e.kind.as_str() == event_kinds::ENGINE_PAUSED)
        .collect();
    ensure!(pauses.len() == 2 && pauses.iter().all(|e| e.data["actor"] == "user:alice"));
    worker.shutdown(Duration::from_secs(5)).await;
    pauser.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_for_another_orchestrator_on_one_sqlite_file() -> anyhow::Result<()> {
    use anyhow::Context as _;
    use orch_storage::SqliteBackend;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("orch.db");
    let path = path.to_str().context("utf-8")?;
    let first: SharedBackend = Arc::new(SqliteBackend::open(path).await?);
    let second: SharedBackend = Arc::new(SqliteBackend::open(path).await?);
    a_pause_holds_for_another_orchestrator(first, second).await
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_for_another_orchestrator_on_one_postgres_database() -> anyhow::Result<()> {
    use orch_storage::PostgresBackend;
    let Some(url) = crate::support::postgres::fresh_database().await? else {
        return Ok(());
    };
    let first: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
    let second: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
    a_pause_holds_for_another_orchestrator(first, second).await
}

/// Of two nodes on one PostgreSQL, `a`'s disk fills up: it leaves rotation and claims
/// nothing while `b` finishes the work; with room again it rejoins and claims.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_out_of_health_stops_claiming_while_the_other_works_and_rejoins()
-> anyhow::Result<()> {
    use orch_storage::PostgresBackend;
    let Some(url) = crate::support::postgres::fresh_database().await? else {
        return Ok(());
    };
    let disk_full = Arc::new(AtomicBool::new(false));
    let disk = {
        let full = disk_full.clone();
        sampler_fn(move || {
            let percent = if full.load(Ordering::SeqCst) {
                99.5
            } else {
                40.0
            };
            async move { Ok(vec![Reading::new(Metric::DiskPercent, percent)]) }
        })
    };
    let node = |id: &str| {
        quick().with_node_id(id).with_healing(
            Healing::default()
                .with_enabled(true)
                .with_node_health(Some(NodeHealthCheck::default().with_failures(2))),
        )
    };
    let monitor = MonitorConfig::default()
        .with_interval(Duration::from_millis(200))
        .with_rules(Vec::new())
        .with_anomaly(None);
    let (ran_a, engine_a) = recording_engine();
    let a = Orchestrator::builder(Arc::new(PostgresBackend::connect(&url).await?))
        .config(node("a").with_monitor(Some(monitor.clone())))
        .sampler(disk)
        .engine("work", engine_a)
        .build()
        .await?;
    let (ran_b, engine_b) = recording_engine();
    let b = Orchestrator::builder(Arc::new(PostgresBackend::connect(&url).await?))
        .config(node("b").with_monitor(Some(monitor)))
        .engine("work", engine_b)
        .build()
        .await?;

    disk_full.store(true, Ordering::SeqCst);
    eventually("a leaves rotation", || async {
        Ok((!a.readiness().ready).then_some(()))
    })
    .await?;
    ensure!(b.readiness().ready);
    let reason = a.readiness().reason.unwrap_or_default();
    ensure!(reason.contains("disk"), "{reason}");
    let mut ids = Vec::new();
    for created in b
        .dispatch_many((0..50).map(|_| TaskSpec::new("work")).collect())
        .await?
    {
        ids.push(created.task.id);
    }
    for id in &ids {
        let done = b.wait_for(*id, Duration::from_secs(30)).await?;
        ensure!(done.status == TaskStatus::Succeeded);
    }
    ensure!(ran_a.lock().is_empty(), "a claimed while out of rotation");
    ensure!(ran_b.lock().len() == 50);

    disk_full.store(false, Ordering::SeqCst);
    eventually("a rejoins", || async {
        Ok(a.readiness().ready.then_some(()))
    })
    .await?;
    b.shutdown(Duration::from_secs(5)).await;
    let task = a.dispatch(TaskSpec::new("work")).await?;
    let done = a.wait_for(task.id, Duration::from_secs(30)).await?;
    ensure!(done.status == TaskStatus::Succeeded);
    ensure!(ran_a.lock().len() == 1);
    let events = a.events().replay(0, 10_000).await?;
    let kinds: Vec<_> = events
        .iter()
        .filter(|e| e.kind.as_str().starts_with("node."))
        .map(|e| (e.kind.as_str().to_owned(), e.data["node"].clone()))
        .collect();
    ensure!(
        kinds
            == [
                (event_kinds::NODE_NOT_READY.to_owned(), "a".into()),
                (event_kinds::NODE_READY.to_owned(), "a".into())
            ],
        "{kinds:?}"
    );
    a.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
