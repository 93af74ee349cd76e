//! The drain driver: how fast an orchestrator empties a queue that a producer keeps full.
//!
//! An orchestrator is built over the given backend with one engine, [`ENGINE`], that counts
//! its calls and does nothing else. A producer dispatches the tasks in batches
//! (`dispatch_many`) and keeps at most a bound of them outstanding (dispatched, engine not yet
//! called): sustained throughput, not the cost of a queue of millions. The clock starts before
//! the first dispatch and stops when the last outcome is recorded (the attempt leaves
//! [`Orchestrator::running_count`] once its outcome is stored). Every task takes the whole
//! path: validation and id, insert with its `task.queued` event, claim with a lease and
//! `task.started`, the attempt, the outcome with `task.succeeded`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use orch::{Orchestrator, OrchestratorConfig, SharedBackend, TaskSpec, Tuning, processor_fn};
use serde_json::Value;
use tokio::sync::Notify;

use super::cpu;

/// The name of the counting no-op engine.
pub(crate) const ENGINE: &str = "noop";

/// One drain run. [`Drain::new`] gives the settings every figure in BENCHMARKS.md was measured
/// with: batches of 1,000, at most 10,000 outstanding, 10 minutes at most.
#[derive(Debug, Clone)]
pub(crate) struct Drain {
    /// Tasks dispatched in all.
    pub(crate) tasks: u64,
    /// The orchestrator's settings (concurrency, tuning, retention).
    pub(crate) config: OrchestratorConfig,
    /// Tasks per `dispatch_many` call.
    pub(crate) batch: u64,
    /// Most tasks dispatched whose engine has not been called yet.
    pub(crate) outstanding: u64,
    /// Also measure the CPU time of the processes with this name (a database server's).
    pub(crate) server_process: Option<&'static str>,
    /// A run that takes longer fails.
    pub(crate) limit: Duration,
}

/// What a drain run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DrainReport {
    /// Tasks run.
    pub(crate) tasks: u64,
    /// From the first dispatch to the last outcome.
    pub(crate) wall: Duration,
    /// User + system CPU time of this process over `wall`.
    pub(crate) cpu: Duration,
    /// CPU time of the server processes over `wall` (those alive at the end), when asked for.
    pub(crate) server_cpu: Option<Duration>,
}

impl DrainReport {
    /// Tasks per second of wall time.
    pub(crate) fn tasks_per_second(&self) -> f64 {
        self.tasks as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Tasks per second of this process's CPU time.
    pub(crate) fn tasks_per_cpu_second(&self) -> f64 {
        self.tasks as f64 / self.cpu.as_secs_f64().max(1e-9)
    }

    /// Microseconds of this process's CPU time per task.
    pub(crate) fn cpu_us_per_task(&self) -> f64 {
        per_task_us(self.cpu, self.tasks)
    }

    /// Microseconds of the server's CPU time per task (0 when not measured).
    pub(crate) fn server_cpu_us_per_task(&self) -> f64 {
        per_task_us(self.server_cpu.unwrap_or_default(), self.tasks)
    }
}

fn per_task_us(time: Duration, tasks: u64) -> f64 {
    time.as_secs_f64() * 1e6 / tasks.max(1) as f64
}

/// The settings of the in-memory drain benches: `concurrency` attempts at once (globally and
/// for the engine), claims of at least 16 tasks.
pub(crate) fn memory_config(concurrency: usize) -> OrchestratorConfig {
    OrchestratorConfig::default()
        .with_global_concurrency(concurrency)
        .with_default_engine_concurrency(concurrency)
        .with_tuning(Tuning::default().with_claim_batch(concurrency.max(16)))
}

/// The engine's count, and the producer's and the clock's wake-ups.
struct Progress {
    called: AtomicU64,
    /// Raised every `step` calls: the producer may be waiting for room.
    step: u64,
    room: Notify,
    /// Raised by the last call.
    total: u64,
    all_called: Notify,
}

impl Progress {
    fn record(&self) {
        let called = self.called.fetch_add(1, Ordering::Relaxed) + 1;
        if called.is_multiple_of(self.step) {
            self.room.notify_one();
        }
        if called == self.total {
            self.all_called.notify_one();
        }
    }
}

impl Drain {
    /// `tasks` tasks on an orchestrator with `config`, with the default batch, bound and limit.
    pub(crate) fn new(tasks: u64, config: OrchestratorConfig) -> Self {
        Drain {
            tasks,
            config,
            batch: 1_000,
            outstanding: 10_000,
            server_process: None,
            limit: Duration::from_secs(600),
        }
    }

    /// Sets the tasks per `dispatch_many` call.
    pub(crate) fn with_batch(mut self, batch: u64) -> Self {
        self.batch = batch;
        self
    }

    /// Also measures the CPU time of the processes named `name`.
    pub(crate) fn with_server_process(mut self, name: &'static str) -> Self {
        self.server_process = Some(name);
        self
    }

    /// Builds the orchestrator over `backend`, drains, shuts it down.
    pub(crate) async fn run(&self, backend: SharedBackend) -> anyhow::Result<DrainReport> {
        let (tasks, batch) = (self.tasks.max(1), self.batch.max(1));
        let progress = Arc::new(Progress {
            called: AtomicU64::new(0),
            // A multiple of the batch: `dispatched` always is one while the producer waits, so
            // the count passes a step before it reaches `dispatched`.
            step: batch,
            room: Notify::new(),
            total: tasks,
            all_called: Notify::new(),
        });
        let engine = progress.clone();
        let orch = Orchestrator::builder(backend)
            .config(self.config.clone())
            .engine(
                ENGINE,
                processor_fn(move |_ctx, _input| {
                    engine.record();
                    std::future::ready(Ok(Value::Null))
                }),
            )
            .build()
            .await
            .context("building the orchestrator")?;
        let cpu_before = cpu::process_cpu_time();
        let server_before = self.server_process.map(cpu::cpu_time_of);
        let started = Instant::now();
        let drained = tokio::time::timeout(self.limit, async {
            let mut dispatched = 0;
            while dispatched < tasks {
                while dispatched - progress.called.load(Ordering::Relaxed) > self.outstanding {
                    progress.room.notified().await;
                }
                let size = (tasks - dispatched).min(batch);
                let specs = (0..size).map(|_| TaskSpec::new(ENGINE)).collect();
                orch.dispatch_many(specs).await?;
                dispatched += size;
            }
            progress.all_called.notified().await;
            // The last outcomes: in memory they are stored within microseconds, a database
            // takes milliseconds. Spin briefly, then poll every millisecond.
            let mut spins = 0;
            while orch.running_count() > 0 {
                if spins < 1_000 {
                    spins += 1;
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            anyhow::Ok(())
        })
        .await;
        let wall = started.elapsed();
        let cpu = cpu::process_cpu_time().saturating_sub(cpu_before);
        // Before shutdown, while a pool's server processes are still alive to be counted.
        let server_cpu = self
            .server_process
            .zip(server_before)
            .map(|(name, before)| cpu::cpu_time_of(name).saturating_sub(before));
        orch.shutdown(Duration::from_secs(5)).await;
        drained.with_context(|| format!("the drain did not finish within {:?}", self.limit))??;
        Ok(DrainReport {
            tasks,
            wall,
            cpu,
            server_cpu,
        })
    }
}
