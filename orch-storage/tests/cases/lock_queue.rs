//! Lock waiters in different OS processes are served by priority through the backend's waiter
//! queue (`orch_lock_queue`), on PostgreSQL and on one SQLite file.
//!
//! The parent holds a lock; two child processes (this test binary re-run, see `child`) queue
//! two waiters each, with priorities that alternate between the processes. Once the backend
//! lists all four waiters, the parent releases, and each grant is recorded in the backend's
//! key-value space under its fencing token, so the keys sort in grant order. The grants must
//! follow priority, whichever process a waiter lives in.
//!
//! The processes poll at very different rates (10 ms and 300 ms), and nothing wakes a child
//! when the parent or the other child releases. Without the shared queue the fast poller would
//! take the lock first and hand it on to its own next waiter, so the order would follow the
//! processes; with it, a waiter that is not first in line is refused even though the lock is
//! free.
//!
//! Also here: a database of the schema before the queue keeps its locks when upgraded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use orch_core::{LockConfig, LockManager, LockOptions, SharedBackend};

use super::child;

const RESOURCE: &str = "shared";

/// `(process, waiter, priority)`. Served by priority, the grants alternate between processes.
const WAITERS: [(&str, &str, i32); 4] = [
    ("a", "a-low", 2),
    ("b", "b-mid", 5),
    ("a", "a-high", 8),
    ("b", "b-top", 10),
];

/// The grant order the queue must give.
const EXPECTED: [&str; 4] = ["b-top", "a-high", "b-mid", "a-low"];

/// Key prefix of the grant records: `grants/<fencing token, 20 digits>` -> waiter name.
const GRANTS: &str = "grants/";

/// One priority point is worth an hour of waiting: the seconds between the waiters' joins do
/// not change their order.
const AGING_STEP: Duration = Duration::from_secs(3600);

