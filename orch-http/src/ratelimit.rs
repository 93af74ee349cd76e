//! Rate limits over `governor` (GCRA) keyed by user and endpoint, by client IP, and by client IP
//! on login. A refusal is a 429 with `Retry-After` rounded up to whole seconds (at least 1).
//! Time comes from the injected [`Clock`] (test clocks advance by hand).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::clock::Clock;
use crate::config::{Limit, RateLimitConfig};
use crate::error::ApiError;

type Keyed<K> = RateLimiter<K, DashMapStateStore<K>, Clock, NoOpMiddleware<std::time::Duration>>;

fn quota(limit: Limit) -> Option<Quota> {
    let rate = NonZeroU32::new(limit.requests_per_minute)?;
    let burst = NonZeroU32::new(limit.burst_size).unwrap_or(NonZeroU32::MIN);
    Some(Quota::per_minute(rate).allow_burst(burst))
}

/// The rate limiters of one router.
pub struct Limits {
    clock: Clock,
    per_user: Option<Keyed<String>>,
    per_ip: Option<Keyed<IpAddr>>,
    login: Option<Keyed<IpAddr>>,
    /// Calls since the last pruning of idle keys.
    calls: AtomicU64,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").finish_non_exhaustive()
    }
}

impl Limits {
    /// Limiters for `config` reading `clock`.
    pub fn new(config: &RateLimitConfig, clock: Clock) -> Arc<Self> {
        let make =
            |limit: Limit| quota(limit).map(|q| RateLimiter::dashmap_with_clock(q, clock.clone()));
        Arc::new(Limits {
            per_user: quota(config.per_user)
                .map(|q| RateLimiter::dashmap_with_clock(q, clock.clone())),
            per_ip: make(config.per_ip),
            login: make(config.login_per_ip),
            clock,
            calls: AtomicU64::new(0),
        })
    }

    fn check<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &Option<Keyed<K>>,
        key: &K,
        what: &str,
    ) -> Result<(), ApiError> {
        let Some(limiter) = limiter else {
            return Ok(());
        };
        if self.calls.fetch_add(1, Ordering::Relaxed) % 65_536 == 65_535 {
            limiter.retain_recent();
        }
        match limiter.check_key(key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.elapsed());
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("rate limit exceeded ({what})"),
                )
                .with_retry_after(seconds))
            }
        }
    }

    /// Per user and endpoint.
    pub fn check_user(&self, user: &str, method: &str, endpoint: &str) -> Result<(), ApiError> {
        if self.per_user.is_none() {
            return Ok(());
        }
        let key = format!("{user}|{method} {endpoint}");
        self.check(&self.per_user, &key, "per user and endpoint")
    }

    /// Per client IP.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.check(&self.per_ip, &ip, "per client address")
    }

    /// Per client IP on login.
    pub fn check_login(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.check(&self.login, &ip, "login attempts per client address")
    }

    /// Forgets idle keys (they would be allowed a full burst anyway).
    pub fn prune(&self) {
        if let Some(l) = &self.per_user {
            l.retain_recent();
        }
        if let Some(l) = &self.per_ip {
            l.retain_recent();
        }
        if let Some(l) = &self.login {
            l.retain_recent();
        }
    }
}

/// Where the client address comes from: the socket peer, or the first `X-Forwarded-For` hop
/// when the router sits behind a trusted proxy ([`HttpConfig::trust_forwarded_for`]).
///
/// [`HttpConfig::trust_forwarded_for`]: crate::HttpConfig::trust_forwarded_for
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientIpSource {
    /// Take the first `X-Forwarded-For` hop.
    pub trust_forwarded_for: bool,
}

/// The client address: the socket peer, or the first `X-Forwarded-For` hop when trusted.
pub fn client_ip(parts: &Parts, source: ClientIpSource) -> Option<IpAddr> {
    if source.trust_forwarded_for
        && let Some(ip) = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return Some(ip);
    }
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// [`client_ip`] as a string for events ("unknown" without one).
pub fn client_ip_string(parts: &Parts, source: ClientIpSource) -> String {
    client_ip(parts, source).map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// Middleware: the per-IP limit on every route but `/health`, `/metrics` and `/openapi.json`.
pub async fn per_ip(
    State(limits): State<Arc<Limits>>,
    ClientIp(ip): ClientIp,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if matches!(path, "/health" | "/metrics" | "/openapi.json") {
        return next.run(request).await;
    }
    if let Some(ip) = ip
        && let Err(error) = limits.check_ip(ip)
    {
        return error.into_response();
    }
    next.run(request).await
}

/// The client address as an extractor (see [`client_ip`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S> FromRequestParts<S> for ClientIp
where
    S: Send + Sync,
    ClientIpSource: FromRef<S>,
{
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts, ClientIpSource::from_ref(state))))
    }
}
