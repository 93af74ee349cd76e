//! Dispatch-to-completion throughput on the in-memory backend with a no-op engine.
//!
//! `cargo bench --bench dispatch`
//!
//! Runs with mimalloc as the global allocator, as `orchd` does (see BENCHMARKS.md).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use orch::{MemoryBackend, Orchestrator, OrchestratorConfig, TaskSpec, Tuning, processor_fn};
use serde_json::Value;
use tokio::sync::Notify;

/// Most tasks dispatched but not yet finished at any time.
const BACKLOG: u64 = 10_000;

/// Dispatches `count` tasks in batches of 1,000 and returns when all have been reported.
async fn run(concurrency: usize, count: u64) -> Duration {
    let done = Arc::new(AtomicU64::new(0));
    let all_done = Arc::new(Notify::new());
    let progress = Arc::new(Notify::new());
    let (d, n, p) = (done.clone(), all_done.clone(), progress.clone());
    let orch = Orchestrator::builder(Arc::new(MemoryBackend::new()))
        .config(
            OrchestratorConfig::default()
                .with_global_concurrency(concurrency)
                .with_default_engine_concurrency(concurrency)
                .with_tuning(Tuning::default().with_claim_batch(concurrency.max(16))),
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
    // Wait until every attempt has also recorded its outcome.
    while orch.running_count() > 0 {
        tokio::task::yield_now().await;
    }
    let elapsed = started.elapsed();
    orch.shutdown(Duration::from_secs(5)).await;
    elapsed
}

fn dispatch_to_completion(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("dispatch_to_completion");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for concurrency in [1usize, 8, 64] {
        group.bench_with_input(
            BenchmarkId::new("noop_engine_concurrency", concurrency),
            &concurrency,
            |b, &concurrency| {
                b.iter_custom(|iters| runtime.block_on(run(concurrency, iters.max(1))));
            },
        );
    }
    group.finish();
}

criterion_group!(benches, dispatch_to_completion);
criterion_main!(benches);