/// How often each process's head waiter polls: `a` fast, `b` slow.
fn poll_interval(process: &str) -> Duration {
    if process == "a" {
        Duration::from_millis(10)
    } else {
        Duration::from_millis(300)
    }
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_in_two_processes_on_postgresql_are_served_by_priority() -> anyhow::Result<()> {
    let Some(url) = crate::support::postgres::fresh_database().await? else {
        return Ok(());
    };
    served_by_priority(&url).await
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_in_two_processes_on_one_sqlite_file_are_served_by_priority() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("locks.db");
    let url = format!(
        "sqlite://{}",
        path.to_str().context("temp path is not UTF-8")?
    );
    served_by_priority(&url).await
}

async fn served_by_priority(url: &str) -> anyhow::Result<()> {
    let backend = orch_storage::connect(url).await?;
    let locks = LockManager::new(backend.clone());
    let holder = locks
        .try_acquire(RESOURCE, "parent", Duration::from_secs(600))
        .await?;
    let mut children = HashMap::new();
    for process in ["a", "b"] {
        let child = child::spawn(
            "lock-queue",
            &[
                ("ORCH_TEST_URL", url.to_owned()),
                ("ORCH_TEST_PROCESS", process.to_owned()),
            ],
            false,
        )?;
        children.insert(process, child);
    }

    // Every waiter is in line before the lock is free.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let in_line = loop {
        let waiters = locks.waiters(RESOURCE).await?;
        if waiters.len() == WAITERS.len() {
            break waiters;
        }
        for (process, child) in &mut children {
            if let Some(status) = child.try_wait()? {
                bail!("child {process} exited early: {status}");
            }
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} waiters queued",
            waiters.len(),
            WAITERS.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let owners: Vec<&str> = in_line.iter().map(|w| w.owner.as_str()).collect();
    ensure!(owners == EXPECTED, "queued in the order {owners:?}");
    holder.release().await?;

    // All four served, and the last one released.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let granted = backend.list(GRANTS).await?.len();
        if granted == WAITERS.len() && locks.info(RESOURCE).await?.is_none() {
            break;
        }
        for (process, child) in &mut children {
            if let Some(status) = child.try_wait()? {
                bail!("child {process} exited early: {status}");
            }
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "only {granted} of {} waiters were granted",
            WAITERS.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Closing a child's stdin (`wait` does) tells it to exit.
    for (process, mut child) in children {
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .with_context(|| format!("child {process} did not stop"))??;
        ensure!(status.success(), "child {process} exited with {status}");
    }
    // The keys sort by fencing token, that is in grant order.
    let mut grants = Vec::new();
    for key in backend.list(GRANTS).await? {
        let name = backend
            .retrieve(&key)
            .await?
            .context("grant record vanished")?;
        grants.push(String::from_utf8(name)?);
    }
    ensure!(grants == EXPECTED, "granted in the order {grants:?}");
    ensure!(
        locks.list_waiters().await?.is_empty(),
        "waiters left in the queue"
    );
    Ok(())
}

/// A child process: queues its waiters (one task each), records each grant, and exits once
/// all of them had their turn and the parent closed its stdin. (A parent that dies drops the
/// child handle, which kills the child.)
pub(crate) async fn child() -> anyhow::Result<()> {
    let url = child::env("ORCH_TEST_URL")?;
    let process = child::env("ORCH_TEST_PROCESS")?;
    let backend = orch_storage::connect(&url).await?;
    let locks = LockManager::with_config(
        backend.clone(),
        LockConfig::default()
            .with_aging_step(AGING_STEP)
            .with_poll_interval(poll_interval(&process)),
    );
    let mut waiters = Vec::new();
    for (_, name, priority) in WAITERS.iter().filter(|(p, _, _)| *p == process) {
        let (locks, backend) = (locks.clone(), backend.clone());
        waiters.push(tokio::spawn(async move {
            let options = LockOptions::default()
                .priority(*priority)
                .wait(Some(Duration::from_secs(60)));
            let guard = locks.acquire(RESOURCE, name, options).await?;
            record_grant(&backend, guard.fencing_token().0, name).await?;
            guard.release().await?;
            anyhow::Ok(())
        }));
    }
    for waiter in waiters {
        waiter.await??;
    }
    // Until the parent is done with the database (it closes our stdin).
    child::parent_gone().await;
    Ok(())
}

async fn record_grant(backend: &SharedBackend, token: u64, name: &str) -> anyhow::Result<()> {
    backend
        .store(&format!("{GRANTS}{token:020}"), name.as_bytes().to_vec())
        .await?;
    Ok(())
}

/// A SQLite file of schema version 2 (before the queue) keeps its lock, its holder's fencing
/// token and its data when it is opened by this build, and gets a working queue.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_sqlite_file_before_the_queue_upgrades_with_its_locks() -> anyhow::Result<()> {
    use sqlx::{ConnectOptions as _, Connection as _};
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("old.db");
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await?;
    migrator(&[
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
    ])
    .run(&mut conn)
    .await?;
    let now = chrono::Utc::now().timestamp_micros();
    sqlx::query(
        "INSERT INTO orch_locks (resource, owner, fencing_token, acquired_at, expires_at) \
         VALUES ('kept', 'old', 7, ?1, ?1 + 3600000000)",
    )
    .bind(now)
    .execute(&mut conn)
    .await?;
    sqlx::query("UPDATE orch_lock_tokens SET last = 7")
        .execute(&mut conn)
        .await?;
    sqlx::query("INSERT INTO orch_kv (key, value) VALUES ('note', x'01')")
        .execute(&mut conn)
        .await?;
    conn.close().await?;

    let upgraded = orch_storage::SqliteBackend::open(path.to_str().context("utf-8")?).await?;
    ensure!(upgraded.schema_version().await? == 8);
    upgrades_with_its_locks(Arc::new(upgraded)).await
}

/// The same for a PostgreSQL database of schema version 3.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_database_before_the_queue_upgrades_with_its_locks() -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let Some(url) = crate::support::postgres::fresh_database().await? else {
        return Ok(());
    };
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    migrator(&[
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
    ])
    .run(&mut conn)
    .await?;
    sqlx::query("SELECT setval('orch_lock_tokens', 6)")
        .execute(&mut conn)
        .await?;
    sqlx::query(
        "INSERT INTO orch_locks (resource, owner, fencing_token, acquired_at, expires_at) \
         VALUES ('kept', 'old', nextval('orch_lock_tokens'), now(), now() + interval '1 hour')",
    )
    .execute(&mut conn)
    .await?;
    sqlx::query("INSERT INTO orch_kv (key, value) VALUES ('note', '\\x01')")
        .execute(&mut conn)
        .await?;
    conn.close().await?;

    let upgraded = orch_storage::PostgresBackend::connect(&url).await?;
    ensure!(upgraded.schema_version().await? == 8);
    upgrades_with_its_locks(Arc::new(upgraded)).await
}

