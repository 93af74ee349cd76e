//! The monitor's own cost: what one pass takes (the orchestrator's readings from the backend
//! and its engines, a sampler's machine readings, the default rules and EWMA baselines over
//! them, the healing checks), and the CPU time of an orchestrator whose monitor passes every
//! second against the same orchestrator without a monitor.
//!
//! ```sh
//! cargo bench --bench monitor -- [--backend memory|sqlite|postgres|all] [--engines 8] \
//!     [--queued 1000] [--finished 20000] [--passes 2000] [--seconds 30]
//! ```
//!
//! PostgreSQL: a fresh database on the server of `ORCH_BENCH_DATABASE_URL`, or on a
//! throwaway server started here from `initdb`/`pg_ctl` (on PATH or in
//! `/usr/lib/postgresql/*/bin`); the CPU time of that server's processes (the postmaster and
//! its children, not other servers on the machine) is counted beside this process's.
//!
//! The store holds `--finished` finished tasks (run through `--engines` registered no-op
//! engines, so each has calls in its rate window) and `--queued` queued ones spread over as
//! many engines no node serves. The machine's readings come from orchd's own `sysinfo`
//! sampler (CPU, memory, disk, network), as the daemon runs it.
//!
//! Runs with mimalloc as the global allocator, as `orchd` does (see BENCHMARKS.md).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(
    dead_code,
    unreachable_pub,
    reason = "orch-storage's tests' PostgreSQL helper, of which the bench uses only the private server"
)]
#[path = "../orch-storage/tests/support/postgres.rs"]
mod pg;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use orch::monitor::MonitorConfig;
use orch::{Healing, MemoryBackend, Orchestrator, OrchestratorConfig, SharedBackend, TaskSpec};
use orch_storage::{PostgresBackend, SqliteBackend};

use support::args::Flags;
use support::cpu::process_cpu_time;
use support::percentile;

struct Settings {
    backends: Vec<&'static str>,
    engines: usize,
    queued: usize,
    finished: usize,
    passes: usize,
    seconds: u64,
}

fn settings() -> anyhow::Result<Settings> {
    let mut settings = Settings {
        backends: vec!["memory", "sqlite"],
        engines: 8,
        queued: 1000,
        finished: 20_000,
        passes: 2000,
        seconds: 30,
    };
    let mut flags = Flags::from_env();
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--backend" => {
                settings.backends = match flags.value::<String>(&flag)?.as_str() {
                    "memory" => vec!["memory"],
                    "sqlite" => vec!["sqlite"],
                    "postgres" => vec!["postgres"],
                    "all" => vec!["memory", "sqlite", "postgres"],
                    other => bail!("unknown backend {other:?}"),
                }
            }
            "--engines" => settings.engines = flags.value(&flag)?,
            "--queued" => settings.queued = flags.value(&flag)?,
            "--finished" => settings.finished = flags.value(&flag)?,
            "--passes" => settings.passes = flags.value(&flag)?,
            "--seconds" => settings.seconds = flags.value(&flag)?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(settings)
}

/// Where fresh backends come from.
enum Source {
    Memory,
    Sqlite(tempfile::TempDir),
    Postgres {
        admin_url: String,
        /// The server's postmaster: its processes are its children.
        postmaster: Option<u32>,
        /// Keeps the throwaway server alive (stopped on drop).
        _server: Option<pg::PrivateServer>,
    },
}

/// The postmaster's pid of the server at `url`, from its data directory (`None` when the
/// server runs elsewhere).
async fn postmaster(url: &str) -> anyhow::Result<Option<u32>> {
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
    let data: String = sqlx::query_scalar("SHOW data_directory")
        .fetch_one(&mut admin)
        .await?;
    Ok(
        std::fs::read_to_string(std::path::Path::new(&data).join("postmaster.pid"))
            .ok()
            .and_then(|pid| pid.lines().next()?.trim().parse().ok()),
    )
}

