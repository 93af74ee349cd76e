//! Locks: who holds a resource, until when, and the fencing token of the grant.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A number that strictly increases with every grant of a resource. A protected resource that
/// remembers the highest token it has seen, and refuses writes carrying a lower one, is safe even
/// against a holder that was paused past its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A held lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// The resource name.
    pub resource: String,
    /// Who holds it.
    pub owner: String,
    /// The grant's fencing token.
    pub fencing_token: FencingToken,
    /// When it was granted.
    pub acquired_at: DateTime<Utc>,
    /// When it expires unless extended.
    pub expires_at: DateTime<Utc>,
}

/// What one non-waiting acquisition attempt against a backend gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockAttempt {
    /// Granted (the resource was free or its lock had expired).
    Acquired(LockInfo),
    /// Someone holds it; this is their grant.
    Held(LockInfo),
}

/// A lock a task holds while it runs: the resource and the fencing token of the grant, to
/// present to the protected resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskLock {
    /// The resource.
    pub resource: String,
    /// The grant's fencing token.
    pub fencing_token: FencingToken,
}
