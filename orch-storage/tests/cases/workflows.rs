//! Workflows where only a database can show them: an existing database upgrades to the
//! schema with dependencies and keeps its tasks (SQLite and PostgreSQL); on PostgreSQL, parents
//! of shared children ending at the same moment in different connections release each child
//! exactly once and never deadlock, a parent that gains a dependent while its end is being
//! recorded still releases it, and a cascade cut short by a crash is finished by the sweep.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use orch_core::backend::{AttemptOutcome, AttemptReport, Claimed, TaskStore as _, plan_tasks};
use orch_core::{
    EventKind, OnParentFailure, SharedBackend, Step, TaskId, TaskSpec, TaskStatus, Workflow,
    WorkflowStatus,
};
use serde_json::json;

const MINUTE: Duration = Duration::from_secs(60);

/// The success report of `claimed`.
fn success(claimed: &Claimed) -> AttemptReport {
    AttemptReport {
        task_id: claimed.task.id,
        lease_token: claimed.lease_token,
        attempt: claimed.task.attempt,
        outcome: AttemptOutcome::Succeeded { result: json!(1) },
    }
}

async fn status(backend: &SharedBackend, id: TaskId) -> anyhow::Result<TaskStatus> {
    Ok(backend
        .get_task(id)
        .await?
        .context("the task vanished")?
        .status)
}

/// After an upgrade: the old tasks are as they were (one queued is claimed, one running
/// finishes with its lease), and a workflow runs on the upgraded schema.
async fn upgraded_keeps_its_tasks(
    backend: SharedBackend,
    queued: TaskId,
    running: (TaskId, uuid::Uuid),
    done: TaskId,
) -> anyhow::Result<()> {
    let kept = backend
        .get_task(done)
        .await?
        .context("the finished task went")?;
    ensure!(
        kept.status == TaskStatus::Succeeded && kept.result == Some(json!("old")),
        "{kept:?}"
    );
    ensure!(kept.workflow_id.is_none() && kept.waiting_for == 0);
    let claimed = backend.claim_tasks("old", 10, MINUTE).await?;
    ensure!(
        claimed.len() == 1 && claimed[0].task.id == queued,
        "claimed {claimed:?}"
    );
    let finished = backend
        .finish_attempts(vec![AttemptReport {
            task_id: running.0,
            lease_token: orch_core::LeaseToken(running.1),
            attempt: 1,
            outcome: AttemptOutcome::Succeeded { result: json!(2) },
        }])
        .await?;
    ensure!(
        matches!(finished.as_slice(), [Ok(TaskStatus::Succeeded)]),
        "{finished:?}"
    );
    // A workflow on the upgraded schema, depending on the old finished task.
    let mut flow = Workflow::new();
    let first = flow.add(TaskSpec::new("new").after(done));
    flow.add(TaskSpec::new("new").after(first));
    let (workflow, tasks) = flow.into_new()?;
    let created = backend.create_workflow(workflow, tasks).await?;
    for _ in 0..2 {
        let claimed = backend.claim_tasks("new", 10, MINUTE).await?;
        ensure!(claimed.len() == 1, "claimed {}", claimed.len());
        backend.finish_attempts(vec![success(&claimed[0])]).await?;
    }
    let info = backend
        .get_workflow(created.workflow.id)
        .await?
        .context("the workflow went")?;
    ensure!(info.status == WorkflowStatus::Succeeded, "{info:?}");
    Ok(())
}

