//! The queue beside transactions that hold PostgreSQL's MVCC horizon back (`--only horizon`).
//!
//! A producer of its own dispatches `--offered` tasks a second (a `dispatch_many` every 10 ms,
//! holding back while 10,000 wait) while an orchestrator of `--concurrency` attempts at once
//! runs them with a no-op engine.
//! Phases on one database, those with something beside the queue of `--phase-secs` each,
//! the others of at most a minute:
//! 1. clean: nothing else runs;
//! 2. readers: four REPEATABLE READ transactions on the same database, opened a quarter of a
//!    minute apart (each takes its snapshot with a read of `orch_tasks`) and held to the end of
//!    the phase, so they overlap and the oldest snapshot is as old as the phase;
//! 3. recovery: nothing else runs;
//! 4. idle in transaction: one transaction takes a transaction id and then waits, idle, to the
//!    end of the phase.
//!
//! For each phase: the attempts started a second over the phase (the engine's calls; their
//! outcomes are recorded in batches right after) against the first phase's, the slowest
//! 10-second window against the first phase's rate, and the deepest queue (dispatched but not
//! yet started) seen at any second. Dead row versions of `orch_tasks` at the end of each phase
//! come from `pg_stat_user_tables`; the CPU of the machine's `postgres` processes alive at
//! the phase's end (one that exited within it, an autovacuum worker say, is not counted).
//!
//! `--only steady` runs ten phases of a minute with nothing beside the queue instead: offered
//! more than it takes, the queue runs at its top rate, and each minute is set against the
//! first (the rate between vacuums).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use orch::{Orchestrator, OrchestratorConfig, SharedBackend, TaskSpec, processor_fn};
use sqlx::Connection as _;

/// Most tasks dispatched and not yet started: the producer holds back beyond (a queue that
/// cannot keep up shows as a deepest queue of about this many, and a rate below the offer).
const MAX_WAITING: u64 = 10_000;

/// What one phase holds open beside the queue.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Beside {
    Nothing,
    Readers,
    IdleTransaction,
}

/// One phase's figures.
struct Phase {
    name: String,
    /// Completions a second in each second of the phase.
    per_second: Vec<u64>,
    /// The deepest queue seen at a second's end.
    deepest: u64,
    /// Dead row versions of `orch_tasks` at the phase's end.
    dead: i64,
    /// CPU time of the machine's `postgres` processes over the phase.
    server_cpu: Duration,
}

impl Phase {
    /// Attempts started over the phase.
    fn started(&self) -> u64 {
        self.per_second.iter().sum()
    }

    fn rate(&self) -> f64 {
        self.started() as f64 / self.per_second.len().max(1) as f64
    }

    /// The slowest 10-second window's rate.
    fn slowest_window(&self) -> f64 {
        self.per_second
            .windows(10)
            .map(|w| w.iter().sum::<u64>() as f64 / 10.0)
            .fold(f64::INFINITY, f64::min)
    }
}

/// Which phases [`run`] goes through.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Clean, readers, recovery, idle transaction (see the module's documentation).
    LongTransactions,
    /// Ten phases of a minute with nothing beside the queue: whether the rate holds between
    /// vacuums (offer more than the queue takes to measure its top rate).
    Steady,
}

