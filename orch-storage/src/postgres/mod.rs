//! [`PostgresBackend`]: every orch-core backend trait in PostgreSQL, shared by any number of
//! processes.
//!
//! Layout: this module connects, migrates, maps rows and numbers events; `tasks` implements
//! [`TaskStore`](orch_core::backend::TaskStore); `log` the event log, lock table and key-value space;
//! `notify` the LISTEN/NOTIFY wake-ups; `transactional` dispatch inside a caller's transaction.
//!
//! Invariants:
//! - Each task transition is one statement, a CTE that updates the task and inserts its event,
//!   so the log never misses a transition and never shows one that did not commit.
//! - Worker-side writes are conditioned on `status = 'running'` and the lease token; zero rows
//!   updated means the lease was lost ([`Error::LeaseLost`](orch_core::Error::LeaseLost)).
//! - Lease and lock expiry use the database clock `now()`, so every process shares one clock.
//! - Claim is `SELECT ... ORDER BY ... LIMIT n FOR UPDATE SKIP LOCKED` in a CTE feeding the
//!   `UPDATE` (not `WHERE id IN (subquery)`, which the planner may run more than once).
//! - Events get their `seq` from a numbering pass (see the migration and `NUMBER_EVENTS`):
//!   transitions insert events unnumbered and never contend on the log; readers number what
//!   has committed, one pass at a time, so a reader's cursor never skips an event that
//!   committed late. Sequence numbers strictly increase in visibility order and rarely skip a
//!   value. An orchestrator starting up reads only the counter (`tail_start_seq`): a backlog
//!   nobody has read is numbered by its first reader or by the next pruning pass, not while
//!   the orchestrator starts.
//! - No explicit transaction of its own: every operation is one statement, so a cancelled call
//!   can never leave a connection idle inside a transaction holding locks. The one exception is
//!   the application's: [`PostgresBackend::dispatch_in`] runs in a transaction the caller owns.
//! - Statements that create or requeue tasks or append events send one `pg_notify` (see
//!   `notify`); listeners in every process raise their wake-up signals. Polling stays the floor.

/// Appends the events a statement raises, in rows of up to 256 (`orch_event_batches`), from
/// a query of their `kind`, `task_id`, `core_id`, `attempt`, `data` and order `o` (from 1).
/// No events, no row.
macro_rules! insert_events {
    ($select:expr) => {
        concat!(
            "INSERT INTO orch_event_batches (n, at, kinds, task_ids, core_ids, attempts, data)
    SELECT count(*), now(), array_agg(kind ORDER BY o), array_agg(task_id ORDER BY o),
           array_agg(core_id ORDER BY o), array_agg(attempt ORDER BY o),
           jsonb_agg(data ORDER BY o)
    FROM (",
            $select,
            ") AS e
    GROUP BY (o - 1) / 256
    ORDER BY min(o)"
        )
    };
}

mod graph;
mod log;
mod notify;
mod statements;
mod tasks;
mod transactional;

use std::str::FromStr;
use std::time::Duration;

use orch_core::backend::ChangeSignal;
use orch_core::{Error, LeaseToken, Result, Task, TaskId, TaskStatus, WorkflowId};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions as _, Connection as _, Row};
use uuid::Uuid;

use crate::common::{corrupt, db_err, from_micros, to_u32};

/// Connections per process unless told otherwise.
const DEFAULT_POOL_SIZE: u32 = 10;

/// Smallest pool that keeps one connection for the statements recording outcomes of tasks
/// that end others' waits (they run one at a time; a connection of their own plans them once).
const GRAPH_CONNECTION_MIN_POOL: u32 = 4;

/// Most events numbered per sequencer statement.
const NUMBERING_BATCH: i64 = 10_000;

/// Longest duration handed to the database (a longer lease or TTL is this): an interval
/// overflow would otherwise fail the statement.
const MAX_DURATION_MICROS: i64 = 100 * 365 * 24 * 3600 * 1_000_000;

