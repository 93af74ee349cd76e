//! [`Clock`]: the time the security layer reads (token expiry, lockout windows, rate limits,
//! webhook tolerance), injectable so tests move it forward instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug)]
struct Inner {
    /// `true`: time stands still except for [`Clock::advance`].
    manual: bool,
    wall_start: SystemTime,
    mono_start: Instant,
    /// Added by [`Clock::advance`], in nanoseconds.
    offset_nanos: AtomicU64,
}

/// Wall-clock and monotonic time for the HTTP layer. Cheap to clone; clones share time.
///
/// ```
/// use std::time::Duration;
/// use orch_http::Clock;
///
/// let clock = Clock::manual_at_unix(1_700_000_000);
/// assert_eq!(clock.unix_now(), 1_700_000_000);
/// clock.advance(Duration::from_secs(301));
/// assert_eq!(clock.unix_now(), 1_700_000_301);
/// ```
#[derive(Debug, Clone)]
pub struct Clock {
    inner: Arc<Inner>,
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::build(false, SystemTime::now())
    }

    /// A clock that stands still at `unix_seconds` until [`Clock::advance`] moves it.
    pub fn manual_at_unix(unix_seconds: u64) -> Self {
        Self::build(true, UNIX_EPOCH + Duration::from_secs(unix_seconds))
    }

    /// A clock that stands still at the current time until [`Clock::advance`] moves it.
    pub fn manual() -> Self {
        Self::build(true, SystemTime::now())
    }

    fn build(manual: bool, wall_start: SystemTime) -> Self {
        Clock {
            inner: Arc::new(Inner {
                manual,
                wall_start,
                mono_start: Instant::now(),
                offset_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Moves this clock (and every clone) forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.inner.offset_nanos.fetch_add(nanos, Ordering::AcqRel);
    }

    /// Time since the clock was made (monotonic; what rate limits measure).
    pub fn elapsed(&self) -> Duration {
        let offset = Duration::from_nanos(self.inner.offset_nanos.load(Ordering::Acquire));
        if self.inner.manual {
            offset
        } else {
            self.inner.mono_start.elapsed() + offset
        }
    }

    /// The current wall-clock time.
    pub fn now(&self) -> SystemTime {
        self.inner.wall_start + self.elapsed()
    }

    /// The current Unix time in whole seconds.
    pub fn unix_now(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// The current time as a chrono timestamp.
    pub fn now_utc(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::<chrono::Utc>::from(self.now())
    }
}
