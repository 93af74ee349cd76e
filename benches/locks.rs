//! Lock acquire+release on the in-memory backend: uncontended, and with 2 and 8 contenders.
//!
//! `cargo bench --bench locks`
//!
//! Runs with mimalloc as the global allocator, as `orchd` does (see BENCHMARKS.md).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use orch::{LockManager, LockOptions, MemoryBackend};

fn locks(c: &mut Criterion) {
    let runtime = support::runtime(2);
    let mut group = c.benchmark_group("lock_acquire_release");
    group.throughput(Throughput::Elements(1));
    group.bench_function("uncontended", |b| {
        let locks = LockManager::new(Arc::new(MemoryBackend::new()));
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let guard = locks
                        .try_acquire("resource", "owner", Duration::from_secs(30))
                        .await
                        .expect("free lock");
                    guard.release().await.expect("release");
                }
                started.elapsed()
            })
        });
    });
    for contenders in [2usize, 8] {
        group.bench_with_input(
            BenchmarkId::new("contended", contenders),
            &contenders,
            |b, &contenders| {
                let locks = LockManager::new(Arc::new(MemoryBackend::new()));
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let per_task = (iters / contenders as u64).max(1);
                        let started = Instant::now();
                        let mut tasks = Vec::new();
                        for i in 0..contenders {
                            let locks = locks.clone();
                            tasks.push(tokio::spawn(async move {
                                let owner = format!("worker-{i}");
                                for _ in 0..per_task {
                                    let guard = locks
                                        .acquire(
                                            "shared",
                                            &owner,
                                            LockOptions::default()
                                                .wait(Some(Duration::from_secs(60))),
                                        )
                                        .await
                                        .expect("acquire");
                                    guard.release().await.expect("release");
                                }
                            }));
                        }
                        for task in tasks {
                            task.await.expect("contender");
                        }
                        // Report time per acquisition actually made.
                        started
                            .elapsed()
                            .mul_f64(iters as f64 / (per_task * contenders as u64) as f64)
                    })
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, locks);
criterion_main!(benches);
