//! Workflows across processes that crash: three OS processes share one PostgreSQL and run 100
//! workflows of 50 tasks each, while one of them is killed with SIGKILL again and again (and
//! started again each time). Every workflow must end `succeeded`; from the event log, every
//! task started only after each of its parents succeeded; and a task started more than once
//! only when its lease expired and it was rescued (each extra start follows a `task.rescued`).
//!
//! Each process's sessions carry its name (with the number of its life) as
//! `application_name`, so a trigger records which process claimed each attempt (`t_claims`);
//! the engine also reads its parents through `TaskContext::parents` and records any parent not
//! succeeded when it runs (`t_early`, which must stay empty).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use orch_core::{
    EventKind, Orchestrator, OrchestratorConfig, SharedBackend, TaskError, TaskSpec, Workflow,
    processor_fn,
};
use orch_storage::PostgresBackend;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::child;

const WORKFLOWS: usize = 100;
/// Tasks per layer of one workflow (50 in all): each task waits for one to three tasks of the
/// layer before, and the last waits for all of its layer.
const LAYERS: [usize; 6] = [1, 8, 16, 16, 8, 1];
const PROCESSES: usize = 3;
/// Short, so the killed process's tasks are rescued soon.
const LEASE: Duration = Duration::from_secs(3);
const HEARTBEAT: Duration = Duration::from_millis(300);
/// The process killed again and again.
const VICTIM: usize = 0;
/// How long the victim runs before each kill.
const LIFE: Duration = Duration::from_millis(1000);

const SIDE_TABLES: &str = "\
CREATE TABLE t_claims (task uuid NOT NULL, attempt int NOT NULL, process text NOT NULL);
CREATE FUNCTION t_claimed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO t_claims VALUES (NEW.id, NEW.attempt, current_setting('application_name'));
    RETURN NEW;
END $$;
CREATE TRIGGER t_claimed AFTER UPDATE ON orch_tasks FOR EACH ROW
    WHEN (NEW.status = 'running' AND OLD.status <> 'running') EXECUTE FUNCTION t_claimed();
CREATE TABLE t_early (task uuid NOT NULL, parent uuid NOT NULL, status text);";

/// One workflow of [`LAYERS`], its dependencies drawn from `rng`.
fn workflow(rng: &mut fastrand::Rng, n: usize) -> Workflow {
    let mut flow = Workflow::new().idempotency_key(format!("crash-{n}"));
    let mut previous: Vec<orch_core::Step> = Vec::new();
    for (layer, &width) in LAYERS.iter().enumerate() {
        let mut this = Vec::with_capacity(width);
        for i in 0..width {
            let mut spec = TaskSpec::new("wf")
                .payload(json!({ "workflow": n, "layer": layer, "i": i }))
                .max_attempts(20)
                .timeout(Duration::from_secs(30));
            if layer + 1 == LAYERS.len() {
                for parent in &previous {
                    spec = spec.after(*parent);
                }
            } else if !previous.is_empty() {
                let mut parents: HashSet<usize> = HashSet::new();
                for _ in 0..rng.usize(1..=3) {
                    parents.insert(rng.usize(0..previous.len()));
                }
                for parent in parents {
                    spec = spec.after(previous[parent]);
                }
            }
            this.push(flow.add(spec));
        }
        previous = this;
    }
    flow
}

