//! The in-memory lock table and waiter queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use parking_lot::Mutex;

use super::MemoryBackend;
use crate::backend::LockStore;
use crate::clock;
use crate::error::{Error, Result};
use crate::model::{
    FencingToken, LockAttempt, LockInfo, LockRequest, LockTurn, LockWaiter, LockWaiterId,
    NewLockWaiter, check_name, limits,
};

/// Resource -> current grant, and resource -> waiter entries. Fencing tokens come from one
/// counter, so they strictly increase per resource (and globally).
#[derive(Default)]
pub(crate) struct LockTable {
    held: Mutex<HashMap<String, LockInfo>>,
    /// Waiter entries per resource, in no order (queues are short). Locked after `held` when
    /// both are needed, so an acquisition judges grant and queue in one step.
    queue: Mutex<HashMap<String, Vec<LockWaiter>>>,
    last_token: AtomicU64,
}

impl LockTable {
    /// Grants `resource` to `owner` unless it is held at `now`: the one grant rule of both
    /// acquisitions.
    fn grant(
        &self,
        held: &mut HashMap<String, LockInfo>,
        resource: &str,
        owner: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> LockAttempt {
        if let Some(current) = held.get_mut(resource) {
            if current.expires_at > now {
                return LockAttempt::Held(current.clone());
            }
            // Free (released) or expired: grant in place, reusing the entry's strings.
            current.owner.clear();
            current.owner.push_str(owner);
            current.fencing_token = self.next_token();
            current.acquired_at = now;
            current.expires_at = now + ttl_delta(ttl);
            return LockAttempt::Acquired(current.clone());
        }
        let info = LockInfo {
            resource: resource.to_owned(),
            owner: owner.to_owned(),
            fencing_token: self.next_token(),
            acquired_at: now,
            expires_at: now + ttl_delta(ttl),
        };
        held.insert(resource.to_owned(), info.clone());
        LockAttempt::Acquired(info)
    }

    fn next_token(&self) -> FencingToken {
        FencingToken(self.last_token.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// Live entries in queue order.
fn live_in_order(entries: &[LockWaiter], now: DateTime<Utc>) -> Vec<LockWaiter> {
    let mut live: Vec<LockWaiter> = entries
        .iter()
        .filter(|w| w.expires_at > now)
        .cloned()
        .collect();
    live.sort_by_key(|w| (w.rank, w.waiter));
    live
}

/// `expires_at` of a released entry kept for reuse: always in the past.
const FREE: DateTime<Utc> = DateTime::<Utc>::MIN_UTC;

fn ttl_delta(ttl: Duration) -> TimeDelta {
    TimeDelta::from_std(ttl).unwrap_or(TimeDelta::MAX)
}

/// Free entries are kept (their strings reused by the next grant) up to this many resources.
const KEEP_FREE_ENTRIES: usize = 4096;

#[async_trait]
impl LockStore for MemoryBackend {
    async fn try_acquire_lock(
        &self,
        resource: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockAttempt> {
        check_name("resource", resource, limits::MAX_RESOURCE_LEN)?;
        check_name("owner", owner, limits::MAX_RESOURCE_LEN)?;
        let now = clock::now();
        let mut held = self.locks.held.lock();
        Ok(self.locks.grant(&mut held, resource, owner, ttl, now))
    }

    async fn release_lock(&self, resource: &str, owner: &str, token: u64) -> Result<bool> {
        let mut held = self.locks.held.lock();
        let many = held.len() > KEEP_FREE_ENTRIES;
        match held.get_mut(resource) {
            Some(current)
                if current.owner == owner
                    && current.fencing_token.0 == token
                    && current.expires_at != FREE =>
            {
                if many {
                    held.remove(resource);
                } else {
                    // Keep the entry as free: the next grant of this resource reuses it.
                    current.expires_at = FREE;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn extend_lock(
        &self,
        resource: &str,
        owner: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<Option<LockInfo>> {
        let now = clock::now();
        let mut held = self.locks.held.lock();
        match held.get_mut(resource) {
            Some(current)
                if current.owner == owner
                    && current.fencing_token.0 == token
                    && current.expires_at > now =>
            {
                current.expires_at = now + ttl_delta(ttl);
                Ok(Some(current.clone()))
            }
            _ => Ok(None),
        }
    }

    async fn lock_info(&self, resource: &str) -> Result<Option<LockInfo>> {
        let now = clock::now();
        Ok(self
            .locks
            .held
            .lock()
            .get(resource)
            .filter(|info| info.expires_at > now)
            .cloned())
    }

    async fn list_locks(&self) -> Result<Vec<LockInfo>> {
        let now = clock::now();
        let mut locks: Vec<LockInfo> = self
            .locks
            .held
            .lock()
            .values()
            .filter(|info| info.expires_at > now)
            .cloned()
            .collect();
        locks.sort_by(|a, b| a.resource.cmp(&b.resource));
        Ok(locks)
    }

    async fn reclaim_expired_locks(&self) -> Result<Vec<LockInfo>> {
        let now = clock::now();
        let mut held = self.locks.held.lock();
        let mut expired = Vec::new();
        held.retain(|_, info| {
            if info.expires_at == FREE {
                return false;
            }
            if info.expires_at <= now {
                expired.push(info.clone());
                return false;
            }
            true
        });
        drop(held);
        let mut queue = self.locks.queue.lock();
        queue.retain(|_, entries| {
            entries.retain(|w| w.expires_at > now);
            !entries.is_empty()
        });
        Ok(expired)
    }

    async fn acquire_lock_in_turn(&self, request: &LockRequest) -> Result<LockTurn> {
        check_name("resource", &request.resource, limits::MAX_RESOURCE_LEN)?;
        check_name("owner", &request.owner, limits::MAX_RESOURCE_LEN)?;
        let now = clock::now();
        let mut held = self.locks.held.lock();
        if let Some(current) = held.get(&request.resource)
            && current.expires_at > now
        {
            return Ok(LockTurn::Held(current.clone()));
        }
        let mut queue = self.locks.queue.lock();
        if let Some(entries) = queue.get_mut(&request.resource) {
            let ahead = entries
                .iter()
                .filter(|w| w.expires_at > now && w.is_ahead_of(request.rank, request.waiter))
                .min_by_key(|w| (w.rank, w.waiter));
            if let Some(ahead) = ahead {
                return Ok(LockTurn::Behind(ahead.clone()));
            }
            if let Some(own) = request.waiter {
                entries.retain(|w| w.waiter != own);
                if entries.is_empty() {
                    queue.remove(&request.resource);
                }
            }
        }
        match self.locks.grant(
            &mut held,
            &request.resource,
            &request.owner,
            request.ttl,
            now,
        ) {
            LockAttempt::Acquired(info) => Ok(LockTurn::Acquired(info)),
            LockAttempt::Held(info) => Ok(LockTurn::Held(info)),
        }
    }

    async fn join_lock_queue(&self, waiter: &NewLockWaiter) -> Result<LockWaiter> {
        check_name("resource", &waiter.resource, limits::MAX_RESOURCE_LEN)?;
        check_name("owner", &waiter.owner, limits::MAX_RESOURCE_LEN)?;
        if waiter.ttl.is_zero() {
            return Err(Error::invalid("ttl", "must be greater than zero"));
        }
        let now = clock::now();
        let expires_at = now + ttl_delta(waiter.ttl);
        let mut queue = self.locks.queue.lock();
        let entries = queue.entry(waiter.resource.clone()).or_default();
        entries.retain(|w| w.waiter == waiter.waiter || w.expires_at > now);
        if let Some(entry) = entries.iter_mut().find(|w| w.waiter == waiter.waiter) {
            entry.owner.clone_from(&waiter.owner);
            entry.priority = waiter.priority;
            entry.rank = waiter.rank;
            entry.expires_at = expires_at;
            return Ok(entry.clone());
        }
        let entry = LockWaiter {
            resource: waiter.resource.clone(),
            waiter: waiter.waiter,
            owner: waiter.owner.clone(),
            priority: waiter.priority,
            rank: waiter.rank,
            enqueued_at: now,
            expires_at,
        };
        entries.push(entry.clone());
        Ok(entry)
    }

    async fn leave_lock_queue(&self, resource: &str, waiter: LockWaiterId) -> Result<bool> {
        let mut queue = self.locks.queue.lock();
        let Some(entries) = queue.get_mut(resource) else {
            return Ok(false);
        };
        let before = entries.len();
        entries.retain(|w| w.waiter != waiter);
        let left = entries.len() < before;
        if entries.is_empty() {
            queue.remove(resource);
        }
        Ok(left)
    }

    async fn lock_waiters(&self, resource: &str) -> Result<Vec<LockWaiter>> {
        let now = clock::now();
        let queue = self.locks.queue.lock();
        Ok(queue
            .get(resource)
            .map(|entries| live_in_order(entries, now))
            .unwrap_or_default())
    }

    async fn list_lock_waiters(&self) -> Result<Vec<LockWaiter>> {
        let now = clock::now();
        let queue = self.locks.queue.lock();
        let mut resources: Vec<&String> = queue.keys().collect();
        resources.sort();
        Ok(resources
            .into_iter()
            .flat_map(|resource| live_in_order(&queue[resource], now))
            .collect())
    }
}
