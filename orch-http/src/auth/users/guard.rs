//! [`Guards`]: one holder at a time for one user's records, across every process on the
//! database.
//!
//! A guard is an in-process mutex (one of a fixed set of stripes, picked by a keyed hash of
//! the username) and then a lock in the backend's lock table, `orch-http/users/<name>`: the
//! mutex queues this process's requests without polling the database, the lock orders the
//! processes. The lock has a lifetime ([`GUARD_TTL`]) so a process that dies holding it
//! blocks the user only that long; before each write the holder checks it still holds it
//! ([`UserGuard::still_held`]) and renews it when a third of its lifetime has passed. The
//! key-value space does not check fencing tokens, so a holder paused between that check and
//! its write could still write after losing the lock: the window is one store call.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use orch_core::backend::LockStore;
use orch_core::{LockConfig, LockGuard, LockManager, LockOptions, SharedBackend};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::time::Instant;

use super::UserError;

/// Lifetime of a guard's lock; renewed by a holder that keeps it longer.
pub(super) const GUARD_TTL: Duration = Duration::from_secs(30);
/// Longest wait for a guard before [`UserError::Busy`].
pub(super) const GUARD_WAIT: Duration = Duration::from_secs(10);
/// In-process mutexes usernames are spread over.
const STRIPES: usize = 256;

#[derive(Clone)]
pub(super) struct Guards {
    locks: LockManager,
    /// This process's name as a lock owner.
    owner: Arc<str>,
    stripes: Arc<[Arc<Mutex<()>>]>,
    /// The first start's turn: not a stripe, since its holder then takes a user's stripe.
    bootstrap: Arc<Mutex<()>>,
    hasher: RandomState,
}

impl Guards {
    pub(super) fn new(backend: SharedBackend) -> Self {
        let store: Arc<dyn LockStore> = backend;
        let owner = format!(
            "orch-http-users/{}",
            crate::config::random_hex(8).unwrap_or_else(|_| std::process::id().to_string())
        );
        Guards {
            locks: LockManager::with_config(
                store,
                LockConfig::default().with_poll_interval(Duration::from_millis(25)),
            ),
            owner: owner.into(),
            stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect(),
            bootstrap: Arc::new(Mutex::new(())),
            hasher: RandomState::new(),
        }
    }

    /// The in-process turn for `name` (every name, existing or not, so concurrent requests for
    /// one name queue alike).
    pub(super) async fn stripe(&self, name: &str) -> Result<OwnedMutexGuard<()>, UserError> {
        let stripe = &self.stripes[(self.hasher.hash_one(name) % STRIPES as u64) as usize];
        tokio::time::timeout(GUARD_WAIT, stripe.clone().lock_owned())
            .await
            .map_err(|_| UserError::Busy(name.to_owned()))
    }

    /// The guard of user `username`.
    pub(super) async fn user(&self, username: &str) -> Result<UserGuard, UserError> {
        let stripe = self.stripe(username).await?;
        self.user_in_turn(stripe, username).await
    }

    /// The guard of user `username` for a caller that already has its in-process turn
    /// ([`Guards::stripe`]).
    pub(super) async fn user_in_turn(
        &self,
        turn: OwnedMutexGuard<()>,
        username: &str,
    ) -> Result<UserGuard, UserError> {
        self.hold(turn, username, &format!("orch-http/users/{username}"))
            .await
    }

    /// Takes and releases a lock no one else uses, as a guard would: how long that takes.
    pub(super) async fn time_one(&self) -> Result<Duration, UserError> {
        let started = Instant::now();
        let turn = Arc::new(Mutex::new(())).lock_owned().await;
        let resource = format!("orch-http/users-timing/{}", self.owner);
        self.hold(turn, "(timing)", &resource)
            .await?
            .release()
            .await;
        Ok(started.elapsed())
    }

    /// The guard of the whole store for a first start.
    pub(super) async fn bootstrap(&self) -> Result<UserGuard, UserError> {
        let turn = tokio::time::timeout(GUARD_WAIT, self.bootstrap.clone().lock_owned())
            .await
            .map_err(|_| UserError::Busy("(bootstrap)".to_owned()))?;
        self.hold(turn, "(bootstrap)", "orch-http/users-bootstrap")
            .await
    }

    async fn hold(
        &self,
        stripe: OwnedMutexGuard<()>,
        name: &str,
        resource: &str,
    ) -> Result<UserGuard, UserError> {
        let options = LockOptions::default().ttl(GUARD_TTL).wait(Some(GUARD_WAIT));
        let lock = match self.locks.acquire(resource, &self.owner, options).await {
            Ok(lock) => lock,
            Err(orch_core::Error::LockTimeout(_)) => {
                return Err(UserError::Busy(name.to_owned()));
            }
            Err(error) => return Err(error.into()),
        };
        Ok(UserGuard {
            lock: Some(lock),
            renewed_at: Instant::now(),
            name: name.to_owned(),
            _stripe: stripe,
        })
    }
}

/// A held guard. Dropping it releases it in the background; [`UserGuard::release`] does it
/// now.
pub(super) struct UserGuard {
    lock: Option<LockGuard>,
    renewed_at: Instant,
    name: String,
    _stripe: OwnedMutexGuard<()>,
}

impl UserGuard {
    /// Before a write: fine if the lock was taken or renewed less than a third of its lifetime
    /// ago; else renews it, or [`UserError::GuardLost`] if it expired meanwhile.
    pub(super) async fn still_held(&mut self) -> Result<(), UserError> {
        if self.renewed_at.elapsed() < GUARD_TTL / 3 {
            return Ok(());
        }
        let Some(lock) = &mut self.lock else {
            return Err(UserError::GuardLost(self.name.clone()));
        };
        match lock.extend(GUARD_TTL).await {
            Ok(()) => {
                self.renewed_at = Instant::now();
                Ok(())
            }
            Err(orch_core::Error::NotLockHolder { .. }) => {
                Err(UserError::GuardLost(self.name.clone()))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Releases the guard now (a failure is logged: the lock expires on its own).
    pub(super) async fn release(mut self) {
        if let Some(lock) = self.lock.take()
            && let Err(error) = lock.release().await
        {
            tracing::debug!(%error, user = %self.name, "releasing a user guard");
        }
    }
}
