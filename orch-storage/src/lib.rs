//! Durable backends for orch: SQLite by default (one file, nothing to install), PostgreSQL when
//! several processes share one queue, one lock table and one event stream.
//!
//! How the crate is laid out:
//! - [`SqliteBackend`] (feature `sqlite`, default): `src/sqlite/`. One writer connection whose
//!   writes are all `BEGIN IMMEDIATE`, a pool of readers, WAL, `synchronous=NORMAL`; the process
//!   clock decides leases. A batch of outcomes (`finish_attempts`) is one transaction.
//! - [`PostgresBackend`] (feature `postgres`): `src/postgres/`. Every transition is one
//!   statement (claim is a CTE with `FOR UPDATE SKIP LOCKED`; a batch of outcomes is one
//!   `unnest` statement) that also writes its events; the database clock decides leases and
//!   lock expiry, so every process shares one clock. [`PostgresOptions`] tunes the pool and
//!   whether worker-side commits wait for the disk.
//! - Wake-ups across processes (PostgreSQL, `src/postgres/notify.rs`): statements that create
//!   or requeue tasks or append events send one `pg_notify` each (event-only ones rate-limited);
//!   a `LISTEN` task per backend turns them into the `ChangeSignal`s the orchestrator waits on.
//!   Only a hint: the orchestrator still polls every `poll_interval`, so a lost notification
//!   costs latency, never a task.
//! - Transactional dispatch: [`SqliteBackend::dispatch_in`] and [`PostgresBackend::dispatch_in`]
//!   store tasks inside the application's own sqlx transaction, so a task exists if and only if
//!   the application's data commits. This is the one place sqlx types appear in this crate's API
//!   (re-exported as [`sqlx`] so versions match).
//! - Pruning: both backends implement `prune_tasks`/`prune_events` in bounded batches; the
//!   orchestrator runs them on a schedule with the retention of
//!   [`OrchestratorConfig::with_retention`](orch_core::OrchestratorConfig::with_retention)
//!   (default: finished tasks and events kept 7 days, checked every 5 minutes), or on demand
//!   with [`Orchestrator::prune`](orch_core::Orchestrator::prune).
//! - [`connect`]: picks the backend from a `DATABASE_URL`-style string.
//! - Migrations live in `migrations/{sqlite,postgres}/`, are compiled in, and are applied when a
//!   backend opens; `schema_version()` tells which one the database is at. They are recorded in
//!   the table `orch_schema_migrations`, so an application's own sqlx migrations in the same
//!   database do not collide with orch's.
//!
//! Both implement every orch-core backend trait ([`TaskStore`](orch_core::backend::TaskStore),
//! [`EventStore`](orch_core::backend::EventStore), [`LockStore`](orch_core::backend::LockStore),
//! [`StorageProvider`](orch_core::StorageProvider)) with the in-memory backend's behaviour, and
//! run orch-core's conformance suite in this crate's tests. sqlx errors are mapped at the edge
//! into [`orch_core::Error::Backend`].
//!
//! Running several processes on one PostgreSQL: point each at the same URL
//! (`DATABASE_URL=postgres://...`); they share the queue, the lock table and the event log. A
//! process that dies loses its leases when they expire (`OrchestratorConfig::with_lease`), and
//! any live process rescues and reruns those tasks.

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod common;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod rule_sql;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use orch_core;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresBackend, PostgresOptions};
#[cfg(feature = "sqlite")]
pub use sqlite::{DEFAULT_SQLITE_PATH, SqliteBackend, SqliteOptions};
/// The sqlx this crate is built on, for naming the transactions of
/// [`SqliteBackend::dispatch_in`] and [`PostgresBackend::dispatch_in`] with matching types.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sqlx;

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
