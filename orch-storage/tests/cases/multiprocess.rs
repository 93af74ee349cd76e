//! Acceptance 2: three OS processes share one PostgreSQL; 5,000 tasks; one process is killed
//! with SIGKILL mid-run. Every task ends `succeeded` and none is lost; each task's success was
//! recorded by the process that held its current lease (the one that ran its last attempt);
//! the tasks that ran twice are exactly those rescued from the killed process; and locks on
//! shared resources (the PostgreSQL lock table, through `LockManager`) were never held by two
//! processes at once, as a fenced counter shows.
//!
//! Each process's sessions carry its name as `application_name`, so triggers on `orch_tasks`
//! record which process made each claim (`t_claims`: task, attempt, lease token, process) and
//! each transition to `succeeded` (`t_succeeded`: the lease token it was conditioned on and the
//! process). Tasks that take a lock also write `t_guarded` (per resource: the highest fencing
//! token seen and who is inside the critical section) and `t_guard_log` (each entry).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use orch_core::{
    LockConfig, LockManager, LockOptions, Orchestrator, OrchestratorConfig, SharedBackend,
    TaskError, TaskSpec, processor_fn,
};
use orch_storage::PostgresBackend;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::child;

const TASKS: usize = 5_000;
const PROCESSES: usize = 3;
/// Every this many tasks takes one of the shared locks.
const LOCK_EVERY: usize = 25;
const RESOURCES: usize = 3;
/// Short, so the killed process's tasks are rescued soon; renewed ten times per lease. A live
/// process never loses one (the soak test holds 2 s leases under CPU pressure).
const LEASE: Duration = Duration::from_secs(5);
const HEARTBEAT: Duration = Duration::from_millis(500);
const LOCK_TTL: Duration = Duration::from_secs(2);
/// Which process is killed.
const VICTIM: &str = "p0";

const SIDE_TABLES: &str = "\
CREATE TABLE t_claims (task uuid NOT NULL, attempt int NOT NULL, token uuid NOT NULL,
    process text NOT NULL);
CREATE TABLE t_guarded (resource text PRIMARY KEY, token bigint NOT NULL, holder text);
CREATE TABLE t_guard_log (id bigserial PRIMARY KEY, resource text NOT NULL, token bigint NOT NULL,
    process text NOT NULL, accepted bool NOT NULL, previous_holder text);
CREATE TABLE t_overlaps (resource text NOT NULL, holder text NOT NULL);
CREATE TABLE t_succeeded (task uuid NOT NULL, old_status text NOT NULL, attempt int NOT NULL,
    token uuid, process text NOT NULL);
CREATE FUNCTION t_claimed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO t_claims VALUES
        (NEW.id, NEW.attempt, NEW.lease_token, current_setting('application_name'));
    RETURN NEW;
END $$;
CREATE TRIGGER t_claimed AFTER UPDATE ON orch_tasks FOR EACH ROW
    WHEN (NEW.status = 'running' AND OLD.status <> 'running') EXECUTE FUNCTION t_claimed();
CREATE FUNCTION t_succeeded() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO t_succeeded VALUES
        (NEW.id, OLD.status, OLD.attempt, OLD.lease_token, current_setting('application_name'));
    RETURN NEW;
END $$;
CREATE TRIGGER t_succeeded AFTER UPDATE ON orch_tasks FOR EACH ROW
    WHEN (NEW.status = 'succeeded' AND OLD.status <> 'succeeded') EXECUTE FUNCTION t_succeeded();
INSERT INTO t_guarded (resource, token) VALUES ('res-0', 0), ('res-1', 0), ('res-2', 0);";

