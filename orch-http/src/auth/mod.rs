//! Authentication and authorization: roles, JWT access tokens (HS256 only; `exp`, `iat`,
//! `iss`, `aud`, `sub` required; signing keys rotate), the [`Authed`] extractor that checks a
//! token, that its user still exists, is enabled and unchanged since it was issued, the
//! caller's role against the endpoint's [`RoleSet`], and the per-user rate limit; the
//! [`Session`] an event stream watches to end when its token stops being valid.

mod failures;
mod jwt;
mod security_log;
pub mod session;
pub mod users;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts, MatchedPath};
use axum::http::{header, request::Parts};
use serde::{Deserialize, Serialize};

pub use crate::auth::failures::AuthFailures;
pub use crate::auth::security_log::{Refusal, SecurityLog};
use crate::auth::users::UserStore;
use crate::client_ip::{ClientIpSource, client_ip_string};
use crate::clock::Clock;
use crate::config::{JwtConfig, LockoutConfig};
use crate::error::ApiError;
use crate::ratelimit::Limits;

/// What a user may do: the roles of ORCH-Next's security manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including users.
    Admin,
    /// Dispatches and manages tasks and locks.
    Operator,
    /// Reads.
    Viewer,
    /// Internal systems and external workers: dispatch, claim, heartbeat, report, locks.
    System,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::System => "system",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Self, ApiError> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            "system" => Ok(Role::System),
            _ => Err(ApiError::unprocessable(
                "role",
                format!("{s:?} is not one of admin, operator, viewer, system"),
            )),
        }
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The username.
    pub sub: String,
    /// The user's role when the token was issued.
    pub role: Role,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// Token id.
    pub jti: String,
    /// The user's revision when the token was issued ([`users::User::revision`]): a change
    /// of the user since refuses the token. Absent in tokens issued before revisions existed.
    #[serde(default)]
    pub rev: String,
}

/// Issues and verifies access tokens with one pinned algorithm (HS256); the current key
/// signs, the previous ones still verify ([`JwtConfig`]).
#[derive(Clone)]
pub struct TokenKeys {
    keys: jwt::KeyRing,
    config: JwtConfig,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("issuer", &self.config.issuer)
            .field("audience", &self.config.audience)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Bad signature, algorithm, shape or claim.
    Invalid(String),
    /// Past its `exp`.
    Expired,
    /// `iat` in the future.
    NotYetValid,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Invalid(reason) => write!(f, "invalid token: {reason}"),
            TokenError::Expired => f.write_str("token expired"),
            TokenError::NotYetValid => f.write_str("token issued in the future"),
        }
    }
}

impl TokenKeys {
    /// Keys for `config`.
    pub fn new(config: &JwtConfig) -> Self {
        TokenKeys {
            keys: jwt::KeyRing::new(
                config.secret.expose().as_bytes(),
                config
                    .previous_secrets
                    .iter()
                    .map(|secret| secret.expose().as_bytes()),
            ),
            config: config.clone(),
        }
    }

    /// The token lifetime in seconds.
    pub fn expires_in(&self) -> u64 {
        self.config.expiry.as_secs().max(1)
    }

    /// Issues a token for `user` (its name, role and revision), valid from now for the
    /// configured lifetime, signed with the current key.
    pub fn issue(&self, user: &users::User, clock: &Clock) -> Result<String, ApiError> {
        let now = clock.unix_now();
        let claims = Claims {
            sub: user.username.clone(),
            role: user.role,
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            iat: now,
            exp: now + self.expires_in(),
            jti: uuid::Uuid::new_v4().to_string(),
            rev: user.revision.clone(),
        };
        self.keys
            .sign(&claims)
            .map_err(|e| ApiError::internal("signing a token", e))
    }

    /// Verifies a token: HS256 signature, required claims, issuer, audience, and time against
    /// `clock` (expired when `now >= exp`; refused when issued more than 60 s ahead).
    pub fn verify(&self, token: &str, clock: &Clock) -> Result<Claims, TokenError> {
        if token.len() > 8192 {
            return Err(TokenError::Invalid("token too long".to_owned()));
        }
        // Every claim of `Claims` is required: a token without `exp`, `iat`, `iss`, `aud` or
        // `sub` does not deserialize.
        let claims: Claims = self.keys.verify(token).map_err(TokenError::Invalid)?;
        if claims.iss != self.config.issuer {
            return Err(TokenError::Invalid("wrong issuer".to_owned()));
        }
        if claims.aud != self.config.audience {
            return Err(TokenError::Invalid("wrong audience".to_owned()));
        }
        // Time is the injected clock's, with no leeway.
        let now = clock.unix_now();
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        if claims.iat > now + 60 {
            return Err(TokenError::NotYetValid);
        }
        if claims.exp.saturating_sub(claims.iat) > 24 * 3600 {
            return Err(TokenError::Invalid("lifetime too long".to_owned()));
        }
        Ok(claims)
    }
}

