//! Backups (ORCH-Next's backup procedure): `orchd backup`, `orchd restore`, and the daily
//! scheduled backup to `<data dir>/backups/` with retention.
//!
//! The first scheduled backup is due one interval after the newest backup in the folder (at
//! once when there is none, or it is older): a daemon restarted more often than the interval
//! still backs up. Backups are 0600 in a 0700 folder. A restore holds the data directory's
//! lock (no daemon runs on it meanwhile), checks the backup's integrity on a copy, and only then
//! puts the copy in place of the database.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use orch_storage::SqliteBackend;
use tokio_util::sync::CancellationToken;

use crate::GlobalArgs;
use crate::db::Db;

/// Arguments of `orchd backup`.
#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// Where to write the copy (default `<data dir>/backups/orch-<time>.db`).
    #[arg(long)]
    output: Option<PathBuf>,
}

/// Arguments of `orchd restore`.
#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The backup file to restore.
    file: PathBuf,
}

/// How backup files are named: `orch-<time>.db`, so that names sort by time.
const NAME_TIME: &str = "%Y%m%dT%H%M%S%.3fZ";

fn backup_name() -> String {
    format!("orch-{}.db", chrono::Utc::now().format(NAME_TIME))
}

/// When the backup at `path` was made, read from its name.
fn backup_time(path: &Path) -> Option<chrono::DateTime<chrono::Utc>> {
    let name = path.file_name()?.to_str()?;
    let time = name.strip_prefix("orch-")?.strip_suffix(".db")?;
    chrono::NaiveDateTime::parse_from_str(time, NAME_TIME)
        .ok()
        .map(|time| time.and_utc())
}

/// The backups folder in force.
pub(crate) fn backup_dir(global: &GlobalArgs, settings: &orchd::settings::Settings) -> PathBuf {
    settings
        .backup
        .directory
        .clone()
        .unwrap_or_else(|| global.data_dir.join("backups"))
}

/// Writes one backup into `dir` and keeps the newest `retention` there.
pub(crate) async fn backup_into(
    db: &SqliteBackend,
    dir: &Path,
    retention: usize,
) -> Result<PathBuf> {
    crate::data_dir::ensure(dir)?;
    let path = dir.join(backup_name());
    db.backup(&path).await.context("backup failed")?;
    prune(dir, retention)?;
    Ok(path)
}

/// The backups in `dir` (`orch-*.db`), oldest first.
fn backups_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut backups: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("orch-") && n.ends_with(".db"))
        })
        .collect();
    backups.sort();
    Ok(backups)
}

