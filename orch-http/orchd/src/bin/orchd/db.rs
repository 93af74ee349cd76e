//! Opening the database `orchd` runs on: SQLite at `<data dir>/orch.db` by default,
//! `database.path`, or `database.url` / `DATABASE_URL` (`sqlite://...`, `postgres://...`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use orch_core::SharedBackend;
use orch_storage::{PostgresBackend, SqliteBackend};
use orchd::settings::Settings;

use crate::GlobalArgs;

/// An open database.
#[derive(Clone)]
pub(crate) enum Db {
    /// The embedded SQLite file (backups supported).
    Sqlite(Arc<SqliteBackend>, Option<PathBuf>),
    /// PostgreSQL: backups are the database's own tools.
    Postgres(Arc<PostgresBackend>, String),
}

impl Db {
    /// The backend as orch-core sees it.
    pub(crate) fn backend(&self) -> SharedBackend {
        match self {
            Db::Sqlite(db, _) => db.clone(),
            Db::Postgres(db, _) => db.clone(),
        }
    }

    /// A human description.
    pub(crate) fn describe(&self) -> String {
        match self {
            Db::Sqlite(_, Some(path)) => format!("SQLite {}", path.display()),
            Db::Sqlite(_, None) => "SQLite in memory".to_owned(),
            Db::Postgres(_, url) => {
                let scheme = url.split(':').next().unwrap_or("database");
                format!("{scheme} database")
            }
        }
    }

    /// A monitor sampler of the database's own readings (PostgreSQL: its pools' use).
    pub(crate) fn sampler(&self) -> Option<impl orch_core::monitor::Sampler + 'static> {
        match self {
            Db::Sqlite(..) => None,
            Db::Postgres(db, _) => Some(db.pool_sampler()),
        }
    }

    /// Closes connections.
    pub(crate) async fn close(&self) {
        match self {
            Db::Sqlite(db, _) => db.close().await,
            Db::Postgres(db, _) => db.close().await,
        }
    }

    /// The schema version the database is at.
    pub(crate) async fn schema_version(&self) -> orch_core::Result<i64> {
        match self {
            Db::Sqlite(db, _) => db.schema_version().await,
            Db::Postgres(db, _) => db.schema_version().await,
        }
    }
}

/// The database URL or SQLite path in force.
pub(crate) fn location(global: &GlobalArgs, settings: &Settings) -> String {
    if let Some(url) = &settings.database.url {
        return url.clone();
    }
    match &settings.database.path {
        Some(path) => path.clone(),
        None => global.data_dir.join("orch.db").display().to_string(),
    }
}

/// Opens (and migrates) the database.
pub(crate) async fn open(global: &GlobalArgs, settings: &Settings) -> Result<Db> {
    let location = location(global, settings);
    if is_sqlite(&location) {
        let options = settings
            .sqlite_options()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let db = SqliteBackend::open_with(&location, options)
            .await
            .with_context(|| format!("cannot open SQLite database {location}"))?;
        let path = db.path().map(|p| p.to_path_buf());
        if let Some(path) = &path {
            // A file made by an older version, or copied in, under a looser umask.
            crate::data_dir::make_database_private(path)?;
        }
        return Ok(Db::Sqlite(Arc::new(db), path));
    }
    if !location.starts_with("postgres:") && !location.starts_with("postgresql:") {
        anyhow::bail!(
            "invalid config database.url / DATABASE_URL: {:?} is neither sqlite:// nor postgres://",
            location.split("://").next().unwrap_or_default()
        );
    }
    let options = settings
        .postgres_options()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = orch_storage::PostgresBackend::connect_with(&location, options)
        .await
        .context("cannot open the database named by DATABASE_URL / database.url")?;
    Ok(Db::Postgres(Arc::new(db), location))
}

/// Whether the database in force is a SQLite file (not a PostgreSQL URL).
fn is_sqlite(location: &str) -> bool {
    let is_url = location.contains("://") || location.starts_with("sqlite:");
    !is_url || location.starts_with("sqlite:")
}

/// `orchd migrate`. On SQLite it takes the data directory's lock first: a daemon running on
/// it (perhaps an older version, whose queries a newer schema could break) must be stopped.
/// PostgreSQL is shared by daemons on other hosts; its migrations run under their own lock.
pub(crate) async fn migrate(global: GlobalArgs) -> Result<ExitCode> {
    let settings = crate::setup::settings(&global)?;
    crate::setup::ensure_data_dir(&global.data_dir)?;
    let _data_dir_lock = if is_sqlite(&location(&global, &settings)) {
        Some(crate::data_dir::lock_for_migrate(&global.data_dir)?)
    } else {
        None
    };
    let db = open(&global, &settings).await?;
    match &db {
        Db::Sqlite(sqlite, _) => {
            let version = sqlite.schema_version().await?;
            println!(
                "{}: migrations applied, schema version {version}",
                db.describe()
            );
        }
        Db::Postgres(..) => println!("{}: migrations applied", db.describe()),
    }
    db.close().await;
    Ok(ExitCode::SUCCESS)
}