/// Runs the phases on the database at `url` (the backends' own), printing one line per phase.
pub(crate) async fn run(
    worker: SharedBackend,
    producer: SharedBackend,
    url: &str,
    config: OrchestratorConfig,
    offered: u64,
    phase: Duration,
    plan: Plan,
) -> anyhow::Result<()> {
    let started = Arc::new(AtomicU64::new(0));
    let dispatched = Arc::new(AtomicU64::new(0));
    let count = started.clone();
    let orch = Orchestrator::builder(worker)
        .config(config)
        .engine(
            crate::support::drain::ENGINE,
            processor_fn(move |_ctx, _input| {
                count.fetch_add(1, Ordering::Relaxed);
                std::future::ready(Ok(serde_json::Value::Null))
            }),
        )
        .build()
        .await?;
    let client = Orchestrator::builder(producer)
        .config(OrchestratorConfig::default().with_retention(None))
        .build()
        .await?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let producing = {
        let (dispatched, stop, started) = (dispatched.clone(), stop.clone(), started.clone());
        tokio::spawn(async move {
            // A tick every 10 ms, each dispatching what is owed by then.
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let start = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = stop.notified() => return Ok::<(), anyhow::Error>(()),
                    _ = tick.tick() => {}
                }
                let owed = (start.elapsed().as_secs_f64() * offered as f64) as u64;
                let sent = dispatched.load(Ordering::Relaxed);
                let waiting = sent.saturating_sub(started.load(Ordering::Relaxed));
                let due = owed
                    .saturating_sub(sent)
                    .min(MAX_WAITING.saturating_sub(waiting));
                if due == 0 {
                    continue;
                }
                let specs = (0..due)
                    .map(|_| TaskSpec::new(crate::support::drain::ENGINE))
                    .collect();
                client.dispatch_many(specs).await?;
                dispatched.fetch_add(due, Ordering::Relaxed);
            }
        })
    };
    let mut admin = sqlx::PgConnection::connect(url)
        .await
        .context("connecting to PostgreSQL")?;
    let mut phases = Vec::new();
    let phases_planned: Vec<(String, Beside)> = match plan {
        Plan::LongTransactions => vec![
            ("clean".to_owned(), Beside::Nothing),
            ("4 REPEATABLE READ readers".to_owned(), Beside::Readers),
            ("recovery".to_owned(), Beside::Nothing),
            ("1 idle transaction".to_owned(), Beside::IdleTransaction),
        ],
        Plan::Steady => (1..=10)
            .map(|minute| (format!("minute {minute}"), Beside::Nothing))
            .collect(),
    };
    for (name, beside) in phases_planned {
        let mut held = Vec::new();
        let mut per_second = Vec::new();
        let mut deepest = 0;
        let mut last = started.load(Ordering::Relaxed);
        let server_before = crate::support::cpu::cpu_time_of("postgres");
        // The phases with nothing beside the queue last a minute at most.
        let seconds = match beside {
            Beside::Nothing => phase.as_secs().clamp(10, 60),
            _ => phase.as_secs().max(10),
        };
        for second in 0..seconds {
            // Readers open a quarter of a minute apart; the idle transaction at once.
            let opens = match beside {
                Beside::Readers => second % 15 == 0 && held.len() < 4,
                Beside::IdleTransaction => second == 0,
                Beside::Nothing => false,
            };
            if opens {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                if beside == Beside::Readers {
                    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
                        .execute(&mut conn)
                        .await?;
                    sqlx::query("SELECT count(*) FROM orch_tasks")
                        .execute(&mut conn)
                        .await?;
                } else {
                    sqlx::query("BEGIN").execute(&mut conn).await?;
                    sqlx::query("SELECT txid_current()")
                        .execute(&mut conn)
                        .await?;
                }
                held.push(conn);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = started.load(Ordering::Relaxed);
            per_second.push(now - last);
            last = now;
            deepest = deepest.max(dispatched.load(Ordering::Relaxed).saturating_sub(now));
        }
        let server_cpu = crate::support::cpu::cpu_time_of("postgres").saturating_sub(server_before);
        for mut conn in held {
            sqlx::query("ROLLBACK").execute(&mut conn).await?;
        }
        let dead: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(n_dead_tup), 0)::int8 FROM pg_stat_user_tables \
             WHERE relname = 'orch_tasks'",
        )
        .fetch_one(&mut admin)
        .await?;
        phases.push(Phase {
            name,
            per_second,
            deepest,
            dead,
            server_cpu,
        });
        let phase = phases.last().expect("just pushed");
        let first = phases[0].rate().max(1.0);
        let label = match plan {
            Plan::LongTransactions => "beside long transactions",
            Plan::Steady => "steady",
        };
        println!(
            "  {label}, {offered}/s offered, phase {:<26} {:>6.0}/s ({:>3.0}% of the first), \
             slowest 10 s {:>6.0}/s ({:>3.0}%), deepest queue {:>6}, dead rows {}, PostgreSQL \
             {:.0} us CPU/task",
            phase.name,
            phase.rate(),
            100.0 * phase.rate() / first,
            phase.slowest_window(),
            100.0 * phase.slowest_window() / first,
            phase.deepest,
            phase.dead,
            phase.server_cpu.as_secs_f64() * 1e6 / phase.started().max(1) as f64,
        );
    }
    stop.notify_one();
    producing.await??;
    orch.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
