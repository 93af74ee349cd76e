//! Throughput and latency of the durable backends, through a real `Orchestrator`.
//!
//! ```sh
//! cargo bench --bench storage -- [--backend sqlite|postgres|all] [--tasks 50000] \
//!     [--concurrency 64] [--batch 1000] [--samples 500] [--rounds 3] \
//!     [--only single,batched,e2e,relaxed,pickup,idle,workflow,method] [--claims-in-flight N] \
//!     [--reports-in-flight N]
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
//! - a workflow against the flat rate (`workflow`, not among the defaults): A, the end-to-end
//!   drain of 10,000 tasks (as `e2e`); B, one workflow of 10,000 no-op tasks in 100 layers of
//!   100, each task of a layer waiting for two of the layer before (the one at its place and
//!   the next), dispatched in one call, the clock stopping when the workflow has ended; A and
//!   B alternate for `--rounds` rounds on fresh databases of one server, with `--concurrency`
//!   attempts at once.
//! - the method other queues were measured with (`method`, not among the defaults; run it
//!   with `--tasks 20000 --concurrency 10 --samples 200`): a producer of its own (an
//!   orchestrator with no engines, over a second backend on the database) enqueues the tasks
//!   one call each; an orchestrator drains them; the producer enqueues them again in calls of
//!   `--batch`; they are drained again; last, the pickup latency of tasks the producer
//!   dispatches one at a time onto the idle queue. Each drain's clock runs from the
//!   orchestrator's build to its last outcome recorded.
//! - the queue beside long transactions on PostgreSQL (`horizon`, not among the defaults; run
//!   it with `--concurrency 32`): a producer offers `--offered` tasks a second while
//!   REPEATABLE READ readers, then an idle transaction, hold the MVCC horizon back for
//!   `--phase-secs` each (see `storage/horizon.rs`); `steady`, the same producer and ten
//!   minutes with nothing beside (offer more than the queue takes: its top rate, minute by
//!   minute).

#[allow(
    dead_code,
    unreachable_pub,
    reason = "orch-storage's tests' PostgreSQL helper, of which the bench uses only the private server"
)]
#[path = "../orch-storage/tests/support/postgres.rs"]
mod pg;
mod support;

#[path = "storage/horizon.rs"]
mod horizon;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use orch::{
    Orchestrator, OrchestratorConfig, SharedBackend, TaskSpec, Tuning, Workflow, processor_fn,
};
use orch_storage::{PostgresBackend, PostgresOptions, SqliteBackend};

use support::args::Flags;
use support::drain::Drain;
use support::percentile;
use support::pickup::pickup_latency;

/// The measurements `--only` can name.
const MEASUREMENTS: [&str; 10] = [
    "single", "batched", "e2e", "relaxed", "pickup", "idle", "workflow", "method", "horizon",
    "steady",
];

/// How long the `idle` measurement watches an orchestrator with nothing to do.
const IDLE_FOR: Duration = Duration::from_secs(20);

/// Tasks per layer of the workflow measurement, and layers.
const WORKFLOW_WIDTH: usize = 100;
const WORKFLOW_LAYERS: usize = 100;

/// Command-line settings.
struct Settings {
    backends: Vec<&'static str>,
    tasks: usize,
    concurrency: usize,
    batch: usize,
    samples: usize,
    /// Rounds of the workflow measurement (A then B each).
    rounds: usize,
    /// `Tuning::claims_in_flight` and `reports_in_flight` (orch-core's defaults when `None`).
    claims_in_flight: Option<usize>,
    reports_in_flight: Option<usize>,
    /// Which measurements to run (all by default).
    only: Option<Vec<String>>,
    /// Tasks a second the producer offers in the `horizon` scenario, and each phase's length.
    offered: u64,
    phase_secs: u64,
    /// `PostgresOptions::slow_claim` (the default when `None`).
    slow_claim: Option<Duration>,
}

impl Settings {
    fn runs(&self, part: &str) -> bool {
        match &self.only {
            Some(only) => only.iter().any(|p| p == part),
            // The workflow comparison, the peers' method and the long transactions run only
            // when named.
            None => !["workflow", "method", "horizon", "steady"].contains(&part),
        }
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
        rounds: 3,
        claims_in_flight: None,
        reports_in_flight: None,
        only: None,
        offered: 800,
        phase_secs: 240,
        slow_claim: None,
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
            "--rounds" => settings.rounds = flags.value(&flag)?,
            "--offered" => settings.offered = flags.value(&flag)?,
            "--phase-secs" => settings.phase_secs = flags.value(&flag)?,
            "--slow-claim-ms" => {
                settings.slow_claim = Some(Duration::from_millis(flags.value(&flag)?));
            }
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
                     [--concurrency N] [--batch N] [--samples N] [--rounds N] \
                     [--only single,batched,e2e,relaxed,pickup,idle,workflow,method,horizon,steady] \
                     [--claims-in-flight N] [--reports-in-flight N] [--offered N] \
                     [--phase-secs N] [--slow-claim-ms N]"
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
        /// `PostgresOptions::slow_claim` of its backends (the default when `None`).
        slow_claim: Option<Duration>,
        /// Keeps the throwaway server alive (stopped on drop).
        _server: Option<pg::PrivateServer>,
    },
}

