//! Acceptance 3: a child process dispatching and completing tasks on SQLite is killed with
//! SIGKILL in the middle of its writes. On reopen the file passes `PRAGMA integrity_check`, and
//! every task the child acknowledged (printed after the call that stored it returned: `Q <id>`
//! once dispatched, `S <id>` once its success was committed) is there in that state.

use std::collections::HashSet;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use orch_core::{
    EventKind, Orchestrator, OrchestratorConfig, SharedBackend, TaskId, TaskSpec, TaskStatus,
    processor_fn,
};
use orch_storage::SqliteBackend;
use sqlx::Connection as _;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use super::child;

/// Acknowledged successes to see before the kill.
const SUCCESSES_BEFORE_KILL: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writer_leaves_a_sound_file_with_every_acknowledged_task() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("crash.db");
    let path = path.to_str().context("temp path is not UTF-8")?.to_owned();
    let mut child = child::spawn("sqlite-crash", &[("ORCH_TEST_DB", path.clone())], true)?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut queued, mut succeeded) = (HashSet::new(), HashSet::new());
    let mut record = |line: &str| -> anyhow::Result<()> {
        if let Some(id) = line.strip_prefix("Q ") {
            queued.insert(id.parse::<uuid::Uuid>()?);
        } else if let Some(id) = line.strip_prefix("S ") {
            succeeded.insert(id.parse::<uuid::Uuid>()?);
        }
        Ok(())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut seen_successes = 0;
    while seen_successes < SUCCESSES_BEFORE_KILL {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .context("the child acknowledged too little in time")??
            .context("the child exited early")?;
        if line.starts_with("S ") {
            seen_successes += 1;
        }
        record(&line)?;
    }
    // Mid-run: the child is dispatching, claiming and reporting all the time.
    child.start_kill().context("SIGKILL")?;
    let status = child.wait().await?;
    ensure!(!status.success(), "the child was not killed: {status}");
    // What it printed before dying is still in the pipe.
    while let Some(line) = lines.next_line().await? {
        record(&line)?;
    }

    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{path}")).await?;
    let integrity: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await?;
    ensure!(integrity == ["ok"], "integrity_check: {integrity:?}");
    conn.close().await?;

    let backend = SqliteBackend::open(&path).await?;
    let backend: SharedBackend = Arc::new(backend);
    ensure!(
        queued.len() >= SUCCESSES_BEFORE_KILL,
        "{} queued",
        queued.len()
    );
    for id in &queued {
        let task = backend.get_task(TaskId(*id)).await?;
        ensure!(task.is_some(), "acknowledged task {id} is missing");
    }
    for id in &succeeded {
        let task = backend
            .get_task(TaskId(*id))
            .await?
            .with_context(|| format!("acknowledged task {id} is missing"))?;
        ensure!(
            task.status == TaskStatus::Succeeded,
            "task {id} acknowledged as succeeded is {:?}",
            task.status
        );
    }
    // The reopened database keeps working: what was left running is rescued and finishes.
    let orch = Orchestrator::builder(backend.clone())
        .config(OrchestratorConfig::default().with_poll_interval(Duration::from_millis(100)))
        .engine(
            "crash",
            processor_fn(|_, _| async { Ok(serde_json::Value::Null) }),
        )
        .build()
        .await?;
    let more = orch.dispatch(TaskSpec::new("crash")).await?;
    let more = orch.wait_for(more.id, Duration::from_secs(30)).await?;
    ensure!(more.status == TaskStatus::Succeeded);
    orch.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

fn acknowledge(kind: char, id: TaskId) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{kind} {}", id.0)?;
    out.flush()?;
    Ok(())
}

/// The child: dispatches batches and runs them, acknowledging dispatches when `dispatch_many`
/// returned and successes when their committed `task.succeeded` event arrives, until killed.
pub(crate) async fn child() -> anyhow::Result<()> {
    let path = child::env("ORCH_TEST_DB")?;
    let backend: SharedBackend = Arc::new(SqliteBackend::open(&path).await?);
    let orch = Orchestrator::builder(backend)
        .config(OrchestratorConfig::default().with_poll_interval(Duration::from_millis(100)))
        .engine("crash", processor_fn(|_, input| async move { Ok(input) }))
        .build()
        .await?;
    let mut events = orch.events().subscribe().await?;
    let acknowledger = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let event = event?;
            if event.kind == EventKind::TaskSucceeded
                && let Some(id) = event.task_id
            {
                acknowledge('S', id)?;
            }
        }
        anyhow::Ok(())
    });
    let dispatcher = async {
        for batch in 0_u64.. {
            let specs = (0..20)
                .map(|i| TaskSpec::new("crash").payload(serde_json::json!([batch, i])))
                .collect();
            for created in orch.dispatch_many(specs).await? {
                acknowledge('Q', created.task.id)?;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        outcome = dispatcher => outcome?,
        outcome = acknowledger => outcome??,
        () = child::parent_gone() => {}
    }
    bail!("the crash child is meant to be killed")
}
