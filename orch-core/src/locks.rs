//! [`LockManager`]: leases on named resources with fencing tokens, fair waiting across
//! processes, and guards that release on drop.
//!
//! The [`LockStore`] grants atomically and keeps each resource's waiter queue, shared by every
//! process on the backend; this module decides ranks and waits. A waiter's rank is
//! `enqueued_at - priority * aging_step` (microseconds of wall-clock time): a higher priority
//! jumps ahead by a bounded amount of time, so a low-priority waiter is overtaken for at most
//! `(p_high - p_low) * aging_step` and never starves. A grant goes only to a request that no
//! live queue entry is ahead of ([`LockStore::acquire_lock_in_turn`]), so the order holds
//! whichever process a waiter lives in, and a `try_acquire` never jumps the queue.
//!
//! A waiter joins the backend queue once the lock is not granted at once, refreshes its entry
//! every third of [`LockConfig::waiter_ttl`] while it waits (an entry of a process that died
//! stops blocking others when it expires), and leaves it when it gives up, times out or is
//! dropped; a grant removes it in the same step. Within one process the waiters of a resource
//! also form a local queue in the same order, and only its head asks the store: it retries
//! when a holder releases through this manager, when the holder's lease or the entry ahead
//! of it expires, and every `poll_interval` (for holders and waiters in other processes).
//! Ranks from different hosts compare through their wall clocks: skew between hosts shifts
//! their waiters by the skew.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Waker};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

use crate::backend::LockStore;
use crate::clock;
use crate::error::{Error, Result};
use crate::model::{
    FencingToken, LockInfo, LockOverview, LockRequest, LockTurn, LockWaiter, LockWaiterId,
    NewLockWaiter, check_name, limits,
};

/// How a waiting acquisition behaves: `LockOptions::default().ttl(..).priority(..).wait(..)`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockOptions {
    /// How long the lock lasts unless extended. Default 30 s.
    pub ttl: Duration,
    /// Higher is served first among waiters (of every process on the backend). Default 1.
    pub priority: i32,
    /// How long to wait at most; `None` waits until granted. Default 30 s.
    pub wait: Option<Duration>,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            ttl: Duration::from_secs(30),
            priority: 1,
            wait: Some(Duration::from_secs(30)),
        }
    }
}

impl LockOptions {
    /// Sets the TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
    /// Sets the priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
    /// Sets the wait deadline (`None` waits forever).
    pub fn wait(mut self, wait: Option<Duration>) -> Self {
        self.wait = wait;
        self
    }
}

/// Tuning of a [`LockManager`]: `LockConfig::default()` and the `with_*` methods.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockConfig {
    /// How much earlier one priority point puts a waiter in line. Default 1 s.
    pub aging_step: Duration,
    /// How often a head waiter retries when nothing wakes it (holders and waiters in other
    /// processes). Default 100 ms.
    pub poll_interval: Duration,
    /// How long a waiter's entry in the backend queue lasts unless refreshed (it is refreshed
    /// every third of this while its waiter waits): how long a waiter whose process died keeps
    /// blocking the others. Values below three `poll_interval`s are raised to that. Default
    /// 10 s.
    pub waiter_ttl: Duration,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            aging_step: Duration::from_secs(1),
            poll_interval: Duration::from_millis(100),
            waiter_ttl: Duration::from_secs(10),
        }
    }
}

impl LockConfig {
    /// Sets how much earlier one priority point puts a waiter in line.
    pub fn with_aging_step(mut self, step: Duration) -> Self {
        self.aging_step = step;
        self
    }

    /// Sets how often a head waiter retries when nothing wakes it.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets how long a waiter's queue entry lasts unless refreshed.
    pub fn with_waiter_ttl(mut self, ttl: Duration) -> Self {
        self.waiter_ttl = ttl;
        self
    }
}

