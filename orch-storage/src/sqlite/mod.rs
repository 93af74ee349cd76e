//! [`SqliteBackend`]: every orch-core backend trait in one SQLite file.
//!
//! Layout: this module opens the database and holds the row mapping; `tasks` implements
//! [`TaskStore`](orch_core::backend::TaskStore) by porting the in-memory backend's transitions onto rows;
//! `log` implements the event log, the lock table and the key-value space; `transactional`
//! dispatch inside a caller's transaction.
//!
//! Concurrency: exactly one writer connection (a pool of size 1). Every write is one
//! `BEGIN IMMEDIATE` transaction on it, which takes SQLite's write lock up front, so a write never
//! fails half way with "database is locked" and writers never need retry loops. Reads go to a
//! separate pool of read-only connections, which WAL lets run beside the writer. Time is the
//! process clock ([`orch_core::clock::now`]), kept as integer microseconds.

mod graph;
mod log;
mod tasks;
mod transactional;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use orch_core::backend::ChangeSignal;
use orch_core::{Error, LeaseToken, Result, Task, TaskId, TaskStatus, WorkflowId};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions as _, Connection as _, Row, Sqlite, Transaction};
use uuid::Uuid;

use crate::common::{corrupt, db_err, from_micros, to_u32, truncate_micros};

/// The database file used when none is named: `data/orch.db`, relative to the working
/// directory.
pub const DEFAULT_SQLITE_PATH: &str = "data/orch.db";

/// How a [`SqliteBackend`] opens its file: [`SqliteBackend::open_with`].
///
/// ```
/// use std::time::Duration;
/// use orch_storage::SqliteOptions;
///
/// let options = SqliteOptions::default().with_readers(8).with_busy_timeout(Duration::from_secs(30));
/// assert_eq!(options.readers, 8);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Read-only connections kept beside the one writer (at least 1). Default 4.
    pub readers: u32,
    /// How long a write waits for SQLite's write lock held by another process (or a read for
    /// a lock a checkpoint holds) before failing. Default 10 s.
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            readers: 4,
            busy_timeout: Duration::from_secs(10),
        }
    }
}

impl SqliteOptions {
    /// Sets the read-only connections.
    pub fn with_readers(mut self, readers: u32) -> Self {
        self.readers = readers;
        self
    }

    /// Sets the busy timeout.
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }
}

/// How long the checkpointer lets commits gather before copying them into the database file.
const CHECKPOINT_DELAY: Duration = Duration::from_millis(100);

/// The WAL size (in pages) past which the writer checkpoints itself: a backstop for a write
/// load so steady that the background checkpoints never catch up with the end of the WAL,
/// which SQLite then cannot start over.
const WRITER_CHECKPOINT_PAGES: u32 = 16_384;

/// Copies committed pages from the WAL into the database file in the background, on a
/// connection of its own (a `PASSIVE` checkpoint, which never blocks the writer), so the
/// writer does not stop for a checkpoint's copy and `fsync` every thousand pages.
struct Checkpointer {
    wake: std::sync::Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
    pool: SqlitePool,
}

impl Checkpointer {
    fn start(pool: SqlitePool) -> Self {
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let woken = wake.clone();
        let checkpoints = pool.clone();
        let task = tokio::spawn(async move {
            let pool = checkpoints;
            loop {
                woken.notified().await;
                tokio::time::sleep(CHECKPOINT_DELAY).await;
                if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&pool)
                    .await
                {
                    // The writer's own checkpoints (past WRITER_CHECKPOINT_PAGES) still run.
                    tracing::warn!(%error, "sqlite background checkpoint failed");
                }
            }
        });
        Checkpointer { wake, task, pool }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How often the watcher looks for other connections' commits where the file system does not
/// tell it of writes (see [`Watcher`]).
const WATCH_INTERVAL: Duration = Duration::from_millis(5);

/// While this backend writes too, how long the watcher may put off a look: the writes it is
/// told of are then mostly this backend's own, which need no look.
const BUSY_LOOK_DELAY: Duration = Duration::from_millis(25);

/// A write reported this soon after this backend began one is taken for its own.
const OWN_WRITE_WINDOW: Duration = Duration::from_millis(2);

/// How long the watcher lets further reports gather after one (the kernel folds the reports
/// of a file's writes that nobody read yet into one): a commit writes several pages, and a
/// busy database many commits a second.
const REPORT_GAP: Duration = Duration::from_millis(2);

/// Reports in a row of this backend's own writes after which the watcher stops the watch and
/// looks every [`BUSY_LOOK_DELAY`] until they stop: the kernel then no longer queues a report
/// for each page written.
const BUSY_AFTER_REPORTS: u32 = 8;

/// The inotify watch on the database's folder.
#[cfg(target_os = "linux")]
struct WalWatch {
    reports: inotify::EventStream<[u8; 4096]>,
    folder: PathBuf,
    /// The WAL file's name.
    wal: std::ffi::OsString,
    /// `None` while stopped (this backend is busy writing).
    watch: Option<inotify::WatchDescriptor>,
}

#[cfg(target_os = "linux")]
impl WalWatch {
    const MASK: inotify::WatchMask = inotify::WatchMask::MODIFY.union(inotify::WatchMask::CREATE);
}

/// When this backend last began a write, for the watcher.
struct OwnWrites {
    base: std::time::Instant,
    /// Nanoseconds after `base`; `u64::MAX` before the first.
    last: AtomicU64,
}

impl OwnWrites {
    fn new() -> Self {
        OwnWrites {
            base: std::time::Instant::now(),
            last: AtomicU64::new(u64::MAX),
        }
    }