/// User + system CPU time of process `root` and its children (a PostgreSQL server's backends,
/// and not those of other servers on the machine). Zero without `/proc`.
fn cpu_of_tree(root: u32) -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    let ticks: u64 = entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // After the name in brackets: state, ppid, ..., utime (12th), stime (13th).
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ppid: u32 = fields.get(1)?.parse().ok()?;
            if pid != root && ppid != root {
                return None;
            }
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

impl Source {
    async fn new(name: &str) -> anyhow::Result<Source> {
        Ok(match name {
            "memory" => Source::Memory,
            "sqlite" => Source::Sqlite(tempfile::tempdir()?),
            _ => match std::env::var("ORCH_BENCH_DATABASE_URL") {
                Ok(url) => Source::Postgres {
                    postmaster: postmaster(&url).await?,
                    admin_url: url,
                    _server: None,
                },
                Err(_) => {
                    let server = tokio::task::spawn_blocking(|| pg::private_server(&[]))
                        .await??
                        .context("no PostgreSQL: put initdb/pg_ctl on PATH or set ORCH_BENCH_DATABASE_URL")?;
                    Source::Postgres {
                        postmaster: postmaster(&server.admin_url).await?,
                        admin_url: server.admin_url.clone(),
                        _server: Some(server),
                    }
                }
            },
        })
    }

    /// A fresh, empty backend.
    async fn fresh(&self) -> anyhow::Result<SharedBackend> {
        let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
        Ok(match self {
            Source::Memory => Arc::new(MemoryBackend::new()),
            Source::Sqlite(dir) => {
                let path = dir.path().join(format!("{name}.db"));
                Arc::new(SqliteBackend::open(path.to_str().context("utf-8")?).await?)
            }
            Source::Postgres { admin_url, .. } => {
                let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(admin_url)
                    .await
                    .context("connecting to PostgreSQL")?;
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await?;
                let (base, _) = admin_url.rsplit_once('/').context("url without database")?;
                Arc::new(PostgresBackend::connect(&format!("{base}/{name}")).await?)
            }
        })
    }

    /// CPU time of the database server's processes alive now (zero in process).
    fn server_cpu(&self) -> Duration {
        match self {
            Source::Postgres {
                postmaster: Some(pid),
                ..
            } => cpu_of_tree(*pid),
            _ => Duration::ZERO,
        }
    }
}

/// The daemon's machine sampler (`sysinfo`: CPU, memory, the disk of the data directory,
/// network), as orchd runs it.
fn machine() -> impl orch::monitor::Sampler {
    orchd::machine::MachineSampler::new(std::env::temp_dir())
}

/// An orchestrator over `backend` with the store filled, the monitor on or off.
async fn orchestrator(
    backend: SharedBackend,
    settings: &Settings,
    monitor: bool,
) -> anyhow::Result<Orchestrator> {
    let mut config = OrchestratorConfig::default()
        .with_healing(Healing::default().with_enabled(true))
        .with_retention(None);
    if monitor {
        config = config.with_monitor(Some(MonitorConfig::default()));
    }
    let mut builder = Orchestrator::builder(backend)
        .config(config)
        .sampler(machine());
    for engine in 0..settings.engines {
        builder = builder.engine(
            format!("engine-{engine}"),
            orch::processor_fn(|_ctx, input| async move { Ok(input) }),
        );
    }
    Ok(builder.build().await?)
}

async fn fill(orch: &Orchestrator, settings: &Settings) -> anyhow::Result<()> {
    let engines = settings.engines.max(1);
    for chunk in (0..settings.finished).collect::<Vec<_>>().chunks(1000) {
        let specs = chunk
            .iter()
            .map(|i| TaskSpec::new(format!("engine-{}", i % engines)))
            .collect();
        let created = orch.dispatch_many(specs).await?;
        for task in created {
            orch.wait_for(task.task.id, Duration::from_secs(60)).await?;
        }
    }
    let specs = (0..settings.queued)
        .map(|i| TaskSpec::new(format!("backlog-{}", i % engines)).priority((i % 3) as i32))
        .collect();
    orch.dispatch_many(specs).await?;
    Ok(())
}

