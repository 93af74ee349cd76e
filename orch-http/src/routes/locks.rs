//! Locks: `GET /locks`, `GET /locks/{resource}`, `POST /locks/{resource}/acquire`,
//! `POST /locks/{resource}/extend`, `POST /locks/{resource}/release`. A lock taken over HTTP
//! stays held until released or until its TTL runs out; the holder presents its owner name and
//! fencing token to extend or release it.
//!
//! The router keeps nothing of a lock it granted: the backend's row is the only record, so an
//! extension made through another router (another orchd on the same database) is honoured
//! here too, and nothing here ever releases a lock on its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use orch_core::{FencingToken, LockInfo, LockOptions, Orchestrator};
use serde::{Deserialize, Serialize};

use crate::auth::users::RESERVED_LOCK_PREFIX;
use crate::auth::{Admins, AnyRole, Authed, Dispatchers, Principal, Role};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::metrics::Metrics;
use crate::routes::engines::{ControlQuery, reason};

/// A held lock.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LockView {
    /// Resource name.
    pub resource: String,
    /// Holder.
    pub owner: String,
    /// Strictly increases with every grant of the resource.
    pub fencing_token: u64,
    /// Granted at.
    pub acquired_at: DateTime<Utc>,
    /// Expires at unless extended.
    pub expires_at: DateTime<Utc>,
    /// Who waits for it, next first (listed by `GET /locks`; absent elsewhere and when
    /// nobody waits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiters: Vec<WaiterView>,
}

/// A caller queued for a held lock.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WaiterView {
    /// Who waits.
    pub owner: String,
    /// Its priority (higher first).
    pub priority: i32,
    /// Queued at.
    pub enqueued_at: DateTime<Utc>,
    /// Leaves the queue at, unless it is served or renews its place first.
    pub expires_at: DateTime<Utc>,
}

impl From<LockInfo> for LockView {
    fn from(info: LockInfo) -> Self {
        LockView {
            resource: info.resource,
            owner: info.owner,
            fencing_token: info.fencing_token.0,
            acquired_at: info.acquired_at,
            expires_at: info.expires_at,
            waiters: Vec::new(),
        }
    }
}

/// Acquire body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    /// Owner name (default: the caller's username; non-admins may only use their username or
    /// `<username>/<suffix>`): 1 to 256 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub owner: Option<String>,
    /// Seconds the lock lasts, from 0.001 to 86400 (default 30).
    #[schema(minimum = 0.001, maximum = 86400)]
    pub ttl: Option<f64>,
    /// Higher waits less (default 1).
    #[serde(default, deserialize_with = "crate::whole::optional")]
    pub priority: Option<i32>,
    /// Seconds to wait for it (default 0: fail at once if held; at most 30).
    #[schema(minimum = 0, maximum = 30)]
    pub wait: Option<f64>,
}

/// Extend body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// Owner name (default: the caller's username).
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub owner: Option<String>,
    /// The grant's fencing token.
    #[serde(deserialize_with = "crate::whole::number")]
    pub fencing_token: u64,
    /// New TTL in seconds from now, from 0.001 to 86400 (default 30).
    #[schema(minimum = 0.001, maximum = 86400)]
    pub ttl: Option<f64>,
}

/// Release body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// Owner name (default: the caller's username).
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub owner: Option<String>,
    /// The grant's fencing token.
    #[serde(deserialize_with = "crate::whole::number")]
    pub fencing_token: u64,
}

fn owner_for(principal: &Principal, requested: Option<String>) -> ApiResult<String> {
    let owner = requested.unwrap_or_else(|| principal.username.clone());
    let own = owner == principal.username
        || owner
            .strip_prefix(principal.username.as_str())
            .is_some_and(|rest| rest.starts_with('/'));
    if principal.role != Role::Admin && !own {
        return Err(ApiError::forbidden(format!(
            "owner must be {:?} or start with \"{}/\"",
            principal.username, principal.username
        ))
        .with_field("owner"));
    }
    Ok(owner)
}

/// Whether `resource` is one of orch's own: the user store's guards and the webhook replay
/// keys, which no API caller may take, extend, release or see.
pub(crate) fn is_reserved(resource: &str) -> bool {
    resource.starts_with(RESERVED_LOCK_PREFIX)
}

