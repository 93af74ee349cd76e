//! [`UserStore`]: users with Argon2id password hashes and login state (failures, lockout), kept
//! in the backend's key-value space so they live in the same database as the tasks and are
//! shared by every process on it. Its errors are [`UserError`]s; the HTTP layer maps them to
//! statuses ([`ApiError`](crate::ApiError)).
//!
//! The key-value space has no compare-and-set, so every read-modify-write of one user's
//! records (creating, changing, deleting, unlocking, and the failure count of a login) runs
//! under that user's guard (`guard.rs`): a lock in the backend's lock table, which every
//! process on the database shares, taken after an in-process mutex so the processes' turns
//! are not spent on their own queues. Login ([`UserStore::login`], `login.rs`): "locked" is
//! decided under the guard, and its timing does not tell existing users from unknown ones.

mod guard;
mod login;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use orch_core::SharedBackend;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::auth::Role;
use crate::config::PasswordHashing;

use self::guard::Guards;
pub(crate) use self::login::LoginTiming;

const USER_PREFIX: &str = "orch-http/users/";
const LOGIN_PREFIX: &str = "orch-http/login/";

/// Lock resources under this prefix are the user store's (and the webhook replay keys'):
/// the HTTP lock API refuses them, so no caller can hold an account's guard.
pub const RESERVED_LOCK_PREFIX: &str = "orch-http/";

/// What can go wrong in the [`UserStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    /// The username is not 1 to 64 of `A-Z a-z 0-9 . _ @ -`.
    #[error("username must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '@', '-'")]
    InvalidUsername,
    /// The new password is not 12 to 1024 bytes long.
    #[error("password must be between 12 and 1024 bytes long")]
    InvalidPassword,
    /// [`UserStore::create`] of a name that is taken.
    #[error("user {0:?} already exists")]
    AlreadyExists(String),
    /// A change of a name that is no user.
    #[error("no user {0:?}")]
    NotFound(String),
    /// The user's guard stayed held by other requests (or processes) for too long.
    #[error("user {0:?} is busy (too many requests for it at once); retry shortly")]
    Busy(String),
    /// The user's guard expired while this process held it (it was paused for longer than the
    /// guard's lifetime); nothing was written.
    #[error("lost the guard of user {0:?} before writing; retry")]
    GuardLost(String),
    /// The Argon2 cost of [`PasswordHashing`] is not valid.
    #[error("invalid password hashing cost")]
    HashingCost(#[source] argon2::Error),
    /// Argon2 could not hash a password.
    #[error("password hashing failed")]
    Hashing(#[source] argon2::password_hash::Error),
    /// The blocking task that hashes or verifies a password did not finish.
    #[error("password hashing task failed")]
    HashingTask(#[source] tokio::task::JoinError),
    /// The backend's key-value space or lock table failed.
    #[error("user store backend failed")]
    Backend(#[from] orch_core::Error),
    /// A stored user record is not the JSON this version writes.
    #[error("stored user {username:?} is not valid")]
    Corrupt {
        /// Whose record.
        username: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The system's random source failed (a new revision could not be drawn).
    #[error("the system's random source failed: {0}")]
    Random(String),
    /// A record could not be encoded.
    #[error("encoding a user record failed")]
    Encode(#[source] serde_json::Error),
}

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct User {
    /// Login name.
    pub username: String,
    /// What the user may do.
    pub role: Role,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Unix seconds.
    pub created_at: u64,
    /// A disabled user cannot log in and its tokens are refused.
    #[serde(default)]
    pub disabled: bool,
    /// Changes with every change of the user (role, password, disabled) and is carried by its
    /// tokens (claim `rev`): a token of an earlier revision is refused. Records written before
    /// revisions existed have the empty one.
    #[serde(default)]
    pub revision: String,
}

/// A change to a user ([`UserStore::update`]); what is `None` stays as it is.
///
/// ```
/// use orch_http::Role;
/// use orch_http::auth::users::UserChange;
///
/// let change = UserChange::default().role(Role::Viewer).disabled(true);
/// # let _ = change;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserChange {
    /// A new role.
    pub role: Option<Role>,
    /// Disable (`true`) or enable (`false`).
    pub disabled: Option<bool>,
    /// A new password (12 to 1024 bytes); it also clears failed logins and lockout.
    pub password: Option<String>,
}

impl UserChange {
    /// Sets the role.
    pub fn role(mut self, role: Role) -> Self {
        self.role = Some(role);
        self
    }

    /// Disables or enables the user.
    pub fn disabled(mut self, disabled: bool) -> Self {
        self.disabled = Some(disabled);
        self
    }

    /// Sets a new password.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }
}

/// Failed logins and lockout of one user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// Unix seconds of recent failures (within the window).
    pub failures: Vec<u64>,
    /// Locked until this Unix second, if locked.
    pub locked_until: Option<u64>,
}

impl LoginState {
    /// Whether the account is locked at `now_unix`.
    pub fn is_locked(&self, now_unix: u64) -> bool {
        self.locked_until.is_some_and(|until| until > now_unix)
    }
}

/// What a login attempt came to. Callers answer the same 401 for every failure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoginOutcome {
    /// Password correct, account usable.
    Success(User),
    /// No such user.
    UnknownUser,
    /// Wrong password; `locked_now` if this failure locked the account.
    WrongPassword {
        /// This failure reached the limit.
        locked_now: bool,
    },
    /// The account is locked (the password was not looked at).
    Locked,
    /// The account is disabled (the password was not looked at).
    Disabled,
}

/// Checks a username: 1 to 64 of `A-Z a-z 0-9 . _ @ -`.
pub fn check_username(username: &str) -> Result<(), UserError> {
    let ok = !username.is_empty()
        && username.len() <= 64
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(UserError::InvalidUsername)
    }
}

/// Checks a new password: 12 to 1024 bytes.
pub fn check_password(password: &str) -> Result<(), UserError> {
    if password.len() < 12 || password.len() > 1024 {
        return Err(UserError::InvalidPassword);
    }
    Ok(())
}

/// Users and their login state over a backend's key-value space. Cheap to clone; clones share
/// everything (guards, the token-check cache, login timing).
#[derive(Clone)]
pub struct UserStore {
    backend: SharedBackend,
    hashing: PasswordHashing,
    /// Each Argon2 computation takes `memory_kib`: bound how many run at once.
    hash_slots: Arc<Semaphore>,
    /// One user's records are changed by one holder at a time, across processes.
    guards: Guards,
    /// A hash verified for unknown users, so they take as long as known ones.
    dummy_hash: Arc<String>,
    /// What a login spends under its guard, to pad the logins that take none.
    timing: Arc<LoginTiming>,
    /// User records read for token checks, by name, with when they were read.
    token_users: Arc<parking_lot::Mutex<HashMap<String, TokenUser>>>,
}

/// A user record as a token check read it (`None`: no such user), and when.
type TokenUser = (Instant, Option<Arc<User>>);

/// Users whose records the token-check cache keeps at most (it starts over when full).
const TOKEN_CACHE_CAPACITY: usize = 10_000;

impl std::fmt::Debug for UserStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserStore")
            .field("hashing", &self.hashing)
            .finish_non_exhaustive()
    }
}