    fn began(&self) {
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last.store(now, Ordering::Relaxed);
    }

    /// Whether a write began within `window` from now.
    fn within(&self, window: Duration) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        last != u64::MAX && u128::from(now.saturating_sub(last)) < window.as_nanos()
    }
}

/// Raises the backend's change signals when another connection to the file commits: another
/// process sharing the database (a web application dispatching while a worker process runs
/// the tasks), or the application's own connection committing a transaction that holds tasks.
///
/// It reads `PRAGMA data_version` on the writer: the value changes when a connection other
/// than the one reading it committed, so this backend's own commits (which raise the signals
/// themselves) are not taken for someone else's. When to look: on Linux, when an inotify watch
/// on the database's folder reports a write to the WAL file (every commit writes it), so an
/// idle backend costs nothing; elsewhere, or when inotify is unavailable (for example past
/// `fs.inotify.max_user_instances`), every [`WATCH_INTERVAL`]. A write reported just after
/// this backend began one of its own puts the look off by up to [`BUSY_LOOK_DELAY`], and a
/// run of them stops the watch until this backend's writes stop (it looks every
/// [`BUSY_LOOK_DELAY`] meanwhile), so a busy backend pays neither a look nor a report for each
/// of its own writes.
struct Watcher {
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    fn start(
        path: &Path,
        writer: SqlitePool,
        own_writes: Arc<OwnWrites>,
        tasks: ChangeSignal,
        events: ChangeSignal,
    ) -> Self {
        let look = Look {
            writer,
            own_writes,
            tasks,
            events,
            seen: None,
            warned: false,
        };
        #[cfg(target_os = "linux")]
        match Self::watch_wal(path) {
            Ok(wal) => {
                return Watcher {
                    task: tokio::spawn(Self::on_writes(wal, look)),
                };
            }
            Err(error) => tracing::debug!(
                %error,
                "sqlite: no inotify watch on the database's folder; looking for other processes' commits every {WATCH_INTERVAL:?}"
            ),
        }
        #[cfg(not(target_os = "linux"))]
        let _ = path;
        Watcher {
            task: tokio::spawn(Self::every_interval(look)),
        }
    }

    /// The inotify watch of the database's folder (not of the WAL file itself, which SQLite
    /// deletes when the last connection closes and creates again).
    #[cfg(target_os = "linux")]
    fn watch_wal(path: &Path) -> std::io::Result<WalWatch> {
        use inotify::Inotify;

        let folder = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut wal = path
            .file_name()
            .ok_or_else(|| std::io::Error::other("the database path names no file"))?
            .to_os_string();
        wal.push("-wal");
        let inotify = Inotify::init()?;
        let watch = inotify.watches().add(&folder, WalWatch::MASK)?;
        Ok(WalWatch {
            reports: inotify.into_event_stream([0_u8; 4096])?,
            folder,
            wal,
            watch: Some(watch),
        })
    }

