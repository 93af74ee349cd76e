//! Notifications: the [`Notifier`] trait an application (or the daemon, for webhooks, Slack and
//! email) implements, and the delivery loop that gives each notifier its own bounded queue and
//! retries failed deliveries with backoff, so that nothing a receiver does can slow the
//! monitor or dispatch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::alerts::Alert;
use super::config::Delivery;

/// Why a delivery failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyError {
    /// What went wrong.
    pub message: String,
    /// Whether a later attempt may succeed (a timeout, a refused connection, a 5xx) or not (a
    /// 4xx, a malformed address).
    pub retryable: bool,
}

impl NotifyError {
    /// A failure another attempt may fix.
    pub fn retryable(message: impl Into<String>) -> Self {
        NotifyError {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry will fix: the alert is given up at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        NotifyError {
            message: message.into(),
            retryable: false,
        }
    }
}

impl std::fmt::Display for NotifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for NotifyError {}

/// Sends alerts somewhere people see them: a webhook, a chat, email.
///
/// Contract: `notify` is called for every alert that fires and every one that resolves, one
/// call at a time per notifier, in order. It may take its time (a delivery is abandoned as
/// failed after [`Delivery::timeout`]) and should say with [`NotifyError::retryable`] whether
/// to try again. Calls run on a task of the notifier's own: the monitor never waits for them.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait Notifier: Send + Sync {
    /// A short name for logs and counters (`webhook`, `slack`, `email`).
    fn name(&self) -> &str;

    /// Delivers one alert.
    async fn notify(&self, alert: &Alert) -> Result<(), NotifyError>;
}

#[async_trait]
impl<N: Notifier + ?Sized> Notifier for Arc<N> {
    fn name(&self) -> &str {
        (**self).name()
    }
    async fn notify(&self, alert: &Alert) -> Result<(), NotifyError> {
        (**self).notify(alert).await
    }
}

/// A notifier's delivery counters since start.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifierStats {
    /// The notifier's name.
    pub name: String,
    /// Alerts delivered.
    pub delivered: u64,
    /// Delivery attempts that failed (each retry counts).
    pub failed_attempts: u64,
    /// Alerts given up after their last attempt (or a permanent error).
    pub given_up: u64,
    /// Alerts dropped because the notifier's queue was full.
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed_attempts: AtomicU64,
    given_up: AtomicU64,
    dropped: AtomicU64,
}

/// The monitor's side of one notifier: its queue and its counters.
pub(crate) struct Outbox {
    name: String,
    queue: mpsc::Sender<Arc<Alert>>,
    counters: Arc<Counters>,
}

impl Outbox {
    /// Queues an alert without waiting; a full queue drops it (counted).
    pub(crate) fn offer(&self, alert: Arc<Alert>) {
        if self.queue.try_send(alert).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(notifier = %self.name, "notifier queue full; alert dropped");
        }
    }

    pub(crate) fn stats(&self) -> NotifierStats {
        let c = &self.counters;
        NotifierStats {
            name: self.name.clone(),
            delivered: c.delivered.load(Ordering::Relaxed),
            failed_attempts: c.failed_attempts.load(Ordering::Relaxed),
            given_up: c.given_up.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }
}

/// An outbox for `notifier` and the loop that delivers from it until `stop` fires.
pub(crate) fn outbox(
    notifier: Arc<dyn Notifier>,
    delivery: Delivery,
    stop: CancellationToken,
) -> (Outbox, impl Future<Output = ()> + Send + 'static) {
    let (queue, receiver) = mpsc::channel(delivery.queue);
    let counters = Arc::new(Counters::default());
    let outbox = Outbox {
        name: notifier.name().to_owned(),
        queue,
        counters: counters.clone(),
    };
    (
        outbox,
        deliver_all(notifier, delivery, receiver, counters, stop),
    )
}

async fn deliver_all(
    notifier: Arc<dyn Notifier>,
    delivery: Delivery,
    mut queue: mpsc::Receiver<Arc<Alert>>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    loop {
        let alert = tokio::select! {
            alert = queue.recv() => match alert {
                Some(alert) => alert,
                None => return,
            },
            _ = stop.cancelled() => return,
        };
        let mut backoff = delivery.backoff;
        for attempt in 1..=delivery.attempts {
            let outcome = tokio::select! {
                outcome = tokio::time::timeout(delivery.timeout, notifier.notify(&alert)) => outcome,
                _ = stop.cancelled() => return,
            };
            let error = match outcome {
                Ok(Ok(())) => {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(Err(error)) => error,
                Err(_) => {
                    NotifyError::retryable(format!("no answer within {:?}", delivery.timeout))
                }
            };
            counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
            if !error.retryable || attempt == delivery.attempts {
                counters.given_up.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(notifier = %notifier.name(), rule = %alert.rule, attempt, %error, "alert not delivered; giving up");
                break;
            }
            tracing::debug!(notifier = %notifier.name(), rule = %alert.rule, attempt, %error, ?backoff, "alert not delivered; retrying");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return,
            }
            backoff = backoff.saturating_mul(2).min(delivery.max_backoff);
        }
    }
}
