//! A fixed-size dispatch-to-completion run for profiling and quick figures, with mimalloc as the
//! global allocator (as `orchd` uses):
//! `cargo bench --bench dispatch_rate -- [concurrency] [tasks]` prints tasks per second of wall
//! time and per second of CPU time (user + system, from /proc), which stays meaningful on a
//! shared, noisy machine. `ORCH_BENCH_WORKERS` sets the runtime's worker threads (0 for a
//! current-thread runtime). `dispatch_rate_system` is the same with the system allocator.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

include!("support/dispatch_rate_main.rs");
