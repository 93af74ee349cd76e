//! Locks: who holds a resource, until when, and the fencing token of the grant; who waits for
//! it, in what order.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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

/// Names one waiting acquisition in a backend's lock queue, unique across processes. A UUIDv7,
/// so ids made later in one process sort after earlier ones; waiters of equal
/// [`rank`](LockWaiter::rank) are served in id order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LockWaiterId(pub Uuid);

impl LockWaiterId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        LockWaiterId(super::ids::monotonic_v7())
    }
}

impl Default for LockWaiterId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for LockWaiterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A waiter joining (or refreshing its place in) the queue of a resource, through
/// [`LockStore::join_lock_queue`](crate::backend::LockStore::join_lock_queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLockWaiter {
    /// The resource waited for.
    pub resource: String,
    /// Which waiter this is (the same id for every refresh).
    pub waiter: LockWaiterId,
    /// Who will hold the lock once granted.
    pub owner: String,
    /// The priority the waiter asked for (shown to operators; the order comes from `rank`).
    pub priority: i32,
    /// Place in line: lower is served first. See [`LockWaiter::rank`].
    pub rank: i64,
    /// How long the entry keeps its place unless joined again: a waiter whose process died
    /// stops blocking others this long after its last refresh.
    pub ttl: Duration,
}

/// A waiter in a backend's lock queue, as every process sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockWaiter {
    /// The resource waited for.
    pub resource: String,
    /// Which waiter this is.
    pub waiter: LockWaiterId,
    /// Who will hold the lock once granted.
    pub owner: String,
    /// The priority the waiter asked for.
    pub priority: i32,
    /// Place in line: lower is served first, ties by `waiter`. The lock manager sets it to
    /// `enqueued_at - priority * aging_step` in microseconds since the Unix epoch (its process's
    /// wall clock), so a higher priority jumps ahead by a bounded time and nobody starves.
    pub rank: i64,
    /// When the entry first joined the queue.
    pub enqueued_at: DateTime<Utc>,
    /// When the entry stops blocking others unless refreshed.
    pub expires_at: DateTime<Utc>,
}

impl LockWaiter {
    /// Whether this entry is served before a request at `rank` made by `waiter` (`None`: an
    /// acquisition that is not queued, which comes after every entry of equal rank). An entry
    /// never comes before its own waiter. This is the queue order every backend follows;
    /// whether the entry is still live (unexpired) is for the caller to check.
    pub fn is_ahead_of(&self, rank: i64, waiter: Option<LockWaiterId>) -> bool {
        match waiter {
            Some(waiter) if waiter == self.waiter => false,
            Some(waiter) => (self.rank, self.waiter) < (rank, waiter),
            None => self.rank <= rank,
        }
    }
}

/// An acquisition that respects the lock queue, through
/// [`LockStore::acquire_lock_in_turn`](crate::backend::LockStore::acquire_lock_in_turn).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRequest {
    /// The resource to lock.
    pub resource: String,
    /// Who will hold it.
    pub owner: String,
    /// How long the grant lasts unless extended.
    pub ttl: Duration,
    /// The request's place in line (see [`LockWaiter::rank`]); `i64::MAX` to come after every
    /// queued waiter.
    pub rank: i64,
    /// The request's own queue entry, if it joined the queue: never counted as ahead of it,
    /// and removed in the same step when the lock is granted.
    pub waiter: Option<LockWaiterId>,
}

/// What one [`LockRequest`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockTurn {
    /// Granted: the resource was free (or its lock had expired) and no live waiter was ahead.
    Acquired(LockInfo),
    /// Someone holds it; this is their grant (whoever is queued).
    Held(LockInfo),
    /// Free, but this live waiter is ahead in the queue (the first one in line): try again
    /// once it has had its turn, or once its entry expires.
    Behind(LockWaiter),
}

/// One resource as a dashboard shows it: who holds it until when, and who waits in what order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOverview {
    /// The resource.
    pub resource: String,
    /// The unexpired grant, if any.
    pub holder: Option<LockInfo>,
    /// Live waiters of every process, first in line first.
    pub waiters: Vec<LockWaiter>,
}
