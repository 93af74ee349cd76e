//! [`HttpConfig`]: what the router needs to know (secrets, token lifetime, limits, CORS,
//! trusted proxies), validated once by [`AppState::new`](crate::AppState::new).

use std::path::PathBuf;
use std::time::Duration;

pub use crate::client_ip::IpNet;

/// Errors in an [`HttpConfig`] or a config file; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config {key}: {reason}")]
pub struct ConfigError {
    /// The key at fault, dotted as in the YAML file (`security.jwt_secret`).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl ConfigError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret string.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A fresh random secret: 32 bytes from the system's secure RNG, as 64 hex digits.
    pub fn generate() -> Result<Self, ConfigError> {
        Ok(Secret(random_hex(32)?))
    }
}

/// `bytes` random bytes from the system's secure RNG, as hex.
pub fn random_hex(bytes: usize) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(bytes * 2);
    while out.len() < bytes * 2 {
        let chunk = argon2::password_hash::try_generate_salt()
            .map_err(|e| ConfigError::new("random", format!("system RNG failed: {e}")))?;
        out.push_str(&hex::encode(chunk));
    }
    out.truncate(bytes * 2);
    Ok(out)
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Access tokens: HS256 only, with issuer, audience and lifetime.
///
/// Keys rotate like webhook secrets: `secret` signs every new token, and tokens signed with
/// any of `previous_secrets` are still accepted until they expire. Each token names its key in
/// the header's `kid` (derived from the key, so it reveals nothing of it). To rotate, make the
/// new key `secret` and move the old one to `previous_secrets`; drop it after one token
/// lifetime (`expiry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// The HMAC key that signs new tokens (at least 32 bytes).
    pub secret: Secret,
    /// Older keys whose tokens are still accepted (at least 32 bytes each). Default none.
    pub previous_secrets: Vec<Secret>,
    /// `iss` of issued tokens, required on incoming ones. Default `orch`.
    pub issuer: String,
    /// `aud` of issued tokens, required on incoming ones. Default `orch-api`.
    pub audience: String,
    /// Token lifetime. Default 15 minutes (orchd's `security.jwt_expiry` sets it).
    pub expiry: Duration,
}

/// One token bucket: a sustained rate and a burst. `requests_per_minute == 0` disables it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Sustained rate.
    pub requests_per_minute: u32,
    /// Requests allowed at once above the sustained rate.
    pub burst_size: u32,
}

impl Limit {
    /// A limit of `requests_per_minute` with `burst_size`.
    pub const fn new(requests_per_minute: u32, burst_size: u32) -> Self {
        Limit {
            requests_per_minute,
            burst_size,
        }
    }
}

/// Rate limits (`security.rate_limit` in orchd's config file).
///
/// Clients are keyed by address: an IPv4 address each, an IPv6 client by its network of
/// `ipv6_prefix_len` bits (a /64 by default: one host usually holds a whole /64, so keying per
/// address would let it take 2^64 buckets). Each limiter tracks at most
/// `max_tracked_clients` keys: past that, clients it does not track yet share one bucket, so a
/// flood from countless addresses costs bounded memory and cannot push out the clients already
/// tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Per authenticated user and endpoint (ORCH-Next's `requests_per_minute`/`burst_size`).
    /// Default 100/min, burst 20.
    pub per_user: Limit,
    /// Per client IP over every route except `/health` and `/openapi.json` (`/metrics` counts).
    /// Default 1200/min, burst 200.
    pub per_ip: Limit,
    /// Per client IP on `POST /auth/login`. Default 30/min, burst 10.
    pub login_per_ip: Limit,
    /// Bits of an IPv6 address that key a client (16 to 128). Default 64.
    pub ipv6_prefix_len: u8,
    /// Keys each limiter tracks at most (at least 16). Default 100,000 (a few MiB each).
    pub max_tracked_clients: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_user: Limit::new(100, 20),
            per_ip: Limit::new(1200, 200),
            login_per_ip: Limit::new(30, 10),
            ipv6_prefix_len: 64,
            max_tracked_clients: 100_000,
        }
    }
}

impl RateLimitConfig {
    /// Every limit off (benchmarks, trusted networks).
    pub fn disabled() -> Self {
        RateLimitConfig {
            per_user: Limit::new(0, 0),
            per_ip: Limit::new(0, 0),
            login_per_ip: Limit::new(0, 0),
            ..RateLimitConfig::default()
        }
    }
}

