//! Backups (ORCH-Next's backup procedure): `orchd backup`, `orchd restore`, and the daily
//! scheduled backup to `<data dir>/backups/` with retention.

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

fn backup_name() -> String {
    format!(
        "orch-{}.db",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
    )
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
    let path = dir.join(backup_name());
    db.backup(&path).await.context("backup failed")?;
    prune(dir, retention)?;
    Ok(path)
}

fn prune(dir: &Path, retention: usize) -> Result<()> {
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

/// `orchd restore FILE`: checks the file opens as an orch database, keeps the current one as
/// `orch.db.pre-restore-<time>`, and puts the backup in its place.
pub(crate) async fn restore(global: GlobalArgs, args: RestoreArgs) -> Result<ExitCode> {
    let settings = crate::setup::settings(&global)?;
    if let Some(pid) = crate::setup::running_pid(&global.data_dir) {
        bail!(
            "orchd is running (pid {pid}) on {}: stop it first",
            global.data_dir.display()
        );
    }
    let target = PathBuf::from(crate::db::location(&global, &settings));
    if target.to_string_lossy().contains("://") {
        bail!("orchd restore replaces the SQLite file; for other databases use their own tools");
    }
    if !args.file.is_file() {
        bail!("{} is not a file", args.file.display());
    }
    let staging = target.with_extension("db.restore-tmp");
    std::fs::copy(&args.file, &staging)
        .with_context(|| format!("cannot copy {}", args.file.display()))?;
    let check = SqliteBackend::open(&staging.display().to_string())
        .await
        .with_context(|| format!("{} is not an orch database", args.file.display()))?;
    let version = check.schema_version().await?;
    check.close().await;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    for suffix in ["", "-wal", "-shm"] {
        let current = PathBuf::from(format!("{}{suffix}", target.display()));
        if current.exists() {
            let kept = PathBuf::from(format!("{}.pre-restore-{stamp}{suffix}", target.display()));
            std::fs::rename(&current, &kept)?;
        }
        let staged = PathBuf::from(format!("{}{suffix}", staging.display()));
        if !suffix.is_empty() && staged.exists() {
            std::fs::remove_file(&staged)?;
        }
    }
    std::fs::rename(&staging, &target)?;
    println!(
        "restored {} into {} (schema version {version}); the previous database was kept as {}.pre-restore-{stamp}",
        args.file.display(),
        target.display(),
        target.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The scheduled backup loop: every `interval`, until `stop`.
pub(crate) async fn scheduled(
    db: Arc<SqliteBackend>,
    dir: PathBuf,
    interval: Duration,
    retention: usize,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match backup_into(&db, &dir, retention).await {
            Ok(path) => tracing::info!(path = %path.display(), "scheduled backup written"),
            Err(error) => tracing::error!(error = %format!("{error:#}"), "scheduled backup failed"),
        }
    }
}