/// Enters the critical section of `$1` with fencing token `$2` as holder `$3` (process `$4`):
/// accepted only if no newer token was seen; logs the entry and who was inside before.
const ENTER: &str = "\
WITH old AS (
    SELECT holder FROM t_guarded WHERE resource = $1 FOR UPDATE
), g AS (
    UPDATE t_guarded SET token = $2, holder = $3 FROM old
    WHERE t_guarded.resource = $1 AND t_guarded.token <= $2
    RETURNING old.holder AS previous
)
INSERT INTO t_guard_log (resource, token, process, accepted, previous_holder)
SELECT $1, $2, $4, EXISTS (SELECT 1 FROM g), (SELECT previous FROM g)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_one_database_and_survive_a_kill() -> anyhow::Result<()> {
    let Some(url) = crate::support::postgres::fresh_database().await? else {
        return Ok(());
    };
    let backend = Arc::new(PostgresBackend::connect(&url).await?);
    let pool = PgPool::connect(&url).await?;
    sqlx::raw_sql(SIDE_TABLES).execute(&pool).await?;

    let mut children = HashMap::new();
    for p in 0..PROCESSES {
        let name = format!("p{p}");
        let child = child::spawn(
            "multiprocess",
            &[
                ("ORCH_TEST_URL", url.clone()),
                ("ORCH_TEST_PROCESS", name.clone()),
            ],
            false,
        )?;
        children.insert(name, child);
    }

    let specs: Vec<TaskSpec> = (0..TASKS)
        .map(|i| {
            let payload = if i % LOCK_EVERY == 0 {
                json!({ "lock": format!("res-{}", (i / LOCK_EVERY) % RESOURCES) })
            } else {
                json!({})
            };
            TaskSpec::new("mp")
                .payload(payload)
                .max_attempts(10)
                .timeout(Duration::from_secs(30))
        })
        .collect();
    let shared: SharedBackend = backend.clone();
    for chunk in specs.chunks(500) {
        let tasks = chunk
            .iter()
            .cloned()
            .map(TaskSpec::into_new_task)
            .collect::<Result<Vec<_>, _>>()?;
        shared.create_tasks(tasks).await?;
    }

    // Kill the victim mid-run, while it holds leases.
    let succeeded = |pool: &PgPool| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM orch_tasks WHERE status = 'succeeded'",
            )
            .fetch_one(&pool)
            .await
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done = succeeded(&pool).await?;
        let victim_done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM t_succeeded WHERE process = $1")
                .bind(VICTIM)
                .fetch_one(&pool)
                .await?;
        if done >= (TASKS as i64) * 3 / 10 && victim_done > 0 {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "only {done} tasks succeeded (victim: {victim_done}) before the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut victim = children.remove(VICTIM).context("no victim")?;
    victim.start_kill().context("SIGKILL")?;
    victim.wait().await?;
    let killed_at: i64 = succeeded(&pool).await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let done = succeeded(&pool).await?;
        if done == TASKS as i64 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let states: Vec<(String, i64)> = sqlx::query_as(
                "SELECT status, count(*) FROM orch_tasks GROUP BY status ORDER BY status",
            )
            .fetch_all(&pool)
            .await?;
            bail!("after the kill only {done} of {TASKS} succeeded: {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stop the survivors cleanly (closing stdin), then check the records.
    for (name, mut survivor) in children {
        drop(survivor.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(60), survivor.wait())
            .await
            .with_context(|| format!("{name} did not stop"))??;
        ensure!(status.success(), "{name} exited with {status}");
    }
    verify(&pool, killed_at).await?;
    pool.close().await;
    backend.close().await;
    Ok(())
}

/// Checks every claim of the module documentation against the side tables.
async fn verify(pool: &PgPool, killed_at: i64) -> anyhow::Result<()> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM orch_tasks")
        .fetch_one(pool)
        .await?;
    ensure!(total == TASKS as i64, "{total} tasks stored");

    // Who claimed which attempt, with which lease token.
    let claims: Vec<(Uuid, i32, Uuid, String)> =
        sqlx::query_as("SELECT task, attempt, token, process FROM t_claims")
            .fetch_all(pool)
            .await?;
    let mut holder: HashMap<Uuid, (Uuid, i32, String)> = HashMap::new();
    let mut claimed: HashMap<Uuid, Vec<(i32, String)>> = HashMap::new();
    for (task, attempt, token, process) in &claims {
        ensure!(
            holder
                .insert(*token, (*task, *attempt, process.clone()))
                .is_none(),
            "lease token {token} issued twice"
        );
        claimed
            .entry(*task)
            .or_default()
            .push((*attempt, process.clone()));
    }
    let processes: HashSet<&str> = claims.iter().map(|c| c.3.as_str()).collect();
    ensure!(
        processes.len() == PROCESSES,
        "only {processes:?} claimed tasks"
    );

    // One transition to succeeded per task, from running, conditioned on the lease of its
    // last claim and made by the process holding that lease.
    let successes: Vec<(Uuid, String, i32, Option<Uuid>, String)> =
        sqlx::query_as("SELECT task, old_status, attempt, token, process FROM t_succeeded")
            .fetch_all(pool)
            .await?;
    ensure!(
        successes.len() == TASKS,
        "{} successes recorded",
        successes.len()
    );
    let mut final_attempt: HashMap<Uuid, i32> = HashMap::new();
    for (task, old_status, attempt, token, process) in &successes {
        ensure!(
            old_status == "running",
            "{task} succeeded from {old_status}"
        );
        let token = token.with_context(|| format!("{task} succeeded without a lease"))?;
        let (claimed_task, claimed_attempt, claimer) = holder
            .get(&token)
            .with_context(|| format!("{task} succeeded with a lease never issued"))?;
        ensure!(
            claimed_task == task && claimed_attempt == attempt && claimer == process,
            "{task} (attempt {attempt}) completed by {process} with the lease of {claimer} \
             (attempt {claimed_attempt})"
        );
        ensure!(process != VICTIM || killed_at > 0);
        let last = claimed
            .get(task)
            .and_then(|c| c.iter().map(|(a, _)| *a).max());
        ensure!(
            last == Some(*attempt),
            "{task}: success of a superseded attempt"
        );
        ensure!(
            final_attempt.insert(*task, *attempt).is_none(),
            "task {task} succeeded twice"
        );
    }

    // Tasks that ran twice (were claimed more than once) are exactly the rescued ones, and
    // every superseded claim was the killed process's.
    let rescued: HashSet<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT e.task_id FROM orch_event_batches b, \
             unnest(b.kinds, b.task_ids) AS e(kind, task_id) WHERE e.kind = 'task.rescued'",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let ran_twice: HashSet<Uuid> = claimed
        .iter()
        .filter(|(_, c)| c.len() > 1)
        .map(|(task, _)| *task)
        .collect();
    ensure!(
        !rescued.is_empty(),
        "no task was rescued: the kill proved nothing"
    );
    ensure!(
        ran_twice == rescued,
        "{} tasks ran twice, {} were rescued",
        ran_twice.len(),
        rescued.len()
    );
    for (task, claims) in &claimed {
        for (attempt, process) in claims {
            if final_attempt.get(task) != Some(attempt) {
                ensure!(
                    process == VICTIM,
                    "attempt {attempt} of {task} was claimed by {process} and superseded"
                );
            }
        }
    }

    // Locks: every entry into a critical section was accepted (no token older than one seen),
    // tokens only grow per resource in the order of entry, nobody entered while another
    // process was inside (except after the victim died inside), and all three took locks.
    let log: Vec<(String, i64, String, bool, Option<String>)> = sqlx::query_as(
        "SELECT resource, token, process, accepted, previous_holder FROM t_guard_log ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    ensure!(
        log.len() >= TASKS / LOCK_EVERY,
        "{} lock entries",
        log.len()
    );
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut lockers = HashSet::new();
    for (resource, token, process, accepted, previous) in &log {
        ensure!(
            *accepted,
            "{process} presented stale token {token} for {resource}"
        );
        let before = last.insert(resource, *token).unwrap_or(0);
        ensure!(*token > before, "{resource}: token {token} after {before}");
        if let Some(previous) = previous {
            ensure!(
                previous.starts_with(&format!("{VICTIM}:")),
                "{process} entered {resource} while {previous} was inside"
            );
        }
        lockers.insert(process.as_str());
    }
    ensure!(lockers.len() == PROCESSES, "only {lockers:?} took locks");
    let overlaps: i64 = sqlx::query_scalar("SELECT count(*) FROM t_overlaps")
        .fetch_one(pool)
        .await?;
    ensure!(
        overlaps == 0,
        "{overlaps} critical sections were entered by two holders"
    );
    Ok(())
}

