//! The data directory: private to the daemon's user (0700, and 0600 for the database, its
//! `-wal` and `-shm` files, secrets and backups, even when the directory existed before), and
//! held by one process at a time. `orchd serve`, `orchd restore` and `orchd migrate` (on
//! SQLite) take an exclusive lock on `<data dir>/orchd.lock` before they read or write
//! anything there, and keep it until they exit (the kernel drops it when the process dies,
//! however it dies): a second daemon on the same directory, or a restore or a migration under
//! a running daemon, stops at once saying which process holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The lock file's name in the data directory. Never deleted: a lock on a file that another
/// process could unlink and create anew would not exclude anything.
const LOCK_FILE: &str = "orchd.lock";

/// Creates the data directory with mode 0700, or makes an existing one 0700.
pub(crate) fn ensure(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    }
    make_private(dir, 0o700)
}

/// Sets `path`'s mode to `mode` if it grants more (a file or folder made under a looser umask,
/// or by an older version), saying so.
pub(crate) fn make_private(path: &Path, mode: u32) -> Result<()> {
    let Ok(metadata) = std::fs::metadata(path) else {
        return Ok(());
    };
    let current = metadata.permissions().mode() & 0o777;
    if current & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot make {} private", path.display()))?;
        tracing::info!(path = %path.display(), from = format!("{current:o}"), to = format!("{mode:o}"), "made private");
    }
    Ok(())
}

/// Makes a SQLite database file and its `-wal` and `-shm` files 0600.
pub(crate) fn make_database_private(path: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        make_private(&PathBuf::from(format!("{}{suffix}", path.display())), 0o600)?;
    }
    Ok(())
}

/// The exclusive hold of a data directory; released when dropped or when the process ends.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    /// Holds the lock while open.
    _file: File,
}

/// Why the data directory could not be locked.
#[derive(Debug)]
pub(crate) enum Held {
    /// Another process holds it; its pid, when it wrote one.
    By(Option<u32>),
    /// The lock file could not be opened or locked.
    Failed(anyhow::Error),
}

/// Takes the data directory's lock (creating the directory 0700 if needed) and writes this
/// process's pid into the lock file.
pub(crate) fn lock(dir: &Path) -> std::result::Result<DataDirLock, Held> {
    ensure(dir).map_err(Held::Failed)?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))
        .map_err(Held::Failed)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(Held::By(text.trim().parse().ok()));
        }
        Err(TryLockError::Error(error)) => {
            return Err(Held::Failed(
                anyhow::Error::new(error).context(format!("cannot lock {}", path.display())),
            ));
        }
    }
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    if let Err(error) = written {
        tracing::warn!(path = %path.display(), %error, "cannot write the pid into the lock file");
    }
    Ok(DataDirLock { _file: file })
}

/// [`lock`] for `orchd serve`: another daemon on the directory stops this one.
pub(crate) fn lock_for_serve(dir: &Path) -> Result<DataDirLock> {
    lock(dir).or_else(|held| match held {
        Held::By(pid) => bail!(
            "another orchd{} runs on {}: one daemon per data directory",
            pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
            dir.display()
        ),
        Held::Failed(error) => Err(error),
    })
}

/// [`lock`] for `orchd migrate` on SQLite: a running daemon must be stopped first.
pub(crate) fn lock_for_migrate(dir: &Path) -> Result<DataDirLock> {
    lock(dir).or_else(|held| match held {
        Held::By(pid) => bail!(
            "orchd is running{} on {}: stop it before migrating its database",
            pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
            dir.display()
        ),
        Held::Failed(error) => Err(error),
    })
}

/// [`lock`] for `orchd restore`: a running daemon must be stopped first.
pub(crate) fn lock_for_restore(dir: &Path) -> Result<DataDirLock> {
    lock(dir).or_else(|held| match held {
        Held::By(pid) => bail!(
            "orchd is running{} on {}: stop it first",
            pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
            dir.display()
        ),
        Held::Failed(error) => Err(error),
    })
}
