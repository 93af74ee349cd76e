//! The program of `dispatch_rate` and `dispatch_rate_system`, which differ only in their
//! global allocator: one fixed-size drain on the in-memory backend, for profiling and quick
//! figures.
//!
//! `cargo bench --bench dispatch_rate -- [concurrency] [tasks]` (defaults 64 and 500,000)
//! prints tasks per second of wall time and per second of CPU time (user + system, from
//! `/proc`), which stays meaningful on a shared, noisy machine. `ORCH_BENCH_WORKERS` sets the
//! runtime's worker threads (default 2, the machine's cores; 0 for a current-thread runtime,
//! producer and orchestrator on one thread); the producer runs on the main thread.

use std::sync::Arc;

use orch::MemoryBackend;

use super::args::{bench_args, positional};
use super::drain::{Drain, memory_config};

/// Runs the drain the command line asks for and prints its figures.
pub(crate) fn main() {
    let args = bench_args();
    let concurrency: usize = positional(&args, 0, 64);
    let tasks: u64 = positional(&args, 1, 500_000);
    let workers: usize = std::env::var("ORCH_BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);
    let report = super::runtime(workers)
        .block_on(Drain::new(tasks, memory_config(concurrency)).run(Arc::new(MemoryBackend::new())))
        .expect("the drain runs");
    println!(
        "concurrency {concurrency}: {tasks} tasks in {:.2} s wall, {:.2} s CPU: {:.0} tasks/s, \
         {:.0} tasks per CPU-second",
        report.wall.as_secs_f64(),
        report.cpu.as_secs_f64(),
        report.tasks_per_second(),
        report.tasks_per_cpu_second(),
    );
}
