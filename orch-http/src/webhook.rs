//! Webhook signatures, Stripe's scheme exactly: `X-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`,
//! where each hex is HMAC-SHA256, keyed with the UTF-8 bytes of a secret, over `"{t}.{body}"`.
//! Several `v1` values and several secrets are accepted (rotation); the timestamp must be within
//! the tolerance in both directions; comparison is constant-time; a delivery is accepted once
//! ([`ReplayGuard`]), by every process on the database and across restarts.

use std::sync::Arc;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use orch_core::backend::LockStore;
use orch_core::{LockGuard, LockManager};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Longest signature header accepted.
pub const MAX_HEADER_LEN: usize = 4096;
/// Most `v1` entries accepted in one header.
pub const MAX_SIGNATURES: usize = 16;

/// A parsed signature header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    /// The `t` value (Unix seconds).
    pub timestamp: u64,
    /// The `v1` values, decoded.
    pub signatures: Vec<[u8; 32]>,
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Signature` header.
    #[error("missing X-Signature header")]
    Missing,
    /// The header is not `t=<unix>,v1=<hex>`.
    #[error("malformed X-Signature header: {0}")]
    Malformed(&'static str),
    /// No `v1` matched the body under any secret.
    #[error("signature does not match")]
    Mismatch,
    /// The timestamp is older than the tolerance.
    #[error("signature timestamp is too old")]
    Stale,
    /// The timestamp is ahead by more than the tolerance.
    #[error("signature timestamp is in the future")]
    Future,
    /// This signature was already accepted once.
    #[error("signature already used (replay)")]
    Replayed,
}

impl SignatureError {
    /// The `status` label of `orch_webhook_signatures_verified_total`.
    pub fn label(&self) -> &'static str {
        match self {
            SignatureError::Missing => "missing",
            SignatureError::Malformed(_) => "malformed",
            SignatureError::Mismatch => "invalid",
            SignatureError::Stale => "stale",
            SignatureError::Future => "future",
            SignatureError::Replayed => "replayed",
        }
    }
}

/// Parses `t=<unix>,v1=<hex>,...`. Unknown schemes (`v0=...`) are ignored as Stripe does.
pub fn parse_header(header: &str) -> Result<SignatureHeader, SignatureError> {
    if header.len() > MAX_HEADER_LEN {
        return Err(SignatureError::Malformed("header too long"));
    }
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let (key, value) = item
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed("items must be key=value"))?;
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed("more than one t"));
                }
                if value.is_empty()
                    || value.len() > 12
                    || !value.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(SignatureError::Malformed("t must be Unix seconds"));
                }
                timestamp = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| SignatureError::Malformed("t must be Unix seconds"))?,
                );
            }
            "v1" => {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(value, &mut bytes)
                    .map_err(|_| SignatureError::Malformed("v1 must be 64 hex digits"))?;
                if signatures.len() == MAX_SIGNATURES {
                    return Err(SignatureError::Malformed("too many v1 values"));
                }
                signatures.push(bytes);
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no t value"))?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("no v1 value"));
    }
    Ok(SignatureHeader {
        timestamp,
        signatures,
    })
}

/// HMAC-SHA256 of `"{t}.{body}"` keyed with `secret`.
pub fn compute(secret: &str, timestamp: u64, body: &[u8]) -> [u8; 32] {
    let mut mac = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC accepts keys of any length.
        Err(_) => return [0; 32],
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The header a sender would send: `t=<timestamp>,v1=<hex>`.
///
/// ```
/// // The test vector checked with Stripe's libraries and openssl.
/// let header = orch_http::webhook::sign("whsec_test", 1_700_000_000, br#"{"a":1}"#);
/// assert_eq!(
///     header,
///     "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
/// );
/// ```
pub fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(compute(secret, timestamp, body))
    )
}

/// Verifies a header against `body` with any of `secrets` at time `now`. Returns the signed
/// timestamp.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[Secret],
    now: u64,
    tolerance: Duration,
) -> Result<u64, SignatureError> {
    let header = parse_header(header.ok_or(SignatureError::Missing)?)?;
    let mut matched = false;
    for secret in secrets {
        let expected = compute(secret.expose(), header.timestamp, body);
        for candidate in &header.signatures {
            // Constant-time per comparison; every candidate is compared.
            matched |= bool::from(expected.ct_eq(candidate));
        }
    }
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    let tolerance = tolerance.as_secs();
    if header.timestamp.saturating_add(tolerance) < now {
        return Err(SignatureError::Stale);
    }
    if header.timestamp > now.saturating_add(tolerance) {
        return Err(SignatureError::Future);
    }
    Ok(header.timestamp)
}

/// What identifies a delivery: SHA-256 of the signed string `"{t}.{body}"`, whichever
/// secret signed it and whichever `v1` matched (during a rotation a sender may sign with
/// both secrets; a replay carrying only one of the signatures is the same delivery).
pub fn delivery_key(timestamp: u64, body: &[u8]) -> [u8; 32] {
    let mut digest = Sha256::new();
    digest.update(timestamp.to_string().as_bytes());
    digest.update(b".");
    digest.update(body);
    digest.finalize().into()
}

