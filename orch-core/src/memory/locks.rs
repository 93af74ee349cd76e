//! The in-memory lock table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use parking_lot::Mutex;

use super::MemoryBackend;
use crate::backend::LockStore;
use crate::clock;
use crate::error::Result;
use crate::model::{FencingToken, LockAttempt, LockInfo, check_name, limits};

/// Resource -> current grant. Fencing tokens come from one counter, so they strictly increase
/// per resource (and globally).
#[derive(Default)]
pub(crate) struct LockTable {
    held: Mutex<HashMap<String, LockInfo>>,
    last_token: AtomicU64,
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
        if let Some(current) = held.get_mut(resource) {
            if current.expires_at > now {
                return Ok(LockAttempt::Held(current.clone()));
            }
            // Free (released) or expired: grant in place, reusing the entry's strings.
            current.owner.clear();
            current.owner.push_str(owner);
            current.fencing_token =
                FencingToken(self.locks.last_token.fetch_add(1, Ordering::Relaxed) + 1);
            current.acquired_at = now;
            current.expires_at = now + ttl_delta(ttl);
            return Ok(LockAttempt::Acquired(current.clone()));
        }
        let info = LockInfo {
            resource: resource.to_owned(),
            owner: owner.to_owned(),
            fencing_token: FencingToken(self.locks.last_token.fetch_add(1, Ordering::Relaxed) + 1),
            acquired_at: now,
            expires_at: now + ttl_delta(ttl),
        };
        held.insert(resource.to_owned(), info.clone());
        Ok(LockAttempt::Acquired(info))
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
        Ok(expired)
    }
}