/// Counters of a [`LockManager`].
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockStats {
    /// Unexpired locks in the store.
    pub active: usize,
    /// Waiters queued in this process.
    pub waiting: usize,
    /// Live waiters in the backend's queues, of every process sharing it.
    pub queued: usize,
    /// Grants (waiting or not).
    pub acquired: u64,
    /// Waits that hit their deadline.
    pub timed_out: u64,
    /// `try_acquire` calls refused because the lock was held or waiters were queued.
    pub contended: u64,
    /// Releases.
    pub released: u64,
    /// Grants that had to wait.
    pub waited: u64,
    /// Total time spent waiting, in seconds.
    pub total_wait_seconds: f64,
    /// Longest single wait, in seconds.
    pub max_wait_seconds: f64,
}

#[derive(Default)]
struct Counters {
    acquired: AtomicU64,
    timed_out: AtomicU64,
    contended: AtomicU64,
    released: AtomicU64,
    waited: AtomicU64,
    total_wait_micros: AtomicU64,
    max_wait_micros: AtomicU64,
}

/// A waiter of this process, in the local queue of its resource.
struct Waiter {
    id: LockWaiterId,
    /// Its rank in the backend queue: the local queue follows the same order.
    rank: i64,
    notify: Arc<Notify>,
}

struct Inner {
    store: Arc<dyn LockStore>,
    config: LockConfig,
    queues: Mutex<HashMap<String, Vec<Waiter>>>,
    /// Waiters queued across all resources: lets `wake_head` skip the queue lock.
    waiting: AtomicUsize,
    counters: Counters,
}

impl Inner {
    /// Wakes the head waiter of `resource`, if any.
    fn wake_head(&self, resource: &str) {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return;
        }
        let queues = self.queues.lock();
        if let Some(head) = queues.get(resource).and_then(|q| head(q)) {
            head.notify.notify_one();
        }
    }

    fn is_head(&self, resource: &str, id: LockWaiterId) -> bool {
        let queues = self.queues.lock();
        queues
            .get(resource)
            .and_then(|q| head(q))
            .is_some_and(|w| w.id == id)
    }

    fn dequeue(&self, resource: &str, id: LockWaiterId) {
        let mut queues = self.queues.lock();
        if let Some(queue) = queues.get_mut(resource) {
            let before = queue.len();
            queue.retain(|w| w.id != id);
            self.waiting
                .fetch_sub(before - queue.len(), Ordering::AcqRel);
            if queue.is_empty() {
                queues.remove(resource);
            } else if let Some(head) = head(queue) {
                head.notify.notify_one();
            }
        }
    }

    /// The TTL of waiter entries: at least three poll intervals.
    fn waiter_ttl(&self) -> Duration {
        self.config
            .waiter_ttl
            .max(self.config.poll_interval.saturating_mul(3))
    }

    fn record_wait(&self, waited: Duration) {
        let micros = waited.as_micros().min(u64::MAX as u128) as u64;
        self.counters.waited.fetch_add(1, Ordering::Relaxed);
        self.counters
            .total_wait_micros
            .fetch_add(micros, Ordering::Relaxed);
        self.counters
            .max_wait_micros
            .fetch_max(micros, Ordering::Relaxed);
    }
}

fn head(queue: &[Waiter]) -> Option<&Waiter> {
    queue.iter().min_by_key(|w| (w.rank, w.id))
}

