//! Rate limits keyed by user and endpoint, by client address, and by client address on login.
//! A refusal is a 429 with `Retry-After` rounded up to whole seconds (at least 1). Time comes
//! from the injected [`Clock`] (test clocks advance by hand).
//!
//! Each limiter is the generic cell rate algorithm (GCRA, what governor implements): per key
//! one number, the theoretical arrival time of the next request. A key whose time has passed
//! is indistinguishable from a new one and is forgotten when room is needed, and each limiter
//! holds at most [`RateLimitConfig::max_tracked_clients`] keys: past that, keys it does not
//! track share one overflow bucket. A flood from a million addresses therefore costs a bounded
//! map, cannot push out the clients already tracked, and is limited as one client.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;

use crate::client_ip::{ClientIp, mask};
use crate::clock::Clock;
use crate::config::{Limit, RateLimitConfig};
use crate::error::ApiError;

/// Maps per limiter, each under its own mutex, so concurrent requests rarely wait on each
/// other.
const SHARDS: usize = 16;

/// One shard: theoretical arrival times (nanoseconds of the clock's `elapsed`) by key.
#[derive(Debug)]
struct Shard<K> {
    arrivals: HashMap<K, u64>,
    /// The overflow bucket's arrival time, for keys this shard has no room to track.
    overflow: u64,
    /// When a full shard may next look for keys to forget (a scan per request would cost a
    /// flood more than the limit saves).
    next_prune: u64,
}

/// How often a full shard looks for keys to forget.
const PRUNE_EVERY: u64 = 100_000_000;

/// One GCRA limiter over keys `K`, bounded in size.
#[derive(Debug)]
struct Keyed<K> {
    /// Nanoseconds between two requests at the sustained rate.
    emission: u64,
    /// How far ahead of now a key's arrival time may run: the burst.
    tolerance: u64,
    shards: Vec<Mutex<Shard<K>>>,
    shard_capacity: usize,
    hasher: RandomState,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(limit: Limit, max_keys: usize) -> Option<Self> {
        if limit.requests_per_minute == 0 {
            return None;
        }
        let emission = 60_000_000_000 / u64::from(limit.requests_per_minute);
        let burst = u64::from(limit.burst_size.max(1));
        let shard_capacity = max_keys.div_ceil(SHARDS).max(1);
        Some(Keyed {
            emission,
            tolerance: emission.saturating_mul(burst),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        arrivals: HashMap::new(),
                        overflow: 0,
                        next_prune: 0,
                    })
                })
                .collect(),
            shard_capacity,
            hasher: RandomState::new(),
        })
    }

    /// Admits one request of `key` at `now` (nanoseconds), or says how long to wait.
    fn check(&self, key: &K, now: u64) -> Result<(), Duration> {
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        let mut shard = self.shards[index].lock();
        let shard = &mut *shard;
        if !shard.arrivals.contains_key(key) && shard.arrivals.len() >= self.shard_capacity {
            // Forget the keys that are back to a full burst: they would be treated alike.
            if now >= shard.next_prune {
                shard.arrivals.retain(|_, arrival| *arrival > now);
                shard.next_prune = now.saturating_add(PRUNE_EVERY);
            }
            if shard.arrivals.len() >= self.shard_capacity {
                return gcra(&mut shard.overflow, now, self.emission, self.tolerance);
            }
        }
        let arrival = shard.arrivals.entry(key.clone()).or_insert(0);
        gcra(arrival, now, self.emission, self.tolerance)
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().arrivals.len()).sum()
    }

    fn prune(&self, now: u64) {
        for shard in &self.shards {
            let mut shard = shard.lock();
            shard.arrivals.retain(|_, arrival| *arrival > now);
            shard.arrivals.shrink_to_fit();
        }
    }
}

/// The GCRA step: admits if the next arrival time stays within `tolerance` of `now`.
fn gcra(arrival: &mut u64, now: u64, emission: u64, tolerance: u64) -> Result<(), Duration> {
    let next = (*arrival).max(now).saturating_add(emission);
    if next - now > tolerance {
        return Err(Duration::from_nanos(next - now - tolerance));
    }
    *arrival = next;
    Ok(())
}

/// The rate limiters of one router.
pub struct Limits {
    clock: Clock,
    ipv6_prefix_len: u8,
    per_user: Option<Keyed<String>>,
    per_ip: Option<Keyed<IpAddr>>,
    login: Option<Keyed<IpAddr>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").finish_non_exhaustive()
    }
}

