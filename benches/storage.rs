//! Throughput and latency of the durable backends, through a real `Orchestrator`.
//!
//! ```sh
//! cargo bench --bench storage -- [--backend sqlite|postgres|all] [--tasks 50000] \
//!     [--concurrency 64] [--batch 1000] [--samples 500] \
//!     [--only single,batched,e2e,relaxed,pickup,idle] [--claims-in-flight N] [--reports-in-flight N]
//! ```
//!
//! For each backend (a fresh SQLite file in a temporary folder; a fresh database on the
//! PostgreSQL of `ORCH_BENCH_DATABASE_URL`, or else on a throwaway server started here from
//! `initdb`/`pg_ctl` (on PATH or in `/usr/lib/postgresql/*/bin`) with default durability
//! settings, plus any `name=value` settings in `ORCH_BENCH_PG_SETTINGS`, separated by spaces)
//! it measures:
//! - dispatch, single (`single`): `Orchestrator::dispatch`, one task per call, one caller;
//! - dispatch, batched (`batched`): `dispatch_many` with `--batch` tasks per call;
//! - end to end (`e2e`): the shared drain driver (`support::drain`): a producer dispatches
//!   `--tasks` tasks in batches of `--batch` (at most 10,000 outstanding) while the
//!   orchestrator claims them and runs a no-op engine with `--concurrency` attempts at once;
//!   the clock stops when the last outcome is recorded (event log on, as always). On
//!   PostgreSQL also `relaxed`: the same with
//!   `PostgresOptions::with_durable_worker_commits(false)`;
//! - pickup latency on an idle queue (`pickup`, `support::pickup`): from just before
//!   `dispatch` to the engine's start, one task at a time, p50/p95/p99 over `--samples` tasks.
//!   Twice: dispatched by the orchestrator that runs the engine (whose idle claim loop lets
//!   the dispatch store the task already claimed), and by another client of the database (as
//!   another process would: the orchestrator hears of it through LISTEN/NOTIFY on PostgreSQL,
//!   through the watcher of other connections' commits on SQLite, and claims it);
//! - the CPU an orchestrator with nothing to do costs (`idle`): its claim loops, event tail and
//!   the backend's background work (on SQLite, the watcher), over 20 s.

#[allow(
    dead_code,
    unreachable_pub,
    reason = "orch-storage's tests' PostgreSQL helper, of which the bench uses only the private server"
)]
#[path = "../orch-storage/tests/support/postgres.rs"]
mod pg;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use orch::{Orchestrator, OrchestratorConfig, SharedBackend, TaskSpec, Tuning};
use orch_storage::{PostgresBackend, PostgresOptions, SqliteBackend};

use support::args::Flags;
use support::drain::Drain;
use support::percentile;
use support::pickup::pickup_latency;

/// The measurements `--only` can name.
const MEASUREMENTS: [&str; 6] = ["single", "batched", "e2e", "relaxed", "pickup", "idle"];

/// How long the `idle` measurement watches an orchestrator with nothing to do.
const IDLE_FOR: Duration = Duration::from_secs(20);

/// Command-line settings.
struct Settings {
    backends: Vec<&'static str>,
    tasks: usize,
    concurrency: usize,
    batch: usize,
    samples: usize,
    /// `Tuning::claims_in_flight` and `reports_in_flight` (orch-core's defaults when `None`).
    claims_in_flight: Option<usize>,
    reports_in_flight: Option<usize>,
    /// Which measurements to run (all by default).
    only: Option<Vec<String>>,
}

impl Settings {
    fn runs(&self, part: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|p| p == part))
    }

    /// The orchestrator's settings with `concurrency` attempts at once, no pruning.
    fn config(&self, concurrency: usize) -> OrchestratorConfig {
        let mut tuning = Tuning::default();
        if let Some(claims) = self.claims_in_flight {
            tuning = tuning.with_claims_in_flight(claims);
        }
        if let Some(reports) = self.reports_in_flight {
            tuning = tuning.with_reports_in_flight(reports);
        }
        OrchestratorConfig::default()
            .with_tuning(tuning)
            .with_global_concurrency(concurrency)
            .with_default_engine_concurrency(concurrency)
            .with_retention(None)
    }
}