/// How [`PostgresBackend::connect_with`] connects.
///
/// The timeouts make a call fail fast, with an error saying the database is unreachable, while
/// the server is down or cut off, instead of queueing behind the pool for half a minute; the
/// start-up wait lets a process start before its database and connect once it is up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// Connections in the pool. Default 10.
    pub pool_size: u32,
    /// Whether worker-side transitions (claims, lease renewals, attempt outcomes, rescues) wait
    /// for their commit to reach disk. Default `true`.
    ///
    /// With `false` they commit with `synchronous_commit = off`: each saves a disk flush
    /// (about 1 ms on a small machine, and the claim loop and the reporter each wait for one per
    /// batch), which multiplies end-to-end throughput. The cost: if the PostgreSQL server
    /// crashes (not this process: the server, or its machine), the last fraction of a second
    /// of such transitions is rolled back. No task is lost and none ends twice: a lost claim
    /// leaves its task queued, a lost outcome leaves its task running until the lease expires,
    /// and the task is then run again (orch runs tasks at least once; engines are idempotent).
    /// A caller may have been told that an attempt succeeded before it runs again. Dispatch,
    /// cancellation, resolution, appended events and locks always commit durably, and a later
    /// durable commit makes every earlier transition durable too.
    pub durable_worker_commits: bool,
    /// Longest wait of one call for a connection, opening one included (so it is also the
    /// connect timeout). Default 10 s. When it passes, the call fails with an error saying the
    /// database is unreachable (or, on a healthy server, that every connection stayed busy).
    pub acquire_timeout: Duration,
    /// The server-side `statement_timeout` of orch's sessions: a statement running (or waiting
    /// for a row lock) longer is cancelled and its call fails. Default 60 s; `None` leaves the
    /// URL's or the server's setting. Migrations run without it.
    pub statement_timeout: Option<Duration>,
    /// The `application_name` orch's sessions report (`pg_stat_activity`, the server log)
    /// unless the URL (`?application_name=`) or `PGAPPNAME` names one. Default `"orch"`.
    pub application_name: String,
    /// How long [`connect_with`](PostgresBackend::connect_with) keeps retrying while the server
    /// cannot be reached yet (connection refused, no route, "the database system is starting
    /// up"), backing off from 100 ms to 2 s between tries. Default 30 s; zero tries once.
    /// Errors that waiting cannot fix (a wrong password, a missing database) fail at once.
    pub startup_wait: Duration,
    /// A claim from the head of the claim index slower than this (its round trip, from when
    /// it has a connection) makes the engine's next claims resume after the last task it
    /// claimed, with a claim from the head again after a quarter of a second or twenty times
    /// as long as the last one took, whichever is longer (at most 5 s), while claims from the
    /// head stay slow. Default 5 ms; `Duration::MAX` never resumes.
    ///
    /// What it is for: a claimed task's entry stays in the claim index, pointing at a row
    /// version no transaction needs, until vacuum removes it, and a transaction holding an old
    /// snapshot (a long report, a `REPEATABLE READ` reader, a forgotten `BEGIN`) keeps vacuum
    /// from removing any. A claim from the head then visits every task claimed since that
    /// snapshot began, and grows slower with each; a resumed claim starts past them.
    ///
    /// What a resumed claim takes is always claimable (queued, due, of the engine), but it
    /// may come out of claim order: until the next claim from the head, a resumed claim does
    /// not see a task before the last one claimed that another client made claimable (more
    /// urgent, given back, requeued), a task dispatched inside an application's transaction
    /// (`dispatch_in`) that began before the last claim, or a task a concurrent claim held
    /// locked. What this backend itself stores, gives back or requeues before a claim begins,
    /// the claim sees.
    pub slow_claim: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            pool_size: DEFAULT_POOL_SIZE,
            durable_worker_commits: true,
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Some(Duration::from_secs(60)),
            application_name: "orch".to_owned(),
            startup_wait: Duration::from_secs(30),
            slow_claim: Duration::from_millis(5),
        }
    }
}

impl PostgresOptions {
    /// Sets the pool size (at least 1).
    pub fn with_pool_size(mut self, pool_size: u32) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// Sets [`durable_worker_commits`](Self::durable_worker_commits).
    pub fn with_durable_worker_commits(mut self, durable: bool) -> Self {
        self.durable_worker_commits = durable;
        self
    }

