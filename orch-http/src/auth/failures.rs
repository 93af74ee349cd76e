//! [`AuthFailures`]: refused logins and tokens counted, for `/metrics`
//! (`orch_auth_failures_total`) and for the monitor (a [`Sampler`] of
//! [`Metric::AuthFailures`], the refusals of the last minute).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use orch_core::monitor::{Metric, Reading, Sampler};
use tokio::time::Instant;

/// The window [`AuthFailures`]'s readings count over.
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Inner {
    total: AtomicU64,
    /// The total at each sample of the last minute and a bit (the oldest is the baseline).
    samples: parking_lot::Mutex<VecDeque<(Instant, u64)>>,
}

/// Counts refused logins and refused tokens of one router (this node). Give the same value to
/// [`HttpConfig::auth_failures`](crate::HttpConfig::auth_failures) and to the orchestrator's
/// builder as a sampler, so the monitor's `auth_failures` rule sees the router's refusals.
/// Cheap to clone; clones share the count.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use orch_core::monitor::Sampler;
/// use orch_http::auth::AuthFailures;
///
/// let failures = AuthFailures::default();
/// failures.add();
/// assert_eq!(failures.total(), 1);
/// assert_eq!(failures.sample().await.unwrap()[0].value, 1.0);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct AuthFailures {
    inner: Arc<Inner>,
}

impl Default for AuthFailures {
    fn default() -> Self {
        AuthFailures {
            inner: Arc::new(Inner {
                total: AtomicU64::new(0),
                samples: parking_lot::Mutex::new(VecDeque::from([(Instant::now(), 0)])),
            }),
        }
    }
}

impl PartialEq for AuthFailures {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for AuthFailures {}

impl AuthFailures {
    /// Counts one refusal.
    pub fn add(&self) {
        self.inner.total.fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals since start.
    pub fn total(&self) -> u64 {
        self.inner.total.load(Ordering::Relaxed)
    }

    /// Refusals in the last minute (since start, during the first minute).
    pub fn last_minute(&self) -> u64 {
        let now = Instant::now();
        let total = self.total();
        let mut samples = self.inner.samples.lock();
        samples.push_back((now, total));
        // Keep one sample at least a minute old: the baseline.
        while samples
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= WINDOW)
        {
            samples.pop_front();
        }
        let baseline = samples.front().map_or(0, |(_, count)| *count);
        total.saturating_sub(baseline)
    }
}

#[async_trait]
impl Sampler for AuthFailures {
    async fn sample(&self) -> orch_core::Result<Vec<Reading>> {
        Ok(vec![Reading::new(
            Metric::AuthFailures,
            self.last_minute() as f64,
        )])
    }
}
