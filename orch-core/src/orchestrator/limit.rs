//! [`EngineLimit`]: an engine's concurrency limit, changeable while the engine runs.
//!
//! The limit is the permit count of the engine's semaphore. Raising it adds permits. Lowering
//! it forgets the permits that are free; permits held by running attempts cannot be taken back
//! (running attempts are never stopped), so the rest is a *debt*: a collector waits for that
//! many permits as they are released and forgets them. Tokio's semaphore serves waiters in
//! order, so while the collector waits no new attempt starts: the engine drains down to the new
//! limit before it starts anything again. A later change cancels the collector (permits it was
//! already assigned go back to the semaphore) and settles the debt anew.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub(super) struct EngineLimit {
    /// The slots attempts take: `limit + debt` permits exist in all.
    pub(super) slots: Arc<Semaphore>,
    /// The limit in force, readable without the lock.
    current: AtomicUsize,
    state: Mutex<LimitState>,
}

struct LimitState {
    limit: usize,
    /// Permits to forget as running attempts release them.
    debt: usize,
    /// Stops the collector of the current debt, if one runs.
    collector: Option<CancellationToken>,
}

impl EngineLimit {
    pub(super) fn new(limit: usize) -> Self {
        EngineLimit {
            slots: Arc::new(Semaphore::new(limit)),
            current: AtomicUsize::new(limit),
            state: Mutex::new(LimitState {
                limit,
                debt: 0,
                collector: None,
            }),
        }
    }

    /// The limit in force.
    pub(super) fn get(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }

    /// Slots taken: by running attempts, and by claims under way for them.
    pub(super) fn in_use(&self) -> usize {
        let state = self.state.lock();
        (state.limit + state.debt).saturating_sub(self.slots.available_permits())
    }

    /// Sets the limit to `limit` (at least 1); returns the previous one. A debt left to collect
    /// is handed to `spawn` as a future that ends when it is paid or `stop` fires.
    pub(super) fn set(
        self: &Arc<Self>,
        limit: usize,
        stop: &CancellationToken,
        spawn: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>),
    ) -> usize {
        let limit = limit.max(1);
        let mut state = self.state.lock();
        if let Some(collector) = state.collector.take() {
            // Under the lock: the collector checks it under the lock before forgetting.
            collector.cancel();
        }
        let previous = state.limit;
        state.limit = limit;
        self.current.store(limit, Ordering::Release);
        if limit >= previous {
            let raise = limit - previous;
            let paid = raise.min(state.debt);
            state.debt -= paid;
            self.slots.add_permits(raise - paid);
        } else {
            state.debt += previous - limit;
        }
        if state.debt > 0 {
            state.debt -= self.slots.forget_permits(state.debt);
        }
        if state.debt > 0 {
            let token = stop.child_token();
            state.collector = Some(token.clone());
            spawn(Box::pin(collect(self.clone(), state.debt, token)));
        }
        previous
    }
}

/// Waits for `debt` permits and forgets them, unless `token` fires first.
async fn collect(limit: Arc<EngineLimit>, debt: usize, token: CancellationToken) {
    let Ok(wanted) = u32::try_from(debt) else {
        return;
    };
    let permits = tokio::select! {
        permits = limit.slots.clone().acquire_many_owned(wanted) => permits,
        _ = token.cancelled() => return,
    };
    let Ok(permits) = permits else { return };
    let mut state = limit.state.lock();
    if token.is_cancelled() {
        // A later change settled the debt anew counting these permits as not forgotten:
        // dropping them gives them back.
        return;
    }
    permits.forget();
    state.debt = state.debt.saturating_sub(debt);
    state.collector = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(limit: &Arc<EngineLimit>, to: usize) {
        let stop = CancellationToken::new();
        limit.set(to, &stop, |collector| {
            tokio::spawn(collector);
        });
    }

    #[tokio::test]
    async fn lowering_waits_for_running_attempts_and_raising_cancels_the_debt() {
        let limit = Arc::new(EngineLimit::new(4));
        let held: Vec<_> = (0..3)
            .map(|_| limit.slots.clone().try_acquire_owned().unwrap())
            .collect();
        assert_eq!(limit.in_use(), 3);
        // 4 -> 1: one free permit forgotten, a debt of two left while three attempts run.
        set(&limit, 1);
        assert_eq!(limit.get(), 1);
        assert!(limit.slots.clone().try_acquire_owned().is_err());
        let mut held = held.into_iter();
        drop(held.next());
        drop(held.next());
        tokio::task::yield_now().await;
        // The debt is paid: one attempt runs, which is the new limit.
        assert_eq!(limit.in_use(), 1);
        assert!(limit.slots.clone().try_acquire_owned().is_err());
        drop(held.next());
        let one = limit.slots.clone().try_acquire_owned().unwrap();
        assert!(limit.slots.clone().try_acquire_owned().is_err());
        // 1 -> 1 -> 3 while one runs: two more start.
        set(&limit, 3);
        let more: Vec<_> = (0..2)
            .map(|_| limit.slots.clone().try_acquire_owned().unwrap())
            .collect();
        assert!(limit.slots.clone().try_acquire_owned().is_err());
        // 3 -> 1 with three running, then 1 -> 5 before any ends: the debt is cancelled.
        set(&limit, 1);
        set(&limit, 5);
        assert_eq!(limit.in_use(), 3);
        let extra: Vec<_> = (0..2)
            .map(|_| limit.slots.clone().try_acquire_owned().unwrap())
            .collect();
        assert!(limit.slots.clone().try_acquire_owned().is_err());
        drop((one, more, extra));
        tokio::task::yield_now().await;
        assert_eq!(limit.slots.available_permits(), 5);
    }
}