/// Account lockout after failed logins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutConfig {
    /// Failures within `window` that lock the account. Default 5.
    pub max_failures: u32,
    /// The window failures are counted in. Default 15 minutes.
    pub window: Duration,
    /// How long the account stays locked (an admin may unlock sooner: `POST
    /// /users/{username}/unlock`, or `orchd user unlock` on the host). Default 15 minutes.
    pub duration: Duration,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        LockoutConfig {
            max_failures: 5,
            window: Duration::from_secs(15 * 60),
            duration: Duration::from_secs(15 * 60),
        }
    }
}

/// Argon2id cost. The default is OWASP's minimum (19 MiB, 2 passes, 1 lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordHashing {
    /// Memory per hash, in KiB. Default 19456.
    pub memory_kib: u32,
    /// Passes. Default 2.
    pub iterations: u32,
    /// Lanes. Default 1.
    pub parallelism: u32,
    /// Hashes computed at once (each takes `memory_kib`). Default 2.
    pub max_concurrent: usize,
}

impl Default for PasswordHashing {
    fn default() -> Self {
        PasswordHashing {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            max_concurrent: 2,
        }
    }
}

impl PasswordHashing {
    /// The cheapest legal cost: for tests only.
    pub fn insecure_fast_for_tests() -> Self {
        PasswordHashing {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
            max_concurrent: 4,
        }
    }
}

/// The longest webhook tolerance: a day. A signature older than the tolerance is refused; a
/// tolerance of years would accept replays for years, and one near `u64::MAX` seconds would
/// overflow the arithmetic.
pub const MAX_WEBHOOK_TOLERANCE: Duration = Duration::from_secs(24 * 3600);

/// Server-sent events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseConfig {
    /// Streams open at once; more get 503. Default 20000.
    pub max_connections: usize,
    /// Streams one user may hold open at once; more get 429, so that one user cannot take
    /// every slot. Default 32.
    pub max_per_user: usize,
    /// Comment sent on an idle stream so proxies keep it open. Default 15 s.
    pub keep_alive: Duration,
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            max_connections: 20_000,
            max_per_user: 32,
            keep_alive: Duration::from_secs(15),
        }
    }
}

/// Everything the router is configured with.
///
/// ```
/// use orch_http::{HttpConfig, Secret};
///
/// let config = HttpConfig::new(Secret::new("a-jwt-secret-of-at-least-32-bytes!!"))
///     .with_webhook_secret(Secret::new("whsec_test"))
///     .with_cors_origins(vec!["https://ops.example.com".into()]);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Access tokens.
    pub jwt: JwtConfig,
    /// Webhook secrets; a signature made with any of them is accepted (rotation: put the new
    /// one first, keep the old one until senders have switched). Empty: `/webhook` answers 503.
    pub webhook_secrets: Vec<Secret>,
    /// How far a webhook timestamp may be in the past or the future. Default 300 s.
    pub webhook_tolerance: Duration,
    /// Rate limits.
    pub rate_limit: RateLimitConfig,
    /// Account lockout.
    pub lockout: LockoutConfig,
    /// Password hashing cost.
    pub password_hashing: PasswordHashing,
    /// Origins allowed by CORS; empty (the default) sends no CORS headers at all.
    pub cors_origins: Vec<String>,
    /// Server-sent events.
    pub sse: SseConfig,
    /// Largest request body. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Longest a `stay: true` dispatch waits before answering 202 with the task as it is.
    /// Default 300 s.
    pub stay_max_wait: Duration,
    /// How long a `/health` result is reused. Default 1 s.
    pub health_cache: Duration,
    /// Paths whose size `/metrics` reports as `orch_system_disk_usage_bytes{path}`.
    pub disk_paths: Vec<PathBuf>,
    /// Proxies whose `X-Forwarded-For` is believed. When the socket peer is one of them, the
    /// client is the rightmost `X-Forwarded-For` hop that is not itself a trusted proxy
    /// (what a client writes to the left of its own address is ignored). Empty (the default):
    /// the client is always the socket peer and `X-Forwarded-For` is ignored.
    pub trusted_proxies: Vec<IpNet>,
    /// How long a user record read to check a token is reused. A token stops working when its
    /// user is disabled, deleted, re-passworded or given another role: at once on the node
    /// that made the change, within this time on the others; open event streams re-check their
    /// token this often. Default 2 s.
    pub user_recheck: Duration,
    /// Refusals of unauthenticated requests (bad tokens, bad webhook signatures, failed logins)
    /// are recorded as security events at most once per this interval per kind: the first at
    /// once, the rest as one summary with counts at the end of the interval, so a flood of
    /// refused requests costs no database write each. Zero records every refusal. Default
    /// 10 s.
    pub refusal_event_interval: Duration,
    /// When set, `GET /metrics` requires `Authorization: Bearer <this token>` (a Prometheus
    /// `authorization` credential). Default none: the endpoint is open, as it is cheap (see
    /// `metrics_cache`) and subject to the per-IP limit.
    pub metrics_token: Option<Secret>,
    /// How long a rendered `/metrics` page is reused. Default 1 s.
    pub metrics_cache: Duration,
    /// Version reported by `/health`. Default this crate's.
    pub version: String,
    /// Browser session cookies (`POST /auth/login` with `"cookie": true`) carry `Secure`:
    /// set it when the server speaks HTTPS (orchd does with `server.tls`). Default `false`.
    pub secure_cookies: bool,
    /// Where refused logins and tokens are counted (`orch_auth_failures_total`); share it
    /// with the monitor as a sampler. Default a count of its own.
    pub auth_failures: crate::auth::AuthFailures,
}

