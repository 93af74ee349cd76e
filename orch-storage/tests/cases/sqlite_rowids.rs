//! A SQLite file whose `orch_tasks` holds the largest rowid (SQLite then gives new rows random
//! rowids): a batch's events, made from the rows stored after a rowid, cannot be found that
//! way, and the batch fails instead of logging other tasks' events; nothing is stored.

use anyhow::ensure;
use orch_core::TaskSpec;
use orch_core::backend::TaskStore as _;
use orch_storage::SqliteBackend;
use sqlx::{ConnectOptions as _, Connection as _};

#[tokio::test]
async fn a_batch_after_the_largest_rowid_fails_and_stores_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("orch.db");
    let path = path.to_str().ok_or_else(|| anyhow::anyhow!("utf-8"))?;
    let backend = SqliteBackend::open(path).await?;
    let first = backend
        .create_tasks(vec![TaskSpec::new("e").into_new_task()?])
        .await?;
    backend.close().await;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await?;
    sqlx::query("UPDATE orch_tasks SET rowid = 9223372036854775807 WHERE id = ?")
        .bind(first[0].task.id.0)
        .execute(&mut conn)
        .await?;
    conn.close().await?;

    let backend = SqliteBackend::open(path).await?;
    let batch = (0..3)
        .map(|_| TaskSpec::new("e").into_new_task())
        .collect::<Result<Vec<_>, _>>()?;
    let failed = backend.create_tasks(batch).await;
    ensure!(failed.is_err(), "the batch was stored: {failed:?}");
    let tasks = backend.list_tasks(orch_core::TaskFilter::default()).await?;
    ensure!(
        tasks.len() == 1,
        "{} tasks after the failed batch",
        tasks.len()
    );
    Ok(())
}