    /// Sets [`acquire_timeout`](Self::acquire_timeout) (at least 1 ms).
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Sets [`statement_timeout`](Self::statement_timeout).
    pub fn with_statement_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Sets [`application_name`](Self::application_name).
    pub fn with_application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Sets [`startup_wait`](Self::startup_wait).
    pub fn with_startup_wait(mut self, wait: Duration) -> Self {
        self.startup_wait = wait;
        self
    }

    /// Sets [`slow_claim`](Self::slow_claim).
    pub fn with_slow_claim(mut self, slow: Duration) -> Self {
        self.slow_claim = slow;
        self
    }
}

fn migrator() -> Migrator {
    crate::common::migrator(&[
        (
            1,
            "init",
            include_str!("../../migrations/postgres/0001_init.sql"),
        ),
        (
            2,
            "transition indexes",
            include_str!("../../migrations/postgres/0002_transition_indexes.sql"),
        ),
        (
            3,
            "event batches",
            include_str!("../../migrations/postgres/0003_event_batches.sql"),
        ),
        (
            4,
            "lock queue",
            include_str!("../../migrations/postgres/0004_lock_queue.sql"),
        ),
        (
            5,
            "task events",
            include_str!("../../migrations/postgres/0005_task_events.sql"),
        ),
        (
            6,
            "workflows",
            include_str!("../../migrations/postgres/0006_workflows.sql"),
        ),
        (
            7,
            "trace context",
            include_str!("../../migrations/postgres/0007_trace_context.sql"),
        ),
        (
            8,
            "lock expiry",
            include_str!("../../migrations/postgres/0008_lock_expiry.sql"),
        ),
    ])
}

/// A backend in PostgreSQL: several orch processes pointed at one database share its queue,
/// locks and event log.
///
/// ```no_run
/// # async fn demo() -> orch_core::Result<()> {
/// use std::sync::Arc;
/// use orch_core::SharedBackend;
/// use orch_storage::PostgresBackend;
///
/// let backend: SharedBackend =
///     Arc::new(PostgresBackend::connect("postgres://orch@localhost/orch").await?);
/// # Ok(()) }
/// ```
pub struct PostgresBackend {
    pool: PgPool,
    /// Where claims, lease renewals, attempt outcomes and rescues run: `pool` itself, or (with
    /// [`PostgresOptions::with_durable_worker_commits`] off) a pool whose sessions commit with
    /// `synchronous_commit = off`.
    worker_pool: PgPool,
    /// `worker_pool` is a pool of its own (not a clone of `pool`).
    separate_worker_pool: bool,
    /// The listener's own one-connection pool (LISTEN holds its connection for good).
    listener_pool: PgPool,
    /// One connection committing with `synchronous_commit = off`, for the trailing event
    /// notifications (see `notify`).
    hint_pool: PgPool,
    /// Bumped after this backend made tasks claimable, and by the listener when another
    /// backend on the database notified that it did (polling stays the floor).
    task_wakeups: ChangeSignal,
    /// Bumped after this backend appended events, and by the listener likewise.
    event_wakeups: ChangeSignal,
    /// Identifies this backend in its notifications, so its listener skips its own.
    sender: Uuid,
    /// Rate limit of event-only notifications.
    hints: notify::EventHints,
    /// Turns other backends' notifications into raises of the signals; stopped on drop.
    _listener: notify::Listener,
    /// Tasks this backend claimed that had dependents or belonged to a workflow when claimed:
    /// their outcomes go straight to the general statement, without first trying the one for
    /// plain successes (which would refuse the batch). Only a shortcut: an outcome of a task
    /// not remembered here (a dependent added since the claim, the set cleared) is still
    /// recorded rightly, one statement later.
    graph_claims: std::sync::Mutex<std::collections::HashSet<Uuid>>,
    /// Where each engine's claims resume while claims from the head of the index are slow
    /// (see `ClaimFloors`).
    claim_floors: tasks::ClaimFloors,
    /// Outcomes of such tasks, recorded one statement at a time (see
    /// `PostgresBackend::finish_in_graph`).
    graph_outcomes: tasks::GraphOutcomes,
    /// The pool is large enough to keep one connection for the outcomes of tasks that end
    /// others' waits (see `GraphOutcomes`).
    keeps_graph_connection: bool,
}

