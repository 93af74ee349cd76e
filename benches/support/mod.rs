//! What the benches share, one copy each (every bench file declares `mod support;`):
//!
//! - [`drain`]: the drain driver. An orchestrator over a given backend with a counting no-op
//!   engine; a producer dispatches N tasks in batches with a bound on outstanding tasks; the
//!   clock stops when the last outcome is recorded. Reports wall time, tasks/s and CPU time.
//!   Every bench that drains a queue uses it: `dispatch` (criterion, in memory),
//!   `dispatch_rate`/`dispatch_rate_system` (through [`dispatch_rate`]) and `storage`.
//! - [`dispatch_rate`]: the whole program of the two fixed-size in-memory runs, which differ
//!   only in their global allocator.
//! - [`pickup`]: latency from a dispatch on an idle queue to the engine's start.
//! - [`cpu`]: user + system CPU time from `/proc`, of this process or of a server's processes.
//! - [`args`]: the arguments after `--` of `cargo bench --bench <name> -- ...`, flags with
//!   values, positional numbers.
//! - [`runtime`] and [`percentile`].

#![allow(
    dead_code,
    reason = "every bench binary compiles this module and uses only its own part of it"
)]

pub(crate) mod args;
pub(crate) mod cpu;
pub(crate) mod dispatch_rate;
pub(crate) mod drain;
pub(crate) mod pickup;

/// A tokio runtime with `workers` worker threads, or a current-thread runtime for 0.
pub(crate) fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let mut builder = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder.enable_all().build().expect("a tokio runtime")
}

/// The value at quantile `q` (0.0 to 1.0) of `sorted` (nearest rank), `None` when empty.
pub(crate) fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let index = (last as f64 * q).round() as usize;
    Some(sorted[index.min(last)])
}
