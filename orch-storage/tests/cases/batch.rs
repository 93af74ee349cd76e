//! Batches of outcomes on PostgreSQL: relaxed worker commits keep every rule, and a result the
//! database cannot store as it is does not fail the rest of its batch.

use std::time::Duration;

use orch_core::backend::{AttemptOutcome, AttemptReport};
use orch_core::{SharedBackend, TaskStatus};
use serde_json::json;

use crate::{create, spec};

/// With worker-side commits not durable (`synchronous_commit = off` for claims and outcomes)
/// the backend still passes the conformance suite and agrees with the model.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_worker_commits_keep_the_semantics() -> anyhow::Result<()> {
    use orch_storage::{PostgresBackend, PostgresOptions};

    if crate::support::postgres::fresh_database().await?.is_none() {
        return Ok(());
    }
    let relaxed = || async {
        let url = match crate::support::postgres::fresh_database().await {
            Ok(Some(url)) => url,
            other => panic!("no database: {other:?}"),
        };
        let options = PostgresOptions::default().with_durable_worker_commits(false);
        match PostgresBackend::connect_with(&url, options).await {
            Ok(backend) => std::sync::Arc::new(backend) as SharedBackend,
            Err(e) => panic!("cannot connect: {e}"),
        }
    };
    orch_core::conformance::assert_conformance("postgres, relaxed commits", relaxed).await;
    orch_core::conformance::assert_model_conformance("postgres, relaxed commits", 8, relaxed).await;
    Ok(())
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
            AttemptReport {
                task_id: claimed[0].task.id,
                lease_token: claimed[0].lease_token,
                attempt: claimed[0].task.attempt,
                outcome: AttemptOutcome::Succeeded {
                    result: json!({"a\u{0}": ["x\u{0}y"]}),
                },
            },
            AttemptReport {
                task_id: claimed[1].task.id,
                lease_token: claimed[1].lease_token,
                attempt: claimed[1].task.attempt,
                outcome: AttemptOutcome::Succeeded { result: json!(1) },
            },
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
