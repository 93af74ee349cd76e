//! Tasks: `POST /dispatch`, `GET /jobs`, `GET /jobs/{id}`, `POST /jobs/{id}/cancel`,
//! `GET /jobs/{id}/events`, and for external workers `POST /jobs/claim`,
//! `POST /jobs/{id}/heartbeat`, `PUT /jobs/{id}/status`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use orch_core::{
    Event, LeaseToken, Orchestrator, Task, TaskError, TaskFilter, TaskId, TaskSpec, TaskStatus,
    WorkerReport,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::{AnyRole, Authed, Dispatchers, Operators, Workers};
use crate::batch::DispatchBatcher;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery, parse_task_id};

/// The part of the state `POST /dispatch` needs besides the orchestrator: the queue that lets
/// concurrent dispatches share one backend call, and how long `stay: true` may wait.
#[derive(Debug, Clone)]
pub struct Dispatching {
    batcher: DispatchBatcher,
    stay_max_wait: Duration,
}

impl Dispatching {
    pub(crate) fn new(batcher: DispatchBatcher, stay_max_wait: Duration) -> Self {
        Dispatching {
            batcher,
            stay_max_wait,
        }
    }
}

/// A task as the API shows it (ORCH-Next's field names).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskView {
    /// The task id (a UUID; `task-<uuid>` is accepted in paths).
    pub task_id: String,
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled`, `timed_out`.
    pub status: String,
    /// Which engine or worker pool runs it.
    pub core_id: String,
    /// Higher runs first.
    pub priority: i32,
    /// Per-attempt timeout in seconds.
    pub timeout: f64,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Attempts started.
    pub attempt: u32,
    /// Dispatch time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Earliest start of the next attempt (ORCH-Next's `estimated_start`).
    pub estimated_start: DateTime<Utc>,
    /// Start of the current or last attempt.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// When the current lease runs out (running only).
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Engine input.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Caller metadata.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Result, once succeeded.
    #[schema(value_type = Object)]
    pub result: Option<Value>,
    /// Last error.
    pub error: Option<String>,
    /// Idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Lock resources held while it runs.
    pub locks: Vec<String>,
}

impl From<Task> for TaskView {
    fn from(task: Task) -> Self {
        TaskView {
            task_id: task.id.to_string(),
            status: task.status.as_str().to_owned(),
            core_id: task.engine,
            priority: task.priority,
            timeout: task.timeout.as_secs_f64(),
            max_attempts: task.max_attempts,
            attempt: task.attempt,
            created_at: task.created_at,
            updated_at: task.updated_at,
            estimated_start: task.run_at,
            started_at: task.started_at,
            finished_at: task.finished_at,
            lease_expires_at: task.lease_expires_at,
            payload: task.payload,
            metadata: task.metadata,
            result: task.result,
            error: task.error,
            idempotency_key: task.idempotency_key,
            locks: task.locks,
        }
    }
}

/// ORCH-Next's dispatch body, plus `payload` for the engine.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DispatchRequest {
    /// Which engine or worker pool runs it (`coreId` accepted).
    #[serde(alias = "coreId")]
    pub core_id: String,
    /// Wait for the final task before answering.
    #[serde(default)]
    pub stay: bool,
    /// Higher runs first. Default 1.
    pub priority: Option<i32>,
    /// Per-attempt timeout in seconds. Default 300.
    pub timeout: Option<f64>,
    /// Attempts before failing for good. Default 3.
    #[serde(alias = "maxAttempts")]
    pub max_attempts: Option<u32>,
    /// Seconds to wait before the first attempt.
    pub delay: Option<f64>,
    /// Do not start before this time.
    #[serde(alias = "runAt")]
    pub run_at: Option<DateTime<Utc>>,
    /// Free-form metadata, stored as is.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Engine input, any JSON.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Same as the `Idempotency-Key` header (the header wins).
    #[serde(alias = "idempotencyKey")]
    pub idempotency_key: Option<String>,
    /// Lock resources to hold while it runs.
    #[serde(default)]
    pub locks: Vec<String>,
}

fn seconds(field: &'static str, value: f64) -> ApiResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        ApiError::unprocessable(field, format!("{value} is not a valid number of seconds"))
    })
}

impl DispatchRequest {
    fn into_spec(self, header_key: Option<String>) -> ApiResult<TaskSpec> {
        let mut spec = TaskSpec::new(self.core_id)
            .payload(self.payload)
            .metadata(self.metadata);
        if let Some(priority) = self.priority {
            spec = spec.priority(priority);
        }
        if let Some(timeout) = self.timeout {
            spec = spec.timeout(seconds("timeout", timeout)?);
        }
        if let Some(max_attempts) = self.max_attempts {
            spec = spec.max_attempts(max_attempts);
        }
        if let Some(delay) = self.delay {
            spec = spec.delay(seconds("delay", delay)?);
        }
        if let Some(run_at) = self.run_at {
            spec = spec.run_at(run_at);
        }
        if let Some(key) = header_key.or(self.idempotency_key) {
            spec = spec.idempotency_key(key);
        }
        for lock in self.locks {
            spec = spec.lock(lock);
        }
        spec.validate()?;
        Ok(spec)
    }
}

fn idempotency_header(headers: &HeaderMap) -> ApiResult<Option<String>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(value) => {
            let key = value
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key", "must be visible ASCII"))?;
            if key.is_empty() || key.len() > orch_core::limits::MAX_IDEMPOTENCY_KEY_LEN {
                return Err(ApiError::bad_request(
                    "Idempotency-Key",
                    "must be 1 to 256 characters",
                ));
            }
            Ok(Some(key.to_owned()))
        }
    }
}

/// `POST /dispatch`: 201 with the new task; 200 with the earlier task when the idempotency key
/// was used before; with `stay: true`, 200 with the finished task, or 202 with the task as it
/// is if it did not finish within the server's wait limit.
#[utoipa::path(post, path = "/dispatch", tag = "tasks", request_body = DispatchRequest,
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = TaskView), (status = 200, body = TaskView),
        (status = 202, body = TaskView), (status = 422, body = crate::error::ErrorBody)))]
pub async fn dispatch(
    State(orch): State<Orchestrator>,
    State(dispatching): State<Dispatching>,
    _caller: Authed<Dispatchers>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<DispatchRequest>,
) -> ApiResult<(StatusCode, Json<TaskView>)> {
    let stay = body.stay;
    let spec = body.into_spec(idempotency_header(&headers)?)?;
    let wait_bound = spec
        .timeout
        .saturating_mul(spec.max_attempts.max(1))
        .saturating_add(Duration::from_secs(60))
        .min(dispatching.stay_max_wait);
    let created = dispatching.batcher.dispatch(spec).await?;
    if !stay {
        let status = if created.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return Ok((status, Json(created.task.into())));
    }
    match orch.wait_for(created.task.id, wait_bound).await {
        Ok(task) => Ok((StatusCode::OK, Json(task.into()))),
        Err(orch_core::Error::WaitTimeout(id)) => {
            let task = orch.get(id).await?;
            Ok((StatusCode::ACCEPTED, Json(task.into())))
        }
        Err(other) => Err(other.into()),
    }
}

/// `GET /jobs/{id}`.
#[utoipa::path(get, path = "/jobs/{id}", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = TaskView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_job(
    State(orch): State<Orchestrator>,
    _caller: Authed<AnyRole>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TaskView>> {
    let id = parse_task_id(&id)?;
    Ok(Json(orch.get(id).await?.into()))
}

/// Filters of `GET /jobs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    /// Only this state.
    pub status: Option<String>,
    /// Only this core (`core` also accepted).
    #[serde(alias = "core")]
    pub core_id: Option<String>,
    /// Page after this task id (`next_after` of the previous page).
    pub after: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// A page of tasks.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobsPage {
    /// Tasks in id (creation) order.
    pub jobs: Vec<TaskView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