    #[cfg(target_os = "linux")]
    async fn on_writes(mut wal: WalWatch, mut look: Look) {
        use futures_util::StreamExt as _;
        use inotify::EventMask;

        look.at().await;
        // A look put off while this backend writes, due then.
        let mut put_off: Option<tokio::time::Instant> = None;
        // Reports in a row taken for this backend's own writes.
        let mut own_in_a_row = 0_u32;
        loop {
            if wal.watch.is_none() {
                // Busy: every write would be reported, nearly all of them ours. Look now and
                // then instead, until this backend's writes stop.
                tokio::time::sleep(BUSY_LOOK_DELAY).await;
                look.at().await;
                if !look.own_writes.within(BUSY_LOOK_DELAY) {
                    match wal.reports.watches().add(&wal.folder, WalWatch::MASK) {
                        Ok(watch) => {
                            wal.watch = Some(watch);
                            own_in_a_row = 0;
                            // Commits made while the watch was being set up.
                            look.at().await;
                        }
                        Err(error) => {
                            tracing::debug!(%error, "sqlite: watching the database's folder again failed");
                        }
                    }
                }
                continue;
            }
            let event = match put_off {
                Some(due) => tokio::select! {
                    event = wal.reports.next() => event,
                    () = tokio::time::sleep_until(due) => {
                        look.at().await;
                        put_off = None;
                        continue;
                    }
                },
                None => wal.reports.next().await,
            };
            let Some(event) = event else { break };
            match event {
                Ok(event) => {
                    let lost = event.mask.contains(EventMask::Q_OVERFLOW);
                    if lost || event.name.as_deref() == Some(wal.wal.as_os_str()) {
                        if look.own_writes.within(OWN_WRITE_WINDOW) {
                            own_in_a_row += 1;
                            put_off.get_or_insert_with(|| {
                                tokio::time::Instant::now() + BUSY_LOOK_DELAY
                            });
                            if own_in_a_row >= BUSY_AFTER_REPORTS
                                && let Some(watch) = wal.watch.take()
                            {
                                // The removal's own report (IN_IGNORED) comes later and is
                                // told apart by its watch.
                                let _ = wal.reports.watches().remove(watch);
                                put_off = None;
                                continue;
                            }
                        } else {
                            own_in_a_row = 0;
                            look.at().await;
                            put_off = None;
                        }
                        tokio::time::sleep(REPORT_GAP).await;
                    }
                    if event.mask.contains(EventMask::IGNORED)
                        && wal.watch.as_ref() == Some(&event.wd)
                    {
                        // The folder is gone: nothing more will be written there.
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "sqlite: watching the WAL file failed; other processes' commits are found by polling");
                    break;
                }
            }
        }
    }

    async fn every_interval(mut look: Look) {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            if look.own_writes.within(OWN_WRITE_WINDOW) && last.elapsed() < BUSY_LOOK_DELAY {
                continue;
            }
            look.at().await;
            last = tokio::time::Instant::now();
        }
    }
}

/// One look at `PRAGMA data_version` on the writer, raising the signals when it changed.
struct Look {
    writer: SqlitePool,
    /// When this backend last began a write (see `SqliteBackend::wrote`).
    own_writes: Arc<OwnWrites>,
    tasks: ChangeSignal,
    events: ChangeSignal,
    seen: Option<i64>,
    warned: bool,
}