fn prune(dir: &Path, retention: usize) -> Result<()> {
    let backups = backups_in(dir)?;
    let excess = backups.len().saturating_sub(retention.max(1));
    for old in backups.into_iter().take(excess) {
        std::fs::remove_file(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    }
    Ok(())
}

/// `orchd backup`.
pub(crate) async fn backup(global: GlobalArgs, args: BackupArgs) -> Result<ExitCode> {
    let settings = crate::setup::settings(&global)?;
    let db = crate::db::open(&global, &settings).await?;
    let Db::Sqlite(sqlite, _) = &db else {
        bail!(
            "orchd backup copies the SQLite file; for {} use the database's own tools (pg_dump)",
            db.describe()
        );
    };
    let path = match args.output {
        Some(path) => {
            sqlite.backup(&path).await.context("backup failed")?;
            path
        }
        None => {
            let retention = settings.backup.retention.unwrap_or(7);
            backup_into(sqlite, &backup_dir(&global, &settings), retention).await?
        }
    };
    println!("backup written to {}", path.display());
    db.close().await;
    Ok(ExitCode::SUCCESS)
}

/// The SQLite file `location` (a path, or a `sqlite:` URL) names; an error for any other
/// database, or one in memory.
fn sqlite_file(location: &str) -> Result<PathBuf> {
    use orch_storage::sqlx::sqlite::SqliteConnectOptions;
    use std::str::FromStr;
    if !location.starts_with("sqlite:") {
        if location.contains("://") {
            bail!(
                "orchd restore replaces a SQLite file; for {} use the database's own tools",
                location.split(':').next().unwrap_or("this database")
            );
        }
        return Ok(PathBuf::from(location));
    }
    if location.contains(":memory:") || location.contains("mode=memory") {
        bail!("{location} is a database in memory: there is no file to restore into");
    }
    let options = SqliteConnectOptions::from_str(location)
        .with_context(|| format!("{location} is not a SQLite URL"))?;
    Ok(options.get_filename().to_path_buf())
}

/// `orchd restore FILE`: with the data directory locked (no daemon runs on it), copies the
/// backup beside the database, checks that the copy opens as an orch database and passes
/// SQLite's integrity check, keeps the current database as `<file>.pre-restore-<time>`, and
/// puts the copy in its place.
pub(crate) async fn restore(global: GlobalArgs, args: RestoreArgs) -> Result<ExitCode> {
    let settings = crate::setup::settings(&global)?;
    let _data_dir_lock = crate::data_dir::lock_for_restore(&global.data_dir)?;
    let target = sqlite_file(&crate::db::location(&global, &settings))?;
    if !args.file.is_file() {
        bail!("{} is not a file", args.file.display());
    }
    if let Some(folder) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
    }
    let staging = PathBuf::from(format!("{}.restore-tmp", target.display()));
    remove_with_journal(&staging)?;
    std::fs::copy(&args.file, &staging)
        .with_context(|| format!("cannot copy {}", args.file.display()))?;
    crate::data_dir::make_private(&staging, 0o600)?;
    let checked = check_copy(&staging, &args.file).await;
    let version = match checked {
        Ok(version) => version,
        Err(error) => {
            remove_with_journal(&staging)?;
            return Err(error);
        }
    };
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    for suffix in ["", "-wal", "-shm"] {
        let current = PathBuf::from(format!("{}{suffix}", target.display()));
        if current.exists() {
            let kept = PathBuf::from(format!("{}.pre-restore-{stamp}{suffix}", target.display()));
            std::fs::rename(&current, &kept)?;
        }
    }
    std::fs::rename(&staging, &target)?;
    remove_with_journal(&staging)?;
    println!(
        "restored {} into {} (schema version {version}, integrity checked); the previous database was kept as {}.pre-restore-{stamp}",
        args.file.display(),
        target.display(),
        target.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Opens the staged copy of `backup` as an orch database (migrating it if it is older) and
/// runs SQLite's integrity check on it; returns its schema version.
async fn check_copy(staging: &Path, backup: &Path) -> Result<i64> {
    let copy = SqliteBackend::open(&staging.display().to_string())
        .await
        .with_context(|| format!("{} is not an orch database", backup.display()))?;
    let checked = copy.check_integrity().await;
    let version = copy.schema_version().await;
    // Closing checkpoints the WAL into the file: the copy is whole on its own.
    copy.close().await;
    checked.with_context(|| {
        format!(
            "{} fails the integrity check; nothing was restored",
            backup.display()
        )
    })?;
    Ok(version?)
}

/// Removes `path` and its `-wal` and `-shm` files, if they exist.
fn remove_with_journal(path: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(
                    anyhow::Error::new(error).context(format!("cannot remove {}", file.display()))
                );
            }
        }
    }
    Ok(())
}

/// How long until the first scheduled backup: one `interval` after the newest backup in `dir`,
/// at once when there is none or it is older.
fn first_wait(dir: &Path, interval: Duration) -> Duration {
    let newest = backups_in(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|path| backup_time(path))
        .max();
    let Some(newest) = newest else {
        return Duration::ZERO;
    };
    let age = (chrono::Utc::now() - newest).to_std().unwrap_or_default();
    interval.saturating_sub(age)
}

/// The scheduled backup loop, until `stop`: the first backup one interval after the newest one
/// in `dir` (at once when that is past), then every `interval`, each followed by the retention.
pub(crate) async fn scheduled(
    db: Arc<SqliteBackend>,
    dir: PathBuf,
    interval: Duration,
    retention: usize,
    stop: CancellationToken,
) {
    let mut wait = first_wait(&dir, interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match backup_into(&db, &dir, retention).await {
            Ok(path) => tracing::info!(path = %path.display(), "scheduled backup written"),
            Err(error) => tracing::error!(error = %format!("{error:#}"), "scheduled backup failed"),
        }
        wait = interval;
    }
}
