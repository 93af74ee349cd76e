//! The threads that run one in-process plugin's calls.
//!
//! Plugin code is synchronous and may block, so it must not run on tokio's workers. tokio's
//! `spawn_blocking` would do, but its hand-off costs 20–40 µs per call on a busy 2-core machine
//! (measured by the workspace's `benches/plugins.rs`), more than the whole per-call budget (20 µs). A
//! small pool per plugin, fed through a channel, costs a few microseconds: threads are started
//! on demand up to the plugin's concurrency limit and stay parked between calls; they end when
//! the plugin is dropped.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Up to `size` threads running jobs in submission order.
pub(crate) struct CallThreads {
    jobs: Sender<Job>,
    /// Kept to start more threads; the threads end when `jobs` (the only sender) is dropped.
    queue: Receiver<Job>,
    size: usize,
    started: AtomicUsize,
    /// Jobs submitted and not finished; a thread is started whenever this exceeds `started`.
    in_flight: Arc<AtomicUsize>,
    name: String,
}

impl CallThreads {
    pub(crate) fn new(name: &str, size: usize) -> Self {
        let (jobs, queue) = crossbeam_channel::unbounded();
        CallThreads {
            jobs,
            queue,
            size: size.max(1),
            started: AtomicUsize::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
            name: name.to_owned(),
        }
    }

    /// Runs `job` on one of the threads; the receiver gets its result (or an error if the
    /// thread could not be started).
    pub(crate) fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> oneshot::Receiver<T> {
        let (sender, receiver) = oneshot::channel();
        let in_flight = self.in_flight.clone();
        let wanted = in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let job: Job = Box::new(move || {
            let _ = sender.send(job());
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
        self.start_threads(wanted);
        // Cannot fail: `self.queue` keeps the channel open.
        let _ = self.jobs.send(job);
        receiver
    }

    fn start_threads(&self, wanted: usize) {
        let wanted = wanted.min(self.size);
        let mut started = self.started.load(Ordering::Acquire);
        while started < wanted {
            match self.started.compare_exchange(
                started,
                started + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    let queue = self.queue.clone();
                    let spawned = std::thread::Builder::new()
                        .name(format!("orch-plugin-{}", self.name))
                        .spawn(move || {
                            for job in queue {
                                // Plugin calls catch their own panics; this keeps the thread
                                // alive should anything else panic.
                                let _ = catch_unwind(AssertUnwindSafe(job));
                            }
                        });
                    if let Err(error) = spawned {
                        tracing::error!(plugin = %self.name, %error, "cannot start a plugin thread");
                        self.started.fetch_sub(1, Ordering::AcqRel);
                        return;
                    }
                    started += 1;
                }
                Err(current) => started = current,
            }
        }
    }
}