impl Look {
    async fn at(&mut self) {
        match sqlx::query_scalar::<_, i64>("PRAGMA data_version")
            .fetch_one(&self.writer)
            .await
        {
            Ok(version) => {
                self.warned = false;
                // A writer connection opened again starts another count: a change then is
                // taken as one (a spare look for the idle loops, nothing missed).
                if self.seen.is_some_and(|seen| seen != version) {
                    self.tasks.raise();
                    self.events.raise();
                }
                self.seen = Some(version);
            }
            Err(error) => {
                if !std::mem::replace(&mut self.warned, true) {
                    tracing::warn!(%error, "sqlite: looking for other processes' commits failed; they are found by polling");
                }
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn migrator() -> Migrator {
    crate::common::migrator(&[
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
        (
            3,
            "lock queue",
            include_str!("../../migrations/sqlite/0003_lock_queue.sql"),
        ),
        (
            4,
            "task events",
            include_str!("../../migrations/sqlite/0004_task_events.sql"),
        ),
        (
            5,
            "workflows",
            include_str!("../../migrations/sqlite/0005_workflows.sql"),
        ),
        (
            6,
            "trace context",
            include_str!("../../migrations/sqlite/0006_trace_context.sql"),
        ),
        (
            7,
            "lock expiry",
            include_str!("../../migrations/sqlite/0007_lock_expiry.sql"),
        ),
        (
            8,
            "partial idempotency index",
            include_str!("../../migrations/sqlite/0008_partial_idempotency_index.sql"),
        ),
    ])
}

/// Refuses, before anything is written, an existing file that is not a SQLite database, a
/// SQLite database that orch did not create, or one whose schema is newer than this build.
async fn inspect_existing(options: &SqliteConnectOptions, path: &Path) -> Result<()> {
    const OP: &str = "open sqlite database";
    let Ok(metadata) = std::fs::metadata(path) else {
        return Ok(());
    };
    if metadata.len() == 0 {
        return Ok(());
    }
    let shown = path.display();
    let mut conn = options
        .clone()
        .read_only(true)
        .connect()
        .await
        .map_err(|e| {
            Error::backend(OP, format!("cannot open {shown} as a SQLite database: {e}"))
        })?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(|e| Error::backend(OP, format!("cannot open {shown} as a SQLite database: {e}")))?;
    let outcome = if tables.is_empty() {
        Ok(())
    } else if !tables.iter().any(|t| t == crate::common::MIGRATIONS_TABLE) {
        Err(Error::backend(
            OP,
            format!(
                "{shown} is a SQLite database that orch did not create (tables: {}); \
                 refusing to change it",
                tables.join(", ")
            ),
        ))
    } else {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM orch_schema_migrations WHERE success")
                .fetch_one(&mut conn)
                .await
                .map_err(db_err(OP))?;
        crate::common::check_schema_version(OP, version.unwrap_or_default(), latest_version())
    };
    conn.close().await.ok();
    outcome
}

/// Options for a file readable and writable by its owner only (0600 on Unix).
fn private_file() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Creates the database file, empty and private (0600), if it does not exist yet: SQLite
/// creates the `-wal` and `-shm` files with the mode of the database file, so they are
/// private too. An existing file keeps its mode.
fn create_private(path: &Path) -> std::io::Result<()> {
    match private_file().create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

/// The schema version this build migrates to.
fn latest_version() -> i64 {
    migrator()
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or_default()
}

/// A durable backend in one SQLite file (WAL mode).
///
/// ```no_run
/// # async fn demo() -> orch_core::Result<()> {
/// use std::sync::Arc;
/// use orch_core::SharedBackend;
/// use orch_storage::SqliteBackend;
///
/// let backend: SharedBackend = Arc::new(SqliteBackend::open("data/orch.db").await?);
/// # Ok(()) }
/// ```
pub struct SqliteBackend {
    /// The only connection that writes: every write is `BEGIN IMMEDIATE` on it.
    writer: SqlitePool,
    /// Read-only connections (the writer itself for an in-memory database, which other
    /// connections cannot see).
    readers: SqlitePool,
    /// The database file, `None` in memory.
    path: Option<PathBuf>,
    /// Bumped after a commit that made tasks claimable, and by the watcher when another
    /// connection to the file committed.
    task_wakeups: ChangeSignal,
    /// Bumped after a commit that appended events (and by the watcher).
    event_wakeups: ChangeSignal,
    /// `None` in memory (no WAL).
    checkpointer: Option<Checkpointer>,
    /// `None` in memory (no other connection can see the database).
    watcher: Option<Watcher>,
    /// When a write through this backend last began, for the watcher.
    own_writes: Arc<OwnWrites>,
}

impl SqliteBackend {
    /// Opens (creating it and its folder if needed) the database at `url_or_path`: a
    /// `sqlite://` URL (`sqlite://data/orch.db`, `sqlite::memory:`) or a plain file path. Sets
    /// WAL, `synchronous=NORMAL` and a busy timeout, then applies pending migrations. For a
    /// file, the backend then watches for commits made by other processes sharing it (an
    /// inotify watch on Linux, `PRAGMA data_version` every 5 ms elsewhere), so the tasks they
    /// dispatch start within milliseconds rather than at the orchestrator's next poll. Call it
    /// inside a Tokio runtime with its time and I/O drivers enabled (`#[tokio::main]` enables
    /// both; the inotify watch needs the I/O driver).
    pub async fn open(url_or_path: &str) -> Result<Self> {
        Self::open_with(url_or_path, SqliteOptions::default()).await
    }

    /// [`open`](Self::open) with `settings` (its read connections and busy timeout); an error
    /// names a setting out of range.
    pub async fn open_with(url_or_path: &str, settings: SqliteOptions) -> Result<Self> {
        const OP: &str = "open sqlite database";
        if settings.readers == 0 {
            return Err(Error::invalid("sqlite.readers", "must be at least 1"));
        }
        let options = if url_or_path.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url_or_path).map_err(db_err(OP))?
        } else {
            SqliteConnectOptions::new().filename(url_or_path)
        };
        let in_memory = url_or_path.contains(":memory:") || url_or_path.contains("mode=memory");
        let path = (!in_memory).then(|| options.get_filename().to_path_buf());
        if let Some(parent) = path.as_deref().and_then(Path::parent)
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| Error::backend_source(OP, e))?;
        }
        let options = options
            .busy_timeout(settings.busy_timeout)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true);
        if let Some(path) = &path {
            inspect_existing(&options, path).await?;
            create_private(path).map_err(|e| Error::backend_source(OP, e))?;
        }
        // No ping before each use: it costs a round trip to the connection's thread on every
        // operation, and a SQLite connection does not drop.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(
                options
                    .clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .pragma(
                        "wal_autocheckpoint",
                        if in_memory {
                            "1000".to_owned()
                        } else {
                            WRITER_CHECKPOINT_PAGES.to_string()
                        },
                    ),
            )
            .await
            .map_err(db_err(OP))?;
        migrator()
            .run(&writer)
            .await
            .map_err(|e| Error::backend_source("migrate sqlite database", e))?;
        let checkpointer = (!in_memory).then(|| {
            Checkpointer::start(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .test_before_acquire(false)
                    .connect_lazy_with(options.clone()),
            )
        });
        let readers = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(settings.readers)
                .test_before_acquire(false)
                .connect_with(options.clone().read_only(true))
                .await
                .map_err(db_err(OP))?
        };
        let (task_wakeups, event_wakeups) = (ChangeSignal::new(), ChangeSignal::new());
        let own_writes = Arc::new(OwnWrites::new());
        let watcher = path.as_deref().map(|path| {
            Watcher::start(
                path,
                writer.clone(),
                own_writes.clone(),
                task_wakeups.clone(),
                event_wakeups.clone(),
            )
        });
        Ok(SqliteBackend {
            writer,
            readers,
            path,
            task_wakeups,
            event_wakeups,
            checkpointer,
            watcher,
            own_writes,
        })
    }

    /// Opens [`DEFAULT_SQLITE_PATH`].
    pub async fn open_default() -> Result<Self> {
        Self::open(DEFAULT_SQLITE_PATH).await
    }

    /// The database file, `None` for an in-memory database.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The highest schema migration applied (the schema version).
    pub async fn schema_version(&self) -> Result<i64> {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT max(version) FROM orch_schema_migrations WHERE success",
        )
        .fetch_one(&self.readers)
        .await
        .map(Option::unwrap_or_default)
        .map_err(db_err("schema_version"))
    }

    /// Writes a consistent copy of the live database to `path` (`VACUUM INTO`), while reads
    /// and writes go on. `path` must not exist yet; its folder is created. The copy is
    /// readable by its owner only (mode 0600 on Unix), as the database is when this backend
    /// creates it.
    pub async fn backup(&self, path: impl AsRef<Path>) -> Result<()> {
        const OP: &str = "backup";
        let path = path.as_ref();
        let target = path
            .to_str()
            .ok_or_else(|| Error::invalid("backup path", "must be valid UTF-8"))?;
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| Error::backend_source(OP, e))?;
        }
        // Created empty first, with its mode: `VACUUM INTO` writes into an empty file, and
        // would create a new one with the umask's mode.
        match private_file().create_new(true).open(path) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::invalid(
                    "backup path",
                    format!("{} already exists", path.display()),
                ));
            }
            Err(error) => return Err(Error::backend_source(OP, error)),
        }
        let copied = sqlx::query("VACUUM INTO ?")
            .bind(target)
            .execute(&self.readers)
            .await
            .map_err(db_err(OP));
        if copied.is_err() {
            let _ = std::fs::remove_file(path);
        }
        copied.map(drop)
    }

    /// Checks the whole file with SQLite's `PRAGMA integrity_check` (every page, every index
    /// against its table); an error quotes the first problems found. Reads the whole
    /// database: for a restore or an operator's check, not for a request path.
    pub async fn check_integrity(&self) -> Result<()> {
        const OP: &str = "integrity_check";
        let found: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check(10)")
            .fetch_all(&self.readers)
            .await
            .map_err(db_err(OP))?;
        if found.len() == 1 && found[0] == "ok" {
            return Ok(());
        }
        Err(Error::backend(
            OP,
            format!("the database is damaged: {}", found.join("; ")),
        ))
    }

    /// Closes every connection (checkpointing the WAL). Later calls fail.
    pub async fn close(&self) {
        if let Some(watcher) = &self.watcher {
            watcher.task.abort();
        }
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.task.abort();
            // Closed before the writer, which is then the last connection: SQLite
            // checkpoints the whole WAL into the file as it closes.
            checkpointer.pool.close().await;
        }
        self.readers.close().await;
        self.writer.close().await;
    }

    /// Starts a write transaction on the writer with `BEGIN IMMEDIATE`.
    async fn begin(&self, operation: &'static str) -> Result<Transaction<'static, Sqlite>> {
        self.wrote();
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err(operation))
    }

    /// Runs `query`, a write script, on the writer as one command to its connection thread
    /// (instead of one per statement and one per returned row): statements run in turn, the
    /// first `BEGIN IMMEDIATE` and the last `COMMIT`. Returns the rows its statements return.
    ///
    /// The script runs in a task of its own, so a caller that gives up does not stop it half
    /// way, which would leave its transaction open on the writer. If a statement fails, the
    /// script stops there and what it began is rolled back.
    async fn write_script(
        &self,
        operation: &'static str,
        query: sqlx::query::Query<'static, Sqlite, sqlx::sqlite::SqliteArguments>,
    ) -> Result<Vec<SqliteRow>> {
        self.wrote();
        let writer = self.writer.clone();
        let in_memory = self.path.is_none();
        let run = async move {
            let mut conn = writer.acquire().await?;
            match query.fetch_all(&mut *conn).await {
                Ok(rows) => Ok(rows),
                Err(error) => {
                    if let Err(rollback) = sqlx::query("ROLLBACK").execute(&mut *conn).await
                        && !rollback.to_string().contains("no transaction is active")
                        && !in_memory
                    {
                        // The transaction's state is unknown: closing the connection ends
                        // it (an in-memory database would go with its only connection).
                        conn.close_on_drop();
                    }
                    Err(error)
                }
            }
        };
        match tokio::spawn(run).await {
            Ok(result) => result.map_err(db_err(operation)),
            Err(join) => Err(Error::backend(
                operation,
                format!("write task failed: {join}"),
            )),
        }
    }

    /// Tells the checkpointer that the WAL is growing, and the watcher that a write of ours
    /// is coming.
    fn wrote(&self) {
        self.own_writes.began();
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.wake.notify_one();
        }
    }

    fn wake_tasks(&self) {
        self.task_wakeups.raise();
    }

    fn wake_events(&self) {
        self.event_wakeups.raise();
    }
}