impl PostgresBackend {
    /// Connects to `url` (`postgres://user:password@host:port/database`) with a pool of
    /// 10 connections and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with_pool_size(url, DEFAULT_POOL_SIZE).await
    }

    /// Like [`connect`](Self::connect) with `pool_size` connections (at least 1).
    pub async fn connect_with_pool_size(url: &str, pool_size: u32) -> Result<Self> {
        Self::connect_with(url, PostgresOptions::default().with_pool_size(pool_size)).await
    }

    /// Like [`connect`](Self::connect) with explicit [`PostgresOptions`].
    ///
    /// ```no_run
    /// # async fn demo() -> orch_core::Result<()> {
    /// use orch_storage::{PostgresBackend, PostgresOptions};
    ///
    /// let options = PostgresOptions::default()
    ///     .with_pool_size(20)
    ///     .with_durable_worker_commits(false);
    /// let backend = PostgresBackend::connect_with("postgres://orch@localhost/orch", options).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with(url: &str, settings: PostgresOptions) -> Result<Self> {
        const OP: &str = "connect to postgres";
        let pool_size = settings.pool_size.max(1);
        let acquire_timeout = settings.acquire_timeout.max(Duration::from_millis(1));
        if settings.application_name.len() > 63 || settings.application_name.contains('\0') {
            return Err(Error::invalid(
                "application_name",
                "must be at most 63 bytes without NUL characters",
            ));
        }
        let mut options = PgConnectOptions::from_str(url).map_err(db_err(OP))?;
        if options.get_application_name().is_none() {
            options = options.application_name(&settings.application_name);
        }
        // A connection given back inside a transaction (a cancelled `begin`) must not hold row
        // locks for ever.
        options = options.options([("idle_in_transaction_session_timeout", "60s")]);
        // Short statements over few rows, some of whose plans the planner overestimates
        // (arrays of unknown length, CTEs): JIT compiling them cost more than running them
        // (seconds for a workflow's dispatch, tens of milliseconds per outcome batch).
        options = options.options([("jit", "off")]);
        if let Some(timeout) = settings.statement_timeout {
            let millis = timeout.as_millis().clamp(1, i32::MAX as u128);
            options = options.options([("statement_timeout", format!("{millis}ms"))]);
        }
        // No ping before each use (a round trip on every operation): a connection that died
        // (a server restart) fails its next statement instead, the caller's retry gets a fresh
        // one, and sqlx drops the broken one.
        let pool_options = || {
            PgPoolOptions::new()
                .acquire_timeout(acquire_timeout)
                .test_before_acquire(false)
        };
        let pool = pool_options()
            .max_connections(pool_size)
            .connect_lazy_with(options.clone());
        first_connection(&options, &settings).await?;
        check_not_newer(&pool).await?;
        migrate(&pool).await?;
        let worker_pool = if settings.durable_worker_commits {
            pool.clone()
        } else {
            pool_options()
                .max_connections(pool_size)
                .connect_lazy_with(options.clone().options([("synchronous_commit", "off")]))
        };
        let hint_pool = pool_options()
            .max_connections(1)
            .connect_lazy_with(options.clone().options([("synchronous_commit", "off")]));
        let listener_pool = PgPoolOptions::new()
            .acquire_timeout(acquire_timeout)
            .max_connections(1)
            .connect_lazy_with(options);
        let (task_wakeups, event_wakeups) = (ChangeSignal::new(), ChangeSignal::new());
        let sender = Uuid::new_v4();
        let hints = notify::EventHints::new();
        let listener = notify::Listener::spawn(
            listener_pool.clone(),
            hint_pool.clone(),
            sender,
            hints.clone(),
            task_wakeups.clone(),
            event_wakeups.clone(),
        );
        Ok(PostgresBackend {
            pool,
            worker_pool,
            listener_pool,
            hint_pool,
            task_wakeups,
            event_wakeups,
            sender,
            hints,
            _listener: listener,
            separate_worker_pool: !settings.durable_worker_commits,
            graph_claims: std::sync::Mutex::new(std::collections::HashSet::new()),
            claim_floors: tasks::ClaimFloors::new(settings.slow_claim),
            graph_outcomes: tasks::GraphOutcomes::default(),
            keeps_graph_connection: pool_size >= GRAPH_CONNECTION_MIN_POOL,
        })
    }

    /// The highest schema migration applied (the schema version).
    pub async fn schema_version(&self) -> Result<i64> {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT max(version) FROM orch_schema_migrations WHERE success",
        )
        .fetch_one(&self.pool)
        .await
        .map(Option::unwrap_or_default)
        .map_err(db_err("schema_version"))
    }

    /// Closes every connection. Later calls fail.
    pub async fn close(&self) {
        // The kept connection first: a pool's close waits for every connection out of it.
        self.graph_outcomes.close().await;
        self.listener_pool.close().await;
        self.hint_pool.close().await;
        self.worker_pool.close().await;
        self.pool.close().await;
    }

    /// The `pg_notify` payload for a statement by this backend that may make tasks
    /// claimable (always sent).
    fn notify_payload(&self, tasks: bool) -> String {
        notify::payload(self.sender, tasks)
    }

    /// The payload for a statement that only appends events, or `None` (the statement sends
    /// nothing) when one was sent within the rate-limit window: then the caller must call
    /// [`deferred`](Self::deferred) once the statement committed.
    fn event_hint(&self) -> Option<String> {
        self.hints
            .take_slot()
            .then(|| notify::payload(self.sender, false))
    }

    /// The share of the connection pool's connections in use now, 0 to 1 (of the busier one
    /// when the workers commit through a pool of their own): what the monitor reads as
    /// `pool_in_use_ratio` through [`PostgresBackend::pool_sampler`].
    pub fn pool_in_use(&self) -> f64 {
        let mut pools = vec![&self.pool];
        if self.separate_worker_pool {
            pools.push(&self.worker_pool);
        }
        pools
            .into_iter()
            .map(|pool| {
                let size = u64::from(pool.size());
                let idle = u64::try_from(pool.num_idle()).unwrap_or(u64::MAX);
                let max = u64::from(pool.options().get_max_connections()).max(1);
                size.saturating_sub(idle) as f64 / max as f64
            })
            .fold(0.0, f64::max)
    }

    /// A monitor [`Sampler`](orch_core::monitor::Sampler) reading
    /// [`pool_in_use`](Self::pool_in_use) as `pool_in_use_ratio` each pass.
    pub fn pool_sampler(self: &std::sync::Arc<Self>) -> impl orch_core::monitor::Sampler + 'static {
        let backend = std::sync::Arc::downgrade(self);
        orch_core::monitor::sampler_fn(move || {
            let reading = backend.upgrade().map(|backend| {
                orch_core::monitor::Reading::new(
                    orch_core::monitor::Metric::PoolInUse,
                    backend.pool_in_use(),
                )
            });
            std::future::ready(Ok(reading.into_iter().collect()))
        })
    }

    /// After a statement that went without its event notification (`hint` was `None`).
    fn deferred(&self, hint: &Option<String>) {
        if hint.is_none() {
            self.hints.defer();
        }
    }

    fn wake_tasks(&self) {
        self.task_wakeups.raise();
    }

    fn wake_events(&self) {
        self.event_wakeups.raise();
    }

    /// Numbers every event that committed before the call, for a reader about to read the
    /// log: when a numbering pass is running elsewhere, waits for it to end (briefly: it is one
    /// statement) and numbers what it left. Otherwise a reader woken by a notification could
    /// find its event not yet numbered and then sleep until its next poll.
    async fn number_committed(&self, operation: &'static str) -> Result<()> {
        let mut pause = Duration::from_millis(1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !self.number_events(operation).await? {
            if tokio::time::Instant::now() > deadline {
                // Still not ours: the pass running elsewhere numbers it, and the next read
                // finds it.
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Numbers committed, unnumbered events, unless a numbering is running elsewhere (whose
    /// result becomes visible when it commits). Returns `false` when it found one running.
    async fn number_events(&self, operation: &'static str) -> Result<bool> {
        // The common case when idle: nothing to number, and nothing written.
        let pending: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM orch_event_batches WHERE seq IS NULL)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db_err(operation))?;
        if !pending {
            return Ok(true);
        }
        loop {
            let (ran, numbered): (bool, i64) = sqlx::query_as(NUMBER_EVENTS)
                .bind(NUMBERING_BATCH)
                .fetch_one(&self.pool)
                .await
                .map_err(db_err(operation))?;
            if !ran || numbered < NUMBERING_BATCH {
                return Ok(ran);
            }
        }
    }
}

/// One numbering pass, in one statement (so no transaction is ever left open by a cancelled
/// caller). The row lock on the counter makes passes run one at a time; a pass that finds it
/// taken does nothing. A pass numbers up to `$1` event rows that had committed when it
/// started, in `id` order, each with as many numbers as it holds events, above the counter's
/// latest value; a row another pass numbered meanwhile is skipped by the `seq IS NULL`
/// recheck (leaving a gap, never a repeat). Returns whether it ran and how many rows it
/// numbered.
const NUMBER_EVENTS: &str = "\
WITH counter AS (
    SELECT last FROM orch_event_counter WHERE id = 1 FOR UPDATE SKIP LOCKED
), pending AS (
    SELECT id, n, sum(n) OVER (ORDER BY id) AS upto
    FROM (SELECT id, n FROM orch_event_batches WHERE seq IS NULL ORDER BY id LIMIT $1) p
), numbered AS (
    UPDATE orch_event_batches e SET seq = counter.last + pending.upto - pending.n + 1,
        last_seq = counter.last + pending.upto
    FROM pending, counter
    WHERE e.id = pending.id AND e.seq IS NULL
    RETURNING e.last_seq
), bump AS (
    UPDATE orch_event_counter
    SET last = greatest(last, (SELECT max(last_seq) FROM numbered))
    WHERE id = 1 AND EXISTS (SELECT 1 FROM counter)
    RETURNING last
)
SELECT EXISTS (SELECT 1 FROM counter) AS ran, (SELECT count(*) FROM numbered) AS numbered";

/// Waits for the server to accept a connection, retrying while it cannot be reached yet, for
/// up to [`PostgresOptions::startup_wait`]; fails at once on an error that waiting cannot fix.
async fn first_connection(options: &PgConnectOptions, settings: &PostgresOptions) -> Result<()> {
    let started = tokio::time::Instant::now();
    let deadline = started + settings.startup_wait;
    let mut backoff = Duration::from_millis(100);
    let mut tries = 0u32;
    loop {
        tries += 1;
        // A connection of its own rather than the pool's, whose timeout hides the cause.
        let attempt = tokio::time::timeout(settings.acquire_timeout, options.connect()).await;
        let error = match attempt {
            Ok(Ok(connection)) => {
                connection.close().await.ok();
                return Ok(());
            }
            Ok(Err(error)) => error,
            Err(_) => sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no connection within the acquire timeout ({:?})",
                    settings.acquire_timeout
                ),
            )),
        };
        let now = tokio::time::Instant::now();
        if !crate::common::is_unreachable(&error) || now >= deadline {
            let waited = if tries > 1 {
                format!(
                    " (tried {tries} times over {:.1} s)",
                    started.elapsed().as_secs_f64()
                )
            } else {
                String::new()
            };
            let unreachable = crate::common::is_unreachable(&error);
            let message = if unreachable {
                format!(
                    "PostgreSQL at {}:{} is unreachable: {error}{waited}",
                    options.get_host(),
                    options.get_port()
                )
            } else {
                format!(
                    "PostgreSQL at {}:{} refused the connection: {error}",
                    options.get_host(),
                    options.get_port()
                )
            };
            let cause: Option<Box<dyn std::error::Error + Send + Sync>> = Some(Box::new(error));
            return Err(if unreachable {
                Error::Unavailable {
                    operation: "connect to postgres",
                    message,
                    cause,
                }
            } else {
                Error::Backend {
                    operation: "connect to postgres",
                    message,
                    cause,
                }
            });
        }
        tracing::warn!(
            host = options.get_host(),
            port = options.get_port(),
            %error,
            "PostgreSQL is not reachable yet; retrying"
        );
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Applies pending migrations on one connection with `statement_timeout` off (building an
/// index on a large table may take longer than any call should).
async fn migrate(pool: &PgPool) -> Result<()> {
    const OP: &str = "migrate postgres database";
    let mut conn = pool.acquire().await.map_err(db_err(OP))?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *conn)
        .await
        .map_err(db_err(OP))?;
    let migrated = migrator().run_direct(None, &mut *conn, false).await;
    if sqlx::query("RESET statement_timeout")
        .execute(&mut *conn)
        .await
        .is_err()
    {
        // Never hand a session without its timeout back to the pool.
        drop(conn.detach());
    }
    migrated.map_err(|e| Error::backend_source(OP, e))
}