fn start(url: &str, name: &str) -> anyhow::Result<tokio::process::Child> {
    child::spawn(
        "workflow-crash",
        &[
            ("ORCH_TEST_URL", url.to_owned()),
            ("ORCH_TEST_PROCESS", name.to_owned()),
        ],
        false,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_finish_in_order_while_a_process_is_killed_again_and_again() -> anyhow::Result<()>
{
    let Some(url) = crate::support::postgres::fresh_database().await? else {
        return Ok(());
    };
    let backend = Arc::new(PostgresBackend::connect(&url).await?);
    let shared: SharedBackend = backend.clone();
    let pool = PgPool::connect(&url).await?;
    sqlx::raw_sql(SIDE_TABLES).execute(&pool).await?;

    let mut rng = fastrand::Rng::with_seed(14);
    let mut ids = Vec::with_capacity(WORKFLOWS);
    for n in 0..WORKFLOWS {
        let (flow, tasks) = workflow(&mut rng, n).into_new()?;
        ids.push(shared.create_workflow(flow, tasks).await?.workflow.id);
    }

    let mut survivors = Vec::new();
    for p in 0..PROCESSES {
        if p != VICTIM {
            survivors.push((format!("p{p}"), start(&url, &format!("p{p}"))?));
        }
    }
    let unfinished = |pool: &PgPool| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM orch_workflows WHERE status = 'running'",
            )
            .fetch_one(&pool)
            .await
        }
    };
    // The victim lives a while, is killed while it holds leases, and starts again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let mut kills = 0;
    let mut life = 0;
    while unfinished(&pool).await? > 0 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{} workflows unfinished after {kills} kills",
            unfinished(&pool).await?
        );
        life += 1;
        let name = format!("p{VICTIM}-{life}");
        let mut victim = start(&url, &name)?;
        tokio::time::sleep(LIFE).await;
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orch_tasks t JOIN t_claims c \
             ON c.task = t.id AND c.attempt = t.attempt \
             WHERE t.status = 'running' AND c.process = $1",
        )
        .bind(&name)
        .fetch_one(&pool)
        .await?;
        victim.start_kill().context("SIGKILL")?;
        victim.wait().await?;
        if held > 0 {
            kills += 1;
        }
        if kills >= 4 {
            // Enough deaths with leases held: let the last life run to the end.
            let name = format!("p{VICTIM}-{}", life + 1);
            survivors.push((name.clone(), start(&url, &name)?));
            break;
        }
    }
    while unfinished(&pool).await? > 0 {
        if tokio::time::Instant::now() > deadline {
            let states: Vec<(String, i64)> = sqlx::query_as(
                "SELECT status, count(*) FROM orch_tasks GROUP BY status ORDER BY status",
            )
            .fetch_all(&pool)
            .await?;
            bail!("workflows unfinished after {kills} kills: tasks {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (name, mut survivor) in survivors {
        drop(survivor.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(60), survivor.wait())
            .await
            .with_context(|| format!("{name} did not stop"))??;
        ensure!(status.success(), "{name} exited with {status}");
    }
    ensure!(kills >= 1, "the victim was never killed holding a lease");
    let ran_again = verify(&shared, &pool, &ids).await?;
    println!(
        "workflow crash: {WORKFLOWS} workflows succeeded; the victim lived {life} times, was \
         killed {kills} times holding leases; {ran_again} tasks ran again after a rescue"
    );
    pool.close().await;
    backend.close().await;
    Ok(())
}

/// Checks what the module documentation promises, from the workflows, the event log and the
/// side tables.
async fn verify(
    backend: &SharedBackend,
    pool: &PgPool,
    ids: &[orch_core::WorkflowId],
) -> anyhow::Result<usize> {
    for id in ids {
        let info = backend
            .get_workflow(*id)
            .await?
            .context("a workflow vanished")?;
        ensure!(
            info.status == orch_core::WorkflowStatus::Succeeded
                && info.succeeded == 50
                && info.tasks == 50,
            "{info:?}"
        );
    }
    let early: i64 = sqlx::query_scalar("SELECT count(*) FROM t_early")
        .fetch_one(pool)
        .await?;
    ensure!(early == 0, "{early} engines saw a parent not succeeded");

    // The whole log, in sequence order.
    let mut events = Vec::new();
    loop {
        let after = events.last().map_or(0, |e: &orch_core::Event| e.seq);
        let page = backend.read_events(after, 10_000).await?;
        if page.is_empty() {
            break;
        }
        events.extend(page);
    }
    let mut succeeded: HashMap<Uuid, u64> = HashMap::new();
    let mut started: HashMap<Uuid, Vec<u64>> = HashMap::new();
    let mut rescued: HashMap<Uuid, Vec<u64>> = HashMap::new();
    for event in &events {
        let Some(task) = event.task_id else {
            continue;
        };
        match event.kind {
            EventKind::TaskSucceeded => {
                ensure!(
                    succeeded.insert(task.0, event.seq).is_none(),
                    "task {task} succeeded twice"
                );
            }
            EventKind::TaskStarted => started.entry(task.0).or_default().push(event.seq),
            EventKind::TaskRescued => rescued.entry(task.0).or_default().push(event.seq),
            _ => {}
        }
    }
    ensure!(
        succeeded.len() == ids.len() * 50,
        "{} tasks succeeded",
        succeeded.len()
    );
    // Every start after every parent's success.
    let dependencies: Vec<(Uuid, Uuid)> =
        sqlx::query_as("SELECT child_id, parent_id FROM orch_task_deps")
            .fetch_all(pool)
            .await?;
    ensure!(!dependencies.is_empty());
    for (child, parent) in &dependencies {
        let done = succeeded
            .get(parent)
            .with_context(|| format!("parent {parent} never succeeded"))?;
        for start in started.get(child).map(Vec::as_slice).unwrap_or_default() {
            ensure!(
                start > done,
                "task {child} started (event {start}) before its parent {parent} succeeded \
                 (event {done})"
            );
        }
    }
    // A task started again only after a rescue of its previous attempt.
    let mut ran_again = 0;
    for (task, starts) in &started {
        let rescues = rescued.get(task).map(Vec::as_slice).unwrap_or_default();
        ensure!(
            starts.len() == rescues.len() + 1,
            "task {task} started {} times with {} rescues",
            starts.len(),
            rescues.len()
        );
        for (i, rescue) in rescues.iter().enumerate() {
            ensure!(
                starts[i] < *rescue && *rescue < starts[i + 1],
                "task {task}: a start without a rescue of the attempt before"
            );
        }
        ran_again += usize::from(starts.len() > 1);
    }
    ensure!(
        ran_again > 0,
        "no task was rescued: the kills proved nothing"
    );
    // Every attempt that was rescued was claimed by a life of the victim.
    let claims: Vec<(Uuid, i32, String)> =
        sqlx::query_as("SELECT task, attempt, process FROM t_claims")
            .fetch_all(pool)
            .await?;
    let last: HashMap<Uuid, i32> = claims.iter().fold(HashMap::new(), |mut m, (t, a, _)| {
        let entry = m.entry(*t).or_insert(*a);
        *entry = (*entry).max(*a);
        m
    });
    for (task, attempt, process) in &claims {
        if last.get(task) != Some(attempt) {
            ensure!(
                process.starts_with(&format!("p{VICTIM}-")),
                "attempt {attempt} of {task} by {process} was superseded"
            );
        }
    }
    Ok(ran_again)
}

/// One process: an orchestrator on the shared database until the parent closes stdin (or
/// kills it).
pub(crate) async fn child() -> anyhow::Result<()> {
    let url = child::env("ORCH_TEST_URL")?;
    let process = child::env("ORCH_TEST_PROCESS")?;
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{separator}application_name={process}");
    let backend: SharedBackend = Arc::new(PostgresBackend::connect_with_pool_size(&url, 8).await?);
    let side = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    let engine = processor_fn(move |ctx, _input| {
        let side = side.clone();
        async move {
            let fail = |e: &dyn std::fmt::Display| TaskError::retryable(e.to_string());
            for parent in ctx.parents().all().await? {
                let status = parent.task.map(|t| t.status);
                if status != Some(orch_core::TaskStatus::Succeeded) {
                    sqlx::query("INSERT INTO t_early VALUES ($1, $2, $3)")
                        .bind(ctx.task_id().0)
                        .bind(parent.task_id.0)
                        .bind(status.map(|s| s.as_str()))
                        .execute(&side)
                        .await
                        .map_err(|e| fail(&e))?;
                }
            }
            tokio::time::sleep(Duration::from_millis(fastrand::u64(20..40))).await;
            Ok(json!(ctx.task_id()))
        }
    });
    let mut config = OrchestratorConfig::default()
        .with_node_id(process.clone())
        .with_lease(LEASE)
        .with_rescue_interval(Duration::from_millis(300))
        .with_poll_interval(Duration::from_millis(300))
        .with_global_concurrency(8)
        .with_default_engine_concurrency(8);
    config.heartbeat_interval = HEARTBEAT;
    let orch = Orchestrator::builder(backend)
        .config(config)
        .engine("wf", engine)
        .build()
        .await?;
    child::parent_gone().await;
    orch.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