/// A migrator of the given (older) migrations, recorded where orch-storage records them.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn migrator(
    migrations: &[(i64, &'static str, &'static str)],
) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr as _;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let mut migrator = Migrator::with_migrations(
        migrations
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    );
    migrator.dangerous_set_table_name("orch_schema_migrations");
    migrator
}

/// After the upgrade: the old lock (token 7) and data are there, the queue works, and the
/// next grant's token is above the old one.
async fn upgrades_with_its_locks(backend: SharedBackend) -> anyhow::Result<()> {
    let kept = backend
        .lock_info("kept")
        .await?
        .context("the lock was lost")?;
    ensure!(kept.owner == "old" && kept.fencing_token.0 == 7, "{kept:?}");
    ensure!(backend.retrieve("note").await? == Some(vec![1]));
    let locks = LockManager::new(backend.clone());
    let waiting = {
        let locks = locks.clone();
        tokio::spawn(async move {
            locks
                .acquire(
                    "kept",
                    "new",
                    LockOptions::default().wait(Some(Duration::from_secs(30))),
                )
                .await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while locks.waiters("kept").await?.is_empty() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the waiter never queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(backend.release_lock("kept", "old", 7).await?, "release");
    let granted = waiting.await??;
    ensure!(
        granted.fencing_token().0 > 7,
        "token {} after 7",
        granted.fencing_token()
    );
    granted.release().await?;
    Ok(())
}

/// The lock list (every monitor pass reads it) and the reclaim read the locks by expiry through
/// their index, not the whole table: on PostgreSQL the table keeps a free row per resource ever
/// locked (every webhook's replay key among them), here 20,000 of them beside one held lock.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_locks_are_read_by_expiry_through_their_index_on_postgresql() -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let Some(url) = crate::support::postgres::fresh_database().await? else {
        return Ok(());
    };
    let backend: SharedBackend = Arc::new(orch_storage::PostgresBackend::connect(&url).await?);
    let held = backend
        .try_acquire_lock("held", "me", Duration::from_secs(60))
        .await?;
    ensure!(
        matches!(held, orch_core::backend::LockAttempt::Acquired(_)),
        "{held:?}"
    );
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    sqlx::query(
        "INSERT INTO orch_locks (resource, owner, fencing_token, acquired_at, expires_at) \
         SELECT 'webhook:' || n, 'orchd', n, now() - interval '1 hour', '-infinity' \
         FROM generate_series(1, 20000) AS n",
    )
    .execute(&mut conn)
    .await?;
    sqlx::query("ANALYZE orch_locks").execute(&mut conn).await?;
    for statement in [
        "EXPLAIN SELECT * FROM orch_locks WHERE expires_at > now() ORDER BY resource",
        "EXPLAIN SELECT * FROM orch_locks WHERE expires_at = '-infinity' \
         AND acquired_at < now() - interval '1 day'",
        "EXPLAIN SELECT * FROM orch_locks WHERE expires_at <= now() AND expires_at > '-infinity'",
    ] {
        let plan: Vec<String> = sqlx::query_scalar(statement).fetch_all(&mut conn).await?;
        let plan = plan.join("\n");
        ensure!(plan.contains("orch_locks_expiry"), "{statement}:\n{plan}");
    }
    let listed = backend.list_locks().await?;
    ensure!(
        listed.len() == 1 && listed[0].resource == "held",
        "{listed:?}"
    );
    conn.close().await?;
    Ok(())
}