/// Lock resources of accepted deliveries start with this.
pub const REPLAY_LOCK_PREFIX: &str = "orch-http/webhook/";

/// Extra lifetime of a delivery's key, for clocks of processes that disagree a little.
const CLOCK_MARGIN: Duration = Duration::from_secs(60);

/// Refuses a delivery seen before, across every process on the database and across restarts:
/// each accepted delivery takes a lock named by its [`delivery_key`] in the backend's lock
/// table, granted once (`try_acquire` is one atomic step on every backend), that lives until
/// its timestamp is refused as stale anyway. Cheap to clone.
///
/// Keys are never released (they expire), so every delivery leaves an expired row in the lock
/// table: the guard deletes expired locks at most every [`RECLAIM_EVERY`], in the background.
#[derive(Clone)]
pub struct ReplayGuard {
    locks: LockManager,
    owner: Arc<str>,
    /// When expired keys were last deleted.
    reclaimed_at: Arc<parking_lot::Mutex<tokio::time::Instant>>,
}

/// How often a [`ReplayGuard`] deletes expired keys at most.
pub const RECLAIM_EVERY: Duration = Duration::from_secs(300);

impl std::fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayGuard").finish_non_exhaustive()
    }
}

/// An accepted delivery's key. [`Delivery::keep`] once handled: it then stays taken until it
/// expires. Dropped without `keep` (the handling failed on the server's side), it is released
/// so the sender's retry is accepted.
#[derive(Debug)]
#[must_use = "keep the delivery once handled, or it is released"]
pub struct Delivery {
    lock: LockGuard,
}

impl Delivery {
    /// Keeps the delivery's key until it expires.
    pub fn keep(self) {
        let _ = self.lock.keep();
    }
}

impl ReplayGuard {
    /// Deletes expired locks in the background, at most every [`RECLAIM_EVERY`].
    fn reclaim_now_and_then(&self) {
        {
            let mut at = self.reclaimed_at.lock();
            if at.elapsed() < RECLAIM_EVERY {
                return;
            }
            *at = tokio::time::Instant::now();
        }
        let locks = self.locks.clone();
        tokio::spawn(async move {
            if let Err(error) = locks.reclaim_expired().await {
                tracing::warn!(%error, "deleting expired webhook delivery keys");
            }
        });
    }

    /// A guard over `locks`' lock table.
    pub fn new(locks: Arc<dyn LockStore>) -> Self {
        let owner = format!("orch-http-webhook/{}", std::process::id());
        ReplayGuard {
            locks: LockManager::new(locks),
            owner: owner.into(),
            reclaimed_at: Arc::new(parking_lot::Mutex::new(tokio::time::Instant::now())),
        }
    }

    /// Takes the key of the delivery signed at `timestamp` over `body`, for as long as the
    /// timestamp stays within `tolerance` of the clock (`now`); `Ok(Err(Replayed))` if it is
    /// taken already. `Err` if the backend failed.
    pub async fn accept(
        &self,
        timestamp: u64,
        body: &[u8],
        now: u64,
        tolerance: Duration,
    ) -> Result<Result<Delivery, SignatureError>, orch_core::Error> {
        let key = delivery_key(timestamp, body);
        let resource = format!("{REPLAY_LOCK_PREFIX}{}", hex::encode(key));
        let valid_for = timestamp
            .saturating_add(tolerance.as_secs())
            .saturating_sub(now)
            .max(1);
        let ttl = Duration::from_secs(valid_for).saturating_add(CLOCK_MARGIN);
        self.reclaim_now_and_then();
        match self.locks.try_acquire(&resource, &self.owner, ttl).await {
            Ok(lock) => Ok(Ok(Delivery { lock })),
            Err(orch_core::Error::LockHeld { .. }) => Ok(Err(SignatureError::Replayed)),
            Err(error) => Err(error),
        }
    }
}

/// The webhook payload, in ORCH-Next's shape.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, utoipa::ToSchema)]
pub struct WebhookPayload {
    /// `task.completed` (with `status`), `task.succeeded`, `task.failed`, `task.cancelled`;
    /// anything else (`task.progress`, ...) is recorded as an event.
    pub event: String,
    /// The task (a UUID, `task-<uuid>` accepted).
    #[schema(
        pattern = r"^(task-)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub task_id: String,
    /// The task's core; must match when given.
    #[serde(default)]
    pub core_id: Option<String>,
    /// `success` or `failure` for `task.completed`.
    #[serde(default)]
    pub status: Option<String>,
    /// The sender's timestamp (informational; the header's `t` is what is checked).
    #[serde(default)]
    pub timestamp: Option<f64>,
    /// Result data (`succeeded`) or error details (`failed`): any JSON value.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    /// An error message for a failure.
    #[serde(default)]
    pub error: Option<String>,
}