/// Refuses a database migrated by a newer orch-storage, before touching it.
async fn check_not_newer(pool: &PgPool) -> Result<()> {
    const OP: &str = "connect to postgres";
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('orch_schema_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await
            .map_err(db_err(OP))?;
    if !exists {
        return Ok(());
    }
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM orch_schema_migrations WHERE success")
            .fetch_one(pool)
            .await
            .map_err(db_err(OP))?;
    let latest = migrator()
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or_default();
    crate::common::check_schema_version(OP, applied.unwrap_or_default(), latest)
}

/// A duration in microseconds for the database, capped at [`MAX_DURATION_MICROS`].
fn db_micros(duration: Duration) -> i64 {
    crate::common::micros(duration).min(MAX_DURATION_MICROS)
}

/// A task row and its lease token.
fn task_from_row(operation: &'static str, row: &PgRow) -> Result<(Task, Option<LeaseToken>)> {
    let get = |e: sqlx::Error| corrupt(operation, e);
    let status: String = row.try_get("status").map_err(get)?;
    let lease: Option<Uuid> = row.try_get("lease_token").map_err(get)?;
    let task = Task {
        id: TaskId(row.try_get("id").map_err(get)?),
        engine: row.try_get("core_id").map_err(get)?,
        status: TaskStatus::from_str(&status).map_err(|e| corrupt(operation, e))?,
        priority: row.try_get("priority").map_err(get)?,
        timeout: from_micros(row.try_get("timeout_us").map_err(get)?),
        max_attempts: to_u32(
            operation,
            "max_attempts",
            i64::from(row.try_get::<i32, _>("max_attempts").map_err(get)?),
        )?,
        attempt: to_u32(
            operation,
            "attempt",
            i64::from(row.try_get::<i32, _>("attempt").map_err(get)?),
        )?,
        run_at: row.try_get("run_at").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
        updated_at: row.try_get("updated_at").map_err(get)?,
        started_at: row.try_get("started_at").map_err(get)?,
        finished_at: row.try_get("finished_at").map_err(get)?,
        lease_expires_at: row.try_get("lease_expires_at").map_err(get)?,
        payload: row.try_get("payload").map_err(get)?,
        metadata: row.try_get("metadata").map_err(get)?,
        result: row.try_get("result").map_err(get)?,
        error: row.try_get("error").map_err(get)?,
        idempotency_key: row.try_get("idempotency_key").map_err(get)?,
        locks: row.try_get("locks").map_err(get)?,
        workflow_id: row
            .try_get::<Option<Uuid>, _>("workflow_id")
            .map_err(get)?
            .map(WorkflowId),
        waiting_for: to_u32(
            operation,
            "waiting_for",
            i64::from(row.try_get::<i32, _>("waiting_for").map_err(get)?),
        )?,
        traceparent: row.try_get("traceparent").map_err(get)?,
        tracestate: row.try_get("tracestate").map_err(get)?,
    };
    Ok((task, lease.map(LeaseToken)))
}

fn tasks_from_rows(operation: &'static str, rows: &[PgRow]) -> Result<Vec<Task>> {
    rows.iter()
        .map(|row| task_from_row(operation, row).map(|(task, _)| task))
        .collect()
}

/// Converts an integer count from the database.
fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