/// The part of the router's state that authentication and user administration need: token
/// keys, the user store, the rate limiters, the clock, the lockout policy and the security
/// log. Cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct AuthState {
    inner: Arc<AuthInner>,
}

#[derive(Debug)]
struct AuthInner {
    tokens: TokenKeys,
    users: UserStore,
    limits: Arc<Limits>,
    clock: Clock,
    lockout: LockoutConfig,
    security: SecurityLog,
    user_recheck: Duration,
    secure_cookies: bool,
}

impl AuthState {
    /// Puts the parts together; a token's user is re-read at most every `user_recheck`
    /// ([`HttpConfig::user_recheck`](crate::HttpConfig::user_recheck)).
    pub fn new(
        tokens: TokenKeys,
        users: UserStore,
        limits: Arc<Limits>,
        clock: Clock,
        lockout: LockoutConfig,
        security: SecurityLog,
        user_recheck: Duration,
    ) -> Self {
        AuthState {
            inner: Arc::new(AuthInner {
                tokens,
                users,
                limits,
                clock,
                lockout,
                security,
                user_recheck,
                secure_cookies: false,
            }),
        }
    }

    /// Session cookies carry `Secure` ([`HttpConfig::secure_cookies`](crate::HttpConfig)).
    /// Takes effect on a state not yet shared (right after [`AuthState::new`]).
    pub fn with_secure_cookies(mut self, secure: bool) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.secure_cookies = secure;
        }
        self
    }

    /// Whether session cookies carry `Secure`.
    pub fn secure_cookies(&self) -> bool {
        self.inner.secure_cookies
    }

    /// Whether the user of `claims` still exists, is enabled and is unchanged (role and
    /// revision) since the token was issued; `Err` says why not, for a person.
    pub async fn check_user(&self, claims: &Claims) -> Result<Result<(), &'static str>, ApiError> {
        let user = self
            .users()
            .get_for_token(&claims.sub, self.inner.user_recheck)
            .await?;
        Ok(match user {
            None => Err("the token's user no longer exists"),
            Some(user) if user.disabled => Err("the token's user is disabled"),
            Some(user) if user.role != claims.role || user.revision != claims.rev => {
                Err("the token's user has changed since it was issued; log in again")
            }
            Some(_) => Ok(()),
        })
    }

    /// Token issuing and checking.
    pub fn tokens(&self) -> &TokenKeys {
        &self.inner.tokens
    }

    /// The users.
    pub fn users(&self) -> &UserStore {
        &self.inner.users
    }

    /// The rate limiters (per user and endpoint, logins per client address).
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The clock tokens, lockout and limits read.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// The lockout policy.
    pub fn lockout(&self) -> &LockoutConfig {
        &self.inner.lockout
    }

    /// Where security events go.
    pub fn security(&self) -> &SecurityLog {
        &self.inner.security
    }
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Username.
    pub username: String,
    /// Role.
    pub role: Role,
}

/// A set of roles allowed on an endpoint, as a type (see [`Authed`]).
pub trait RoleSet: Send + Sync + 'static {
    /// The roles.
    const ROLES: &'static [Role];
}

/// Every role.
#[derive(Debug)]
pub struct AnyRole;
impl RoleSet for AnyRole {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Operator, Role::Viewer, Role::System];
}

/// Admin, operator and system: dispatch and locks.
#[derive(Debug)]
pub struct Dispatchers;
impl RoleSet for Dispatchers {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Operator, Role::System];
}

/// Admin and operator: cancel.
#[derive(Debug)]
pub struct Operators;
impl RoleSet for Operators {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Operator];
}

/// Admin and system: external workers (claim, heartbeat, report).
#[derive(Debug)]
pub struct Workers;
impl RoleSet for Workers {
    const ROLES: &'static [Role] = &[Role::Admin, Role::System];
}

/// Admin only: users.
#[derive(Debug)]
pub struct Admins;
impl RoleSet for Admins {
    const ROLES: &'static [Role] = &[Role::Admin];
}

/// Extracts the caller from `Authorization: Bearer <token>`: 401 without a valid token (or
/// when its user was since deleted, disabled or changed), 403 if the role is not in `R`, 429
/// over the per-user, per-endpoint rate limit.
#[derive(Debug)]
pub struct Authed<R: RoleSet> {
    principal: Principal,
    session: Session,
    roles: PhantomData<R>,
}

impl Principal {
    /// How events name this caller as the actor of a change: `user:<username>`.
    pub fn actor(&self) -> String {
        format!("user:{}", self.username)
    }
}