fn parse_args() -> anyhow::Result<Settings> {
    let mut settings = Settings {
        backends: vec!["sqlite", "postgres"],
        tasks: 50_000,
        concurrency: 64,
        batch: 1_000,
        samples: 500,
        claims_in_flight: None,
        reports_in_flight: None,
        only: None,
    };
    let mut flags = Flags::from_env();
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--backend" => {
                settings.backends = match flags.value::<String>(&flag)?.as_str() {
                    "sqlite" => vec!["sqlite"],
                    "postgres" => vec!["postgres"],
                    "all" => vec!["sqlite", "postgres"],
                    other => bail!("unknown backend {other:?} (sqlite, postgres, all)"),
                }
            }
            "--tasks" => settings.tasks = flags.value(&flag)?,
            "--concurrency" => settings.concurrency = flags.value(&flag)?,
            "--batch" => settings.batch = flags.value(&flag)?,
            "--samples" => settings.samples = flags.value(&flag)?,
            "--claims-in-flight" => settings.claims_in_flight = Some(flags.value(&flag)?),
            "--reports-in-flight" => settings.reports_in_flight = Some(flags.value(&flag)?),
            "--only" => {
                let only: Vec<String> = flags
                    .value::<String>(&flag)?
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                if let Some(bad) = only.iter().find(|p| !MEASUREMENTS.contains(&p.as_str())) {
                    bail!("unknown measurement {bad:?} ({})", MEASUREMENTS.join(", "));
                }
                settings.only = Some(only);
            }
            "--help" | "-h" => {
                println!(
                    "cargo bench --bench storage -- [--backend sqlite|postgres|all] [--tasks N] \
                     [--concurrency N] [--batch N] [--samples N] \
                     [--only single,batched,e2e,relaxed,pickup,idle] \
                     [--claims-in-flight N] [--reports-in-flight N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if settings.tasks == 0 || settings.concurrency == 0 || settings.batch == 0 {
        bail!("--tasks, --concurrency and --batch must be positive");
    }
    Ok(settings)
}

/// Makes fresh, empty backends of one kind.
enum Source {
    /// A folder for the database files, and how many were made.
    Sqlite(tempfile::TempDir, AtomicUsize),
    Postgres {
        admin_url: String,
        /// Keeps the throwaway server alive (stopped on drop).
        _server: Option<pg::PrivateServer>,
    },
}

impl Source {
    async fn new(kind: &str) -> anyhow::Result<Source> {
        if kind == "sqlite" {
            return Ok(Source::Sqlite(tempfile::tempdir()?, AtomicUsize::new(0)));
        }
        if let Ok(url) = std::env::var("ORCH_BENCH_DATABASE_URL") {
            return Ok(Source::Postgres {
                admin_url: url,
                _server: None,
            });
        }
        // Extra server settings for experiments, e.g. `shared_preload_libraries=auto_explain`.
        let settings = std::env::var("ORCH_BENCH_PG_SETTINGS").unwrap_or_default();
        let server = tokio::task::spawn_blocking(move || {
            let settings: Vec<&str> = settings.split_whitespace().collect();
            pg::private_server(&settings)
        })
        .await??
        .context("no PostgreSQL: put initdb/pg_ctl on PATH or set ORCH_BENCH_DATABASE_URL")?;
        Ok(Source::Postgres {
            admin_url: server.admin_url.clone(),
            _server: Some(server),
        })
    }

    /// A fresh backend (`durable`: see `PostgresOptions::durable_worker_commits`).
    async fn fresh(&self, durable: bool) -> anyhow::Result<SharedBackend> {
        Ok(self.fresh_pair(durable, false).await?.0)
    }