impl Source {
    async fn new(kind: &str, slow_claim: Option<Duration>) -> anyhow::Result<Source> {
        if kind == "sqlite" {
            return Ok(Source::Sqlite(tempfile::tempdir()?, AtomicUsize::new(0)));
        }
        if let Ok(url) = std::env::var("ORCH_BENCH_DATABASE_URL") {
            return Ok(Source::Postgres {
                admin_url: url,
                slow_claim,
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
            slow_claim,
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
            Source::Postgres { .. } => {
                let (first, other, _) = self.fresh_postgres(durable, second).await?;
                (first, other)
            }
        })
    }

    /// On PostgreSQL: a fresh database's backend, another one with `second`, and its URL.
    async fn fresh_postgres(
        &self,
        durable: bool,
        second: bool,
    ) -> anyhow::Result<(SharedBackend, Option<SharedBackend>, String)> {
        Ok(match self {
            Source::Sqlite(..) => bail!("a PostgreSQL measurement on SQLite"),
            Source::Postgres {
                admin_url,
                slow_claim,
                ..
            } => {
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
                let options = match *slow_claim {
                    Some(slow) => options.with_slow_claim(slow),
                    None => options,
                };
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
                (first, other, url)
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

/// The workflow of the `workflow` measurement: [`WORKFLOW_LAYERS`] layers of
/// [`WORKFLOW_WIDTH`] no-op tasks, each waiting for two tasks of the layer before.
fn layered_workflow() -> Workflow {
    let mut flow = Workflow::new();
    let mut previous: Vec<orch::Step> = Vec::new();
    for _ in 0..WORKFLOW_LAYERS {
        let layer: Vec<orch::Step> = (0..WORKFLOW_WIDTH)
            .map(|i| {
                let mut spec = TaskSpec::new(support::drain::ENGINE);
                if !previous.is_empty() {
                    spec = spec
                        .after(previous[i])
                        .after(previous[(i + 1) % WORKFLOW_WIDTH]);
                }
                flow.add(spec)
            })
            .collect();
        previous = layer;
    }
    flow
}

/// One workflow run: an orchestrator with the no-op engine, the workflow dispatched in one
/// call, the clock stopped when it has ended. Returns tasks/s and this process's and the
/// server's CPU time per task in microseconds.
async fn run_workflow(
    backend: SharedBackend,
    settings: &Settings,
) -> anyhow::Result<(f64, f64, f64)> {
    let orch = Orchestrator::builder(backend)
        .config(settings.config(settings.concurrency))
        .engine(
            support::drain::ENGINE,
            processor_fn(|_ctx, _input| std::future::ready(Ok(serde_json::Value::Null))),
        )
        .build()
        .await?;
    let flow = layered_workflow();
    let tasks = flow.len();
    let server_before = support::cpu::cpu_time_of("postgres");
    let own_before = support::cpu::process_cpu_time();
    let start = Instant::now();
    let created = orch.dispatch_workflow(flow).await?;
    let dispatched = start.elapsed();
    let done = orch
        .wait_for_workflow(created.workflow.id, Duration::from_secs(600))
        .await?;
    let elapsed = start.elapsed();
    let server = support::cpu::cpu_time_of("postgres").saturating_sub(server_before);
    let own = support::cpu::process_cpu_time().saturating_sub(own_before);
    orch.shutdown(Duration::from_secs(5)).await;
    if done.status != orch::WorkflowStatus::Succeeded {
        bail!("the workflow ended {}", done.status);
    }
    println!(
        "    the workflow's dispatch (one call) took {:.0} ms of {:.0} ms",
        dispatched.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e3
    );
    Ok((
        rate(tasks, elapsed),
        own.as_secs_f64() * 1e6 / tasks as f64,
        server.as_secs_f64() * 1e6 / tasks as f64,
    ))
}

/// Drains `n` stored tasks with an orchestrator of `settings.concurrency` attempts at once:
/// tasks/s from its build to the last outcome recorded.
async fn drain_stored(
    backend: SharedBackend,
    settings: &Settings,
    n: usize,
) -> anyhow::Result<f64> {
    let ran = Arc::new(AtomicUsize::new(0));
    let all_ran = Arc::new(tokio::sync::Notify::new());
    let (count, done) = (ran.clone(), all_ran.clone());
    let start = Instant::now();
    let orch = Orchestrator::builder(backend)
        .config(settings.config(settings.concurrency))
        .engine(
            support::drain::ENGINE,
            processor_fn(move |_ctx, _input| {
                if count.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    done.notify_one();
                }
                std::future::ready(Ok(serde_json::Value::Null))
            }),
        )
        .build()
        .await?;
    tokio::time::timeout(Duration::from_secs(600), all_ran.notified())
        .await
        .context("the drain did not finish in 10 minutes")?;
    // The last outcomes are recorded within milliseconds.
    while orch.running_count() > 0 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = start.elapsed();
    orch.shutdown(Duration::from_secs(5)).await;
    let ran = ran.load(Ordering::Relaxed);
    if ran != n {
        bail!("{ran} attempts ran for {n} tasks");
    }
    Ok(rate(n, elapsed))
}

/// The method the peers were measured with (see BENCHMARKS.md): a producer of its own (an
/// orchestrator with no engines over a second backend on the database) enqueues `--tasks` one
/// call each, an orchestrator of `--concurrency` attempts at once drains them, the producer
/// enqueues them again in calls of `--batch`, they are drained again, and last the pickup of
/// tasks the producer dispatches one at a time onto the idle queue.
async fn peers_method(source: &Source, settings: &Settings) -> anyhow::Result<()> {
    let n = settings.tasks;
    let (worker, producer) = source.fresh_pair(true, true).await?;
    let producer = producer.context("no second backend")?;
    let client = Orchestrator::builder(producer.clone())
        .config(settings.config(1))
        .build()
        .await?;
    let start = Instant::now();
    for _ in 0..n {
        client
            .dispatch(TaskSpec::new(support::drain::ENGINE))
            .await?;
    }
    let single = rate(n, start.elapsed());
    let drained_single = drain_stored(worker.clone(), settings, n).await?;
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let size = left.min(settings.batch);
        let specs = (0..size)
            .map(|_| TaskSpec::new(support::drain::ENGINE))
            .collect();
        client.dispatch_many(specs).await?;
        left -= size;
    }
    let batched = rate(n, start.elapsed());
    let drained_batched = drain_stored(worker.clone(), settings, n).await?;
    client.shutdown(Duration::from_secs(5)).await;
    let pickup = pickup_latency(
        worker,
        Some(producer),
        settings.config(settings.concurrency),
        settings.samples,
    )
    .await?;
    let at = |sorted: &[f64], q| percentile(sorted, q).unwrap_or(f64::NAN);
    println!(
        "  the peers' method, {n} tasks, {} at once: single enqueue {single:.0}/s, drain \
         {drained_single:.0}/s, batch enqueue ({} per call) {batched:.0}/s, drain \
         {drained_batched:.0}/s, pickup from another client p50 {:.2} ms p95 {:.2} ms",
        settings.concurrency,
        settings.batch,
        at(&pickup.pickup_ms, 0.50),
        at(&pickup.pickup_ms, 0.95),
    );
    Ok(())
}

/// A (the flat end-to-end rate) and B (the layered workflow), alternating.
async fn workflow_against_flat(source: &Source, settings: &Settings) -> anyhow::Result<()> {
    let tasks = WORKFLOW_WIDTH * WORKFLOW_LAYERS;
    let (mut flat, mut layered) = (Vec::new(), Vec::new());
    for round in 1..=settings.rounds {
        let report = Drain::new(tasks as u64, settings.config(settings.concurrency))
            .with_batch(settings.batch as u64)
            .with_server_process("postgres")
            .run(source.fresh(true).await?)
            .await?;
        flat.push(report.tasks_per_second());
        let (rate, own_us, server_us) = run_workflow(source.fresh(true).await?, settings).await?;
        layered.push(rate);
        println!(
            "  round {round}: A flat {:>8.0} tasks/s ({:.0} us here + {:.0} us in postgres) | \
             B workflow {rate:>8.0} tasks/s ({own_us:.0} us here + {server_us:.0} us in \
             postgres) | B/A {:.2}",
            report.tasks_per_second(),
            report.cpu_us_per_task(),
            report.server_cpu_us_per_task(),
            rate / report.tasks_per_second()
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "  {tasks} tasks, {} rounds: flat {:.0} tasks/s, workflow {:.0} tasks/s, ratio {:.2}",
        settings.rounds,
        mean(&flat),
        mean(&layered),
        mean(&layered) / mean(&flat)
    );
    Ok(())
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
        let source = Source::new(kind, settings.slow_claim).await?;
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
        if postgres && settings.runs("workflow") {
            workflow_against_flat(&source, &settings).await?;
        }
        if settings.runs("method") {
            peers_method(&source, &settings).await?;
        }
        for (part, plan) in [
            ("horizon", horizon::Plan::LongTransactions),
            ("steady", horizon::Plan::Steady),
        ] {
            if postgres && settings.runs(part) {
                let (worker, producer, url) = source.fresh_postgres(true, true).await?;
                horizon::run(
                    worker,
                    producer.context("no second backend")?,
                    &url,
                    settings.config(settings.concurrency),
                    settings.offered,
                    Duration::from_secs(settings.phase_secs),
                    plan,
                )
                .await?;
            }
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