/// 403 for a resource reserved for orch.
fn refuse_reserved(resource: &str) -> ApiResult<()> {
    if is_reserved(resource) {
        return Err(ApiError::forbidden(format!(
            "resources starting with {RESERVED_LOCK_PREFIX:?} are reserved for orch"
        ))
        .with_field("resource"));
    }
    Ok(())
}

fn secs(field: &'static str, value: Option<f64>, default: f64, max: f64) -> ApiResult<Duration> {
    let value = value.unwrap_or(default);
    if !(value.is_finite() && value >= 0.0 && value <= max) {
        return Err(ApiError::unprocessable(
            field,
            format!("must be between 0 and {max} seconds"),
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

/// `GET /locks`.
#[utoipa::path(get, path = "/locks", tag = "locks", security(("bearer" = [])),
    responses((status = 200, body = Vec<LockView>)))]
pub async fn list_locks(
    State(orch): State<Orchestrator>,
    _caller: Authed<AnyRole>,
) -> ApiResult<Json<Vec<LockView>>> {
    let locks = orch.locks().list().await?;
    let mut waiters: HashMap<String, Vec<orch_core::LockWaiter>> = HashMap::new();
    for waiter in orch.locks().list_waiters().await? {
        waiters
            .entry(waiter.resource.clone())
            .or_default()
            .push(waiter);
    }
    Ok(Json(
        locks
            .into_iter()
            .filter(|lock| !is_reserved(&lock.resource))
            .map(|lock| {
                let mut queue = waiters.remove(&lock.resource).unwrap_or_default();
                // Next first: the order the queue serves (`LockWaiter::is_ahead_of`).
                queue.sort_by_key(|w| (w.rank, w.waiter));
                let mut view = LockView::from(lock);
                view.waiters = queue
                    .into_iter()
                    .map(|w| WaiterView {
                        owner: w.owner,
                        priority: w.priority,
                        enqueued_at: w.enqueued_at,
                        expires_at: w.expires_at,
                    })
                    .collect();
                view
            })
            .collect(),
    ))
}

/// `GET /locks/{resource}`: 404 when free.
#[utoipa::path(get, path = "/locks/{resource}", tag = "locks", security(("bearer" = [])),
    params(("resource" = String, Path, min_length = 1, max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
        description = "The resource: 1 to 256 characters, no control characters")),
    responses((status = 200, body = LockView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_lock(
    State(orch): State<Orchestrator>,
    _caller: Authed<AnyRole>,
    ApiPath(resource): ApiPath<String>,
) -> ApiResult<Json<LockView>> {
    // Orch's own locks are not shown: who is logging in right now is nobody's business.
    match orch.locks().info(&resource).await? {
        Some(info) if !is_reserved(&info.resource) => Ok(Json(info.into())),
        _ => Err(
            ApiError::not_found(format!("lock {resource:?} is not held")).with_field("resource"),
        ),
    }
}

/// `POST /locks/{resource}/acquire`: 200 with the grant; 409 if held (or the wait ran out).
#[utoipa::path(post, path = "/locks/{resource}/acquire", tag = "locks",
    request_body = AcquireRequest, security(("bearer" = [])), params(("resource" = String, Path, min_length = 1, max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
        description = "The resource: 1 to 256 characters, no control characters")),
    responses((status = 200, body = LockView), (status = 409, body = crate::error::ErrorBody)))]
pub async fn acquire(
    State(orch): State<Orchestrator>,
    State(metrics): State<Arc<Metrics>>,
    caller: Authed<Dispatchers>,
    ApiPath(resource): ApiPath<String>,
    ApiJson(body): ApiJson<AcquireRequest>,
) -> ApiResult<Json<LockView>> {
    refuse_reserved(&resource)?;
    let owner = owner_for(caller.principal(), body.owner)?;
    let ttl = crate::routes::jobs::seconds_between("ttl", body.ttl.unwrap_or(30.0), 86_400.0)?;
    let wait = secs("wait", body.wait, 0.0, 30.0)?;
    let kind = metrics.resource_label(&resource).to_owned();
    let started = Instant::now();
    let locks = orch.locks();
    let result = if wait.is_zero() {
        locks.try_acquire(&resource, &owner, ttl).await
    } else {
        let options = LockOptions::default()
            .ttl(ttl)
            .priority(body.priority.unwrap_or(1))
            .wait(Some(wait));
        locks.acquire(&resource, &owner, options).await
    };
    let outcome = match &result {
        Ok(_) => "acquired",
        Err(orch_core::Error::LockHeld { .. }) => "held",
        Err(orch_core::Error::LockTimeout(_)) => "timeout",
        Err(_) => "error",
    };
    metrics
        .lock_acquisitions
        .with_label_values(&[&kind, outcome])
        .inc();
    let guard = result?;
    metrics
        .lock_wait
        .with_label_values(&[&kind])
        .observe(started.elapsed().as_secs_f64());
    // Held past this request, until released by owner and token or until it expires: the
    // guard must not release it when dropped.
    let info = guard.keep();
    Ok(Json(info.into()))
}

/// `POST /locks/{resource}/extend`: 409 if not held by this owner and token.
#[utoipa::path(post, path = "/locks/{resource}/extend", tag = "locks",
    request_body = ExtendRequest, security(("bearer" = [])), params(("resource" = String, Path, min_length = 1, max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
        description = "The resource: 1 to 256 characters, no control characters")),
    responses((status = 200, body = LockView), (status = 409, body = crate::error::ErrorBody)))]
