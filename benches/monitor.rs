//! The monitor's own cost: what one pass takes (the orchestrator's readings from the backend
//! and its engines, a sampler's machine readings, the default rules and EWMA baselines over
//! them, the healing checks), and the CPU time of an orchestrator whose monitor passes every
//! second against the same orchestrator without a monitor.
//!
//! ```sh
//! cargo bench --bench monitor -- [--backend memory|sqlite|all] [--engines 8] \
//!     [--queued 1000] [--finished 20000] [--passes 2000] [--seconds 30]
//! ```
//!
//! The store holds `--finished` finished tasks (run through `--engines` registered no-op
//! engines, so each has calls in its rate window) and `--queued` queued ones spread over as
//! many engines no node serves. The machine's readings come from a sampler returning fixed
//! values (CPU, memory, disk, network: the daemon's `sysinfo` sampler is not measured here).
//!
//! Runs with mimalloc as the global allocator, as `orchd` does (see BENCHMARKS.md).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use orch::monitor::{Metric, MonitorConfig, Reading, sampler_fn};
use orch::{Healing, MemoryBackend, Orchestrator, OrchestratorConfig, SharedBackend, TaskSpec};
use orch_storage::SqliteBackend;

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
                    "all" => vec!["memory", "sqlite"],
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

/// A fresh backend, and what must live as long as it.
async fn backend(name: &str) -> anyhow::Result<(SharedBackend, Option<tempfile::TempDir>)> {
    Ok(match name {
        "memory" => (Arc::new(MemoryBackend::new()), None),
        _ => {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("orch.db");
            let backend = SqliteBackend::open(path.to_str().unwrap_or_default()).await?;
            (Arc::new(backend), Some(dir))
        }
    })
}

/// Fixed machine readings, as a `sysinfo` sampler would give.
fn machine() -> impl orch::monitor::Sampler {
    sampler_fn(|| async {
        Ok(vec![
            Reading::new(Metric::CpuPercent, 23.0),
            Reading::new(Metric::MemoryPercent, 41.0),
            Reading::new(Metric::DiskPercent, 37.0),
            Reading::new(Metric::NetworkReceived, 125_000.0),
            Reading::new(Metric::NetworkSent, 98_000.0),
        ])
    })
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
    // One pass, timed.
    let (backend_on, _dir) = backend(name).await?;
    let orch = orchestrator(backend_on, settings, true).await?;
    fill(&orch, settings).await?;
    let monitor = orch.monitor().expect("configured").clone();
    for _ in 0..50 {
        monitor.check_now().await?;
    }
    let mut passes = Vec::with_capacity(settings.passes);
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
    passes.sort();
    let readings = monitor.readings().values.len();
    println!(
        "{name}: one pass ({readings} readings, {} rules + EWMA): mean {:.0} µs, p50 {:.0} µs, p99 {:.0} µs; CPU {:.0} µs a pass",
        monitor.config().rules.len(),
        wall.as_secs_f64() * 1e6 / settings.passes as f64,
        percentile(&passes, 0.5).unwrap_or_default().as_secs_f64() * 1e6,
        percentile(&passes, 0.99).unwrap_or_default().as_secs_f64() * 1e6,
        cpu.as_secs_f64() * 1e6 / settings.passes as f64,
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
        let (backend, _dir) = backend(name).await?;
        let orch = orchestrator(backend, settings, with_monitor).await?;
        fill(&orch, settings).await?;
        let before = process_cpu_time();
        tokio::time::sleep(Duration::from_secs(settings.seconds)).await;
        cpu[slot] = process_cpu_time() - before;
        orch.shutdown(Duration::from_secs(5)).await;
    }
    let seconds = settings.seconds as f64;
    println!(
        "{name}: idle for {} s: CPU {:.0} ms without the monitor, {:.0} ms with it passing every second: {:.3}% of one core",
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