fn argon2(hashing: &PasswordHashing) -> Result<Argon2<'static>, UserError> {
    let params = Params::new(
        hashing.memory_kib,
        hashing.iterations,
        hashing.parallelism,
        None,
    )
    .map_err(UserError::HashingCost)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_blocking(hashing: &PasswordHashing, password: &str) -> Result<String, UserError> {
    argon2(hashing)?
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(UserError::Hashing)
}

fn verify_blocking(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    // Parameters come from the stored hash.
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// A fresh revision: 16 random hex digits.
fn new_revision() -> Result<String, UserError> {
    crate::config::random_hex(8).map_err(|e| UserError::Random(e.reason))
}

impl UserStore {
    /// A store over `backend` hashing new passwords with `hashing`.
    pub fn new(backend: SharedBackend, hashing: PasswordHashing) -> Result<Self, UserError> {
        let dummy_hash = hash_blocking(&hashing, "dummy password for unknown users")?;
        Ok(UserStore {
            guards: Guards::new(backend.clone()),
            backend,
            hash_slots: Arc::new(Semaphore::new(hashing.max_concurrent.max(1))),
            hashing,
            dummy_hash: Arc::new(dummy_hash),
            timing: Arc::new(LoginTiming::default()),
            token_users: Arc::default(),
        })
    }

    async fn run_hashing<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, UserError> {
        // The semaphore is never closed, so this always holds a slot.
        let _slot = self.hash_slots.acquire().await;
        tokio::task::spawn_blocking(job)
            .await
            .map_err(UserError::HashingTask)
    }

    async fn hash(&self, password: &str) -> Result<String, UserError> {
        let hashing = self.hashing;
        let password = password.to_owned();
        self.run_hashing(move || hash_blocking(&hashing, &password))
            .await?
    }

    /// The user, if any.
    pub async fn get(&self, username: &str) -> Result<Option<User>, UserError> {
        let Some(bytes) = self
            .backend
            .retrieve(&format!("{USER_PREFIX}{username}"))
            .await?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| UserError::Corrupt {
                username: username.to_owned(),
                source,
            })
    }

    /// The user as a token check sees it: read at most `max_age` ago (by this store; changes
    /// made through this store are seen at once).
    pub async fn get_for_token(
        &self,
        username: &str,
        max_age: Duration,
    ) -> Result<Option<Arc<User>>, UserError> {
        if let Some((read_at, user)) = self.token_users.lock().get(username)
            && read_at.elapsed() < max_age
        {
            return Ok(user.clone());
        }
        let user = self.get(username).await?.map(Arc::new);
        let mut cache = self.token_users.lock();
        if cache.len() >= TOKEN_CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(username.to_owned(), (Instant::now(), user.clone()));
        Ok(user)
    }

    fn forget_for_tokens(&self, username: &str) {
        self.token_users.lock().remove(username);
    }

    /// Every user, sorted by name.
    pub async fn list(&self) -> Result<Vec<User>, UserError> {
        let keys = self.backend.list(USER_PREFIX).await?;
        let mut users = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(user) = self.get(&key[USER_PREFIX.len()..]).await? {
                users.push(user);
            }
        }
        Ok(users)
    }

    /// Whether any user exists.
    pub async fn is_empty(&self) -> Result<bool, UserError> {
        Ok(self.backend.list(USER_PREFIX).await?.is_empty())
    }

    /// Creates a user; [`UserError::AlreadyExists`] if the name is taken (also by a create
    /// running at the same time in another process).
    pub async fn create(
        &self,
        username: &str,
        password: &str,
        role: Role,
        now_unix: u64,
    ) -> Result<User, UserError> {
        check_username(username)?;
        check_password(password)?;
        let mut guard = self.guards.user(username).await?;
        if self.get(username).await?.is_some() {
            guard.release().await;
            return Err(UserError::AlreadyExists(username.to_owned()));
        }
        let user = User {
            username: username.to_owned(),
            role,
            password_hash: self.hash(password).await?,
            created_at: now_unix,
            disabled: false,
            revision: new_revision()?,
        };
        guard.still_held().await?;
        self.put(&user).await?;
        self.forget_for_tokens(username);
        guard.release().await;
        Ok(user)
    }

    /// Creates the user only if the store has no user at all (first start): of several
    /// processes bootstrapping one database at once, exactly one creates it. `None` if there
    /// were users already.
    pub async fn create_first(
        &self,
        username: &str,
        password: &str,
        role: Role,
        now_unix: u64,
    ) -> Result<Option<User>, UserError> {
        let mut bootstrap = self.guards.bootstrap().await?;
        let created = if self.is_empty().await? {
            bootstrap.still_held().await?;
            Some(self.create(username, password, role, now_unix).await?)
        } else {
            None
        };
        bootstrap.release().await;
        Ok(created)
    }

    /// Changes a user; every change gives it a new revision, so its earlier tokens stop
    /// working. A new password also clears failed logins and lockout.
    pub async fn update(&self, username: &str, change: UserChange) -> Result<User, UserError> {
        if let Some(password) = &change.password {
            check_password(password)?;
        }
        let mut guard = self.guards.user(username).await?;
        let Some(mut user) = self.get(username).await? else {
            guard.release().await;
            return Err(UserError::NotFound(username.to_owned()));
        };
        if let Some(role) = change.role {
            user.role = role;
        }
        if let Some(disabled) = change.disabled {
            user.disabled = disabled;
        }
        if let Some(password) = &change.password {
            user.password_hash = self.hash(password).await?;
        }
        user.revision = new_revision()?;
        guard.still_held().await?;
        self.put(&user).await?;
        if change.password.is_some() {
            self.backend
                .delete(&format!("{LOGIN_PREFIX}{username}"))
                .await?;
        }
        self.forget_for_tokens(username);
        guard.release().await;
        Ok(user)
    }

    /// Deletes a user and its login state; its tokens stop working.
    pub async fn delete(&self, username: &str) -> Result<(), UserError> {
        let guard = self.guards.user(username).await?;
        let existed = self
            .backend
            .delete(&format!("{USER_PREFIX}{username}"))
            .await?;
        self.backend
            .delete(&format!("{LOGIN_PREFIX}{username}"))
            .await?;
        self.forget_for_tokens(username);
        guard.release().await;
        if existed {
            Ok(())
        } else {
            Err(UserError::NotFound(username.to_owned()))
        }
    }

    async fn put(&self, user: &User) -> Result<(), UserError> {
        let bytes = serde_json::to_vec(user).map_err(UserError::Encode)?;
        self.backend
            .store(&format!("{USER_PREFIX}{}", user.username), bytes)
            .await?;
        Ok(())
    }

    /// Login state of a user.
    pub async fn login_state(&self, username: &str) -> Result<LoginState, UserError> {
        match self
            .backend
            .retrieve(&format!("{LOGIN_PREFIX}{username}"))
            .await?
        {
            Some(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
            None => Ok(LoginState::default()),
        }
    }

    async fn put_login_state(&self, username: &str, state: &LoginState) -> Result<(), UserError> {
        let key = format!("{LOGIN_PREFIX}{username}");
        if state == &LoginState::default() {
            self.backend.delete(&key).await?;
        } else {
            let bytes = serde_json::to_vec(state).map_err(UserError::Encode)?;
            self.backend.store(&key, bytes).await?;
        }
        Ok(())
    }

    /// Clears failures and lockout; [`UserError::NotFound`] for an unknown user.
    pub async fn unlock(&self, username: &str) -> Result<(), UserError> {
        let mut guard = self.guards.user(username).await?;
        if self.get(username).await?.is_none() {
            guard.release().await;
            return Err(UserError::NotFound(username.to_owned()));
        }
        guard.still_held().await?;
        self.put_login_state(username, &LoginState::default())
            .await?;
        guard.release().await;
        Ok(())
    }
}
