//! [`ChangeSignal`]: a cheap "something changed" hint from a backend to idle loops.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    version: AtomicU64,
    waiters: AtomicUsize,
    notify: Notify,
}

/// A version counter with wake-ups. Raising it costs two atomic operations when nobody waits
/// (the hot path of a busy backend); waiters read [`ChangeSignal::version`] before looking for
/// work and then wait with [`ChangeSignal::changed_since`], so a change between the two is
/// never missed. Cheap to clone; clones share the signal.
#[derive(Clone, Default)]
pub struct ChangeSignal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ChangeSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeSignal")
            .field("version", &self.version())
            .finish()
    }
}

struct WaiterGuard<'a>(&'a AtomicUsize);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ChangeSignal {
    /// A new signal at version 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a change and wakes every waiter.
    pub fn raise(&self) {
        self.inner.version.fetch_add(1, Ordering::SeqCst);
        if self.inner.waiters.load(Ordering::SeqCst) > 0 {
            self.inner.notify.notify_waiters();
        }
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.inner.version.load(Ordering::SeqCst)
    }

    /// Completes once the version differs from `seen`.
    pub async fn changed_since(&self, seen: u64) {
        self.inner.waiters.fetch_add(1, Ordering::SeqCst);
        let _guard = WaiterGuard(&self.inner.waiters);
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.version() != seen {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_raise_after_reading_the_version_is_never_missed() {
        let signal = ChangeSignal::new();
        let seen = signal.version();
        signal.raise();
        // Already changed: returns at once.
        signal.changed_since(seen).await;
        let seen = signal.version();
        let waiter = tokio::spawn({
            let signal = signal.clone();
            async move { signal.changed_since(seen).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        signal.raise();
        waiter.await.unwrap();
    }
}