/// A waiter's rank: `at - priority * aging_step`, in microseconds since the Unix epoch.
fn rank(at: DateTime<Utc>, priority: i32, aging_step: Duration) -> i64 {
    let step = i128::try_from(aging_step.as_micros()).unwrap_or(i128::MAX);
    let rank =
        i128::from(at.timestamp_micros()).saturating_sub(step.saturating_mul(priority.into()));
    rank.clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

/// Takes a waiter out of line when the acquiring future ends, however it ends (granted, timed
/// out, failed, or dropped by the caller): out of the local queue at once, and out of the
/// backend queue unless that already happened (a grant removes the entry itself).
struct QueueSlot<'a> {
    inner: &'a Inner,
    resource: &'a str,
    id: LockWaiterId,
    /// Whether the backend entry is known to be gone.
    left: bool,
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.inner.dequeue(self.resource, self.id);
        if self.left {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(resource = %self.resource, "lock waiter dropped outside a tokio runtime; its queue entry will expire");
            return;
        };
        // A join still under way when the caller gave up may land after this leave: that
        // entry then blocks others until it expires (`waiter_ttl`).
        let (store, resource, id) = (self.inner.store.clone(), self.resource.to_owned(), self.id);
        let mut leave: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            if let Err(error) = store.leave_lock_queue(&resource, id).await {
                tracing::debug!(%resource, %error, "leaving the lock queue of a dropped waiter");
            }
        });
        // A backend that answers at once (memory) leaves now, so the queue shows the waiter
        // gone when the caller's future is; others finish in the background.
        if leave
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending()
        {
            runtime.spawn(leave);
        }
    }
}