/// One of the three processes: runs an orchestrator on the shared database until the parent
/// closes stdin (or kills it).
pub(crate) async fn child() -> anyhow::Result<()> {
    let url = child::env("ORCH_TEST_URL")?;
    let process = child::env("ORCH_TEST_PROCESS")?;
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{separator}application_name={process}");
    let backend: SharedBackend = Arc::new(PostgresBackend::connect_with_pool_size(&url, 10).await?);
    let side = sqlx::postgres::PgPoolOptions::new()
        .max_connections(6)
        .connect(&url)
        .await?;
    let locks = LockManager::with_config(
        backend.clone(),
        LockConfig::default().with_poll_interval(Duration::from_millis(20)),
    );
    let name = process.clone();
    let engine = processor_fn(move |ctx, input| {
        let (side, locks, process) = (side.clone(), locks.clone(), name.clone());
        async move {
            let fail = |e: &dyn std::fmt::Display| TaskError::retryable(e.to_string());
            let task = ctx.task_id().0;
            if let Some(resource) = input.get("lock").and_then(|r| r.as_str()) {
                let holder = format!("{process}:{task}");
                let options = LockOptions::default()
                    .ttl(LOCK_TTL)
                    .wait(Some(Duration::from_secs(60)));
                let guard = locks
                    .acquire(resource, &holder, options)
                    .await
                    .map_err(|e| fail(&e))?;
                let token = i64::try_from(guard.fencing_token().0).unwrap_or(i64::MAX);
                sqlx::query(ENTER)
                    .bind(resource)
                    .bind(token)
                    .bind(&holder)
                    .bind(&process)
                    .execute(&side)
                    .await
                    .map_err(|e| fail(&e))?;
                tokio::time::sleep(Duration::from_millis(3)).await;
                let left = sqlx::query(
                    "UPDATE t_guarded SET holder = NULL WHERE resource = $1 AND holder = $2",
                )
                .bind(resource)
                .bind(&holder)
                .execute(&side)
                .await
                .map_err(|e| fail(&e))?;
                if left.rows_affected() == 0 {
                    sqlx::query("INSERT INTO t_overlaps VALUES ($1, $2)")
                        .bind(resource)
                        .bind(&holder)
                        .execute(&side)
                        .await
                        .map_err(|e| fail(&e))?;
                }
                guard.release().await.map_err(|e| fail(&e))?;
            } else {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(serde_json::Value::Null)
        }
    });
    let mut config = OrchestratorConfig::default()
        .with_node_id(process.clone())
        .with_lease(LEASE)
        .with_rescue_interval(Duration::from_millis(300))
        .with_poll_interval(Duration::from_millis(500))
        .with_global_concurrency(24)
        .with_default_engine_concurrency(24);
    config.heartbeat_interval = HEARTBEAT;
    let orch = Orchestrator::builder(backend)
        .config(config)
        .engine("mp", engine)
        .build()
        .await?;
    child::parent_gone().await;
    orch.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
