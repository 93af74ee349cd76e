//! `finish_attempts` (one transaction on SQLite, one statement on PostgreSQL) gives, item by
//! item, exactly what `finish_attempt` called in turn gives, including duplicates, stale
//! tokens and unknown tasks.

use std::time::Duration;

use orch_core::{
    AttemptOutcome, Error, EventKind, LeaseToken, MemoryBackend, SharedBackend, TaskId, TaskStatus,
};
use serde_json::json;

use crate::{create, spec, task_event_kinds};

/// What one run of the scenario left behind, with tasks named by their position.
#[derive(Debug, PartialEq)]
struct Outcome {
    items: Vec<String>,
    tasks: Vec<(TaskStatus, u32, Option<String>, Option<serde_json::Value>)>,
    events: Vec<Vec<EventKind>>,
}

/// Claims four tasks, then reports a batch mixing every case; with `batched` false the same
/// reports go through `finish_attempt` one by one.
async fn scenario(backend: &SharedBackend, batched: bool) -> anyhow::Result<Outcome> {
    // A core per run: a task requeued by an earlier run must not be claimed by a later one.
    let core = if batched { "batched" } else { "one-by-one" };
    let tasks = create(
        backend,
        (0..4).map(|_| spec(core).max_attempts(3)).collect(),
    )
    .await?;
    let claimed = backend
        .claim_tasks(core, 4, Duration::from_secs(60))
        .await?;
    anyhow::ensure!(claimed.len() == 4, "claimed {}", claimed.len());
    let position = |id: TaskId| tasks.iter().position(|t| t.id == id);
    let mut by_position = [None; 4];
    for c in &claimed {
        if let Some(i) = position(c.task.id) {
            by_position[i] = Some((c.task.id, c.lease_token));
        }
    }
    let lease = |i: usize| by_position[i].ok_or_else(|| anyhow::anyhow!("task {i} not claimed"));
    let (t0, l0) = lease(0)?;
    let (t1, l1) = lease(1)?;
    let (t2, l2) = lease(2)?;
    let (t3, l3) = lease(3)?;
    let unknown = TaskId::new();
    let ok = |v: serde_json::Value| AttemptOutcome::Succeeded { result: v };
    let reports = vec![
        (t0, l0, ok(json!({"n": 0}))),
        // The same lease twice: the second report comes too late.
        (t0, l0, ok(json!({"n": 1}))),
        // A stale token, then the real one.
        (t1, LeaseToken::new(), ok(json!("stale"))),
        (
            t1,
            l1,
            AttemptOutcome::Failed {
                error: "try again".into(),
                retry_in: Some(Duration::from_secs(3600)),
            },
        ),
        (unknown, LeaseToken::new(), ok(json!(null))),
        (t2, l2, AttemptOutcome::TimedOut { retry_in: None }),
        (t3, l3, AttemptOutcome::Abandoned),
    ];
    let results: Vec<Result<TaskStatus, Error>> = if batched {
        backend.finish_attempts(reports).await?
    } else {
        let mut results = Vec::new();
        for (id, token, outcome) in reports {
            results.push(
                backend
                    .finish_attempt(id, token, outcome)
                    .await
                    .map(|t| t.status),
            );
        }
        results
    };
    let name = |id: TaskId| match position(id) {
        Some(i) => format!("task{i}"),
        None if id == unknown => "unknown".to_owned(),
        None => id.to_string(),
    };
    let items = results
        .into_iter()
        .map(|r| match r {
            Ok(status) => format!("ok {status:?}"),
            Err(Error::LeaseLost(id)) => format!("lease lost {}", name(id)),
            Err(Error::TaskNotFound(id)) => format!("not found {}", name(id)),
            Err(other) => format!("error {other}"),
        })
        .collect();
    let mut states = Vec::new();
    let mut events = Vec::new();
    for task in &tasks {
        let now = backend
            .get_task(task.id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("task vanished"))?;
        states.push((now.status, now.attempt, now.error, now.result));
        events.push(task_event_kinds(backend, task.id).await?);
    }
    Ok(Outcome {
        items,
        tasks: states,
        events,
    })
}

pub(crate) async fn finish_attempts_matches_finish_attempt(
    backend: SharedBackend,
) -> anyhow::Result<()> {
    let expected = scenario(
        &(std::sync::Arc::new(MemoryBackend::new()) as SharedBackend),
        false,
    )
    .await?;
    anyhow::ensure!(
        expected.items.len() == 7 && expected.items[1] == "lease lost task0",
        "the memory backend's reference run is not what this test expects: {expected:?}"
    );
    let batched = scenario(&backend, true).await?;
    anyhow::ensure!(
        batched == expected,
        "batched:\n{batched:#?}\nexpected (memory, one by one):\n{expected:#?}"
    );
    let single = scenario(&backend, false).await?;
    anyhow::ensure!(single == expected, "one by one:\n{single:#?}");
    Ok(())
}

/// With worker-side commits not durable (`synchronous_commit = off` for claims and outcomes)
/// every transition behaves exactly as with durable ones.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_worker_commits_keep_the_semantics() -> anyhow::Result<()> {
    use orch_storage::{PostgresBackend, PostgresOptions};

    let Some(url) = crate::support::postgres::fresh_database().await? else {
        return Ok(());
    };
    let options = PostgresOptions::default().with_durable_worker_commits(false);
    let backend: SharedBackend =
        std::sync::Arc::new(PostgresBackend::connect_with(&url, options).await?);
    // The scripted comparison needs an empty database: first.
    crate::behaves_like_the_memory_backend(backend.clone()).await?;
    finish_attempts_matches_finish_attempt(backend).await
}

/// A result holding NUL (which PostgreSQL's `jsonb` refuses) is recorded, with U+FFFD in its
/// place, and does not fail the other reports of its batch.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_with_nul_does_not_fail_the_batch() -> anyhow::Result<()> {
    let Some(fixture) = crate::support::postgres().await? else {
        return Ok(());
    };
    let backend = fixture.backend.clone();
    create(&backend, vec![spec("nul"), spec("nul")]).await?;
    let claimed = backend
        .claim_tasks("nul", 2, Duration::from_secs(60))
        .await?;
    anyhow::ensure!(claimed.len() == 2);
    let results = backend
        .finish_attempts(vec![
            (
                claimed[0].task.id,
                claimed[0].lease_token,
                AttemptOutcome::Succeeded {
                    result: json!({"a\u{0}": ["x\u{0}y"]}),
                },
            ),
            (
                claimed[1].task.id,
                claimed[1].lease_token,
                AttemptOutcome::Succeeded { result: json!(1) },
            ),
        ])
        .await?;
    anyhow::ensure!(
        results
            .iter()
            .all(|r| matches!(r, Ok(TaskStatus::Succeeded))),
        "{results:?}"
    );
    let stored = backend
        .get_task(claimed[0].task.id)
        .await?
        .and_then(|t| t.result);
    anyhow::ensure!(
        stored == Some(json!({"a\u{FFFD}": ["x\u{FFFD}y"]})),
        "{stored:?}"
    );
    Ok(())
}