/// A SQLite file of schema version 4 (before dependencies) upgrades with its tasks.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_sqlite_file_before_workflows_upgrades_with_its_tasks() -> anyhow::Result<()> {
    use sqlx::{ConnectOptions as _, Connection as _};
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("old.db");
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await?;
    super::lock_queue::migrator(&[
        (
            1,
            "init",
            include_str!("../../migrations/sqlite/0001_init.sql"),
        ),
        (
            2,
            "transition indexes",
            include_str!("../../migrations/sqlite/0002_transition_indexes.sql"),
        ),
        (
            3,
            "lock queue",
            include_str!("../../migrations/sqlite/0003_lock_queue.sql"),
        ),
        (
            4,
            "task events",
            include_str!("../../migrations/sqlite/0004_task_events.sql"),
        ),
    ])
    .run(&mut conn)
    .await?;
    let (queued, running, done) = (TaskId::new(), TaskId::new(), TaskId::new());
    let token = uuid::Uuid::new_v4();
    let now = chrono::Utc::now().timestamp_micros();
    for (id, status, token, result, finished) in [
        (queued, "queued", None, None, None),
        (running, "running", Some(token), None, None),
        (done, "succeeded", None, Some("\"old\""), Some(now)),
    ] {
        sqlx::query(
            "INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, \
             attempt, run_at, created_at, updated_at, started_at, finished_at, lease_token, \
             lease_expires_at, payload, metadata, result) VALUES (?, 'old', ?, 1, 1000000, 3, \
             ?, ?, ?, ?, ?, ?, ?, ?, 'null', 'null', ?)",
        )
        .bind(id.0)
        .bind(status)
        .bind(i64::from(status != "queued"))
        .bind(now)
        .bind(now)
        .bind(now)
        .bind((status != "queued").then_some(now))
        .bind(finished)
        .bind(token)
        .bind(token.map(|_| now + 60_000_000))
        .bind(result)
        .execute(&mut conn)
        .await?;
    }
    // A finished task dispatched with an idempotency key: the key still holds after the
    // upgrade (version 8 keeps keys unique through a partial index instead of the column's
    // constraint).
    let keyed = TaskId::new();
    sqlx::query(
        "INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, \
         attempt, run_at, created_at, updated_at, finished_at, payload, metadata, \
         idempotency_key) VALUES (?, 'old', 'succeeded', 1, 1000000, 3, 1, ?, ?, ?, ?, 'null', \
         'null', 'old-key')",
    )
    .bind(keyed.0)
    .bind(now)
    .bind(now)
    .bind(now)
    .bind(now)
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    let upgraded = orch_storage::SqliteBackend::open(path.to_str().context("utf-8")?).await?;
    ensure!(upgraded.schema_version().await? == 8);
    let again = upgraded
        .create_tasks(vec![
            TaskSpec::new("old")
                .idempotency_key("old-key")
                .into_new_task()?,
        ])
        .await?;
    ensure!(
        !again[0].created && again[0].task.id == keyed,
        "the old key gave {:?}",
        again[0]
    );
    upgraded_keeps_its_tasks(Arc::new(upgraded), queued, (running, token), done).await
}

/// A PostgreSQL database of schema version 5 (before dependencies) upgrades with its tasks.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_database_before_workflows_upgrades_with_its_tasks() -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let Some(url) = crate::support::postgres::fresh_database().await? else {
        return Ok(());
    };
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    super::lock_queue::migrator(&[
        (
            1,
            "init",
            include_str!("../../migrations/postgres/0001_init.sql"),
        ),
        (
            2,
            "transition indexes",
            include_str!("../../migrations/postgres/0002_transition_indexes.sql"),
        ),
        (
            3,
            "event batches",
            include_str!("../../migrations/postgres/0003_event_batches.sql"),
        ),
        (
            4,
            "lock queue",
            include_str!("../../migrations/postgres/0004_lock_queue.sql"),
        ),
        (
            5,
            "task events",
            include_str!("../../migrations/postgres/0005_task_events.sql"),
        ),
    ])
    .run(&mut conn)
    .await?;
    let (queued, running, done) = (TaskId::new(), TaskId::new(), TaskId::new());
    let token = uuid::Uuid::new_v4();
    for (id, status, token, result) in [
        (queued, "queued", None, None),
        (running, "running", Some(token), None),
        (done, "succeeded", None, Some(json!("old"))),
    ] {
        sqlx::query(
            "INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, \
             attempt, run_at, created_at, updated_at, started_at, finished_at, lease_token, \
             lease_expires_at, payload, metadata, result) VALUES ($1, 'old', $2, 1, 1000000, 3, \
             $3, now(), now(), now(), \
             CASE WHEN $2 <> 'queued' THEN now() END, \
             CASE WHEN $2 = 'succeeded' THEN now() END, $4, \
             CASE WHEN $4::uuid IS NOT NULL THEN now() + interval '1 minute' END, \
             'null', 'null', $5)",
        )
        .bind(id.0)
        .bind(status)
        .bind(i32::from(status != "queued"))
        .bind(token)
        .bind(result)
        .execute(&mut conn)
        .await?;
    }
    conn.close().await?;
    let upgraded = orch_storage::PostgresBackend::connect(&url).await?;
    ensure!(upgraded.schema_version().await? == 8);
    upgraded_keeps_its_tasks(Arc::new(upgraded), queued, (running, token), done).await
}

