//! Throughput and latency of the durable backends, through a real `Orchestrator`.
//!
//! ```sh
//! cargo run --release -p orch-storage --all-features --example storage-bench -- \
//!     [--backend sqlite|postgres|all] [--tasks 50000] [--concurrency 64] [--batch 1000] \
//!     [--samples 500]
//! ```
//!
//! For each backend (a fresh SQLite file in a temporary folder; a fresh database on the
//! PostgreSQL of `ORCH_BENCH_DATABASE_URL`, or else on a throwaway server started here from
//! `initdb`/`pg_ctl` on PATH with default durability settings, plus any `name=value` settings
//! in `ORCH_BENCH_PG_SETTINGS`, separated by spaces) it measures:
//! - dispatch, single: `Orchestrator::dispatch`, one task per call, one caller;
//! - dispatch, batched: `dispatch_many` with `--batch` tasks per call;
//! - end to end: a producer dispatches `--tasks` tasks in batches (at most 10,000 outstanding)
//!   while the orchestrator claims them and runs a no-op engine with `--concurrency` attempts at
//!   once; the clock stops when the last outcome is recorded (event log on, as always). On
//!   PostgreSQL twice: with durable commits throughout (the default), and with
//!   `PostgresOptions::with_durable_worker_commits(false)`;
//! - pickup latency on an idle queue: from just before `dispatch` to the engine's start, one
//!   task at a time, p50/p95/p99 over `--samples` tasks. On PostgreSQL twice: dispatched by
//!   the orchestrator that runs the engine (whose idle claim loop lets the dispatch store the
//!   task already claimed), and by another client of the database (as another process would:
//!   the orchestrator hears of it through LISTEN/NOTIFY and claims it).

#[allow(
    dead_code,
    unreachable_pub,
    reason = "the tests' PostgreSQL helper, of which the bench uses only the private server"
)]
#[path = "../tests/support/postgres.rs"]
mod pg;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use orch_core::{Orchestrator, OrchestratorConfig, SharedBackend, TaskSpec, Tuning, processor_fn};
use tokio::sync::mpsc;

/// Command-line settings.
struct Settings {
    backends: Vec<&'static str>,
    tasks: usize,
    concurrency: usize,
    batch: usize,
    samples: usize,
    /// `OrchestratorConfig::claims_in_flight` and `reports_in_flight` (defaults when `None`).
    claims_in_flight: Option<usize>,
    reports_in_flight: Option<usize>,
    /// Which measurements to run (all by default).
    only: Option<String>,
}

impl Settings {
    fn runs(&self, part: &str) -> bool {
        self.only
            .as_deref()
            .is_none_or(|only| only.split(',').any(|p| p == part))
    }
}

