//! Task locks on the database backends: tasks naming one resource never overlap, whether the
//! orchestrator runs them or an external worker claimed them, and every holder gets a fencing
//! token above the one before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use orch_core::{
    Orchestrator, OrchestratorConfig, SharedBackend, TaskSpec, TaskStatus, WorkerReport,
    processor_fn,
};
use serde_json::Value;

fn config() -> OrchestratorConfig {
    OrchestratorConfig::default()
        .with_global_concurrency(8)
        .with_poll_interval(Duration::from_millis(100))
        .with_retention(None)
}

/// Twelve tasks on two resources, eight slots: at most one task per resource runs at a time,
/// the two resources run side by side, and the fencing tokens grow.
async fn tasks_naming_one_resource_never_overlap(backend: SharedBackend) -> anyhow::Result<()> {
    let in_flight = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let most = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let total = Arc::new(AtomicUsize::new(0));
    let most_total = Arc::new(AtomicUsize::new(0));
    let last_token = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let engine = {
        let (in_flight, most, total, most_total, last_token) = (
            in_flight.clone(),
            most.clone(),
            total.clone(),
            most_total.clone(),
            last_token.clone(),
        );
        processor_fn(move |ctx, input: Value| {
            let (in_flight, most, total, most_total, last_token) = (
                in_flight.clone(),
                most.clone(),
                total.clone(),
                most_total.clone(),
                last_token.clone(),
            );
            async move {
                let key = input.as_u64().unwrap_or(0) as usize % 2;
                let token = ctx
                    .fencing_token(&format!("account-{key}"))
                    .ok_or("no fencing token in the context")?;
                if last_token[key].swap(token.0, Ordering::SeqCst) >= token.0 {
                    return Err("a fencing token did not grow".into());
                }
                let now = in_flight[key].fetch_add(1, Ordering::SeqCst) + 1;
                most[key].fetch_max(now, Ordering::SeqCst);
                let all = total.fetch_add(1, Ordering::SeqCst) + 1;
                most_total.fetch_max(all, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                in_flight[key].fetch_sub(1, Ordering::SeqCst);
                total.fetch_sub(1, Ordering::SeqCst);
                Ok(Value::Null)
            }
        })
    };
    let orch = Orchestrator::builder(backend)
        .config(config())
        .engine("keyed", engine)
        .build()
        .await?;
    let specs = (0..12u64)
        .map(|i| {
            TaskSpec::new("keyed")
                .payload(Value::from(i % 2))
                .lock(format!("account-{}", i % 2))
        })
        .collect();
    for created in orch.dispatch_many(specs).await? {
        let task = orch
            .wait_for(created.task.id, Duration::from_secs(60))
            .await?;
        ensure!(task.status == TaskStatus::Succeeded, "{task:?}");
    }
    for key in 0..2 {
        ensure!(
            most[key].load(Ordering::SeqCst) == 1,
            "two tasks held account-{key} at once"
        );
    }
    ensure!(
        most_total.load(Ordering::SeqCst) == 2,
        "tasks on different resources did not run side by side"
    );
    orch.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// A task claimed by an external worker holds its locks until the worker reports: a task of
/// the orchestrator's own naming the resource waits, another external claim of such a task
/// gives it back (its attempt not counted), and the next holders get higher fencing tokens.
async fn an_external_worker_holds_its_task_locks(backend: SharedBackend) -> anyhow::Result<()> {
    let seen = Arc::new(AtomicU64::new(0));
    let engine = {
        let seen = seen.clone();
        processor_fn(move |ctx, _input| {
            let seen = seen.clone();
            async move {
                let token = ctx.fencing_token("r").ok_or("no fencing token")?;
                seen.store(token.0, Ordering::SeqCst);
                Ok(Value::Null)
            }
        })
    };
    let orch = Orchestrator::builder(backend)
        .config(config())
        .engine("inside", engine)
        .build()
        .await?;
    let outside = orch.dispatch(TaskSpec::new("outside").lock("r")).await?;
    let claimed = orch.claim("outside", 1, None).await?;
    let [claimed] = &claimed[..] else {
        anyhow::bail!("claimed {} tasks", claimed.len());
    };
    ensure!(claimed.task.id == outside.id);
    let [held] = &claimed.locks[..] else {
        anyhow::bail!("the claim holds {} locks", claimed.locks.len());
    };
    ensure!(held.resource == "r");

    let inside = orch.dispatch(TaskSpec::new("inside").lock("r")).await?;
    let second = orch.dispatch(TaskSpec::new("outside").lock("r")).await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    ensure!(
        orch.get(inside.id).await?.status == TaskStatus::Running,
        "the orchestrator's task ran while an external worker held its lock"
    );
    ensure!(
        orch.claim("outside", 1, None).await?.is_empty(),
        "a second external claim got a task whose lock is held"
    );
    let given_back = orch.get(second.id).await?;
    ensure!(
        given_back.status == TaskStatus::Queued && given_back.attempt == 0,
        "a task whose lock was taken should go back unrun: {given_back:?}"
    );

    let reported = orch
        .report(
            claimed.task.id,
            claimed.lease_token,
            WorkerReport::Succeeded(Value::Null),
        )
        .await?;
    ensure!(reported.status == TaskStatus::Succeeded);
    let inside = orch.wait_for(inside.id, Duration::from_secs(30)).await?;
    ensure!(inside.status == TaskStatus::Succeeded, "{inside:?}");
    let inside_token = seen.load(Ordering::SeqCst);
    ensure!(
        inside_token > held.fencing_token.0,
        "fencing token {inside_token} is not above the external worker's {}",
        held.fencing_token
    );
    let mut next = Vec::new();
    for _ in 0..50 {
        next = orch.claim("outside", 1, None).await?;
        if !next.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = next
        .first()
        .context("the given-back task was never claimed")?;
    ensure!(next.task.id == second.id && next.task.attempt == 1);
    let token = next.locks.first().context("no lock held")?.fencing_token.0;
    ensure!(
        token > inside_token,
        "fencing token {token} not above {inside_token}"
    );
    orch.report(next.task.id, next.lease_token, WorkerReport::TimedOut)
        .await?;
    ensure!(
        orch.locks().info("r").await?.is_none(),
        "a report left the task's lock held"
    );
    orch.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

macro_rules! on_each_backend {
    ($($check:ident),* $(,)?) => {
        #[cfg(feature = "sqlite")]
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() -> anyhow::Result<()> {
                    let fixture = crate::support::sqlite().await?;
                    super::$check(fixture.backend.clone()).await
                }
            )*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() -> anyhow::Result<()> {
                    let Some(fixture) = crate::support::postgres().await? else {
                        return Ok(());
                    };
                    super::$check(fixture.backend.clone()).await
                }
            )*
        }
    };
}

on_each_backend!(
    tasks_naming_one_resource_never_overlap,
    an_external_worker_holds_its_task_locks,
);