#[cfg(feature = "postgres")]
mod postgres {
    use orch_storage::PostgresBackend;
    use sqlx::Connection as _;

    use super::*;

    /// Two backends (as two processes would have) on a fresh database, and its URL.
    async fn two() -> anyhow::Result<Option<(SharedBackend, SharedBackend, String)>> {
        let Some(url) = crate::support::postgres::fresh_database().await? else {
            return Ok(None);
        };
        let a: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
        let b: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
        Ok(Some((a, b, url)))
    }

    /// Deadlocks PostgreSQL detected in the database so far.
    async fn deadlocks(url: &str) -> anyhow::Result<i64> {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&mut conn)
        .await?;
        conn.close().await?;
        Ok(n)
    }

    /// The statement recording an outcome claims the tasks it releases as the caller's room
    /// allows: of the engines named, up to each one's number, most urgent first, only those
    /// due; the others stay queued for any worker. A task claimed so has `task.released` then
    /// `task.started`, runs as attempt 1 under a lease its holder ends it with, and no other
    /// backend's claim gets it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outcome_claims_the_tasks_it_releases_as_the_room_allows() -> anyhow::Result<()> {
        use orch_core::backend::EngineRoom;
        let Some((a, b, _url)) = two().await? else {
            return Ok(());
        };
        let specs = vec![
            TaskSpec::new("parent"),
            TaskSpec::new("fast").priority(1).after(Step(0)),
            TaskSpec::new("fast").priority(5).after(Step(0)),
            TaskSpec::new("fast").priority(3).after(Step(0)),
            TaskSpec::new("fast")
                .priority(9)
                .delay(Duration::from_secs(3600))
                .after(Step(0)),
            TaskSpec::new("other").after(Step(0)),
        ];
        let tasks = a.create_tasks(plan_tasks(specs, None)?).await?;
        let id = |i: usize| tasks[i].task.id;
        let parent = a.claim_tasks("parent", 1, MINUTE).await?;
        ensure!(parent.len() == 1);
        let room = vec![
            EngineRoom {
                engine: "fast".to_owned(),
                limit: 2,
            },
            EngineRoom {
                engine: "absent".to_owned(),
                limit: 5,
            },
        ];
        let (statuses, handed) = a
            .finish_attempts_and_claim(vec![success(&parent[0])], room, MINUTE)
            .await?;
        ensure!(
            matches!(statuses.as_slice(), [Ok(TaskStatus::Succeeded)]),
            "{statuses:?}"
        );
        // In claim order: priority 5, then 3.
        let got: Vec<TaskId> = handed.iter().map(|c| c.task.id).collect();
        ensure!(
            got == [id(2), id(3)],
            "handed {got:?}, want the priorities 5 and 3"
        );
        for claimed in &handed {
            ensure!(
                claimed.task.status == TaskStatus::Running && claimed.task.attempt == 1,
                "{:?}",
                claimed.task
            );
            let stored = a.get_task(claimed.task.id).await?.context("vanished")?;
            ensure!(stored.status == TaskStatus::Running && stored.attempt == 1);
            let kinds: Vec<EventKind> = a
                .read_task_events(claimed.task.id, 0, 100)
                .await?
                .into_iter()
                .map(|e| e.kind)
                .collect();
            ensure!(
                kinds
                    == [
                        EventKind::TaskWaiting,
                        EventKind::TaskReleased,
                        EventKind::TaskStarted
                    ],
                "{kinds:?}"
            );
        }
        for left in [1, 4, 5] {
            ensure!(status(&a, id(left)).await? == TaskStatus::Queued);
        }
        // Another process's claim finds the released tasks left, due ones only.
        let theirs = b.claim_tasks("fast", 10, MINUTE).await?;
        ensure!(
            theirs.len() == 1 && theirs[0].task.id == id(1),
            "{theirs:?}"
        );
        ensure!(b.claim_tasks("other", 10, MINUTE).await?.len() == 1);
        // The holder ends what it was handed with its lease.
        let ended = a
            .finish_attempts(handed.iter().map(success).collect())
            .await?;
        ensure!(
            ended.iter().all(|e| matches!(e, Ok(TaskStatus::Succeeded))),
            "{ended:?}"
        );
        // No room: nothing is claimed.
        let lone = a
            .create_tasks(plan_tasks(
                vec![
                    TaskSpec::new("parent2"),
                    TaskSpec::new("fast").after(Step(0)),
                ],
                None,
            )?)
            .await?;
        let parent = a.claim_tasks("parent2", 1, MINUTE).await?;
        let (_, handed) = a
            .finish_attempts_and_claim(vec![success(&parent[0])], Vec::new(), MINUTE)
            .await?;
        ensure!(handed.is_empty(), "{handed:?}");
        ensure!(status(&a, lone[1].task.id).await? == TaskStatus::Queued);
        Ok(())
    }

    /// The outcomes stored and the tasks an outcome claimed reach the caller even when ending
    /// the tasks another outcome of the same statement marked to end fails afterwards (the
    /// next sweep ends the marked ones): otherwise nothing would run the claimed tasks until
    /// their leases expired, and a task on its last attempt would fail unrun.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_claimed_by_an_outcome_reach_the_caller_when_ending_marked_ones_fails()
    -> anyhow::Result<()> {
        use orch_core::backend::EngineRoom;
        let Some((a, _b, url)) = two().await? else {
            return Ok(());
        };
        let specs = vec![
            TaskSpec::new("parent"),
            TaskSpec::new("parent"),
            TaskSpec::new("doomed").after_with(Step(0), OnParentFailure::Fail),
            TaskSpec::new("fast").after(Step(1)),
        ];
        let tasks = a.create_tasks(plan_tasks(specs, None)?).await?;
        let mut parents = a.claim_tasks("parent", 2, MINUTE).await?;
        parents.sort_by_key(|c| if c.task.id == tasks[0].task.id { 0 } else { 1 });
        // Ending the marked task fails (as a dropped connection would).
        let mut admin = sqlx::PgConnection::connect(&url).await?;
        sqlx::raw_sql(
            "CREATE FUNCTION t_refuse() RETURNS trigger AS $$ BEGIN \
             RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER t_refuse BEFORE UPDATE ON orch_tasks FOR EACH ROW \
             WHEN (NEW.core_id = 'doomed' AND NEW.status <> 'waiting') \
             EXECUTE FUNCTION t_refuse();",
        )
        .execute(&mut admin)
        .await?;
        let failed = AttemptReport {
            outcome: AttemptOutcome::Failed {
                error: "no".to_owned(),
                retry_in: None,
            },
            ..success(&parents[0])
        };
        let room = vec![EngineRoom {
            engine: "fast".to_owned(),
            limit: 5,
        }];
        let (statuses, handed) = a
            .finish_attempts_and_claim(vec![failed, success(&parents[1])], room, MINUTE)
            .await?;
        ensure!(
            matches!(
                statuses.as_slice(),
                [Ok(TaskStatus::Failed), Ok(TaskStatus::Succeeded)]
            ),
            "{statuses:?}"
        );
        ensure!(
            handed.len() == 1 && handed[0].task.id == tasks[3].task.id,
            "{handed:?}"
        );
        // Once ending it works again, the sweep ends the marked task.
        sqlx::query("DROP TRIGGER t_refuse ON orch_tasks")
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        a.settle_dependents(100).await?;
        ensure!(status(&a, tasks[2].task.id).await? == TaskStatus::Failed);
        Ok(())
    }

    /// A backend that keeps a connection for the outcome statements of tasks with dependents
    /// closes (the pool's close waits for every connection out of it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backend_keeping_a_connection_for_outcomes_closes() -> anyhow::Result<()> {
        let Some(url) = crate::support::postgres::fresh_database().await? else {
            return Ok(());
        };
        let backend = Arc::new(PostgresBackend::connect(&url).await?);
        let shared: SharedBackend = backend.clone();
        let tasks = shared
            .create_tasks(plan_tasks(
                vec![
                    TaskSpec::new("parent"),
                    TaskSpec::new("child").after(Step(0)),
                ],
                None,
            )?)
            .await?;
        let parent = shared.claim_tasks("parent", 1, MINUTE).await?;
        // The connections used so far are back in the pool (returned in the background), so
        // the outcome's statement finds an idle one to keep.
        tokio::time::sleep(Duration::from_millis(300)).await;
        shared.finish_attempts(vec![success(&parent[0])]).await?;
        ensure!(status(&shared, tasks[1].task.id).await? == TaskStatus::Queued);
        tokio::time::timeout(Duration::from_secs(30), backend.close())
            .await
            .context("closing the backend hung")?;
        Ok(())
    }

    /// Parents of shared children end at once, a few per statement, from two backends, with
    /// every update of a child slowed down so the statements overlap: each
    /// child waits for a different subset of the parents (so statements meet the shared
    /// children in different orders), and one child waits for all of them. Every child is
    /// released exactly once, by the statement that counts its last parent, and no two
    /// statements deadlock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parents_ending_at_once_release_their_children_once() -> anyhow::Result<()> {
        const PARENTS: usize = 16;
        const CHILDREN: usize = 40;
        let Some((a, b, url)) = two().await? else {
            return Ok(());
        };
        let mut specs: Vec<TaskSpec> = (0..PARENTS).map(|_| TaskSpec::new("parent")).collect();
        let mut rng = fastrand::Rng::with_seed(7);
        for c in 0..CHILDREN {
            let mut child = TaskSpec::new("child");
            for p in 0..PARENTS {
                if c == 0 || rng.bool() {
                    child = child.after(Step(p));
                }
            }
            if child.depends_on.is_empty() {
                child = child.after(Step(rng.usize(0..PARENTS)));
            }
            specs.push(child);
        }
        let tasks = a.create_tasks(plan_tasks(specs, None)?).await?;
        let children: Vec<TaskId> = tasks[PARENTS..].iter().map(|c| c.task.id).collect();
        let claimed = a.claim_tasks("parent", PARENTS, MINUTE).await?;
        ensure!(claimed.len() == PARENTS);
        // A table of some size, so that statements probe the children by key in the order
        // they come to them, as in production (on a handful of rows the planner scans the
        // table in its physical order, the same for every statement).
        let filler: Vec<TaskSpec> = (0..5_000).map(|_| TaskSpec::new("filler")).collect();
        a.create_tasks(
            filler
                .into_iter()
                .map(TaskSpec::into_new_task)
                .collect::<Result<_, _>>()?,
        )
        .await?;
        let mut admin = sqlx::PgConnection::connect(&url).await?;
        sqlx::query("ANALYZE").execute(&mut admin).await?;
        sqlx::raw_sql(
            "CREATE FUNCTION t_slow() RETURNS trigger AS $$ BEGIN \
             PERFORM pg_sleep(0.01); RETURN NEW; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER t_slow BEFORE UPDATE ON orch_tasks FOR EACH ROW \
             WHEN (NEW.core_id = 'child') EXECUTE FUNCTION t_slow();",
        )
        .execute(&mut admin)
        .await?;
        let before = deadlocks(&url).await?;
        // Each statement records the ends of a few parents (a batch of outcomes), in an
        // order of its own.
        let mut ends = Vec::new();
        for (i, batch) in claimed.chunks(PARENTS / 4).enumerate() {
            let backend = if i % 2 == 0 { a.clone() } else { b.clone() };
            let mut reports: Vec<AttemptReport> = batch.iter().map(success).collect();
            if i % 2 == 1 {
                reports.reverse();
            }
            ends.push(tokio::spawn(async move {
                backend.finish_attempts(reports).await
            }));
        }
        for end in ends {
            for answer in end.await?? {
                ensure!(matches!(answer, Ok(TaskStatus::Succeeded)), "{answer:?}");
            }
        }
        let deadlocked = deadlocks(&url).await? - before;
        ensure!(
            deadlocked == 0,
            "{deadlocked} statements deadlocked (and were run again)"
        );
        let events = a.read_events(0, 10_000).await?;
        for child in &children {
            let task = a.get_task(*child).await?.context("child vanished")?;
            ensure!(
                task.status == TaskStatus::Queued && task.waiting_for == 0,
                "{task:?}"
            );
            let released = events
                .iter()
                .filter(|e| e.task_id == Some(*child) && e.kind == EventKind::TaskReleased)
                .count();
            ensure!(released == 1, "child released {released} times");
        }
        Ok(())
    }

    /// Outcomes of tasks with dependents, reported by many callers of one backend at once
    /// (which records them together, several callers' batches in one statement): each caller
    /// gets the answers of its own reports, in its own order, a lost lease and a failure
    /// among them, and every child is released once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_outcome_batches_in_graphs_each_get_their_own_answers() -> anyhow::Result<()>
    {
        const CALLERS: usize = 8;
        const PER_CALLER: usize = 6;
        let Some((a, _b, _url)) = two().await? else {
            return Ok(());
        };
        let parents = CALLERS * PER_CALLER;
        let mut specs: Vec<TaskSpec> = (0..parents).map(|_| TaskSpec::new("parent")).collect();
        specs.extend((0..parents).map(|p| TaskSpec::new("child").after(Step(p))));
        a.create_tasks(plan_tasks(specs, None)?).await?;
        let claimed = a.claim_tasks("parent", parents, MINUTE).await?;
        ensure!(claimed.len() == parents);
        let mut calls = Vec::new();
        for batch in claimed.chunks(PER_CALLER) {
            let mut reports: Vec<AttemptReport> = batch.iter().map(success).collect();
            // The first under a lease it does not hold, the second a failure.
            reports[0].lease_token = orch_core::LeaseToken(uuid::Uuid::new_v4());
            reports[1].outcome = AttemptOutcome::Failed {
                error: "boom".into(),
                retry_in: None,
            };
            reports.reverse();
            let backend = a.clone();
            let ids: Vec<TaskId> = reports.iter().map(|r| r.task_id).collect();
            calls.push(tokio::spawn(async move {
                (ids, backend.finish_attempts(reports).await)
            }));
        }
        for call in calls {
            let (ids, answers) = call.await?;
            let answers = answers?;
            ensure!(answers.len() == PER_CALLER, "{answers:?}");
            for (at, (id, answer)) in ids.iter().zip(&answers).enumerate() {
                match PER_CALLER - 1 - at {
                    0 => ensure!(
                        matches!(answer, Err(orch_core::Error::LeaseLost(lost)) if lost == id),
                        "{answer:?}"
                    ),
                    1 => ensure!(matches!(answer, Ok(TaskStatus::Failed)), "{answer:?}"),
                    _ => ensure!(matches!(answer, Ok(TaskStatus::Succeeded)), "{answer:?}"),
                }
                let stored = status(&a, *id).await?;
                let expected = match PER_CALLER - 1 - at {
                    0 => TaskStatus::Running,
                    1 => TaskStatus::Failed,
                    _ => TaskStatus::Succeeded,
                };
                ensure!(stored == expected, "{id} is {stored}, not {expected}");
            }
        }
        let released = a
            .read_events(0, 10_000)
            .await?
            .iter()
            .filter(|e| e.kind == EventKind::TaskReleased)
            .count();
        ensure!(
            released == CALLERS * (PER_CALLER - 2),
            "{released} children released"
        );
        Ok(())
    }

    /// A dependent added to a running task while that task's end is being recorded (its
    /// statement took its snapshot before the dependent existed, and waited for the task's
    /// row the dispatch held) is still released: the statement sees the task gained a
    /// dependent and runs again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dependent_added_while_its_parent_ends_is_released() -> anyhow::Result<()> {
        let Some((a, b, url)) = two().await? else {
            return Ok(());
        };
        // The parent has a dependent already, so its end is recorded by the statement that
        // applies what ends mean (a parent without any takes the plain path, which skips it
        // once it has one).
        let first = a
            .create_tasks(plan_tasks(
                vec![TaskSpec::new("busy"), TaskSpec::new("first").after(Step(0))],
                None,
            )?)
            .await?;
        let claimed = a.claim_tasks("busy", 1, MINUTE).await?;
        let parent = claimed[0].clone();
        // The dispatch holds the parent's row while its dependency rows are written slowly.
        let mut admin = sqlx::PgConnection::connect(&url).await?;
        sqlx::raw_sql(
            "CREATE FUNCTION t_slow_deps() RETURNS trigger AS $$ BEGIN \
             PERFORM pg_sleep(0.8); RETURN NEW; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER t_slow_deps BEFORE INSERT ON orch_task_deps FOR EACH ROW \
             EXECUTE FUNCTION t_slow_deps();",
        )
        .execute(&mut admin)
        .await?;
        let child = plan_tasks(vec![TaskSpec::new("later").after(parent.task.id)], None)?;
        let child_id = child[0].id;
        let dispatch = tokio::spawn({
            let b = b.clone();
            async move { b.create_tasks(child).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Begins while the dispatch runs: its snapshot has no dependent yet.
        let answers = a.finish_attempts(vec![success(&parent)]).await?;
        ensure!(matches!(answers.as_slice(), [Ok(TaskStatus::Succeeded)]));
        let created = dispatch.await??;
        ensure!(created[0].created);
        ensure!(status(&a, first[1].task.id).await? == TaskStatus::Queued);
        ensure!(
            status(&a, child_id).await? == TaskStatus::Queued,
            "the late dependent waits for ever: {:?}",
            a.get_task(child_id).await?
        );
        Ok(())
    }

    /// A failure cascade cut short after its first statement (as a crash would cut it: here
    /// a trigger refuses the statements that end marked tasks) leaves the children marked;
    /// the sweep an orchestrator runs with its rescues ends them, level by level, and the
    /// workflow ends with its event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cascade_cut_short_is_finished_by_the_sweep() -> anyhow::Result<()> {
        let Some((a, _b, url)) = two().await? else {
            return Ok(());
        };
        let mut flow = Workflow::new();
        let root = flow.add(TaskSpec::new("root").max_attempts(1));
        let child = flow.add(TaskSpec::new("leaf").after(root));
        let grandchild = flow.add(TaskSpec::new("leaf").after(child));
        let clean_up =
            flow.add(TaskSpec::new("clean").after_with(grandchild, OnParentFailure::RunAnyway));
        let (workflow, tasks) = flow.into_new()?;
        let created = a.create_workflow(workflow, tasks).await?;
        let id = |step: Step| created.tasks[step.index()].task.id;
        let mut admin = sqlx::PgConnection::connect(&url).await?;
        sqlx::raw_sql(
            "CREATE FUNCTION t_crash() RETURNS trigger AS $$ BEGIN \
             RAISE EXCEPTION 'the process died here'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER t_crash BEFORE UPDATE ON orch_tasks FOR EACH ROW \
             WHEN (OLD.doom IS NOT NULL AND NEW.status <> 'waiting') \
             EXECUTE FUNCTION t_crash();",
        )
        .execute(&mut admin)
        .await?;
        let claimed = a.claim_tasks("root", 1, MINUTE).await?;
        let failed = a
            .finish_attempts(vec![AttemptReport {
                outcome: AttemptOutcome::Failed {
                    error: "broken".into(),
                    retry_in: None,
                },
                ..success(&claimed[0])
            }])
            .await;
        // The end is stored and answered; the cascade stopped at the marked child.
        ensure!(
            matches!(failed.as_deref(), Ok([Ok(TaskStatus::Failed)])),
            "{failed:?}"
        );
        ensure!(
            status(&a, id(root)).await? == TaskStatus::Failed,
            "the root's end was lost"
        );
        let marked = a.get_task(id(child)).await?.context("child")?;
        ensure!(marked.status == TaskStatus::Waiting, "{marked:?}");
        let doom: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT doom FROM orch_tasks WHERE id = $1")
                .bind(id(child).0)
                .fetch_one(&mut admin)
                .await?;
        ensure!(
            doom.is_some_and(|d| d["parent"] == json!(id(root))),
            "the child was not marked"
        );
        sqlx::raw_sql("DROP TRIGGER t_crash ON orch_tasks")
            .execute(&mut admin)
            .await?;
        // The rescuer's pass: the sweep ends what was left, level by level. The orchestrator
        // runs one of its own at start, which may hold the rows the explicit pass skips: wait
        // for the end, however the passes shared the work.
        let orch = orch_core::Orchestrator::builder(a.clone()).build().await?;
        orch.rescue_expired().await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = [
                status(&a, id(child)).await?,
                status(&a, id(grandchild)).await?,
                status(&a, id(clean_up)).await?,
            ];
            if now == [TaskStatus::Failed, TaskStatus::Failed, TaskStatus::Queued] {
                break;
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "the sweep left the cascade at {now:?}"
            );
            orch.rescue_expired().await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let claimed = a.claim_tasks("clean", 1, MINUTE).await?;
        a.finish_attempts(vec![success(&claimed[0])]).await?;
        let info = a
            .get_workflow(created.workflow.id)
            .await?
            .context("workflow")?;
        ensure!(info.status == WorkflowStatus::Partly, "{info:?}");
        orch.shutdown(Duration::from_secs(1)).await;
        Ok(())
    }
}
