//! Durable backends for orch: SQLite by default (one file, nothing to install), PostgreSQL when
//! several processes share one queue, one lock table and one event stream.
//!
//! How the crate is laid out:
//! - [`SqliteBackend`] (feature `sqlite`, default): `src/sqlite/`. One writer connection whose
//!   writes are all `BEGIN IMMEDIATE`, a pool of readers, WAL, `synchronous=NORMAL`; the process
//!   clock decides leases.
//! - [`PostgresBackend`] (feature `postgres`): `src/postgres/`. Every transition is one
//!   statement (claim is a CTE with `FOR UPDATE SKIP LOCKED`) that also writes its event; the
//!   database clock decides leases and lock expiry, so every process shares one clock.
//! - [`connect`]: picks the backend from a `DATABASE_URL`-style string.
//! - Migrations live in `migrations/{sqlite,postgres}/`, are compiled in, and are applied when a
//!   backend opens; `schema_version()` tells which one the database is at. They are recorded in
//!   the table `orch_schema_migrations`, so an application's own sqlx migrations in the same
//!   database do not collide with orch's.
//!
//! Both implement every orch-core backend trait ([`TaskStore`](orch_core::TaskStore),
//! [`EventStore`](orch_core::EventStore), [`LockStore`](orch_core::LockStore),
//! [`StorageProvider`](orch_core::StorageProvider)) with the in-memory backend's behaviour, and
//! run orch-core's conformance suite in this crate's tests. sqlx errors are mapped at the edge
//! into [`orch_core::Error::Backend`]; no sqlx type appears in this crate's API.

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod common;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use orch_core;
#[cfg(feature = "postgres")]
pub use postgres::PostgresBackend;
#[cfg(feature = "sqlite")]
pub use sqlite::{DEFAULT_SQLITE_PATH, SqliteBackend};

/// The default `DATABASE_URL`: the SQLite file `data/orch.db`.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/orch.db";

/// Opens the backend a URL names: `sqlite://...` (or `sqlite::memory:`) or
/// `postgres://...`/`postgresql://...`, each only when its feature is enabled.
///
/// ```no_run
/// # async fn demo() -> orch_core::Result<()> {
/// let url = std::env::var("DATABASE_URL")
///     .unwrap_or_else(|_| orch_storage::DEFAULT_DATABASE_URL.to_owned());
/// let backend = orch_storage::connect(&url).await?;
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> orch_core::Result<orch_core::SharedBackend> {
    #[cfg(feature = "sqlite")]
    if url.starts_with("sqlite:") {
        return Ok(std::sync::Arc::new(SqliteBackend::open(url).await?));
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(std::sync::Arc::new(PostgresBackend::connect(url).await?));
    }
    let scheme = url.split_once(':').map_or(url, |(scheme, _)| scheme);
    Err(orch_core::Error::invalid(
        "database url",
        format!(
            "scheme {scheme:?} is not supported by this build (enabled: {})",
            enabled_schemes()
        ),
    ))
}

fn enabled_schemes() -> &'static str {
    match (cfg!(feature = "sqlite"), cfg!(feature = "postgres")) {
        (true, true) => "sqlite, postgres",
        (true, false) => "sqlite",
        (false, true) => "postgres",
        (false, false) => "none",
    }
}