impl<R: RoleSet> Authed<R> {
    /// The caller.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The token the caller presented, to watch for the moment it stops being valid.
    pub fn session(&self) -> &Session {
        &self.session
    }
}

/// A verified token, watched: [`Session::ended`] resolves once it has expired or its user was
/// deleted, disabled or changed. Long responses (event streams) end then.
#[derive(Debug, Clone)]
pub struct Session {
    auth: AuthState,
    claims: Arc<Claims>,
}

impl Session {
    /// How often a long response should call [`Session::still_valid`]:
    /// [`HttpConfig::user_recheck`](crate::HttpConfig::user_recheck), at least every 30 s and
    /// at most every 100 ms.
    pub fn recheck_every(&self) -> Duration {
        self.auth
            .inner
            .user_recheck
            .clamp(Duration::from_millis(100), Duration::from_secs(30))
    }

    /// Whether the token is still valid: not expired, its user not deleted, disabled or
    /// changed since. A failure to read the user keeps the session (logged).
    pub async fn still_valid(&self) -> bool {
        if self.auth.clock().unix_now() >= self.claims.exp {
            return false;
        }
        match self.auth.check_user(&self.claims).await {
            Ok(Ok(())) => true,
            Ok(Err(why)) => {
                tracing::debug!(user = %self.claims.sub, why, "session ended");
                false
            }
            Err(error) => {
                tracing::warn!(%error, "session check failed; keeping it");
                true
            }
        }
    }

    /// Resolves when the token is no longer valid, checking every
    /// [`Session::recheck_every`].
    pub async fn ended(&self) {
        loop {
            tokio::time::sleep(self.recheck_every()).await;
            if !self.still_valid().await {
                return;
            }
        }
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthorized("missing Authorization: Bearer token")
                .with_field("Authorization")
        })?
        .to_str()
        .map_err(|_| {
            ApiError::unauthorized("Authorization header is not ASCII").with_field("Authorization")
        })?;
    let (scheme, token) = value.split_once(' ').ok_or_else(|| {
        ApiError::unauthorized("Authorization must be \"Bearer <token>\"")
            .with_field("Authorization")
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(
            ApiError::unauthorized("Authorization must be \"Bearer <token>\"")
                .with_field("Authorization"),
        );
    }
    Ok(token.trim())
}

impl<R, S> FromRequestParts<S> for Authed<R>
where
    R: RoleSet,
    S: Send + Sync,
    AuthState: FromRef<S>,
    ClientIpSource: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let auth = AuthState::from_ref(state);
        // The Authorization header when there is one; else a browser session's cookie, with
        // its CSRF check.
        let token = if parts.headers.contains_key(header::AUTHORIZATION) {
            bearer(parts)?
        } else {
            let (name, _) = session::names(auth.secure_cookies());
            match session::cookie(&parts.headers, name)? {
                Some(token) => {
                    if let Err(refusal) = session::check_csrf(&parts.method, &parts.headers, token)
                    {
                        let ip = client_ip_string(parts, &ClientIpSource::from_ref(state));
                        let why =
                            Refusal::new(refusal.to_string(), Some(ip)).path(parts.uri.path());
                        auth.security().refused("auth.csrf_refused", why).await;
                        return Err(refusal);
                    }
                    token
                }
                None => {
                    return Err(ApiError::unauthorized(
                        "missing Authorization: Bearer token (or a session cookie)",
                    )
                    .with_field("Authorization"));
                }
            }
        };
        let refused = async |reason: String| {
            let ip = client_ip_string(parts, &ClientIpSource::from_ref(state));
            let refusal = Refusal::new(reason.clone(), Some(ip)).path(parts.uri.path());
            auth.security().refused("auth.token_refused", refusal).await;
            ApiError::unauthorized(reason).with_field("Authorization")
        };
        let claims = match auth.tokens().verify(token, auth.clock()) {
            Ok(claims) => claims,
            Err(error) => return Err(refused(error.to_string()).await),
        };
        if let Err(why) = auth.check_user(&claims).await? {
            return Err(refused(why.to_owned()).await);
        }
        if !R::ROLES.contains(&claims.role) {
            return Err(ApiError::forbidden(format!(
                "role {} may not call this endpoint (allowed: {})",
                claims.role.as_str(),
                R::ROLES
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let endpoint = parts
            .extensions
            .get::<MatchedPath>()
            .map(|p| p.as_str())
            .unwrap_or("unmatched");
        auth.limits()
            .check_user(&claims.sub, parts.method.as_str(), endpoint)?;
        Ok(Authed {
            principal: Principal {
                username: claims.sub.clone(),
                role: claims.role,
            },
            session: Session {
                auth,
                claims: Arc::new(claims),
            },
            roles: PhantomData,
        })
    }
}