fn parse_args() -> anyhow::Result<Settings> {
    let mut settings = Settings {
        backends: vec!["sqlite", "postgres"],
        tasks: 50_000,
        concurrency: 64,
        batch: 1_000,
        samples: 500,
        only: None,
        claims_in_flight: None,
        reports_in_flight: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--backend" => {
                settings.backends = match value()?.as_str() {
                    "sqlite" => vec!["sqlite"],
                    "postgres" => vec!["postgres"],
                    "all" => vec!["sqlite", "postgres"],
                    other => bail!("unknown backend {other:?} (sqlite, postgres, all)"),
                }
            }
            "--tasks" => settings.tasks = value()?.parse()?,
            "--concurrency" => settings.concurrency = value()?.parse()?,
            "--batch" => settings.batch = value()?.parse()?,
            "--samples" => settings.samples = value()?.parse()?,
            "--claims-in-flight" => settings.claims_in_flight = Some(value()?.parse()?),
            "--reports-in-flight" => settings.reports_in_flight = Some(value()?.parse()?),
            "--only" => {
                let only = value()?;
                if let Some(bad) = only
                    .split(',')
                    .find(|p| !["single", "batched", "e2e", "relaxed", "pickup"].contains(p))
                {
                    bail!("unknown measurement {bad:?} (single, batched, e2e, relaxed, pickup)");
                }
                settings.only = Some(only);
            }
            "--help" | "-h" => {
                println!(
                    "storage-bench [--backend sqlite|postgres|all] [--tasks N] \
                     [--concurrency N] [--batch N] [--samples N] \
                     [--only single,batched,e2e,relaxed,pickup] \
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
    Sqlite(tempfile::TempDir),
    Postgres {
        admin_url: String,
        /// Keeps the throwaway server alive (stopped on drop).
        _server: Option<pg::PrivateServer>,
    },
}

impl Source {
    /// A fresh backend (`durable`: see `PostgresOptions::durable_worker_commits`).
    async fn fresh(&self, n: usize, durable: bool) -> anyhow::Result<SharedBackend> {
        Ok(self.fresh_pair(n, durable, false).await?.0)
    }

    /// A fresh backend and, with `second`, another one on the same database (PostgreSQL: a
    /// client of its own, as another process would be; SQLite: none).
    async fn fresh_pair(
        &self,
        n: usize,
        durable: bool,
        second: bool,
    ) -> anyhow::Result<(SharedBackend, Option<SharedBackend>)> {
        Ok(match self {
            Source::Sqlite(dir) => {
                let path = dir.path().join(format!("bench-{n}.db"));
                let path = path.to_str().context("temp path is not UTF-8")?;
                (
                    Arc::new(orch_storage::SqliteBackend::open(path).await?),
                    None,
                )
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
                let options = orch_storage::PostgresOptions::default()
                    .with_pool_size(16)
                    .with_durable_worker_commits(durable);
                let url = format!("{base}/{name}");
                let first: SharedBackend = Arc::new(
                    orch_storage::PostgresBackend::connect_with(&url, options.clone()).await?,
                );
                let other: Option<SharedBackend> = if second {
                    Some(Arc::new(
                        orch_storage::PostgresBackend::connect_with(&url, options).await?,
                    ))
                } else {
                    None
                };
                (first, other)
            }
        })
    }
}

/// `--claims-in-flight` and `--reports-in-flight`, set once by `main`.
static IN_FLIGHT: std::sync::OnceLock<(Option<usize>, Option<usize>)> = std::sync::OnceLock::new();

fn config(concurrency: usize) -> OrchestratorConfig {
    let mut tuning = Tuning::default();
    if let Some(&(claims, reports)) = IN_FLIGHT.get() {
        if let Some(claims) = claims {
            tuning = tuning.with_claims_in_flight(claims);
        }
        if let Some(reports) = reports {
            tuning = tuning.with_reports_in_flight(reports);
        }
    }
    OrchestratorConfig::default()
        .with_tuning(tuning)
        .with_global_concurrency(concurrency)
        .with_default_engine_concurrency(concurrency)
        .with_retention(None)
}

/// User + system CPU time of this process, from /proc (0 where unavailable).
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields 14 and 15 of the stat line (utime, stime), counted after the name: 11 and 12.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// User + system CPU time of every process named `postgres` on this machine, from /proc.
fn server_cpu_time() -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    let mut ticks = 0;
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((name, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !name.ends_with("(postgres") {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for i in [11, 12] {
            ticks += fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_millis(ticks * 10)
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

async fn dispatch_single(source: &Source, n: usize) -> anyhow::Result<f64> {
    let orch = Orchestrator::builder(source.fresh(1, true).await?)
        .config(config(1))
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

async fn dispatch_batched(source: &Source, n: usize, batch: usize) -> anyhow::Result<f64> {
    let orch = Orchestrator::builder(source.fresh(2, true).await?)
        .config(config(1))
        .build()
        .await?;
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let size = left.min(batch);
        let specs = (0..size).map(|_| TaskSpec::new("nobody")).collect();
        orch.dispatch_many(specs).await?;
        left -= size;
    }
    let elapsed = start.elapsed();
    orch.shutdown(Duration::from_secs(5)).await;
    Ok(rate(n, elapsed))
}

/// End to end; returns tasks/s, and CPU microseconds per task in this process and in the
/// PostgreSQL server (processes that exit during the run are not counted).
async fn end_to_end(
    source: &Source,
    n: usize,
    concurrency: usize,
    batch: usize,
    durable: bool,
) -> anyhow::Result<(f64, f64, f64)> {
    let started = Arc::new(AtomicUsize::new(0));
    let counter = started.clone();
    let orch = Orchestrator::builder(source.fresh(concurrency, durable).await?)
        .config(config(concurrency))
        .engine(
            "noop",
            processor_fn(move |_, _| {
                counter.fetch_add(1, Ordering::Relaxed);
                async { Ok(serde_json::Value::Null) }
            }),
        )
        .build()
        .await?;
    let cpu = cpu_time();
    let server_cpu = server_cpu_time();
    let start = Instant::now();
    let mut dispatched = 0;
    while dispatched < n {
        if dispatched - started.load(Ordering::Relaxed).min(dispatched) >= 10_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let size = (n - dispatched).min(batch);
        let specs = (0..size).map(|_| TaskSpec::new("noop")).collect();
        orch.dispatch_many(specs).await?;
        dispatched += size;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while started.load(Ordering::Relaxed) < n || orch.running_count() > 0 {
        if Instant::now() > deadline {
            bail!("end to end did not finish in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu);
    // Before shutdown: the pool's server processes are still alive to be counted.
    let server_cpu = server_cpu_time().saturating_sub(server_cpu);
    orch.shutdown(Duration::from_secs(5)).await;
    let per_task = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    Ok((rate(n, elapsed), per_task(cpu), per_task(server_cpu)))
}

/// Pickup latencies in milliseconds, sorted; and the latencies of the `dispatch` calls alone.
/// With `remote`, tasks are dispatched by another client of the database (PostgreSQL only:
/// the orchestrator hears of them through LISTEN/NOTIFY), not by the orchestrator itself.
async fn pickup_latency(
    source: &Source,
    samples: usize,
    remote: bool,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let (backend, other) = source.fresh_pair(3, true, remote).await?;
    let orch = Orchestrator::builder(backend)
        .config(config(8))
        .engine(
            "probe",
            processor_fn(move |_, _| {
                tx.send(Instant::now()).ok();
                async { Ok(serde_json::Value::Null) }
            }),
        )
        .build()
        .await?;
    // Warm up the connections.
    for _ in 0..20 {
        let task = orch.dispatch(TaskSpec::new("probe")).await?;
        orch.wait_for(task.id, Duration::from_secs(30)).await?;
        rx.recv().await;
    }
    let mut latencies = Vec::with_capacity(samples);
    let mut dispatch_latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let before = Instant::now();
        match &other {
            Some(client) => {
                client
                    .create_tasks(vec![TaskSpec::new("probe").into_new_task()?])
                    .await?;
            }
            None => {
                orch.dispatch(TaskSpec::new("probe")).await?;
            }
        }
        let dispatched = before.elapsed();
        let at = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .context("a task was not picked up within 30 s")?
            .context("engine gone")?;
        latencies.push(at.duration_since(before).as_secs_f64() * 1e3);
        dispatch_latencies.push(dispatched.as_secs_f64() * 1e3);
    }
    orch.shutdown(Duration::from_secs(5)).await;
    latencies.sort_by(f64::total_cmp);
    dispatch_latencies.sort_by(f64::total_cmp);
    Ok((latencies, dispatch_latencies))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn source(kind: &str) -> anyhow::Result<Source> {
    if kind == "sqlite" {
        return Ok(Source::Sqlite(tempfile::tempdir()?));
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = parse_args()?;
    IN_FLIGHT
        .set((settings.claims_in_flight, settings.reports_in_flight))
        .ok();
    println!(
        "storage-bench: {} tasks end to end, concurrency {}, batches of {}, {} latency samples, \
         {} CPUs",
        settings.tasks,
        settings.concurrency,
        settings.batch,
        settings.samples,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    for kind in &settings.backends {
        let source = source(kind).await?;
        println!("{kind}:");
        if settings.runs("single") {
            let single = dispatch_single(&source, settings.tasks.min(5_000)).await?;
            println!("  dispatch, single (1 task per call)    {single:>10.0} tasks/s");
        }
        if settings.runs("batched") {
            let batched = dispatch_batched(&source, settings.tasks, settings.batch).await?;
            println!(
                "  dispatch, batched ({} per call)     {batched:>10.0} tasks/s",
                settings.batch
            );
        }
        let mut e2e_runs = Vec::new();
        if settings.runs("e2e") {
            e2e_runs.push(true);
        }
        if *kind == "postgres" && settings.runs("relaxed") {
            e2e_runs.push(false);
        }
        for durable in e2e_runs {
            let (e2e, cpu_us, server_us) = end_to_end(
                &source,
                settings.tasks,
                settings.concurrency,
                settings.batch,
                durable,
            )
            .await?;
            let label = if durable {
                format!("end to end ({} attempts at once)", settings.concurrency)
            } else {
                "end to end, worker commits not durable".to_owned()
            };
            let server = if *kind == "postgres" {
                format!(", {server_us:.0} us in postgres")
            } else {
                String::new()
            };
            println!(
                "  {label:<38}{e2e:>10.0} tasks/s  (CPU/task: {cpu_us:.0} us in this process{server})"
            );
        }
        if settings.runs("pickup") {
            let remote = if *kind == "postgres" {
                &[false, true][..]
            } else {
                &[false][..]
            };
            for &remote in remote {
                let (latencies, dispatch) =
                    pickup_latency(&source, settings.samples, remote).await?;
                let label = if remote {
                    "pickup, dispatched by another client"
                } else {
                    "pickup latency, idle queue"
                };
                println!(
                    "  {label:<38}p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  \
                     (the dispatch call alone: p50 {:.2} ms)",
                    percentile(&latencies, 0.50),
                    percentile(&latencies, 0.95),
                    percentile(&latencies, 0.99),
                    percentile(&dispatch, 0.50),
                );
            }
        }
    }
    Ok(())
}