/// `GET /jobs`: filters `status`, `core_id`, paging with `after` and `limit`.
#[utoipa::path(get, path = "/jobs", tag = "tasks", security(("bearer" = [])), params(JobsQuery),
    responses((status = 200, body = JobsPage)))]
pub async fn list_jobs(
    State(orch): State<Orchestrator>,
    _caller: Authed<AnyRole>,
    ApiQuery(query): ApiQuery<JobsQuery>,
) -> ApiResult<Json<JobsPage>> {
    let status = query
        .status
        .as_deref()
        .map(|s| {
            s.parse::<TaskStatus>()
                .map_err(|e| ApiError::bad_request("status", e.to_string()))
        })
        .transpose()?;
    let after = query
        .after
        .as_deref()
        .map(|a| parse_task_id(a).map_err(|e| e.with_field("after")))
        .transpose()?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit", "must be between 1 and 1000"));
    }
    let tasks = orch
        .list(TaskFilter {
            status,
            engine: query.core_id,
            after,
            limit,
        })
        .await?;
    let next_after = (tasks.len() == limit)
        .then(|| tasks.last().map(|t| t.id.to_string()))
        .flatten();
    Ok(Json(JobsPage {
        jobs: tasks.into_iter().map(TaskView::from).collect(),
        next_after,
    }))
}