/// Grants, waits for and releases locks. Cheap to clone.
///
/// Waiters are served by priority with aging across every process that shares the backend. A
/// waiter's rank is `enqueued_at - priority * aging_step`: a higher priority jumps ahead by a
/// bounded amount of time, so a low-priority waiter is overtaken for at most
/// `(p_high - p_low) * aging_step` and never starves. A waiter that is not granted at once joins
/// the backend's queue ([`LockStore::join_lock_queue`](crate::backend::LockStore)), refreshes
/// its entry every third of [`LockConfig::waiter_ttl`] while it waits (the entry of a process
/// that died stops blocking the others when it expires) and leaves it when it gives up; a
/// `try_acquire` never jumps the queue.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> orch_core::Result<()> {
/// use std::sync::Arc;
/// use orch_core::{LockManager, LockOptions, MemoryBackend};
///
/// let locks = LockManager::new(Arc::new(MemoryBackend::new()));
/// let guard = locks.acquire("invoices", "worker-1", LockOptions::default()).await?;
/// println!("fencing token {}", guard.fencing_token());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LockManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LockManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockManager")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl LockManager {
    /// A manager over `store` with the default [`LockConfig`].
    pub fn new(store: Arc<dyn LockStore>) -> Self {
        Self::with_config(store, LockConfig::default())
    }

    /// A manager over `store`.
    pub fn with_config(store: Arc<dyn LockStore>, config: LockConfig) -> Self {
        LockManager {
            inner: Arc::new(Inner {
                store,
                config,
                queues: Mutex::new(HashMap::new()),
                waiting: AtomicUsize::new(0),
                counters: Counters::default(),
            }),
        }
    }

    fn guard(&self, info: LockInfo) -> LockGuard {
        self.inner.counters.acquired.fetch_add(1, Ordering::Relaxed);
        LockGuard {
            manager: Some(self.inner.clone()),
            info,
        }
    }

    fn check(resource: &str, owner: &str, ttl: Duration) -> Result<()> {
        check_name("resource", resource, limits::MAX_RESOURCE_LEN)?;
        check_name("owner", owner, limits::MAX_RESOURCE_LEN)?;
        if ttl.is_zero() {
            return Err(Error::invalid("ttl", "must be greater than zero"));
        }
        Ok(())
    }

    /// Takes the lock if it is free right now and no live waiter (of any process) is queued
    /// for it; otherwise [`Error::LockHeld`] (naming the holder, or `"(waiters queued)"`).
    pub async fn try_acquire(
        &self,
        resource: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockGuard> {
        Self::check(resource, owner, ttl)?;
        let request = LockRequest {
            resource: resource.to_owned(),
            owner: owner.to_owned(),
            ttl,
            rank: i64::MAX,
            waiter: None,
        };
        let holder = match self.inner.store.acquire_lock_in_turn(&request).await? {
            LockTurn::Acquired(info) => return Ok(self.guard(info)),
            LockTurn::Held(holder) => holder.owner,
            LockTurn::Behind(_) => "(waiters queued)".to_owned(),
        };
        self.inner
            .counters
            .contended
            .fetch_add(1, Ordering::Relaxed);
        Err(Error::LockHeld {
            resource: resource.to_owned(),
            holder,
        })
    }

    /// Takes the lock, waiting in line (by priority with aging, among the waiters of every
    /// process on the backend) up to `options.wait`; [`Error::LockTimeout`] if the deadline
    /// passes first. A waiter that times out, fails or is dropped leaves the queue.
    pub async fn acquire(
        &self,
        resource: &str,
        owner: &str,
        options: LockOptions,
    ) -> Result<LockGuard> {
        Self::check(resource, owner, options.ttl)?;
        let span =
            tracing::debug_span!("lock.acquire", resource, owner, priority = options.priority);
        self.acquire_inner(resource, owner, options)
            .instrument(span)
            .await
    }

    async fn acquire_inner(
        &self,
        resource: &str,
        owner: &str,
        options: LockOptions,
    ) -> Result<LockGuard> {
        let inner = &*self.inner;
        let started = Instant::now();
        let mut request = LockRequest {
            resource: resource.to_owned(),
            owner: owner.to_owned(),
            ttl: options.ttl,
            rank: rank(clock::now(), options.priority, inner.config.aging_step),
            waiter: None,
        };
        // Fast path: free, and no live waiter is ahead of this one.
        if let LockTurn::Acquired(info) = inner.store.acquire_lock_in_turn(&request).await? {
            return Ok(self.guard(info));
        }
        let deadline = options.wait.map(|wait| started + wait);
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            inner.counters.timed_out.fetch_add(1, Ordering::Relaxed);
            return Err(Error::LockTimeout(resource.to_owned()));
        }
        let id = LockWaiterId::new();
        request.waiter = Some(id);
        let notify = Arc::new(Notify::new());
        inner
            .queues
            .lock()
            .entry(resource.to_owned())
            .or_default()
            .push(Waiter {
                id,
                rank: request.rank,
                notify: notify.clone(),
            });
        inner.waiting.fetch_add(1, Ordering::AcqRel);
        let mut slot = QueueSlot {
            inner,
            resource,
            id,
            left: false,
        };
        let entry = NewLockWaiter {
            resource: resource.to_owned(),
            waiter: id,
            owner: owner.to_owned(),
            priority: options.priority,
            rank: request.rank,
            ttl: inner.waiter_ttl(),
        };
        let refresh_every = entry.ttl / 3;
        inner.store.join_lock_queue(&entry).await?;
        let mut refresh_at = Instant::now() + refresh_every;
        loop {
            if Instant::now() >= refresh_at {
                inner.store.join_lock_queue(&entry).await?;
                refresh_at = Instant::now() + refresh_every;
            }
            let mut wake_at = (Instant::now() + inner.config.poll_interval).min(refresh_at);
            if inner.is_head(resource, id) {
                match inner.store.acquire_lock_in_turn(&request).await? {
                    LockTurn::Acquired(info) => {
                        slot.left = true;
                        inner.record_wait(started.elapsed());
                        return Ok(self.guard(info));
                    }
                    // Retry as soon as the holder's lease runs out...
                    LockTurn::Held(holder) => wake_at = wake_at.min(instant_at(holder.expires_at)),
                    // ... or the entry ahead expires (its process may have died).
                    LockTurn::Behind(ahead) => wake_at = wake_at.min(instant_at(ahead.expires_at)),
                }
            }
            if let Some(deadline) = deadline {
                if Instant::now() >= deadline {
                    inner.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                    match inner.store.leave_lock_queue(resource, id).await {
                        Ok(_) => slot.left = true,
                        Err(error) => {
                            tracing::debug!(%error, "leaving the lock queue after a timeout")
                        }
                    }
                    return Err(Error::LockTimeout(resource.to_owned()));
                }
                wake_at = wake_at.min(deadline);
            }
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    /// Releases a lock by owner and token (for holders that kept the token, not the guard);
    /// [`Error::NotLockHolder`] if they do not hold it.
    pub async fn release(&self, resource: &str, owner: &str, token: FencingToken) -> Result<()> {
        release(&self.inner, resource, owner, token).await
    }

    /// Extends a held lock to `ttl` from now; [`Error::NotLockHolder`] if not held (or expired).
    pub async fn extend(
        &self,
        resource: &str,
        owner: &str,
        token: FencingToken,
        ttl: Duration,
    ) -> Result<LockInfo> {
        Self::check(resource, owner, ttl)?;
        self.inner
            .store
            .extend_lock(resource, owner, token.0, ttl)
            .await?
            .ok_or_else(|| Error::NotLockHolder {
                resource: resource.to_owned(),
                owner: owner.to_owned(),
            })
    }

    /// The unexpired lock on `resource`, if any.
    pub async fn info(&self, resource: &str) -> Result<Option<LockInfo>> {
        self.inner.store.lock_info(resource).await
    }

    /// Waits of this process that hit their deadline, since start.
    pub(crate) fn timeouts_so_far(&self) -> u64 {
        self.inner.counters.timed_out.load(Ordering::Relaxed)
    }

    /// Every unexpired lock.
    pub async fn list(&self) -> Result<Vec<LockInfo>> {
        self.inner.store.list_locks().await
    }

    /// The live waiters of `resource` in every process on the backend, first in line first.
    pub async fn waiters(&self, resource: &str) -> Result<Vec<LockWaiter>> {
        self.inner.store.lock_waiters(resource).await
    }

    /// Every live waiter in every process on the backend, by resource, first in line first.
    pub async fn list_waiters(&self) -> Result<Vec<LockWaiter>> {
        self.inner.store.list_lock_waiters().await
    }

    /// Every resource that is held or waited for: holder with its expiry, and waiters in line
    /// (what a dashboard shows), ordered by resource. Holders and waiters are read one after
    /// the other, not as one snapshot.
    pub async fn overview(&self) -> Result<Vec<LockOverview>> {
        let mut resources: BTreeMap<String, LockOverview> = BTreeMap::new();
        for info in self.list().await? {
            let overview = overview_of(&mut resources, &info.resource);
            overview.holder = Some(info);
        }
        for waiter in self.list_waiters().await? {
            overview_of(&mut resources, &waiter.resource)
                .waiters
                .push(waiter);
        }
        Ok(resources.into_values().collect())
    }

    /// Deletes expired locks (and expired waiter entries) from the store, wakes their waiters,
    /// and returns the expired locks.
    pub async fn reclaim_expired(&self) -> Result<Vec<LockInfo>> {
        let expired = self.inner.store.reclaim_expired_locks().await?;
        for info in &expired {
            self.inner.wake_head(&info.resource);
        }
        Ok(expired)
    }

    /// Counters and current gauges.
    pub async fn stats(&self) -> Result<LockStats> {
        let active = self.inner.store.list_locks().await?.len();
        let queued = self.inner.store.list_lock_waiters().await?.len();
        let waiting = self.inner.queues.lock().values().map(Vec::len).sum();
        let c = &self.inner.counters;
        Ok(LockStats {
            active,
            waiting,
            queued,
            acquired: c.acquired.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
            contended: c.contended.load(Ordering::Relaxed),
            released: c.released.load(Ordering::Relaxed),
            waited: c.waited.load(Ordering::Relaxed),
            total_wait_seconds: c.total_wait_micros.load(Ordering::Relaxed) as f64 / 1e6,
            max_wait_seconds: c.max_wait_micros.load(Ordering::Relaxed) as f64 / 1e6,
        })
    }
}

/// The overview of `resource` in `resources`, added empty if missing.
fn overview_of<'a>(
    resources: &'a mut BTreeMap<String, LockOverview>,
    resource: &str,
) -> &'a mut LockOverview {
    resources
        .entry(resource.to_owned())
        .or_insert_with(|| LockOverview {
            resource: resource.to_owned(),
            holder: None,
            waiters: Vec::new(),
        })
}

