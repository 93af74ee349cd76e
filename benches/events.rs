//! Event fan-out: events appended to the log reach 100 live subscribers.
//!
//! `cargo bench --bench events`
//!
//! Runs with mimalloc as the global allocator, as `orchd` does (see BENCHMARKS.md).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orch::{EventKind, MemoryBackend, NewEvent, Orchestrator};

const SUBSCRIBERS: usize = 100;
const EVENTS: u64 = 2_000;

fn fan_out(c: &mut Criterion) {
    let runtime = support::runtime(2);
    let mut group = c.benchmark_group("event_fan_out");
    // One element = one event delivered to one subscriber.
    group.throughput(Throughput::Elements(EVENTS * SUBSCRIBERS as u64));
    group.sample_size(10);
    group.bench_function("100_subscribers", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let orch = Orchestrator::builder(Arc::new(MemoryBackend::new()))
                        .build()
                        .await
                        .expect("orchestrator");
                    let mut readers = Vec::new();
                    for _ in 0..SUBSCRIBERS {
                        let mut subscription = orch.events().subscribe().await.expect("subscribe");
                        readers.push(tokio::spawn(async move {
                            let mut seen = 0;
                            while seen < EVENTS {
                                subscription.next().await.expect("open").expect("event");
                                seen += 1;
                            }
                        }));
                    }
                    let started = Instant::now();
                    for i in 0..EVENTS {
                        orch.backend()
                            .append_event(
                                NewEvent::new(EventKind::Custom("bench.tick".into()))
                                    .with_data(i.into()),
                            )
                            .await
                            .expect("append");
                    }
                    for reader in readers {
                        reader.await.expect("reader");
                    }
                    total += started.elapsed();
                    orch.shutdown(Duration::from_secs(1)).await;
                }
                total
            })
        });
    });
    group.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
