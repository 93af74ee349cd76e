//! [`UserStore`]: users with Argon2id password hashes and login state (failures, lockout), kept
//! in the backend's key-value space so they live in the same database as the tasks. Its errors
//! are [`UserError`]s; the HTTP layer maps them to statuses ([`ApiError`](crate::ApiError)).

use std::sync::Arc;
use std::time::Duration;

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use orch_core::SharedBackend;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Semaphore};

use crate::auth::Role;
use crate::config::{LockoutConfig, PasswordHashing};

const USER_PREFIX: &str = "orch-http/users/";
const LOGIN_PREFIX: &str = "orch-http/login/";

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
    /// [`UserStore::unlock`] of a name that is no user.
    #[error("no user {0:?}")]
    NotFound(String),
    /// The Argon2 cost of [`PasswordHashing`] is not valid.
    #[error("invalid password hashing cost")]
    HashingCost(#[source] argon2::Error),
    /// Argon2 could not hash a password.
    #[error("password hashing failed")]
    Hashing(#[source] argon2::password_hash::Error),
    /// The blocking task that hashes or verifies a password did not finish.
    #[error("password hashing task failed")]
    HashingTask(#[source] tokio::task::JoinError),
    /// The backend's key-value space failed.
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
    /// A record could not be encoded.
    #[error("encoding a user record failed")]
    Encode(#[source] serde_json::Error),
}

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Login name.
    pub username: String,
    /// What the user may do.
    pub role: Role,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// Failed logins and lockout of one user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// Unix seconds of recent failures (within the window).
    pub failures: Vec<u64>,
    /// Locked until this Unix second, if locked.
    pub locked_until: Option<u64>,
}

/// What a login attempt came to. Callers answer the same 401 for every failure.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Users and their login state over a backend's key-value space. Cheap to clone.
#[derive(Clone)]
pub struct UserStore {
    backend: SharedBackend,
    hashing: PasswordHashing,
    /// Each Argon2 computation takes `memory_kib`: bound how many run at once.
    hash_slots: Arc<Semaphore>,
    /// Serialises read-modify-write of login state in this process.
    login_state: Arc<Mutex<()>>,
    /// A hash verified for unknown users, so they take as long as known ones.
    dummy_hash: Arc<String>,
}

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

impl UserStore {
    /// A store over `backend` hashing new passwords with `hashing`.
    pub fn new(backend: SharedBackend, hashing: PasswordHashing) -> Result<Self, UserError> {
        let dummy_hash = hash_blocking(&hashing, "dummy password for unknown users")?;
        Ok(UserStore {
            backend,
            hash_slots: Arc::new(Semaphore::new(hashing.max_concurrent.max(1))),
            hashing,
            login_state: Arc::new(Mutex::new(())),
            dummy_hash: Arc::new(dummy_hash),
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

    /// Creates a user; [`UserError::AlreadyExists`] if the name is taken.
    pub async fn create(
        &self,
        username: &str,
        password: &str,
        role: Role,
        now_unix: u64,
    ) -> Result<User, UserError> {
        check_username(username)?;
        check_password(password)?;
        if self.get(username).await?.is_some() {
            return Err(UserError::AlreadyExists(username.to_owned()));
        }
        let hashing = self.hashing;
        let password = password.to_owned();
        let password_hash = self
            .run_hashing(move || hash_blocking(&hashing, &password))
            .await??;
        let user = User {
            username: username.to_owned(),
            role,
            password_hash,
            created_at: now_unix,
        };
        self.put(&user).await?;
        Ok(user)
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
        if self.get(username).await?.is_none() {
            return Err(UserError::NotFound(username.to_owned()));
        }
        let _guard = self.login_state.lock().await;
        self.put_login_state(username, &LoginState::default()).await
    }

    /// Checks a password, recording failures and locking the account after too many.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        lockout: &LockoutConfig,
        now_unix: u64,
    ) -> Result<LoginOutcome, UserError> {
        let user = if check_username(username).is_ok() {
            self.get(username).await?
        } else {
            None
        };
        let hash = match &user {
            Some(user) => user.password_hash.clone(),
            None => self.dummy_hash.as_str().to_owned(),
        };
        let candidate = password.to_owned();
        let state = match &user {
            Some(_) => self.login_state(username).await?,
            None => LoginState::default(),
        };
        let locked = state.locked_until.is_some_and(|until| until > now_unix);
        // Verify in every case, so unknown, locked and wrong all take the same time.
        let verified = self
            .run_hashing(move || verify_blocking(&candidate, &hash))
            .await?;
        let Some(user) = user else {
            return Ok(LoginOutcome::UnknownUser);
        };
        if locked {
            return Ok(LoginOutcome::Locked);
        }
        let _guard = self.login_state.lock().await;
        let mut state = self.login_state(username).await?;
        if verified {
            if state != LoginState::default() {
                self.put_login_state(username, &LoginState::default())
                    .await?;
            }
            return Ok(LoginOutcome::Success(user));
        }
        let window_start = now_unix.saturating_sub(lockout.window.as_secs());
        state.failures.retain(|&at| at > window_start);
        state.failures.push(now_unix);
        let locked_now = state.failures.len() >= lockout.max_failures as usize;
        if locked_now {
            state.locked_until = Some(now_unix + duration_secs(lockout.duration));
            state.failures.clear();
        } else if state.locked_until.is_some_and(|until| until <= now_unix) {
            state.locked_until = None;
        }
        self.put_login_state(username, &state).await?;
        Ok(LoginOutcome::WrongPassword { locked_now })
    }
}

fn duration_secs(duration: Duration) -> u64 {
    duration.as_secs().max(1)
}
