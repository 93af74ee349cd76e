//! Claims on PostgreSQL that resume after the last task claimed (`PostgresOptions::slow_claim`):
//! a resumed claim starts past the claimed tasks, and the next claim from the head finds what a
//! resumed one cannot see (a more urgent task, a task given back, by another client); no task
//! is claimed twice or left behind. (What one backend itself does before a claim begins, the
//! claim sees: the suites run with claims always resuming, in `storage.rs`.)
//!
//! (That claims resume only while claims from the head are slow, beside a transaction holding
//! an old snapshot, is measured by the storage bench's `horizon` scenario, not tested.)

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use orch_core::backend::{AttemptOutcome, AttemptReport, NewTask, TaskStore};
use orch_core::{TaskId, TaskSpec};
use orch_storage::{PostgresBackend, PostgresOptions};

use crate::support::postgres::fresh_database;

const LEASE: Duration = Duration::from_secs(60);

/// How long after a claim from the head the claims resume (see `PostgresOptions::slow_claim`).
const RESUMING_FOR: Duration = Duration::from_millis(250);

fn tasks(engine: &str, n: usize, priority: i32) -> anyhow::Result<Vec<NewTask>> {
    (0..n)
        .map(|_| Ok(TaskSpec::new(engine).priority(priority).into_new_task()?))
        .collect()
}

async fn claim(backend: &PostgresBackend, engine: &str, n: usize) -> anyhow::Result<Vec<TaskId>> {
    Ok(backend
        .claim_tasks(engine, n, LEASE)
        .await?
        .into_iter()
        .map(|c| c.task.id)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_claims_start_past_the_claimed_tasks_and_the_head_finds_the_rest()
-> anyhow::Result<()> {
    let Some(url) = fresh_database().await? else {
        return Ok(());
    };
    // Every claim counts as slow: claims resume after each claim from the head.
    let options = PostgresOptions::default().with_slow_claim(Duration::ZERO);
    let backend = PostgresBackend::connect_with(&url, options).await?;
    // Another client of the database (another process): what it does, this backend does not
    // see (what it does itself makes its next claim start from the head).
    let other = PostgresBackend::connect(&url).await?;
    // A busy machine can stretch the two claims past the time claims resume: try again, on
    // an engine of its own.
    for round in 0..5 {
        let engine = format!("resume-{round}");
        let queued: Vec<TaskId> = backend
            .create_tasks(tasks(&engine, 30, 0)?)
            .await?
            .into_iter()
            .map(|c| c.task.id)
            .collect();
        let started = Instant::now();
        let first = claim(&backend, &engine, 10).await?;
        let took = started.elapsed();
        ensure!(first == queued[..10], "the first claim took {first:?}");
        // More urgent than every task left, dispatched by the other client: before the floor
        // in claim order.
        let urgent = other.create_tasks(tasks(&engine, 1, 9)?).await?[0].task.id;
        let second = claim(&backend, &engine, 10).await?;
        if started.elapsed() >= RESUMING_FOR {
            continue;
        }
        ensure!(
            second == queued[10..20],
            "a resumed claim took {second:?}, not the ten after the first claim's"
        );
        // Past the time claims resume (a quarter of a second, or twenty times the claim from
        // the head): a claim from the head, the most urgent task first.
        let resuming = RESUMING_FOR.max(took * 20);
        tokio::time::sleep(resuming + Duration::from_millis(50)).await;
        let third = claim(&backend, &engine, 5).await?;
        ensure!(
            third.first() == Some(&urgent),
            "a claim from the head took {third:?}, not the urgent task {urgent} first"
        );
        ensure!(
            third[1..] == queued[20..24],
            "after the urgent task, {third:?}"
        );
        // Every task is claimed once, whatever the claims' kind.
        let mut seen: HashSet<TaskId> =
            first.iter().chain(&second).chain(&third).copied().collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.len() < queued.len() + 1 {
            if Instant::now() > deadline {
                bail!("{} of {} tasks claimed", seen.len(), queued.len() + 1);
            }
            for id in claim(&backend, &engine, 3).await? {
                ensure!(seen.insert(id), "task {id} claimed twice");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        return Ok(());
    }
    bail!("five rounds of two claims each took longer than claims resume")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_given_back_behind_a_resumed_claim_is_claimed_again() -> anyhow::Result<()> {
    let Some(url) = fresh_database().await? else {
        return Ok(());
    };
    let options = PostgresOptions::default().with_slow_claim(Duration::ZERO);
    let backend = PostgresBackend::connect_with(&url, options).await?;
    let other = PostgresBackend::connect(&url).await?;
    let engine = "given-back";
    backend.create_tasks(tasks(engine, 6, 0)?).await?;
    let claimed = backend.claim_tasks(engine, 3, LEASE).await?;
    ensure!(claimed.len() == 3, "claimed {}", claimed.len());
    // The first task claimed goes back to the queue (through the other client, as a process
    // holding it would), before the floor in claim order.
    let given = &claimed[0];
    other
        .finish_attempts(vec![AttemptReport {
            task_id: given.task.id,
            lease_token: given.lease_token,
            attempt: given.task.attempt,
            outcome: AttemptOutcome::Abandoned,
        }])
        .await?;
    let mut seen: HashSet<TaskId> = claimed[1..].iter().map(|c| c.task.id).collect();
    let mut again = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 5 || !again {
        if Instant::now() > deadline {
            bail!(
                "the task given back was not claimed again ({} others)",
                seen.len()
            );
        }
        for id in claim(&backend, engine, 2).await? {
            if id == given.task.id {
                ensure!(!again, "the task given back was claimed twice");
                again = true;
            } else {
                ensure!(seen.insert(id), "task {id} claimed twice");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