impl HttpConfig {
    /// Defaults around a JWT secret, with no webhook secret.
    pub fn new(jwt_secret: Secret) -> Self {
        HttpConfig {
            jwt: JwtConfig {
                secret: jwt_secret,
                previous_secrets: Vec::new(),
                issuer: "orch".to_owned(),
                audience: "orch-api".to_owned(),
                expiry: Duration::from_secs(15 * 60),
            },
            webhook_secrets: Vec::new(),
            webhook_tolerance: Duration::from_secs(300),
            rate_limit: RateLimitConfig::default(),
            lockout: LockoutConfig::default(),
            password_hashing: PasswordHashing::default(),
            cors_origins: Vec::new(),
            sse: SseConfig::default(),
            max_body_bytes: 1024 * 1024,
            stay_max_wait: Duration::from_secs(300),
            health_cache: Duration::from_secs(1),
            disk_paths: Vec::new(),
            trusted_proxies: Vec::new(),
            user_recheck: Duration::from_secs(2),
            refusal_event_interval: Duration::from_secs(10),
            metrics_token: None,
            metrics_cache: Duration::from_secs(1),
            auth_failures: crate::auth::AuthFailures::default(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            secure_cookies: false,
        }
    }

    /// Adds a webhook secret (the first one added signs nothing; all verify).
    pub fn with_webhook_secret(mut self, secret: Secret) -> Self {
        self.webhook_secrets.push(secret);
        self
    }

    /// Adds an older JWT key whose tokens are still accepted (see [`JwtConfig`]).
    pub fn with_previous_jwt_secret(mut self, secret: Secret) -> Self {
        self.jwt.previous_secrets.push(secret);
        self
    }

    /// Sets the proxies whose `X-Forwarded-For` is believed.
    pub fn with_trusted_proxies(mut self, proxies: Vec<IpNet>) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    /// Sets how long a user record read for a token check is reused.
    pub fn with_user_recheck(mut self, recheck: Duration) -> Self {
        self.user_recheck = recheck;
        self
    }

    /// Sets the interval refusals are summarised over (zero records every refusal).
    pub fn with_refusal_event_interval(mut self, interval: Duration) -> Self {
        self.refusal_event_interval = interval;
        self
    }

    /// Requires `Authorization: Bearer <token>` on `GET /metrics`.
    pub fn with_metrics_token(mut self, token: Secret) -> Self {
        self.metrics_token = Some(token);
        self
    }

    /// Sets the rate limits.
    pub fn with_rate_limit(mut self, rate_limit: RateLimitConfig) -> Self {
        self.rate_limit = rate_limit;
        self
    }

    /// Sets the lockout policy.
    pub fn with_lockout(mut self, lockout: LockoutConfig) -> Self {
        self.lockout = lockout;
        self
    }

    /// Sets the password hashing cost.
    pub fn with_password_hashing(mut self, hashing: PasswordHashing) -> Self {
        self.password_hashing = hashing;
        self
    }

    /// Sets the CORS origins.
    pub fn with_cors_origins(mut self, origins: Vec<String>) -> Self {
        self.cors_origins = origins;
        self
    }

    /// Sets the token lifetime.
    pub fn with_jwt_expiry(mut self, expiry: Duration) -> Self {
        self.jwt.expiry = expiry;
        self
    }

    /// Sets the SSE settings.
    pub fn with_sse(mut self, sse: SseConfig) -> Self {
        self.sse = sse;
        self
    }

    /// Checks every setting; the error names the key as written in the config file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.jwt.secret.expose().len() < 32 {
            return Err(ConfigError::new(
                "security.jwt_secret",
                "must be at least 32 bytes long",
            ));
        }
        if self
            .jwt
            .previous_secrets
            .iter()
            .any(|secret| secret.expose().len() < 32)
        {
            return Err(ConfigError::new(
                "security.jwt_previous_secrets",
                "each must be at least 32 bytes long",
            ));
        }
        if self.jwt.expiry.is_zero() || self.jwt.expiry > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::new(
                "security.jwt_expiry",
                "must be between 1 and 86400 seconds",
            ));
        }
        if self.jwt.issuer.is_empty() {
            return Err(ConfigError::new("security.jwt_issuer", "must not be empty"));
        }
        if self.jwt.audience.is_empty() {
            return Err(ConfigError::new(
                "security.jwt_audience",
                "must not be empty",
            ));
        }
        for secret in &self.webhook_secrets {
            if secret.expose().len() < 8 {
                return Err(ConfigError::new(
                    "security.webhook_secret",
                    "must be at least 8 bytes long",
                ));
            }
        }
        if self.webhook_tolerance.is_zero() || self.webhook_tolerance > MAX_WEBHOOK_TOLERANCE {
            return Err(ConfigError::new(
                "security.webhook_tolerance",
                "must be between 1 second and 1 day",
            ));
        }
        for (key, limit) in [
            ("security.rate_limit", self.rate_limit.per_user),
            ("security.rate_limit.per_ip", self.rate_limit.per_ip),
            (
                "security.rate_limit.login_per_ip",
                self.rate_limit.login_per_ip,
            ),
        ] {
            if limit.requests_per_minute > 0 && limit.burst_size == 0 {
                return Err(ConfigError::new(
                    format!("{key}.burst_size"),
                    "must be at least 1 when the limit is on",
                ));
            }
        }
        if !(16..=128).contains(&self.rate_limit.ipv6_prefix_len) {
            return Err(ConfigError::new(
                "security.rate_limit.ipv6_prefix_len",
                "must be between 16 and 128",
            ));
        }
        if self.rate_limit.max_tracked_clients < 16 {
            return Err(ConfigError::new(
                "security.rate_limit.max_tracked_clients",
                "must be at least 16",
            ));
        }
        if self.lockout.max_failures == 0 {
            return Err(ConfigError::new(
                "security.lockout.max_failures",
                "must be at least 1",
            ));
        }
        let hashing = &self.password_hashing;
        if argon2::Params::new(
            hashing.memory_kib,
            hashing.iterations,
            hashing.parallelism,
            None,
        )
        .is_err()
        {
            return Err(ConfigError::new(
                "security.password_hashing",
                "not a valid Argon2 cost (memory_kib >= 8 * parallelism, iterations >= 1)",
            ));
        }
        if hashing.max_concurrent == 0 {
            return Err(ConfigError::new(
                "security.password_hashing.max_concurrent",
                "must be at least 1",
            ));
        }
        for origin in &self.cors_origins {
            if origin.parse::<axum::http::HeaderValue>().is_err() || !origin.contains("://") {
                return Err(ConfigError::new(
                    "security.cors.origins",
                    format!("{origin:?} is not an origin like https://host:port"),
                ));
            }
        }
        if self.sse.max_connections == 0 {
            return Err(ConfigError::new(
                "sse.max_connections",
                "must be at least 1",
            ));
        }
        if self.sse.max_per_user == 0 {
            return Err(ConfigError::new("sse.max_per_user", "must be at least 1"));
        }
        if self.sse.keep_alive.is_zero() {
            return Err(ConfigError::new(
                "sse.keep_alive",
                "must be greater than zero",
            ));
        }
        if self.user_recheck > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "security.user_recheck",
                "must be at most 3600 seconds",
            ));
        }
        if self.refusal_event_interval > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::new(
                "security.refusal_event_interval",
                "must be at most 86400 seconds",
            ));
        }
        if let Some(token) = &self.metrics_token
            && token.expose().len() < 16
        {
            return Err(ConfigError::new(
                "monitoring.metrics_token",
                "must be at least 16 bytes long",
            ));
        }
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::new(
                "server.max_body_bytes",
                "must be at least 1024",
            ));
        }
        Ok(())
    }
}
