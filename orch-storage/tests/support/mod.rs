//! Test fixtures: a fresh SQLite file per test, and a fresh PostgreSQL database per test on a
//! server shared by the whole test binary (`ORCH_TEST_DATABASE_URL`, or one started here from
//! `initdb`/`postgres` on PATH).

#[cfg(feature = "postgres")]
pub(crate) mod postgres;

use std::sync::Arc;

use orch_core::SharedBackend;
#[cfg(feature = "postgres")]
use orch_storage::PostgresBackend;
#[cfg(feature = "sqlite")]
use orch_storage::SqliteBackend;
#[cfg(feature = "sqlite")]
use tempfile::TempDir;

/// A backend under test and what must live as long as it.
pub(crate) struct Fixture {
    pub(crate) backend: SharedBackend,
    /// The SQLite file's folder, removed on drop.
    #[cfg(feature = "sqlite")]
    pub(crate) _dir: Option<TempDir>,
}

#[cfg(feature = "sqlite")]
/// A fresh SQLite backend in a new temporary folder (in a subfolder that `open` must create).
pub(crate) async fn sqlite() -> anyhow::Result<Fixture> {
    let (backend, dir) = sqlite_backend().await?;
    Ok(Fixture {
        backend: Arc::new(backend),
        _dir: Some(dir),
    })
}

#[cfg(feature = "sqlite")]
/// A fresh SQLite backend and its folder.
pub(crate) async fn sqlite_backend() -> anyhow::Result<(SqliteBackend, TempDir)> {
    use anyhow::Context as _;
    let dir = tempfile::Builder::new().prefix("orch-sqlite-").tempdir()?;
    let path = dir.path().join("nested").join("orch.db");
    let path = path.to_str().context("temp path is not UTF-8")?;
    let backend = SqliteBackend::open(path).await?;
    Ok((backend, dir))
}

#[cfg(feature = "postgres")]
/// A fresh PostgreSQL backend on its own new database, or `None` (after printing why) when no
/// PostgreSQL is available and `ORCH_REQUIRE_POSTGRES` is not `1`.
pub(crate) async fn postgres() -> anyhow::Result<Option<Fixture>> {
    let Some(url) = postgres::fresh_database().await? else {
        return Ok(None);
    };
    let backend = PostgresBackend::connect(&url).await?;
    Ok(Some(Fixture {
        backend: Arc::new(backend),
        #[cfg(feature = "sqlite")]
        _dir: None,
    }))
}