/// `POST /jobs/{id}/cancel`: 409 for a finished task.
#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = TaskView), (status = 409, body = crate::error::ErrorBody)))]
pub async fn cancel_job(
    State(orch): State<Orchestrator>,
    _caller: Authed<Operators>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TaskView>> {
    let id = parse_task_id(&id)?;
    Ok(Json(orch.cancel(id).await?.into()))
}

/// Events of one task.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobEvents {
    /// The task.
    pub task_id: String,
    /// Its events in order.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Event>,
}

/// `GET /jobs/{id}/events`: the task's events from the log, in order.
#[utoipa::path(get, path = "/jobs/{id}/events", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = JobEvents), (status = 404, body = crate::error::ErrorBody)))]
pub async fn job_events(
    State(orch): State<Orchestrator>,
    _caller: Authed<AnyRole>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<JobEvents>> {
    const BATCH: usize = 1000;
    let id = parse_task_id(&id)?;
    orch.get(id).await?;
    // The log has no per-task index: scan it (bounded by retention).
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let batch = orch.events().replay(after, BATCH).await?;
        let full = batch.len() == BATCH;
        if let Some(last) = batch.last() {
            after = last.seq;
        }
        events.extend(batch.into_iter().filter(|e| e.task_id == Some(id)));
        if !full {
            break;
        }
    }
    Ok(Json(JobEvents {
        task_id: id.to_string(),
        events,
    }))
}

/// An external worker's report.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusUpdate {
    /// The lease token from `POST /jobs/claim`.
    pub lease_token: String,
    /// `succeeded`, `failed` or `timed_out`.
    pub status: String,
    /// The result (`succeeded`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub result: Value,
    /// The error (`failed`).
    pub error: Option<String>,
    /// Whether a failure may be retried (default true).
    pub retryable: Option<bool>,
}

fn lease_token(raw: &str) -> ApiResult<LeaseToken> {
    raw.parse()
        .map_err(|_| ApiError::unprocessable("lease_token", "not a lease token (UUID)"))
}

/// `PUT /jobs/{id}/status`: an external worker reports with its lease token. 409 for an
/// illegal transition or a lease no longer held.
#[utoipa::path(put, path = "/jobs/{id}/status", tag = "workers", request_body = StatusUpdate,
    security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = TaskView), (status = 409, body = crate::error::ErrorBody)))]