    /// A fresh backend and, with `second`, another one on the same database (a client of its
    /// own, as another process would be: SQLite tells connections apart, not processes).
    async fn fresh_pair(
        &self,
        durable: bool,
        second: bool,
    ) -> anyhow::Result<(SharedBackend, Option<SharedBackend>)> {
        Ok(match self {
            Source::Sqlite(dir, made) => {
                let n = made.fetch_add(1, Ordering::Relaxed);
                let path = dir.path().join(format!("bench-{n}.db"));
                let path = path.to_str().context("temp path is not UTF-8")?;
                let first: SharedBackend = Arc::new(SqliteBackend::open(path).await?);
                let other: Option<SharedBackend> = if second {
                    Some(Arc::new(SqliteBackend::open(path).await?))
                } else {
                    None
                };
                (first, other)
            }
            Source::Postgres { admin_url, .. } => {
                let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
                let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(admin_url)
                    .await
                    .context("connecting to PostgreSQL")?;
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await?;
                let (base, _) = admin_url.rsplit_once('/').context("url without database")?;
                let options = PostgresOptions::default()
                    .with_pool_size(16)
                    .with_durable_worker_commits(durable);
                let url = format!("{base}/{name}");
                let first: SharedBackend =
                    Arc::new(PostgresBackend::connect_with(&url, options.clone()).await?);
                let other: Option<SharedBackend> = if second {
                    Some(Arc::new(
                        PostgresBackend::connect_with(&url, options).await?,
                    ))
                } else {
                    None
                };
                (first, other)
            }
        })
    }
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

async fn dispatch_single(source: &Source, settings: &Settings, n: usize) -> anyhow::Result<f64> {
    let orch = Orchestrator::builder(source.fresh(true).await?)
        .config(settings.config(1))
        .build()
        .await?;
    let start = Instant::now();
    for _ in 0..n {
        orch.dispatch(TaskSpec::new("nobody")).await?;
    }
    let elapsed = start.elapsed();
    orch.shutdown(Duration::from_secs(5)).await;
    Ok(rate(n, elapsed))
}

async fn dispatch_batched(source: &Source, settings: &Settings) -> anyhow::Result<f64> {
    let orch = Orchestrator::builder(source.fresh(true).await?)
        .config(settings.config(1))
        .build()
        .await?;
    let start = Instant::now();
    let mut left = settings.tasks;
    while left > 0 {
        let size = left.min(settings.batch);
        let specs = (0..size).map(|_| TaskSpec::new("nobody")).collect();
        orch.dispatch_many(specs).await?;
        left -= size;
    }
    let elapsed = start.elapsed();
    orch.shutdown(Duration::from_secs(5)).await;
    Ok(rate(settings.tasks, elapsed))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = parse_args()?;
    println!(
        "storage: {} tasks end to end, concurrency {}, batches of {}, {} latency samples, \
         {} CPUs",
        settings.tasks,
        settings.concurrency,
        settings.batch,
        settings.samples,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    for &kind in &settings.backends {
        let source = Source::new(kind).await?;
        let postgres = kind == "postgres";
        println!("{kind}:");
        if settings.runs("single") {
            let single = dispatch_single(&source, &settings, settings.tasks.min(5_000)).await?;
            println!("  dispatch, single (1 task per call)    {single:>10.0} tasks/s");
        }
        if settings.runs("batched") {
            let batched = dispatch_batched(&source, &settings).await?;
            println!(
                "  dispatch, batched ({} per call)     {batched:>10.0} tasks/s",
                settings.batch
            );
        }
        let mut e2e_runs = Vec::new();
        if settings.runs("e2e") {
            e2e_runs.push(true);
        }
        if postgres && settings.runs("relaxed") {
            e2e_runs.push(false);
        }
        for durable in e2e_runs {
            let mut drain =
                Drain::new(settings.tasks as u64, settings.config(settings.concurrency))
                    .with_batch(settings.batch as u64);
            if postgres {
                drain = drain.with_server_process("postgres");
            }
            let report = drain.run(source.fresh(durable).await?).await?;
            let label = if durable {
                format!("end to end ({} attempts at once)", settings.concurrency)
            } else {
                "end to end, worker commits not durable".to_owned()
            };
            let server = if postgres {
                format!(", {:.0} us in postgres", report.server_cpu_us_per_task())
            } else {
                String::new()
            };
            println!(
                "  {label:<38}{:>10.0} tasks/s  (CPU/task: {:.0} us in this process{server})",
                report.tasks_per_second(),
                report.cpu_us_per_task(),
            );
        }
        if settings.runs("pickup") {
            for remote in [false, true] {
                let (backend, other) = source.fresh_pair(true, remote).await?;
                let measured =
                    pickup_latency(backend, other, settings.config(8), settings.samples).await?;
                let label = if remote {
                    "pickup, dispatched by another client"
                } else {
                    "pickup latency, idle queue"
                };
                let at = |sorted: &[f64], q| percentile(sorted, q).unwrap_or(f64::NAN);
                println!(
                    "  {label:<38}p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  \
                     (the dispatch call alone: p50 {:.2} ms)",
                    at(&measured.pickup_ms, 0.50),
                    at(&measured.pickup_ms, 0.95),
                    at(&measured.pickup_ms, 0.99),
                    at(&measured.dispatch_ms, 0.50),
                );
            }
        }
        if settings.runs("idle") {
            let orch = Orchestrator::builder(source.fresh(true).await?)
                .config(settings.config(8))
                .engine(
                    "noop",
                    orch::processor_fn(|_, _| async { Ok(serde_json::Value::Null) }),
                )
                .build()
                .await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = support::cpu::process_cpu_time();
            tokio::time::sleep(IDLE_FOR).await;
            let used = support::cpu::process_cpu_time().saturating_sub(before);
            println!(
                "  {:<38}{:.2}% of one core ({} ms of CPU in {} s)",
                "idle orchestrator",
                100.0 * used.as_secs_f64() / IDLE_FOR.as_secs_f64(),
                used.as_millis(),
                IDLE_FOR.as_secs(),
            );
            orch.shutdown(Duration::from_secs(5)).await;
        }
    }
    Ok(())
}