impl Limits {
    /// Limiters for `config` reading `clock`.
    pub fn new(config: &RateLimitConfig, clock: Clock) -> Arc<Self> {
        let max = config.max_tracked_clients;
        Arc::new(Limits {
            per_user: Keyed::new(config.per_user, max),
            per_ip: Keyed::new(config.per_ip, max),
            login: Keyed::new(config.login_per_ip, max),
            ipv6_prefix_len: config.ipv6_prefix_len,
            clock,
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn check<K: Hash + Eq + Clone>(
        &self,
        limiter: &Option<Keyed<K>>,
        key: &K,
        what: &str,
    ) -> Result<(), ApiError> {
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter.check(key, self.now()).map_err(|wait| {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("rate limit exceeded ({what})"),
            )
            .with_retry_after(seconds)
        })
    }

    /// The key of a client address: the address for IPv4, its network for IPv6.
    fn client_key(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            v4 @ IpAddr::V4(_) => v4,
            v6 => mask(v6, self.ipv6_prefix_len),
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

    /// Per client address (an IPv6 client by its network).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.check(&self.per_ip, &self.client_key(ip), "per client address")
    }

    /// Per client address on login.
    pub fn check_login(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.check(
            &self.login,
            &self.client_key(ip),
            "login attempts per client address",
        )
    }

    /// Keys tracked now, over every limiter (each holds at most
    /// [`RateLimitConfig::max_tracked_clients`]).
    pub fn tracked_keys(&self) -> usize {
        self.per_user.as_ref().map_or(0, Keyed::len)
            + self.per_ip.as_ref().map_or(0, Keyed::len)
            + self.login.as_ref().map_or(0, Keyed::len)
    }

    /// Forgets the keys that are back to a full burst and returns their memory.
    pub fn prune(&self) {
        let now = self.now();
        if let Some(l) = &self.per_user {
            l.prune(now);
        }
        if let Some(l) = &self.per_ip {
            l.prune(now);
        }
        if let Some(l) = &self.login {
            l.prune(now);
        }
    }
}

/// Prunes `limits` every `every` until they are dropped (the router's state holds them).
pub(crate) async fn prune_periodically(limits: std::sync::Weak<Limits>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(limits) = limits.upgrade() else {
            return;
        };
        limits.prune();
    }
}

/// Middleware: the per-IP limit on every route but `/health` and `/openapi.json` (static or
/// cached answers for probes and tools).
pub async fn per_ip(
    State(limits): State<Arc<Limits>>,
    ClientIp(ip): ClientIp,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if matches!(path, "/health" | "/openapi.json") {
        return next.run(request).await;
    }
    if let Some(ip) = ip
        && let Err(error) = limits.check_ip(ip)
    {
        return error.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_admits_a_burst_then_the_sustained_rate() {
        let limiter = Keyed::new(Limit::new(60, 3), 100).unwrap();
        let second = 1_000_000_000;
        for _ in 0..3 {
            assert!(limiter.check(&"a", 0).is_ok());
        }
        assert_eq!(limiter.check(&"a", 0), Err(Duration::from_secs(1)));
        assert!(limiter.check(&"a", second).is_ok());
        assert!(limiter.check(&"a", second).is_err());
        assert!(limiter.check(&"b", second).is_ok());
    }

    #[test]
    fn a_full_limiter_puts_new_keys_in_one_shared_bucket() {
        let limiter = Keyed::new(Limit::new(60, 1), 16).unwrap();
        for n in 0..10_000u32 {
            let _ = limiter.check(&n, 0);
        }
        assert!(limiter.len() <= 16, "{}", limiter.len());
        // Once their time has passed, the tracked keys make room again.
        let later = 2_000_000_000;
        assert!(limiter.check(&20_000u32, later).is_ok());
        limiter.prune(later);
        assert!(limiter.len() <= 1);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_network() {
        let config = RateLimitConfig {
            per_ip: Limit::new(60, 1),
            ..RateLimitConfig::default()
        };
        let limits = Limits::new(&config, Clock::manual_at_unix(0));
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limits.check_ip(a).is_ok());
        assert!(limits.check_ip(b).is_err(), "same /64 as a");
        assert!(limits.check_ip(other).is_ok());
    }
}