async fn release(inner: &Inner, resource: &str, owner: &str, token: FencingToken) -> Result<()> {
    let released = inner.store.release_lock(resource, owner, token.0).await?;
    inner.wake_head(resource);
    if released {
        inner.counters.released.fetch_add(1, Ordering::Relaxed);
        Ok(())
    } else {
        Err(Error::NotLockHolder {
            resource: resource.to_owned(),
            owner: owner.to_owned(),
        })
    }
}

/// The tokio instant at which wall-clock time `at` arrives.
fn instant_at(at: DateTime<Utc>) -> Instant {
    Instant::now() + clock::until(at)
}

/// A held lock. Dropping it releases the lock in the background (inside a tokio runtime);
/// [`LockGuard::release`] does it now and reports the outcome.
#[must_use = "dropping the guard releases the lock"]
pub struct LockGuard {
    /// `None` once released (so drop does nothing).
    manager: Option<Arc<Inner>>,
    info: LockInfo,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("info", &self.info)
            .finish()
    }
}

impl LockGuard {
    /// The resource.
    pub fn resource(&self) -> &str {
        &self.info.resource
    }
    /// The owner.
    pub fn owner(&self) -> &str {
        &self.info.owner
    }
    /// The grant's fencing token.
    pub fn fencing_token(&self) -> FencingToken {
        self.info.fencing_token
    }
    /// When the lock expires unless extended.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.info.expires_at
    }
    /// The grant.
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// Extends the lock to `ttl` from now; [`Error::NotLockHolder`] if it was lost.
    pub async fn extend(&mut self, ttl: Duration) -> Result<()> {
        let Some(inner) = &self.manager else {
            return Err(Error::NotLockHolder {
                resource: self.info.resource.clone(),
                owner: self.info.owner.clone(),
            });
        };
        let info = inner
            .store
            .extend_lock(
                &self.info.resource,
                &self.info.owner,
                self.info.fencing_token.0,
                ttl,
            )
            .await?
            .ok_or_else(|| Error::NotLockHolder {
                resource: self.info.resource.clone(),
                owner: self.info.owner.clone(),
            })?;
        self.info = info;
        Ok(())
    }

    /// Keeps the lock held beyond this guard: dropping the guard no longer releases it. It
    /// stays held until released by owner and token ([`LockManager::release`]) or until it
    /// expires.
    pub fn keep(mut self) -> LockInfo {
        self.manager = None;
        self.info.clone()
    }

    /// Releases the lock now; [`Error::NotLockHolder`] if it had expired and been taken.
    pub async fn release(mut self) -> Result<()> {
        match self.manager.take() {
            Some(inner) => {
                release(
                    &inner,
                    &self.info.resource,
                    &self.info.owner,
                    self.info.fencing_token,
                )
                .await
            }
            None => Ok(()),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(inner) = self.manager.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(resource = %self.info.resource, "lock guard dropped outside a tokio runtime; the lock will expire at its TTL");
            return;
        };
        let info = std::mem::replace(
            &mut self.info,
            LockInfo {
                resource: String::new(),
                owner: String::new(),
                fencing_token: FencingToken(0),
                acquired_at: DateTime::<Utc>::MIN_UTC,
                expires_at: DateTime::<Utc>::MIN_UTC,
            },
        );
        runtime.spawn(async move {
            if let Err(error) = release(&inner, &info.resource, &info.owner, info.fencing_token).await {
                tracing::debug!(resource = %info.resource, %error, "background release of a dropped lock guard");
            }
        });
    }
}
