//! LISTEN/NOTIFY as a wake-up hint between processes sharing one database.
//!
//! Every statement that makes tasks claimable (create, requeue, rescue) or appends events sends
//! one `pg_notify` on [`CHANNEL`] (one per statement, never one per row: NOTIFY takes a
//! database-wide lock at commit). The payload is `t:<sender>` when tasks may have become
//! available, `e:<sender>` when only events were appended; `<sender>` identifies the backend
//! instance, which has already raised its own signals and so ignores its own notifications.
//!
//! Notifications that only announce events (claims, finished attempts, appended events: the
//! hot path) are rate-limited per backend by [`EventHints`]: a statement carries one only when
//! none was sent in the last [`EVENT_HINT_WINDOW`]; otherwise a trailing notification follows
//! at the end of the window. Notifications that make tasks claimable are always sent.
//!
//! A [`Listener`] task per backend turns notifications into raises of the backend's
//! [`ChangeSignal`]s. It is only a hint: the orchestrator still polls every `poll_interval`, so a
//! notification lost while the listener reconnects costs latency, never a task. After every
//! (re)connection the listener raises both signals, since anything may have changed meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use orch_core::backend::ChangeSignal;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

/// The channel every orch backend of a database listens on.
pub(crate) const CHANNEL: &str = "orch_changes";

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The payload of a notification from `sender`: `t:` when tasks may have become claimable,
/// `e:` when only events were appended.
pub(crate) fn payload(sender: Uuid, tasks: bool) -> String {
    let kind = if tasks { 't' } else { 'e' };
    format!("{kind}:{sender}")
}

/// Shortest time between two event-only notifications of one backend.
pub(crate) const EVENT_HINT_WINDOW: Duration = Duration::from_millis(10);

/// Rate limit of one backend's event-only notifications (see the module documentation).
#[derive(Clone)]
pub(crate) struct EventHints {
    inner: Arc<HintState>,
}

struct HintState {
    /// What the window is measured from.
    epoch: Instant,
    /// Microseconds after `epoch` of the last notification sent (0: none yet).
    last_sent: AtomicU64,
    /// A statement went without its notification; the trailer owes one.
    pending: AtomicBool,
    /// Wakes the trailer.
    wake: Notify,
}

impl EventHints {
    pub(crate) fn new() -> Self {
        EventHints {
            inner: Arc::new(HintState {
                epoch: Instant::now(),
                last_sent: AtomicU64::new(0),
                pending: AtomicBool::new(false),
                wake: Notify::new(),
            }),
        }
    }

    fn now_micros(&self) -> u64 {
        let elapsed = self.inner.epoch.elapsed().as_micros();
        u64::try_from(elapsed).unwrap_or(u64::MAX).max(1)
    }

    /// Whether the next statement should send its event notification itself (claims the
    /// window when it does). When it should not, call [`defer`](Self::defer) after it
    /// committed.
    pub(crate) fn take_slot(&self) -> bool {
        let now = self.now_micros();
        let last = self.inner.last_sent.load(Ordering::Acquire);
        let window = u64::try_from(EVENT_HINT_WINDOW.as_micros()).unwrap_or(u64::MAX);
        (last == 0 || now.saturating_sub(last) >= window)
            && self
                .inner
                .last_sent
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// A committed statement appended events without notifying: the trailer sends one at the
    /// end of the window.
    pub(crate) fn defer(&self) {
        if !self.inner.pending.swap(true, Ordering::AcqRel) {
            self.inner.wake.notify_one();
        }
    }
}

/// The background tasks of a backend: the listener, and the trailer that sends deferred event
/// notifications. Both stop on drop.
pub(crate) struct Listener {
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Listener {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Listener {
    /// Starts listening on `listen_pool` (a pool of its own: the listener keeps one
    /// connection), and trailing deferred notifications of `hints` through `hint_pool`. NOTIFY
    /// gives its transaction an id, so a statement that only notifies still commits (and, with
    /// `synchronous_commit` on, waits for a disk flush that other commits queue behind):
    /// `hint_pool`'s sessions should commit with `synchronous_commit = off`.
    pub(crate) fn spawn(
        listen_pool: PgPool,
        hint_pool: PgPool,
        sender: Uuid,
        hints: EventHints,
        tasks: ChangeSignal,
        events: ChangeSignal,
    ) -> Self {
        let listener = tokio::spawn(listen(listen_pool, sender, tasks, events));
        let trailer = tokio::spawn(trail(hint_pool, hints, payload(sender, false)));
        Listener {
            tasks: [listener, trailer],
        }
    }
}

/// Sends the notifications statements deferred, at most one per window.
async fn trail(pool: PgPool, hints: EventHints, payload: String) {
    loop {
        hints.inner.wake.notified().await;
        tokio::time::sleep(EVENT_HINT_WINDOW).await;
        if !hints.inner.pending.swap(false, Ordering::AcqRel) {
            continue;
        }
        hints
            .inner
            .last_sent
            .store(hints.now_micros(), Ordering::Release);
        if pool.is_closed() {
            return;
        }
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&payload)
            .execute(&pool)
            .await;
        if let Err(error) = sent {
            // Only a hint: subscribers elsewhere find the events by polling.
            tracing::debug!(%error, "postgres: a deferred event notification failed");
        }
    }
}

async fn listen(pool: PgPool, sender: Uuid, tasks: ChangeSignal, events: ChangeSignal) {
    let own = sender.to_string();
    let mut backoff = Duration::from_millis(50);
    loop {
        if pool.is_closed() {
            return;
        }
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::debug!(%error, "postgres listener: cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if let Err(error) = listener.listen(CHANNEL).await {
            tracing::debug!(%error, "postgres listener: LISTEN failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        backoff = Duration::from_millis(50);
        // Notifications sent while we were away are lost: look for work once.
        tasks.raise();
        events.raise();
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let (kind, from) = notification.payload().split_once(':').unwrap_or(("t", ""));
                    if from == own {
                        continue;
                    }
                    if kind != "e" {
                        tasks.raise();
                    }
                    events.raise();
                }
                Ok(None) => {
                    // The connection dropped and was re-established: anything may have changed.
                    tasks.raise();
                    events.raise();
                }
                Err(error) => {
                    // Rebuild the listener from scratch (a fresh connection), after a pause.
                    tracing::debug!(%error, "postgres listener: connection lost; reconnecting");
                    break;
                }
            }
        }
        drop(listener);
        tokio::time::sleep(backoff).await;
    }
}