pub async fn update_status(
    State(orch): State<Orchestrator>,
    _caller: Authed<Workers>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<StatusUpdate>,
) -> ApiResult<Json<TaskView>> {
    let id = parse_task_id(&id)?;
    let token = lease_token(&body.lease_token)?;
    let target: TaskStatus = body
        .status
        .parse()
        .map_err(|e: orch_core::Error| ApiError::unprocessable("status", e.to_string()))?;
    let report = match target {
        TaskStatus::Succeeded => WorkerReport::Succeeded(body.result),
        TaskStatus::Failed => WorkerReport::Failed(TaskError {
            message: body.error.unwrap_or_else(|| "failed".to_owned()),
            retryable: body.retryable.unwrap_or(true),
            details: None,
        }),
        TaskStatus::TimedOut => WorkerReport::TimedOut,
        other => {
            let task = orch.get(id).await?;
            return Err(orch_core::Error::IllegalTransition {
                task_id: id,
                from: task.status,
                to: other,
            }
            .into());
        }
    };
    let task = orch.get(id).await?;
    if task.status != TaskStatus::Running {
        return Err(orch_core::Error::IllegalTransition {
            task_id: id,
            from: task.status,
            to: target,
        }
        .into());
    }
    Ok(Json(orch.report(id, token, report).await?.into()))
}

/// A claim request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The core to take tasks of (`coreId` accepted).
    #[serde(alias = "coreId")]
    pub core_id: String,
    /// Most tasks to take (1 to 100, default 1).
    pub limit: Option<usize>,
    /// Lease in seconds (default: the orchestrator's).
    pub lease: Option<f64>,
}

/// One claimed task.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClaimedTask {
    /// The task, now running.
    pub task: TaskView,
    /// Present it to heartbeat and report.
    pub lease_token: String,
}

/// Claimed tasks.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClaimResponse {
    /// Possibly empty.
    pub tasks: Vec<ClaimedTask>,
}

fn lease(value: Option<f64>) -> ApiResult<Option<Duration>> {
    value
        .map(|v| {
            let d = seconds("lease", v)?;
            if d.is_zero() || d > Duration::from_secs(24 * 3600) {
                return Err(ApiError::unprocessable(
                    "lease",
                    "must be between 0 and 86400 seconds",
                ));
            }
            Ok(d)
        })
        .transpose()
}

/// `POST /jobs/claim`: leases up to `limit` queued tasks of a core to an external worker.
#[utoipa::path(post, path = "/jobs/claim", tag = "workers", request_body = ClaimRequest,
    security(("bearer" = [])), responses((status = 200, body = ClaimResponse)))]
pub async fn claim(
    State(orch): State<Orchestrator>,
    _caller: Authed<Workers>,
    ApiJson(body): ApiJson<ClaimRequest>,
) -> ApiResult<Json<ClaimResponse>> {
    let limit = body.limit.unwrap_or(1);
    if limit == 0 || limit > 100 {
        return Err(ApiError::unprocessable(
            "limit",
            "must be between 1 and 100",
        ));
    }
    let claimed = orch.claim(&body.core_id, limit, lease(body.lease)?).await?;
    Ok(Json(ClaimResponse {
        tasks: claimed
            .into_iter()
            .map(|c| ClaimedTask {
                lease_token: c.lease_token.to_string(),
                task: c.task.into(),
            })
            .collect(),
    }))
}

/// A heartbeat.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The lease token.
    pub lease_token: String,
    /// New lease in seconds (default: the orchestrator's).
    pub lease: Option<f64>,
}

/// A renewed lease.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatResponse {
    /// The task.
    pub task_id: String,
    /// The new expiry.
    pub lease_expires_at: DateTime<Utc>,
}

/// `POST /jobs/{id}/heartbeat`: extends a lease; 409 if it is no longer held.
#[utoipa::path(post, path = "/jobs/{id}/heartbeat", tag = "workers",
    request_body = HeartbeatRequest, security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = HeartbeatResponse), (status = 409, body = crate::error::ErrorBody)))]
pub async fn heartbeat(
    State(orch): State<Orchestrator>,
    _caller: Authed<Workers>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<HeartbeatRequest>,
) -> ApiResult<Json<HeartbeatResponse>> {
    let id: TaskId = parse_task_id(&id)?;
    let token = lease_token(&body.lease_token)?;
    let expires = orch.heartbeat(id, token, lease(body.lease)?).await?;
    Ok(Json(HeartbeatResponse {
        task_id: id.to_string(),
        lease_expires_at: expires,
    }))
}
