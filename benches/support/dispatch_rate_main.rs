// The body of the `dispatch_rate` and `dispatch_rate_system` bench binaries (included by both;
// they differ only in the global allocator).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use orch::{MemoryBackend, Orchestrator, OrchestratorConfig, TaskSpec, processor_fn};
use serde_json::Value;
use tokio::sync::Notify;

/// Most tasks dispatched but not yet finished at any time.
const BACKLOG: u64 = 10_000;

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let concurrency: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(64);
    let count: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(500_000);
    // Worker threads of the runtime (default 2, the machine's cores; 0 for a current-thread
    // runtime); the producer runs on the main thread.
    let workers: usize = std::env::var("ORCH_BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);
    // 0 workers: a current-thread runtime (producer and orchestrator on one thread).
    let runtime = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .expect("runtime")
    };
    runtime.block_on(async {
        let done = Arc::new(AtomicU64::new(0));
        let all_done = Arc::new(Notify::new());
        let progress = Arc::new(Notify::new());
    let (d, n, p) = (done.clone(), all_done.clone(), progress.clone());
        let orch = Orchestrator::builder(Arc::new(MemoryBackend::new()))
            .config(
                OrchestratorConfig::default()
                    .with_global_concurrency(concurrency)
                    .with_default_engine_concurrency(concurrency)
                    .with_tuning(orch::Tuning::default().with_claim_batch(concurrency.max(16))),
            )
            .engine(
                "noop",
                processor_fn(move |_ctx, _input| {
                    let (d, n, p) = (d.clone(), n.clone(), p.clone());
                    async move {
                        let finished = d.fetch_add(1, Ordering::Relaxed) + 1;
                        if finished % 1000 == 0 {
                            p.notify_one();
                        }
                        if finished == count {
                            n.notify_one();
                        }
                        Ok(Value::Null)
                    }
                }),
            )
            .build()
            .await
            .expect("orchestrator");
        let cpu_before = cpu_time();
        let started = Instant::now();
        // The producer keeps at most BACKLOG tasks outstanding: sustained throughput, not the
        // cost of a queue of millions.
        let mut dispatched = 0;
        while dispatched < count {
            let batch = (count - dispatched).min(1000);
            while dispatched - done.load(Ordering::Relaxed) > BACKLOG {
                progress.notified().await;
            }
            orch.dispatch_many((0..batch).map(|_| TaskSpec::new("noop")).collect())
                .await
                .expect("dispatch");
            dispatched += batch;
        }
        all_done.notified().await;
        while orch.running_count() > 0 {
            tokio::task::yield_now().await;
        }
        let wall = started.elapsed();
        let cpu = cpu_time().saturating_sub(cpu_before);
        println!(
            "concurrency {concurrency}: {count} tasks in {:.2} s wall, {:.2} s CPU: {:.0} tasks/s, {:.0} tasks per CPU-second",
            wall.as_secs_f64(),
            cpu.as_secs_f64(),
            count as f64 / wall.as_secs_f64(),
            count as f64 / cpu.as_secs_f64().max(1e-9),
        );
        orch.shutdown(Duration::from_secs(5)).await;
    });
}
