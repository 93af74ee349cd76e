//! orch-storage's tests: orch-core's conformance suite and its model-based property on a real
//! SQLite file and a real PostgreSQL (see `support`), and what only one backend has (SQLite's
//! file handling and backup; several PostgreSQL clients sharing one database; the acceptance
//! cases in `cases/`).

mod cases;
mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use orch_core::backend::{AttemptOutcome, AttemptReport, Claimed, NewTask};
use orch_core::{
    Error, EventKind, NewEvent, SharedBackend, Task, TaskFilter, TaskId, TaskSpec, TaskStatus,
};
use serde_json::json;

const MINUTE: Duration = Duration::from_secs(60);

/// How many random operation sequences run against each database backend and the reference
/// model: 24, or `ORCH_MODEL_CASES` for a longer soak.
fn model_cases() -> usize {
    std::env::var("ORCH_MODEL_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(24)
}

/// Ends `claimed`'s attempt with `outcome` and returns the task as it is now.
async fn finish(
    backend: &SharedBackend,
    claimed: &Claimed,
    outcome: AttemptOutcome,
) -> anyhow::Result<Task> {
    let status = backend
        .finish_attempts(vec![AttemptReport {
            task_id: claimed.task.id,
            lease_token: claimed.lease_token,
            attempt: claimed.task.attempt,
            outcome,
        }])
        .await?
        .pop()
        .context("no answer")?;
    status?;
    backend
        .get_task(claimed.task.id)
        .await?
        .context("task vanished")
}

fn spec(core: &str) -> TaskSpec {
    TaskSpec::new(core)
}

fn new_task(spec: TaskSpec) -> anyhow::Result<NewTask> {
    Ok(spec.into_new_task()?)
}

async fn create(backend: &SharedBackend, specs: Vec<TaskSpec>) -> anyhow::Result<Vec<Task>> {
    let tasks = specs
        .into_iter()
        .map(new_task)
        .collect::<anyhow::Result<_>>()?;
    Ok(backend
        .create_tasks(tasks)
        .await?
        .into_iter()
        .map(|c| c.task)
        .collect())
}

/// Polls `probe` every 25 ms for up to 10 s (real time: database clocks cannot be paused).
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn task_event_kinds(backend: &SharedBackend, id: TaskId) -> anyhow::Result<Vec<EventKind>> {
    Ok(backend
        .read_events(0, 1000)
        .await?
        .into_iter()
        .filter(|e| e.task_id == Some(id))
        .map(|e| e.kind)
        .collect())
}

#[cfg(feature = "sqlite")]
mod sqlite_only {
    use orch_storage::SqliteBackend;

    use super::*;

    #[tokio::test]
    async fn conformance() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let root = dir.path().to_path_buf();
        orch_core::conformance::assert_conformance("sqlite", || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = root.join(format!("c{n}.db"));
            async move {
                let path = path.to_str().map(str::to_owned).unwrap_or_default();
                match SqliteBackend::open(&path).await {
                    Ok(backend) => Arc::new(backend) as SharedBackend,
                    Err(e) => panic!("cannot open {path}: {e}"),
                }
            }
        })
        .await;
        Ok(())
    }

    #[tokio::test]
    async fn agrees_with_the_model() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let root = dir.path().to_path_buf();
        orch_core::conformance::assert_model_conformance("sqlite", model_cases(), || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = root.join(format!("m{n}.db"));
            async move {
                let path = path.to_str().map(str::to_owned).unwrap_or_default();
                match SqliteBackend::open(&path).await {
                    Ok(backend) => Arc::new(backend) as SharedBackend,
                    Err(e) => panic!("cannot open {path}: {e}"),
                }
            }
        })
        .await;
        Ok(())
    }

    #[tokio::test]
    async fn opens_creates_folder_migrates_and_backs_up() -> anyhow::Result<()> {
        let (backend, dir) = crate::support::sqlite_backend().await?;
        let path = backend
            .path()
            .context("file backend has no path")?
            .to_path_buf();
        ensure!(path.is_file(), "{} not created", path.display());
        ensure!(backend.schema_version().await? == 8);
        let wal = path.with_extension("db-wal");
        let backend: SharedBackend = Arc::new(backend);
        let task = create(&backend, vec![spec("work").payload(json!({"n": 1}))]).await?;
        ensure!(wal.is_file(), "not in WAL mode: {} missing", wal.display());

        let sqlite = SqliteBackend::open(path.to_str().context("utf-8")?).await?;
        let copy = dir.path().join("backups").join("copy.db");
        sqlite.backup(&copy).await?;
        ensure!(
            sqlite.backup(&copy).await.is_err(),
            "backup overwrote a file"
        );
        let restored = SqliteBackend::open(copy.to_str().context("utf-8")?).await?;
        let found = orch_core::backend::TaskStore::get_task(&restored, task[0].id).await?;
        ensure!(
            found.as_ref() == Some(&task[0]),
            "backup lacks the task: {found:?}"
        );
        ensure!(restored.schema_version().await? == 8);
        // The file, its WAL and the backup are the owner's alone, whatever the umask.
        #[cfg(unix)]
        for file in [&path, &wal, &copy] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file)?.permissions().mode() & 0o777;
            ensure!(mode == 0o600, "{} has mode {mode:o}", file.display());
        }
        Ok(())
    }

    /// The writer leaves checkpoints to a background connection (its own come only past 64
    /// MiB of WAL), which copies what commits into the database file soon after.
    #[tokio::test]
    async fn a_background_checkpoint_copies_the_wal_into_the_file() -> anyhow::Result<()> {
        let (backend, _dir) = crate::support::sqlite_backend().await?;
        let path = backend
            .path()
            .context("file backend has no path")?
            .to_path_buf();
        let size = || std::fs::metadata(&path).map(|m| m.len());
        let before = size()?;
        let backend: SharedBackend = Arc::new(backend);
        let padding = "x".repeat(2_000);
        create(
            &backend,
            (0..200)
                .map(|n| spec("work").payload(json!({ "n": n, "padding": padding })))
                .collect(),
        )
        .await?;
        let after = eventually("the database file holds the new tasks", || async {
            let now = size()?;
            Ok((now >= before + 400_000).then_some(now))
        })
        .await?;
        ensure!(after > before);
        Ok(())
    }

    #[tokio::test]
    async fn data_survives_reopen() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}/orch.db", dir.path().display());
        let backend = SqliteBackend::open(&url).await?;
        let shared: SharedBackend = Arc::new(backend);
        let task = create(&shared, vec![spec("work")]).await?;
        let claimed = shared.claim_tasks("work", 1, MINUTE).await?;
        finish(
            &shared,
            &claimed[0],
            AttemptOutcome::Succeeded {
                result: json!("kept"),
            },
        )
        .await?;
        let before = shared.get_task(task[0].id).await?;
        let events_before = shared.read_events(0, 100).await?;
        drop(shared);
        let reopened: SharedBackend = Arc::new(SqliteBackend::open(&url).await?);
        ensure!(reopened.get_task(task[0].id).await? == before);
        ensure!(reopened.read_events(0, 100).await? == events_before);
        Ok(())
    }

    #[tokio::test]
    async fn in_memory_database_works() -> anyhow::Result<()> {
        let backend: SharedBackend = Arc::new(SqliteBackend::open("sqlite::memory:").await?);
        let task = create(&backend, vec![spec("work")]).await?;
        ensure!(backend.get_task(task[0].id).await?.is_some());
        ensure!(backend.claim_tasks("work", 5, MINUTE).await?.len() == 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("notes.txt");
        std::fs::write(
            &path,
            "these are not the pages you are looking for".repeat(100),
        )?;
        let opened = SqliteBackend::open(path.to_str().context("utf-8")?).await;
        let Err(err) = opened else {
            bail!("a text file opened as a database");
        };
        ensure!(err.to_string().contains("as a SQLite database: "), "{err}");
        let after = std::fs::read(&path)?;
        ensure!(
            after
                == "these are not the pages you are looking for"
                    .repeat(100)
                    .as_bytes()
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_foreign_database_is_refused_unchanged() -> anyhow::Result<()> {
        use sqlx::{ConnectOptions as _, Connection as _};
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("app.db");
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .connect()
            .await?;
        sqlx::query("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let before = std::fs::read(&path)?;
        let err = SqliteBackend::open(path.to_str().context("utf-8")?).await;
        let Err(err) = err else {
            bail!("a foreign database was opened")
        };
        ensure!(
            err.to_string()
                .contains("orch did not create (tables: invoices)"),
            "{err}"
        );
        ensure!(
            std::fs::read(&path)? == before,
            "the foreign file was changed"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() -> anyhow::Result<()> {
        use sqlx::{ConnectOptions as _, Connection as _};
        let (backend, dir) = crate::support::sqlite_backend().await?;
        let path = backend.path().context("no path")?.to_path_buf();
        backend.close().await;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .connect()
            .await?;
        sqlx::query(
            "INSERT INTO orch_schema_migrations (version, description, success, checksum, \
             execution_time) VALUES (99, 'future', TRUE, x'00', 0)",
        )
        .execute(&mut conn)
        .await?;
        conn.close().await?;
        let err = SqliteBackend::open(path.to_str().context("utf-8")?).await;
        let Err(err) = err else {
            bail!("a newer schema was opened")
        };
        ensure!(
            err.to_string().contains("schema is at version 99, newer"),
            "{err}"
        );
        drop(dir);
        Ok(())
    }

    #[tokio::test]
    async fn connect_picks_the_backend_from_the_url() -> anyhow::Result<()> {
        let backend = orch_storage::connect("sqlite::memory:").await?;
        ensure!(backend.list_tasks(TaskFilter::default()).await?.is_empty());
        let err = orch_storage::connect("mysql://localhost/x").await;
        ensure!(matches!(err, Err(Error::Invalid { .. })));
        Ok(())
    }
}

#[cfg(feature = "postgres")]
mod postgres_only {
    use orch_storage::{PostgresBackend, PostgresOptions};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() -> anyhow::Result<()> {
        if crate::support::postgres::fresh_database().await?.is_none() {
            return Ok(());
        }
        orch_core::conformance::assert_conformance("postgres", || {
            fresh_backend(PostgresOptions::default())
        })
        .await;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn agrees_with_the_model() -> anyhow::Result<()> {
        if crate::support::postgres::fresh_database().await?.is_none() {
            return Ok(());
        }
        orch_core::conformance::assert_model_conformance("postgres", model_cases(), || {
            fresh_backend(PostgresOptions::default())
        })
        .await;
        Ok(())
    }

    /// A backend with `options` on a fresh database of its own.
    async fn fresh_backend(options: PostgresOptions) -> SharedBackend {
        let url = match crate::support::postgres::fresh_database().await {
            Ok(Some(url)) => url,
            other => panic!("no database: {other:?}"),
        };
        match PostgresBackend::connect_with(&url, options).await {
            Ok(backend) => Arc::new(backend) as SharedBackend,
            Err(e) => panic!("cannot connect: {e}"),
        }
    }

    /// A backend whose claims resume after the last task claimed whenever it can (every claim
    /// from the head counts as slow): within one backend, nothing it does leaves a task where
    /// a resumed claim cannot see it.
    async fn always_resuming() -> SharedBackend {
        fresh_backend(PostgresOptions::default().with_slow_claim(Duration::ZERO)).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_with_claims_resuming() -> anyhow::Result<()> {
        if crate::support::postgres::fresh_database().await?.is_none() {
            return Ok(());
        }
        orch_core::conformance::assert_conformance("postgres, claims resuming", always_resuming)
            .await;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn agrees_with_the_model_with_claims_resuming() -> anyhow::Result<()> {
        if crate::support::postgres::fresh_database().await?.is_none() {
            return Ok(());
        }
        orch_core::conformance::assert_model_conformance(
            "postgres, claims resuming",
            model_cases(),
            always_resuming,
        )
        .await;
        Ok(())
    }

    /// Two clients of one database (as two processes would be) share the queue and the log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_clients_share_queue_and_event_log() -> anyhow::Result<()> {
        let Some(url) = crate::support::postgres::fresh_database().await? else {
            return Ok(());
        };
        let a: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
        let b: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
        ensure!(a.list_tasks(TaskFilter::default()).await?.is_empty());
        create(&a, (0..100).map(|_| spec("work")).collect()).await?;
        let mut workers = Vec::new();
        for backend in [a.clone(), b.clone(), a.clone(), b.clone()] {
            workers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let claimed = backend.claim_tasks("work", 4, MINUTE).await?;
                    if claimed.is_empty() {
                        return anyhow::Ok(mine);
                    }
                    for c in claimed {
                        finish(
                            &backend,
                            &c,
                            AttemptOutcome::Succeeded {
                                result: json!(null),
                            },
                        )
                        .await?;
                        mine.push(c.task.id);
                    }
                }
            }));
        }
        let mut all = Vec::new();
        for worker in workers {
            all.extend(worker.await??);
        }
        let unique: HashSet<TaskId> = all.iter().copied().collect();
        ensure!(
            all.len() == 100 && unique.len() == 100,
            "{} claims, {} tasks",
            all.len(),
            unique.len()
        );
        let from_b = b.read_events(0, 1000).await?;
        ensure!(
            from_b.len() == 300,
            "b sees {} events, expected 300",
            from_b.len()
        );
        let seqs: Vec<u64> = from_b.iter().map(|e| e.seq).collect();
        ensure!(
            seqs == (1..=300).collect::<Vec<u64>>(),
            "sequence has gaps or repeats"
        );
        ensure!(a.last_event_seq().await? == 300);
        Ok(())
    }

    /// A reader tailing the log while several clients write concurrently sees every event once,
    /// in sequence order: an event that commits late is never numbered behind the cursor.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_never_make_a_tail_skip() -> anyhow::Result<()> {
        let Some(url) = crate::support::postgres::fresh_database().await? else {
            return Ok(());
        };
        const WRITERS: usize = 4;
        const EACH: usize = 50;
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let backend: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
            writers.push(tokio::spawn(async move {
                for i in 0..EACH {
                    if i % 2 == 0 {
                        backend
                            .append_event(
                                NewEvent::new(EventKind::Custom("test.tick".into()))
                                    .with_data(json!({"w": w, "i": i})),
                            )
                            .await?;
                    } else {
                        create(&backend, vec![spec(&format!("core{w}"))]).await?;
                    }
                }
                anyhow::Ok(())
            }));
        }
        let reader: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
        let mut seen = Vec::new();
        let mut cursor = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while seen.len() < WRITERS * EACH {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "tail stalled at {}",
                seen.len()
            );
            let batch = reader.read_events(cursor, 7).await?;
            for event in &batch {
                ensure!(event.seq > cursor, "after {cursor} came {}", event.seq);
                cursor = event.seq;
            }
            seen.extend(batch);
            tokio::task::yield_now().await;
        }
        for writer in writers {
            writer.await??;
        }
        ensure!(
            reader.read_events(cursor, 10).await?.is_empty(),
            "more events than written"
        );
        let all = reader.read_events(0, 10_000).await?;
        ensure!(all == seen, "an event appeared behind the tail's cursor");
        Ok(())
    }

    /// An event whose transaction commits after later events were read is numbered after them,
    /// so a reader that already moved past them still gets it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_commit_lands_after_the_cursor() -> anyhow::Result<()> {
        use sqlx::Connection as _;
        let Some(url) = crate::support::postgres::fresh_database().await? else {
            return Ok(());
        };
        let backend: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
        let mut slow = sqlx::PgConnection::connect(&url).await?;
        let mut tx = slow.begin().await?;
        sqlx::query(
            "INSERT INTO orch_event_batches (n, at, kinds, task_ids, core_ids, attempts, data) \
             VALUES (1, now(), ARRAY['test.slow'], ARRAY[NULL::uuid], ARRAY[NULL], \
                     ARRAY[NULL::int4], '[null]')",
        )
        .execute(&mut *tx)
        .await?;
        let fast = backend
            .append_event(NewEvent::new(EventKind::Custom("test.fast".into())))
            .await?;
        let read = backend.read_events(0, 10).await?;
        ensure!(read.len() == 1 && read[0].seq == fast.seq, "{read:?}");
        tx.commit().await?;
        let late = backend.read_events(fast.seq, 10).await?;
        ensure!(
            late.len() == 1 && late[0].kind.as_str() == "test.slow" && late[0].seq > fast.seq,
            "{late:?}"
        );
        Ok(())
    }

    /// A grant that drew its fencing token before another grant of the same resource and
    /// reaches the table after that one was released still gets a greater token. (When a
    /// release deleted the row, it got its older token: tokens went backwards.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fencing_tokens_never_go_backwards_across_a_release() -> anyhow::Result<()> {
        use orch_core::backend::LockAttempt;
        use sqlx::Connection as _;
        let Some(url) = crate::support::postgres::fresh_database().await? else {
            return Ok(());
        };
        let backend: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
        // A trigger holds back the owner `slow` after its token is drawn, before its row is
        // written.
        let mut admin = sqlx::PgConnection::connect(&url).await?;
        sqlx::query(
            "CREATE FUNCTION orch_test_slow() RETURNS trigger AS $$ BEGIN \
             IF NEW.owner = 'slow' THEN PERFORM pg_sleep(0.5); END IF; RETURN NEW; END $$ \
             LANGUAGE plpgsql",
        )
        .execute(&mut admin)
        .await?;
        sqlx::query(
            "CREATE TRIGGER orch_test_slow BEFORE INSERT ON orch_locks \
             FOR EACH ROW EXECUTE FUNCTION orch_test_slow()",
        )
        .execute(&mut admin)
        .await?;
        let slow_backend = backend.clone();
        let slow =
            tokio::spawn(async move { slow_backend.try_acquire_lock("r", "slow", MINUTE).await });
        tokio::time::sleep(Duration::from_millis(150)).await;
        let LockAttempt::Acquired(fast) = backend.try_acquire_lock("r", "fast", MINUTE).await?
        else {
            bail!("the free lock was not granted");
        };
        ensure!(
            backend
                .release_lock("r", "fast", fast.fencing_token.0)
                .await?
        );
        let LockAttempt::Acquired(late) = slow.await?? else {
            bail!("the released lock was not granted to the slow acquisition");
        };
        ensure!(
            late.fencing_token > fast.fencing_token,
            "fencing token went backwards: {} granted after {}",
            late.fencing_token,
            fast.fencing_token
        );
        Ok(())
    }

    /// A rescue that finds an expired lease and then waits for the row while the holder's
    /// renewal commits leaves the task with its holder: a live holder is never superseded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_renewal_that_commits_first_keeps_the_lease() -> anyhow::Result<()> {
        use sqlx::Connection as _;
        let Some(url) = crate::support::postgres::fresh_database().await? else {
            return Ok(());
        };
        let backend: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
        create(&backend, vec![spec("work").max_attempts(3)]).await?;
        let claimed = backend
            .claim_tasks("work", 1, Duration::from_millis(1))
            .await?;
        let claimed = claimed.first().context("nothing claimed")?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The holder's renewal, under way: the row is locked until it commits.
        let mut holder = sqlx::PgConnection::connect(&url).await?;
        let mut renewal = holder.begin().await?;
        sqlx::query(
            "UPDATE orch_tasks SET lease_expires_at = now() + interval '1 hour' \
             WHERE id = $1 AND lease_token = $2",
        )
        .bind(claimed.task.id.0)
        .bind(claimed.lease_token.0)
        .execute(&mut *renewal)
        .await?;
        let rescuer = backend.clone();
        let rescue = tokio::spawn(async move { rescuer.rescue_expired(10).await });
        // The rescue reads the old, expired lease and then waits for the row.
        tokio::time::sleep(Duration::from_millis(300)).await;
        ensure!(
            !rescue.is_finished(),
            "the rescue did not wait for the renewal"
        );
        renewal.commit().await?;
        let rescued = rescue.await??;
        ensure!(
            rescued.is_empty(),
            "a renewed lease was rescued: {rescued:?}"
        );
        let task = backend
            .get_task(claimed.task.id)
            .await?
            .context("task vanished")?;
        ensure!(
            task.status == TaskStatus::Running && task.attempt == 1,
            "{task:?}"
        );
        finish(
            &backend,
            claimed,
            AttemptOutcome::Succeeded { result: json!(1) },
        )
        .await?;
        Ok(())
    }

    /// A lease renewal and an outcome batch over the same two tasks, given in opposite orders
    /// and slowed down row by row, both complete: neither waits for a row the other holds while
    /// holding one it wants. (When both waited, PostgreSQL aborted one with `deadlock detected`
    /// after its `deadlock_timeout`, a second's stall under load.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renewals_and_outcome_batches_never_deadlock() -> anyhow::Result<()> {
        use orch_core::backend::HeldLease;
        use sqlx::Connection as _;
        let Some(url) = crate::support::postgres::fresh_database().await? else {
            return Ok(());
        };
        let backend: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
        create(&backend, vec![spec("work"), spec("work")]).await?;
        let mut claimed = backend.claim_tasks("work", 2, MINUTE).await?;
        ensure!(claimed.len() == 2, "claimed {}", claimed.len());
        claimed.sort_by_key(|c| c.task.id);
        // A table of some size, so that both statements probe the primary key row by row in
        // the order they are given, as they do in production (on a handful of rows the
        // planner scans the table in its physical order instead).
        create(&backend, (0..5_000).map(|_| spec("filler")).collect()).await?;
        // Every row update now takes a moment after locking its row, so the two statements
        // overlap whatever the machine's speed.
        let mut admin = sqlx::PgConnection::connect(&url).await?;
        sqlx::query(
            "CREATE FUNCTION orch_test_slow_update() RETURNS trigger AS $$ BEGIN \
             PERFORM pg_sleep(0.4); RETURN NEW; END $$ LANGUAGE plpgsql",
        )
        .execute(&mut admin)
        .await?;
        sqlx::query(
            "CREATE TRIGGER orch_test_slow_update BEFORE UPDATE ON orch_tasks \
             FOR EACH ROW EXECUTE FUNCTION orch_test_slow_update()",
        )
        .execute(&mut admin)
        .await?;
        sqlx::query("ANALYZE orch_tasks")
            .execute(&mut admin)
            .await?;
        // The renewal takes the tasks in id order, the outcome batch in the reverse order.
        let held: Vec<HeldLease> = claimed
            .iter()
            .map(|c| HeldLease {
                task_id: c.task.id,
                lease_token: c.lease_token,
            })
            .collect();
        let reports: Vec<AttemptReport> = claimed
            .iter()
            .rev()
            .map(|c| AttemptReport {
                task_id: c.task.id,
                lease_token: c.lease_token,
                attempt: c.task.attempt,
                outcome: AttemptOutcome::Succeeded { result: json!(1) },
            })
            .collect();
        let renewer = backend.clone();
        let renewal = tokio::spawn(async move { renewer.renew_leases(held, MINUTE).await });
        let finisher = backend.clone();
        let finish = tokio::spawn(async move { finisher.finish_attempts(reports).await });
        let renewed = renewal.await?.context("the renewal failed")?;
        ensure!(renewed.len() == 2, "{renewed:?}");
        for status in finish.await?.context("the outcome batch failed")? {
            ensure!(status? == TaskStatus::Succeeded);
        }
        Ok(())
    }

    /// A task stored already claimed (an idle orchestrator's own dispatch) is what a create
    /// and a claim would have left; one not yet runnable is handed back, nothing stored.
    #[tokio::test]
    async fn create_claimed_is_create_then_claim() -> anyhow::Result<()> {
        let Some(url) = crate::support::postgres::fresh_database().await? else {
            return Ok(());
        };
        let backend: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
        let task = new_task(spec("direct").payload(json!({"n": 1})).lock("r"))?;
        let id = task.id;
        let Ok(claimed) = backend.create_claimed(task, MINUTE).await? else {
            bail!("the backend declined a runnable task");
        };
        ensure!(claimed.task.id == id && claimed.task.status == TaskStatus::Running);
        ensure!(claimed.task.attempt == 1 && claimed.task.locks == ["r"]);
        ensure!(claimed.task.started_at.is_some() && claimed.task.lease_expires_at.is_some());
        ensure!(backend.get_task(id).await?.as_ref() == Some(&claimed.task));
        ensure!(
            task_event_kinds(&backend, id).await?
                == [EventKind::TaskQueued, EventKind::TaskStarted]
        );
        ensure!(backend.claim_tasks("direct", 10, MINUTE).await?.is_empty());
        let done = finish(
            &backend,
            &claimed,
            AttemptOutcome::Succeeded { result: json!(1) },
        )
        .await?;
        ensure!(done.status == TaskStatus::Succeeded);

        let later =
            new_task(spec("direct").run_at(chrono::Utc::now() + chrono::TimeDelta::hours(1)))?;
        let later_id = later.id;
        ensure!(backend.create_claimed(later, MINUTE).await?.is_err());
        ensure!(
            backend.get_task(later_id).await?.is_none(),
            "a declined task was stored"
        );
        let keyed = new_task(spec("direct").idempotency_key("k"))?;
        ensure!(backend.create_claimed(keyed, MINUTE).await?.is_err());
        Ok(())
    }

    /// An orchestrator on PostgreSQL whose claim loop is idle starts a task it dispatches
    /// itself: `dispatch` returns it running, and it finishes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_orchestrator_starts_its_own_dispatch() -> anyhow::Result<()> {
        let Some(url) = crate::support::postgres::fresh_database().await? else {
            return Ok(());
        };
        let backend: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
        let orch = orch_core::Orchestrator::builder(backend.clone())
            .engine(
                "direct",
                orch_core::processor_fn(|_ctx, input: serde_json::Value| async move { Ok(input) }),
            )
            .build()
            .await?;
        let task = eventually("the claim loop is idle", || async {
            // Until the loop has found the queue empty, a dispatch takes the usual path.
            let task = orch.dispatch(spec("direct").payload(json!("x"))).await?;
            orch.wait_for(task.id, Duration::from_secs(10)).await?;
            Ok((task.status == TaskStatus::Running).then_some(task))
        })
        .await?;
        ensure!(task.attempt == 1);
        let done = orch.wait_for(task.id, Duration::from_secs(10)).await?;
        ensure!(done.status == TaskStatus::Succeeded && done.result == Some(json!("x")));
        orch.shutdown(Duration::from_secs(5)).await;
        Ok(())
    }

    /// Events live in rows of up to 256; reading them in any window gives the one log, and a
    /// reader whose next events were pruned goes on past the gap.
    #[tokio::test]
    async fn event_rows_read_as_one_log_and_across_gaps() -> anyhow::Result<()> {
        let Some(url) = crate::support::postgres::fresh_database().await? else {
            return Ok(());
        };
        let backend: SharedBackend = Arc::new(PostgresBackend::connect(&url).await?);
        let tasks = create(&backend, (0..600).map(|_| spec("rows")).collect()).await?;
        let all = backend.read_events(0, 1_000).await?;
        ensure!(all.len() == 600, "read {} events", all.len());
        for (i, (event, task)) in all.iter().zip(&tasks).enumerate() {
            ensure!(
                event.seq == i as u64 + 1,
                "event {i} numbered {}",
                event.seq
            );
            ensure!(event.task_id == Some(task.id) && event.kind == EventKind::TaskQueued);
        }
        let mut paged = Vec::new();
        loop {
            let after = paged.last().map_or(0, |e: &orch_core::Event| e.seq);
            let page = backend.read_events(after, 7).await?;
            if page.is_empty() {
                break;
            }
            ensure!(page.len() <= 7);
            paged.extend(page);
        }
        ensure!(paged == all, "paging changed the log");
        ensure!(backend.read_events(0, usize::MAX).await? == all);
        ensure!(backend.read_events(u64::MAX, usize::MAX).await?.is_empty());
        let middle = backend.read_events(300, 3).await?;
        ensure!(middle.iter().map(|e| e.seq).eq([301, 302, 303]));

        // 600 events took three rows (256, 256, 88): drop the middle one, as pruning would.
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        let rows: Vec<i32> = sqlx::query_scalar("SELECT n FROM orch_event_batches ORDER BY id")
            .fetch_all(&mut conn)
            .await?;
        ensure!(rows == [256, 256, 88], "rows {rows:?}");
        sqlx::query("DELETE FROM orch_event_batches WHERE seq = 257")
            .execute(&mut conn)
            .await?;
        let after_gap = backend.read_events(256, 5).await?;
        ensure!(
            after_gap.iter().map(|e| e.seq).eq(513..518),
            "{:?}",
            after_gap.iter().map(|e| e.seq).collect::<Vec<_>>()
        );
        let across = backend.read_events(250, 10).await?;
        ensure!(
            across.iter().map(|e| e.seq).eq((251..=256).chain(513..517)),
            "{:?}",
            across.iter().map(|e| e.seq).collect::<Vec<_>>()
        );
        Ok(())
    }

    /// A database at schema version 2 (a row per event) keeps every event, numbered or not,
    /// in order, when version 3 moves them to event rows.
    #[tokio::test]
    async fn upgrading_to_event_rows_keeps_every_event() -> anyhow::Result<()> {
        use sqlx::Connection as _;
        use sqlx::SqlSafeStr as _;
        use sqlx::migrate::{Migration, MigrationType, Migrator};
        let Some(url) = crate::support::postgres::fresh_database().await? else {
            return Ok(());
        };
        let mut version_2 = Migrator::with_migrations(
            [
                (
                    1,
                    "init",
                    include_str!("../migrations/postgres/0001_init.sql"),
                ),
                (
                    2,
                    "transition indexes",
                    include_str!("../migrations/postgres/0002_transition_indexes.sql"),
                ),
            ]
            .into_iter()
            .map(|(version, description, sql)| {
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
        version_2.dangerous_set_table_name("orch_schema_migrations");
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        version_2.run(&mut conn).await?;
        let task = uuid::Uuid::now_v7();
        sqlx::query(
            "INSERT INTO orch_events (seq, kind, at, task_id, core_id, attempt, data) VALUES \
             (1, 'task.queued', now(), $1, 'old', 0, 'null'), \
             (2, 'custom.note', now(), NULL, NULL, NULL, '{\"n\": 2}'), \
             (NULL, 'task.started', now(), $1, 'old', 1, 'null')",
        )
        .bind(task)
        .execute(&mut conn)
        .await?;
        sqlx::query("UPDATE orch_event_counter SET last = 2")
            .execute(&mut conn)
            .await?;
        conn.close().await?;

        let upgraded = PostgresBackend::connect(&url).await?;
        ensure!(upgraded.schema_version().await? == 8);
        let backend: SharedBackend = Arc::new(upgraded);
        let events = backend.read_events(0, 10).await?;
        type Seen = (
            u64,
            String,
            Option<uuid::Uuid>,
            Option<u32>,
            serde_json::Value,
        );
        let seen: Vec<Seen> = events
            .iter()
            .map(|e| {
                (
                    e.seq,
                    e.kind.as_str().to_owned(),
                    e.task_id.map(|id| id.0),
                    e.attempt,
                    e.data.clone(),
                )
            })
            .collect();
        ensure!(
            seen == [
                (1, "task.queued".into(), Some(task), Some(0), json!(null)),
                (2, "custom.note".into(), None, None, json!({"n": 2})),
                (3, "task.started".into(), Some(task), Some(1), json!(null)),
            ],
            "{seen:?}"
        );
        let next = backend
            .append_event(NewEvent::new(EventKind::Custom("custom.after".into())))
            .await?;
        ensure!(next.seq == 4, "numbered {}", next.seq);
        Ok(())
    }

    #[tokio::test]
    async fn migrations_apply_once_and_refuse_a_newer_schema() -> anyhow::Result<()> {
        let Some(url) = crate::support::postgres::fresh_database().await? else {
            return Ok(());
        };
        let first = PostgresBackend::connect(&url).await?;
        let second = PostgresBackend::connect(&url).await?;
        ensure!(first.schema_version().await? == 8 && second.schema_version().await? == 8);
        {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            sqlx::query(
                "INSERT INTO orch_schema_migrations (version, description, success, checksum, \
                 execution_time) VALUES (99, 'future', TRUE, '\\x00', 0)",
            )
            .execute(&mut conn)
            .await?;
            conn.close().await?;
        }
        let err = PostgresBackend::connect(&url).await;
        let Err(err) = err else {
            bail!("a newer schema was accepted")
        };
        ensure!(
            err.to_string().contains("schema is at version 99, newer"),
            "{err}"
        );
        let missing = url.replace("/t_", "/missing_");
        let err = PostgresBackend::connect(&missing).await;
        let Err(err) = err else {
            bail!("a missing database was accepted")
        };
        ensure!(err.to_string().contains("does not exist"), "{err}");
        Ok(())
    }
}
