//! Soak: three processes share one PostgreSQL under CPU pressure (spinning threads in each, so
//! more threads are runnable than the machine has cores), with a 2 s lease and up to 256
//! attempts at once in each process, some of them running longer than the lease so that only
//! renewals keep them. For the whole run (`ORCH_SOAK_SECONDS`, default 60):
//!
//! - no attempt of a live process is superseded: the event log holds no `task.rescued` (every
//!   process stays alive, so a rescue could only take a task from a live holder) and no task
//!   needed a second attempt;
//! - PostgreSQL detects no deadlock (`pg_stat_database.deadlocks`, and the server log).
//!
//! Its own test binary, so that its CPU pressure never shares a run with timing-sensitive tests.
//! The processes are this binary again, started with [`ROLE_VAR`] set.
#![cfg(feature = "postgres")]

// The shared PostgreSQL fixture; this binary uses only its private servers.
#[allow(dead_code)]
#[path = "support/postgres.rs"]
mod postgres;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use orch_core::{Orchestrator, OrchestratorConfig, SharedBackend, TaskSpec, processor_fn};
use orch_storage::PostgresBackend;
use serde_json::json;
use sqlx::PgPool;
use tokio::io::AsyncReadExt as _;

const PROCESSES: usize = 3;
const LEASE: Duration = Duration::from_secs(2);
/// Attempts at once in each process.
const CONCURRENCY: usize = 256;
/// Busy threads in each process.
const SPINNERS: usize = 2;
/// Tasks kept waiting in the queue.
const BACKLOG: i64 = 3_000;
/// Names the child's role; unset in a normal test run.
const ROLE_VAR: &str = "ORCH_SOAK_CHILD";

fn soak_duration() -> Duration {
    let seconds = std::env::var("ORCH_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(seconds)
}

/// One task of the mix: most take a few milliseconds, one in ten runs one to four seconds
/// (past its 2 s lease, which only renewals extend).
fn spec(n: u64) -> TaskSpec {
    let ms = if n.is_multiple_of(10) {
        1_000 + n * 37 % 3_000
    } else {
        5 + n * 13 % 45
    };
    TaskSpec::new("soak")
        .payload(json!({ "ms": ms }))
        .timeout(Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_processes_keep_their_leases_under_cpu_pressure() -> anyhow::Result<()> {
    if std::env::var(ROLE_VAR).is_ok() {
        return Ok(());
    }
    if std::env::var("ORCH_TEST_DATABASE_URL").is_ok_and(|url| !url.is_empty()) {
        println!("skipped: the soak reads the log of a server it starts itself");
        return Ok(());
    }
    let Some(server) = postgres::private_server(&["fsync=off"])? else {
        return Ok(());
    };
    let url = server.fresh_database().await?;
    let backend: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
    let pool = PgPool::connect(&url).await?;

    let mut children = Vec::new();
    for p in 0..PROCESSES {
        children.push(spawn(&url, &format!("p{p}"))?);
    }
    let duration = soak_duration();
    let started = tokio::time::Instant::now();
    let mut next = 0u64;
    while started.elapsed() < duration {
        let queued: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orch_tasks WHERE status = 'queued'")
                .fetch_one(&pool)
                .await?;
        if queued < BACKLOG {
            let batch = (next..next + 500)
                .map(|n| spec(n).into_new_task())
                .collect::<Result<Vec<_>, _>>()?;
            next += 500;
            backend.create_tasks(batch).await?;
        }
        for (p, child) in children.iter_mut().enumerate() {
            if let Some(status) = child.try_wait()? {
                bail!("process p{p} exited mid-run with {status}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Everything the log holds so far happened while every process was alive.
    let (rescued, retried, succeeded) = tally(&pool).await?;
    for (p, mut child) in children.into_iter().enumerate() {
        drop(child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .with_context(|| format!("p{p} did not stop"))??;
        ensure!(status.success(), "p{p} exited with {status}");
    }
    // The processes' sessions have ended and reported their statistics.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deadlocks: i64 = sqlx::query_scalar(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&pool)
    .await?;
    let logged = server.log().matches("deadlock detected").count();
    println!(
        "soak: {:?}, {succeeded} attempts succeeded, {rescued} rescued, {retried} retried, \
         {deadlocks} deadlocks ({logged} in the server log)",
        duration
    );
    ensure!(
        succeeded >= 1_000,
        "only {succeeded} attempts succeeded: the soak did no real work"
    );
    ensure!(
        rescued == 0 && retried == 0,
        "live processes were superseded: {rescued} rescues, {retried} tasks on a second attempt"
    );
    ensure!(
        deadlocks == 0 && logged == 0,
        "PostgreSQL detected {deadlocks} deadlocks ({logged} logged)"
    );
    pool.close().await;
    drop(server);
    Ok(())
}

/// `task.rescued` events, tasks past their first attempt, and `task.succeeded` events.
async fn tally(pool: &PgPool) -> anyhow::Result<(i64, i64, i64)> {
    let (rescued, succeeded): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE kind = 'task.rescued'), \
                count(*) FILTER (WHERE kind = 'task.succeeded') \
         FROM orch_event_batches, unnest(kinds) AS kind",
    )
    .fetch_one(pool)
    .await?;
    let retried: i64 = sqlx::query_scalar("SELECT count(*) FROM orch_tasks WHERE attempt > 1")
        .fetch_one(pool)
        .await?;
    Ok((rescued, retried, succeeded))
}

/// Starts this binary as process `name` of the soak. Closing its stdin stops it.
fn spawn(url: &str, name: &str) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    tokio::process::Command::new(exe)
        .args(["--exact", "child_process", "--nocapture", "--quiet"])
        .env(ROLE_VAR, name)
        .env("ORCH_SOAK_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting a soak process")
}

/// A soak process: busy threads, and an orchestrator running tasks until stdin closes.
#[test]
fn child_process() {
    let Ok(name) = std::env::var(ROLE_VAR) else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..SPINNERS)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building a runtime")
        .and_then(|runtime| runtime.block_on(run_child(&name)));
    stop.store(true, Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().ok();
    }
    if let Err(error) = outcome {
        eprintln!("soak process {name}: {error:#}");
        std::process::exit(1);
    }
}

async fn run_child(name: &str) -> anyhow::Result<()> {
    let url = std::env::var("ORCH_SOAK_URL").context("ORCH_SOAK_URL is not set")?;
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{separator}application_name={name}");
    let backend: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
    let engine = processor_fn(|_ctx, input: serde_json::Value| async move {
        let ms = input["ms"].as_u64().unwrap_or(10);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(serde_json::Value::Null)
    });
    let orch = Orchestrator::builder(backend)
        .config(
            OrchestratorConfig::default()
                .with_node_id(name)
                .with_lease(LEASE)
                .with_rescue_interval(Duration::from_millis(250))
                .with_global_concurrency(CONCURRENCY)
                .with_default_engine_concurrency(CONCURRENCY),
        )
        .engine("soak", engine)
        .build()
        .await?;
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0_u8; 64];
    while !matches!(stdin.read(&mut buffer).await, Ok(0) | Err(_)) {}
    orch.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
