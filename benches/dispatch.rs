//! Dispatch-to-completion throughput on the in-memory backend with a no-op engine, at
//! concurrency 1, 8 and 64: criterion over the shared drain driver (`support::drain`).
//!
//! `cargo bench --bench dispatch`
//!
//! Runs with mimalloc as the global allocator, as `orchd` does (see BENCHMARKS.md).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use orch::MemoryBackend;

use support::drain::{Drain, memory_config};

fn dispatch_to_completion(c: &mut Criterion) {
    let runtime = support::runtime(2);
    let mut group = c.benchmark_group("dispatch_to_completion");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for concurrency in [1usize, 8, 64] {
        group.bench_with_input(
            BenchmarkId::new("noop_engine_concurrency", concurrency),
            &concurrency,
            |b, &concurrency| {
                b.iter_custom(|iters| {
                    let drain = Drain::new(iters, memory_config(concurrency));
                    runtime
                        .block_on(drain.run(Arc::new(MemoryBackend::new())))
                        .expect("the drain runs")
                        .wall
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, dispatch_to_completion);
criterion_main!(benches);