async fn run(name: &'static str, settings: &Settings) -> anyhow::Result<()> {
    let source = Source::new(name).await?;
    // One pass, timed.
    let orch = orchestrator(source.fresh().await?, settings, true).await?;
    fill(&orch, settings).await?;
    let monitor = orch.monitor().expect("configured").clone();
    for _ in 0..50 {
        monitor.check_now().await?;
    }
    let mut passes = Vec::with_capacity(settings.passes);
    let server_before = source.server_cpu();
    let cpu_before = process_cpu_time();
    let started = Instant::now();
    for _ in 0..settings.passes {
        let pass = Instant::now();
        let readings = monitor.check_now().await?;
        passes.push(pass.elapsed());
        std::hint::black_box(readings);
    }
    let wall = started.elapsed();
    let cpu = process_cpu_time() - cpu_before;
    let server = source.server_cpu().saturating_sub(server_before);
    passes.sort();
    let readings = monitor.readings().values.len();
    println!(
        "{name}: one pass ({readings} readings, {} rules + EWMA): mean {:.0} µs, p50 {:.0} µs, p99 {:.0} µs; CPU {:.0} µs a pass here, {:.0} µs in the database server",
        monitor.config().rules.len(),
        wall.as_secs_f64() * 1e6 / settings.passes as f64,
        percentile(&passes, 0.5).unwrap_or_default().as_secs_f64() * 1e6,
        percentile(&passes, 0.99).unwrap_or_default().as_secs_f64() * 1e6,
        cpu.as_secs_f64() * 1e6 / settings.passes as f64,
        server.as_secs_f64() * 1e6 / settings.passes as f64,
    );
    // The backend calls a pass makes, each on its own.
    let store = orch.backend().clone();
    let mut calls = Vec::new();
    macro_rules! time_call {
        ($name:expr, $call:expr) => {{
            let before = process_cpu_time();
            let started = Instant::now();
            for _ in 0..200 {
                std::hint::black_box($call.await?);
            }
            calls.push(format!(
                "{} {:.0} µs ({:.0} µs CPU)",
                $name,
                started.elapsed().as_secs_f64() * 1e6 / 200.0,
                (process_cpu_time() - before).as_secs_f64() * 1e6 / 200.0
            ));
        }};
    }
    time_call!("count_tasks", store.count_tasks());
    time_call!("queue_depth", store.queue_depth());
    time_call!("list_lock_waiters", store.list_lock_waiters());
    time_call!("list_locks", store.list_locks());
    time_call!("list (pauses)", store.list("orch/paused/"));
    println!("{name}: per call: {}", calls.join(", "));
    orch.shutdown(Duration::from_secs(5)).await;

    // An idle orchestrator for `seconds`, with and without its monitor passing every second.
    let mut cpu = [Duration::ZERO; 2];
    for (slot, with_monitor) in [(0, false), (1, true)] {
        let orch = orchestrator(source.fresh().await?, settings, with_monitor).await?;
        fill(&orch, settings).await?;
        let server = source.server_cpu();
        let before = process_cpu_time();
        tokio::time::sleep(Duration::from_secs(settings.seconds)).await;
        cpu[slot] = process_cpu_time() - before + source.server_cpu().saturating_sub(server);
        orch.shutdown(Duration::from_secs(5)).await;
    }
    let seconds = settings.seconds as f64;
    println!(
        "{name}: idle for {} s: CPU {:.0} ms without the monitor, {:.0} ms with it passing every second (this process and the database server): {:.3}% of one core",
        settings.seconds,
        cpu[0].as_secs_f64() * 1e3,
        cpu[1].as_secs_f64() * 1e3,
        (cpu[1].as_secs_f64() - cpu[0].as_secs_f64()) / seconds * 100.0,
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let settings = settings()?;
    let runtime = support::runtime(2);
    runtime.block_on(async {
        for name in settings.backends.clone() {
            run(name, &settings).await?;
        }
        Ok(())
    })
}
