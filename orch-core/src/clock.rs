//! The orchestrator's wall clock, driven by tokio's clock.
//!
//! [`now`] is wall-clock time that advances with `tokio::time::Instant`, so under tokio's paused
//! test clock (`start_paused`, `time::advance`) timestamps, TTLs, delays and backoff all move
//! together and tests never sleep for real. In a normal runtime it tracks the system clock.
//! SQL backends decide lease and lock expiry with the database clock instead.

use std::sync::OnceLock;
use std::time::Instant as StdInstant;

use chrono::{DateTime, TimeDelta, Utc};

static ANCHOR: OnceLock<(DateTime<Utc>, StdInstant)> = OnceLock::new();

/// The current time, following tokio's (possibly paused) clock.
pub fn now() -> DateTime<Utc> {
    let (wall, base) = *ANCHOR.get_or_init(|| (Utc::now(), StdInstant::now()));
    let instant = tokio::time::Instant::now().into_std();
    match instant.checked_duration_since(base) {
        Some(ahead) => wall + TimeDelta::from_std(ahead).unwrap_or(TimeDelta::MAX),
        None => wall - TimeDelta::from_std(base - instant).unwrap_or(TimeDelta::zero()),
    }
}

/// How long from now until `at` (zero if `at` is past).
pub fn until(at: DateTime<Utc>) -> std::time::Duration {
    (at - now()).to_std().unwrap_or_default()
}