/// The backend's clock: the process clock at the precision the file keeps.
fn now() -> DateTime<Utc> {
    truncate_micros(orch_core::backend::clock::now())
}

fn time_to_db(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn time_from_db(operation: &'static str, micros: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| corrupt(operation, "time out of range"))
}

fn opt_time_from_db(operation: &'static str, micros: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    micros.map(|m| time_from_db(operation, m)).transpose()
}

fn json_to_db(value: &serde_json::Value) -> String {
    value.to_string()
}

fn json_from_db(operation: &'static str, text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| corrupt(operation, e))
}

/// A task row as one JSON array (`hex(id)`, core, status, priority, timeout, max attempts,
/// attempt, run at, created, updated, started, finished, lease expiry, payload, metadata,
/// `[result]` or null, error, idempotency key, locks, `hex(lease_token)`, `hex(workflow_id)`,
/// waiting for, traceparent, tracestate), so that a statement can hand back many tasks in one value with
/// `json_group_array`. Decoded by [`TaskJson`].
macro_rules! task_json {
    () => {
        "json_array(hex(id), core_id, status, priority, timeout_us, max_attempts, attempt, \
         run_at, created_at, updated_at, started_at, finished_at, lease_expires_at, \
         json(payload), json(metadata), \
         CASE WHEN result IS NULL THEN NULL ELSE json_array(json(result)) END, \
         error, idempotency_key, json(locks), hex(lease_token), hex(workflow_id), waiting_for, \
         traceparent, tracestate)"
    };
}
pub(crate) use task_json;

/// A task row in the shape of [`task_json!`].
#[derive(serde::Deserialize)]
struct TaskJson(
    String,
    String,
    String,
    i32,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    serde_json::Value,
    serde_json::Value,
    Option<[serde_json::Value; 1]>,
    Option<String>,
    Option<String>,
    Vec<String>,
    Option<String>,
    Option<String>,
    i64,
    Option<String>,
    Option<String>,
);

/// Decodes a JSON array of [`task_json!`] rows, with their lease tokens.
fn tasks_from_json(operation: &'static str, text: &str) -> Result<Vec<(Task, Option<LeaseToken>)>> {
    let rows: Vec<TaskJson> = serde_json::from_str(text).map_err(|e| corrupt(operation, e))?;
    let uuid = |hex: &str| Uuid::try_parse(hex).map_err(|e| corrupt(operation, e));
    rows.into_iter()
        .map(|row| {
            let TaskJson(
                id,
                engine,
                status,
                priority,
                timeout_us,
                max_attempts,
                attempt,
                run_at,
                created_at,
                updated_at,
                started_at,
                finished_at,
                lease_expires_at,
                payload,
                metadata,
                result,
                error,
                idempotency_key,
                locks,
                lease,
                workflow_id,
                waiting_for,
                traceparent,
                tracestate,
            ) = row;
            let task = Task {
                id: TaskId(uuid(&id)?),
                engine,
                status: TaskStatus::from_str(&status).map_err(|e| corrupt(operation, e))?,
                priority,
                timeout: from_micros(timeout_us),
                max_attempts: to_u32(operation, "max_attempts", max_attempts)?,
                attempt: to_u32(operation, "attempt", attempt)?,
                run_at: time_from_db(operation, run_at)?,
                created_at: time_from_db(operation, created_at)?,
                updated_at: time_from_db(operation, updated_at)?,
                started_at: opt_time_from_db(operation, started_at)?,
                finished_at: opt_time_from_db(operation, finished_at)?,
                lease_expires_at: opt_time_from_db(operation, lease_expires_at)?,
                payload,
                metadata,
                result: result.map(|[value]| value),
                error,
                idempotency_key,
                locks,
                workflow_id: match workflow_id.as_deref() {
                    None | Some("") => None,
                    Some(hex) => Some(WorkflowId(uuid(hex)?)),
                },
                waiting_for: to_u32(operation, "waiting_for", waiting_for)?,
                traceparent,
                tracestate,
            };
            let lease = match lease.as_deref() {
                None | Some("") => None,
                Some(hex) => Some(LeaseToken(uuid(hex)?)),
            };
            Ok((task, lease))
        })
        .collect()
}

/// A task row and its lease token.
fn task_from_row(operation: &'static str, row: &SqliteRow) -> Result<(Task, Option<LeaseToken>)> {
    let get = |e: sqlx::Error| corrupt(operation, e);
    let status: String = row.try_get("status").map_err(get)?;
    let status = TaskStatus::from_str(&status).map_err(|e| corrupt(operation, e))?;
    let locks: String = row.try_get("locks").map_err(get)?;
    let locks: Vec<String> = serde_json::from_str(&locks).map_err(|e| corrupt(operation, e))?;
    let result: Option<String> = row.try_get("result").map_err(get)?;
    let lease: Option<Uuid> = row.try_get("lease_token").map_err(get)?;
    let workflow_id: Option<Uuid> = row.try_get("workflow_id").map_err(get)?;
    let task = Task {
        id: TaskId(row.try_get("id").map_err(get)?),
        engine: row.try_get("core_id").map_err(get)?,
        status,
        priority: row.try_get("priority").map_err(get)?,
        timeout: from_micros(row.try_get("timeout_us").map_err(get)?),
        max_attempts: to_u32(
            operation,
            "max_attempts",
            row.try_get("max_attempts").map_err(get)?,
        )?,
        attempt: to_u32(operation, "attempt", row.try_get("attempt").map_err(get)?)?,
        run_at: time_from_db(operation, row.try_get("run_at").map_err(get)?)?,
        created_at: time_from_db(operation, row.try_get("created_at").map_err(get)?)?,
        updated_at: time_from_db(operation, row.try_get("updated_at").map_err(get)?)?,
        started_at: opt_time_from_db(operation, row.try_get("started_at").map_err(get)?)?,
        finished_at: opt_time_from_db(operation, row.try_get("finished_at").map_err(get)?)?,
        lease_expires_at: opt_time_from_db(
            operation,
            row.try_get("lease_expires_at").map_err(get)?,
        )?,
        payload: json_from_db(operation, row.try_get("payload").map_err(get)?)?,
        metadata: json_from_db(operation, row.try_get("metadata").map_err(get)?)?,
        result: result
            .map(|text| json_from_db(operation, &text))
            .transpose()?,
        error: row.try_get("error").map_err(get)?,
        idempotency_key: row.try_get("idempotency_key").map_err(get)?,
        locks,
        workflow_id: workflow_id.map(WorkflowId),
        waiting_for: to_u32(
            operation,
            "waiting_for",
            row.try_get("waiting_for").map_err(get)?,
        )?,
        traceparent: row.try_get("traceparent").map_err(get)?,
        tracestate: row.try_get("tracestate").map_err(get)?,
    };
    Ok((task, lease.map(LeaseToken)))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open_temp() -> (SqliteBackend, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.db");
        let backend = SqliteBackend::open(path.to_str().expect("utf-8"))
            .await
            .expect("open");
        (backend, dir)
    }

    async fn keys(backend: &SqliteBackend) -> Vec<String> {
        sqlx::query_scalar("SELECT key FROM orch_kv ORDER BY key")
            .fetch_all(&backend.readers)
            .await
            .expect("read keys")
    }

    /// Writes through another connection to the file (as another process would) until
    /// `signal` moves, for at most ten seconds; whether it moved.
    async fn moves_on_other_commits(path: &Path, signal: &ChangeSignal) -> bool {
        let other = SqliteBackend::open(path.to_str().expect("utf-8"))
            .await
            .expect("open");
        // Past anything the watcher may still report of the opening.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = signal.version();
        for i in 0..100 {
            sqlx::query("INSERT OR REPLACE INTO orch_kv (key, value) VALUES (?, x'00')")
                .bind(format!("k{i}"))
                .execute(&other.writer)
                .await
                .expect("write");
            if tokio::time::timeout(Duration::from_millis(100), signal.changed_since(seen))
                .await
                .is_ok()
            {
                return true;
            }
        }
        false
    }

    /// Both ways of hearing of other processes' commits work on their own: after inotify
    /// reports a write to the WAL (Linux) and every few milliseconds (elsewhere, or when
    /// inotify is unavailable); and neither takes the backend's own commits for another's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watcher_hears_of_other_connections_commits_either_way() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("w.db");
        let first = SqliteBackend::open(path.to_str().expect("utf-8"))
            .await
            .expect("open");
        let look = |tasks: &ChangeSignal| Look {
            writer: first.writer.clone(),
            own_writes: first.own_writes.clone(),
            tasks: tasks.clone(),
            events: ChangeSignal::new(),
            seen: None,
            warned: false,
        };
        let mut watchers = Vec::new();
        #[cfg(target_os = "linux")]
        {
            let tasks = ChangeSignal::new();
            let writes = Watcher::watch_wal(&path).expect("inotify");
            watchers.push((
                "inotify",
                tasks.clone(),
                tokio::spawn(Watcher::on_writes(writes, look(&tasks))),
            ));
        }
        let tasks = ChangeSignal::new();
        watchers.push((
            "interval",
            tasks.clone(),
            tokio::spawn(Watcher::every_interval(look(&tasks))),
        ));
        for (how, tasks, watcher) in watchers {
            tokio::time::sleep(Duration::from_millis(50)).await;
            // The backend's own commits: not heard.
            let seen = tasks.version();
            for i in 0..20 {
                sqlx::query("INSERT OR REPLACE INTO orch_kv (key, value) VALUES (?, x'00')")
                    .bind(format!("own{i}"))
                    .execute(&first.writer)
                    .await
                    .expect("write");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(
                tasks.version(),
                seen,
                "{how}: own commits taken for another's"
            );
            assert!(moves_on_other_commits(&path, &tasks).await, "{how}");
            // Busy with its own writes (the inotify watch stops for a while): another's
            // commits are still heard.
            for i in 0..200 {
                first.wrote();
                sqlx::query("INSERT OR REPLACE INTO orch_kv (key, value) VALUES (?, x'01')")
                    .bind(format!("busy{i}"))
                    .execute(&first.writer)
                    .await
                    .expect("write");
            }
            assert!(moves_on_other_commits(&path, &tasks).await, "{how}, busy");
            watcher.abort();
        }
    }

    /// A script that fails half way leaves nothing of what it did, and the writer usable.
    #[tokio::test]
    async fn a_failed_write_script_is_rolled_back() {
        let (backend, _dir) = open_temp().await;
        let failing = "BEGIN IMMEDIATE;
INSERT INTO orch_kv (key, value) VALUES ('a', x'00');
INSERT INTO orch_kv (key, value) VALUES ('a', x'01');
COMMIT";
        let error = backend
            .write_script("test", sqlx::query(failing))
            .await
            .expect_err("a duplicate key fails the script");
        assert!(error.to_string().contains("UNIQUE"), "{error}");
        assert!(keys(&backend).await.is_empty(), "the first insert stayed");
        let ok = "BEGIN IMMEDIATE; INSERT INTO orch_kv (key, value) VALUES ('b', x'00'); COMMIT";
        backend
            .write_script("test", sqlx::query(ok))
            .await
            .expect("the writer works after a failed script");
        assert_eq!(keys(&backend).await, ["b"]);
    }

    /// A caller that gives up does not cut a script short: it runs to its end on its own.
    #[tokio::test]
    async fn a_dropped_write_script_still_completes() {
        let (backend, _dir) = open_temp().await;
        let script = "BEGIN IMMEDIATE;
INSERT INTO orch_kv (key, value) VALUES ('a', x'00');
INSERT INTO orch_kv (key, value) VALUES ('b', x'00');
COMMIT";
        let mut call = Box::pin(backend.write_script("test", sqlx::query(script)));
        // Polled once (the script is handed over), then dropped.
        assert!(futures_util::FutureExt::now_or_never(call.as_mut()).is_none());
        drop(call);
        let ok = "BEGIN IMMEDIATE; INSERT INTO orch_kv (key, value) VALUES ('c', x'00'); COMMIT";
        backend
            .write_script("test", sqlx::query(ok))
            .await
            .expect("the writer works after a dropped script");
        assert_eq!(keys(&backend).await, ["a", "b", "c"]);
    }
}