pub async fn extend(
    State(orch): State<Orchestrator>,
    caller: Authed<Dispatchers>,
    ApiPath(resource): ApiPath<String>,
    ApiJson(body): ApiJson<ExtendRequest>,
) -> ApiResult<Json<LockView>> {
    refuse_reserved(&resource)?;
    let owner = owner_for(caller.principal(), body.owner)?;
    let ttl = crate::routes::jobs::seconds_between("ttl", body.ttl.unwrap_or(30.0), 86_400.0)?;
    let info = orch
        .locks()
        .extend(&resource, &owner, FencingToken(body.fencing_token), ttl)
        .await?;
    Ok(Json(info.into()))
}

/// `POST /locks/{resource}/release`: 409 if not held by this owner and token.
#[utoipa::path(post, path = "/locks/{resource}/release", tag = "locks",
    request_body = ReleaseRequest, security(("bearer" = [])), params(("resource" = String, Path, min_length = 1, max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
        description = "The resource: 1 to 256 characters, no control characters")),
    responses((status = 200), (status = 409, body = crate::error::ErrorBody)))]
pub async fn release(
    State(orch): State<Orchestrator>,
    caller: Authed<Dispatchers>,
    ApiPath(resource): ApiPath<String>,
    ApiJson(body): ApiJson<ReleaseRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    refuse_reserved(&resource)?;
    let owner = owner_for(caller.principal(), body.owner)?;
    orch.locks()
        .release(&resource, &owner, FencingToken(body.fencing_token))
        .await?;
    Ok(Json(
        serde_json::json!({"resource": resource, "released": true}),
    ))
}

/// The answer to `DELETE /locks/{resource}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForceReleased {
    /// The grant released.
    pub released: LockView,
}

/// `DELETE /locks/{resource}` (admin): releases the lock whoever holds it, for a holder that
/// is stuck; the holder's next extend or release is refused. A `lock.released` event names
/// the caller and the reason. 404 when the resource is free; 409 if the lock changed hands
/// meanwhile.
#[utoipa::path(delete, path = "/locks/{resource}", tag = "locks", security(("bearer" = [])),
    params(("resource" = String, Path, min_length = 1, max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
        description = "The resource: 1 to 256 characters, no control characters"), ControlQuery),
    responses((status = 200, body = ForceReleased), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn force_release(
    State(orch): State<Orchestrator>,
    caller: Authed<Admins>,
    ApiPath(resource): ApiPath<String>,
    ApiQuery(query): ApiQuery<ControlQuery>,
) -> ApiResult<Json<ForceReleased>> {
    refuse_reserved(&resource)?;
    let reason = reason(query.reason)?;
    match orch
        .release_lock(&resource, &caller.principal().actor(), &reason)
        .await?
    {
        Some(info) => Ok(Json(ForceReleased {
            released: info.into(),
        })),
        None => Err(
            ApiError::not_found(format!("lock {resource:?} is not held")).with_field("resource"),
        ),
    }
}
