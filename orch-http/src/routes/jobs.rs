//! Tasks: `POST /dispatch`, `GET /jobs`, `GET /jobs/{id}`, `POST /jobs/{id}/cancel`,
//! `GET /jobs/{id}/events`, and for external workers `POST /jobs/claim`,
//! `POST /jobs/{id}/heartbeat`, `PUT /jobs/{id}/status`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use orch_core::{
    Event, LeaseToken, OnParentFailure, Orchestrator, Parent, Step, Task, TaskError, TaskFilter,
    TaskId, TaskSpec, TaskStatus, TraceContext, WorkerReport,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;

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
    #[schema(format = Uuid)]
    pub task_id: String,
    /// `waiting`, `queued`, `running`, `succeeded`, `failed`, `cancelled`, `timed_out`.
    #[schema(value_type = crate::openapi::TaskState)]
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
    /// Engine input: any JSON value.
    pub payload: Value,
    /// Caller metadata: any JSON value.
    pub metadata: Value,
    /// Result, once succeeded: any JSON value (`null` before).
    pub result: Option<Value>,
    /// Last error.
    pub error: Option<String>,
    /// Idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Lock resources held while it runs.
    pub locks: Vec<String>,
    /// The workflow it belongs to, if any.
    #[schema(format = Uuid)]
    pub workflow_id: Option<String>,
    /// How many of the tasks it depends on have not finished (`waiting` while more than 0).
    pub waiting_for: u32,
    /// The W3C trace context its attempts continue, if it carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The W3C `tracestate` beside `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
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
            workflow_id: task.workflow_id.map(|id| id.to_string()),
            waiting_for: task.waiting_for,
            traceparent: task.traceparent,
            tracestate: task.tracestate,
        }
    }
}

/// A task the new task waits for: an existing task (`task`, its id) or, in
/// `POST /workflows`, a task of the same call (`step`, its index in `tasks`). Exactly one of
/// the two. The new task stays `waiting` until every task it names has finished.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DependencyRequest {
    /// An existing task's id (a UUID, `task-<uuid>` accepted).
    #[schema(
        pattern = r"^(task-)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub task: Option<String>,
    /// A task of the same `POST /workflows` call: its index in `tasks`, from 0.
    #[serde(default, deserialize_with = "crate::whole::optional")]
    #[schema(minimum = 0)]
    pub step: Option<usize>,
    /// What the parent's failure (failed, cancelled or timed out) does to the new task:
    /// `fail` (the default), `cancel`, or `run_anyway` (for clean-up steps).
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::ParentFailure>, nullable = false)]
    pub on_failure: Option<OnParentFailure>,
}

impl DependencyRequest {
    /// The parent this names; `steps` is how many tasks the call has (0: no steps allowed).
    fn parent(&self, field: &str, steps: usize) -> ApiResult<Parent> {
        match (&self.task, self.step) {
            (Some(task), None) => parse_task_id(task).map(Parent::Task).map_err(|_| {
                ApiError::unprocessable(
                    format!("{field}.task"),
                    format!("{task:?} is not a task id (UUID)"),
                )
            }),
            (None, Some(_)) if steps == 0 => Err(ApiError::unprocessable(
                format!("{field}.step"),
                "a step names a task of the same call: POST /dispatch stores one task, \
                 so name an existing task with `task`, or send the graph to POST /workflows",
            )),
            (None, Some(step)) => Ok(Parent::Step(Step(step))),
            _ => Err(ApiError::unprocessable(
                field.to_owned(),
                "must name exactly one of `task` (an existing task) and `step` (a task of \
                 the same call)",
            )),
        }
    }
}

/// ORCH-Next's dispatch body, plus `payload` for the engine.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DispatchRequest {
    /// Which engine or worker pool runs it (`coreId` accepted): 1 to 128 characters, no
    /// control characters.
    #[serde(alias = "coreId")]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub core_id: String,
    /// Wait for the final task before answering.
    #[serde(default)]
    pub stay: bool,
    /// Higher runs first. Default 1.
    #[serde(default, deserialize_with = "crate::whole::optional")]
    pub priority: Option<i32>,
    /// Per-attempt timeout in seconds, from 0.001 to 7 days. Default 300.
    #[schema(minimum = 0.001, maximum = 604800)]
    pub timeout: Option<f64>,
    /// Attempts before failing for good, 1 to 1000. Default 3.
    #[serde(
        alias = "maxAttempts",
        default,
        deserialize_with = "crate::whole::optional"
    )]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_attempts: Option<u32>,
    /// Seconds to wait before the first attempt, at most 366 days.
    #[schema(minimum = 0, maximum = 31622400)]
    pub delay: Option<f64>,
    /// Do not start before this time (years 0000 to 9999).
    #[serde(alias = "runAt")]
    pub run_at: Option<DateTime<Utc>>,
    /// Free-form metadata, any JSON value, stored as is. Strings and keys must not contain
    /// the character U+0000 (422 naming the field).
    #[serde(default)]
    #[schema(value_type = crate::openapi::StorableJson)]
    pub metadata: Value,
    /// Engine input, any JSON value. Strings and keys must not contain the character U+0000
    /// (422 naming the field).
    #[serde(default)]
    #[schema(value_type = crate::openapi::StorableJson)]
    pub payload: Value,
    /// Same as the `Idempotency-Key` header (the header wins): 1 to 256 characters, no
    /// control characters.
    #[serde(alias = "idempotencyKey")]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub idempotency_key: Option<String>,
    /// Lock resources to hold while it runs: at most 16, each 1 to 256 characters without
    /// control characters.
    #[serde(default)]
    #[schema(max_items = 16, inline, value_type = Vec<crate::openapi::ResourceName>)]
    pub locks: Vec<String>,
    /// The tasks it waits for (at most 10,000): it stays `waiting` until they have finished,
    /// then is queued. An unknown task is refused (422 naming it), nothing stored.
    #[serde(default)]
    #[schema(max_items = 10000)]
    pub depends_on: Vec<DependencyRequest>,
    /// A W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`): the trace the task's dispatch,
    /// claim, engine call and outcome continue. Wins over the `traceparent` header; a bad one
    /// is a 422 naming the field.
    #[schema(
        min_length = 55,
        max_length = 256,
        pattern = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[\x21-\x7E]*)?$"
    )]
    pub traceparent: Option<String>,
    /// The W3C `tracestate` beside `traceparent` (only with it): at most 512 characters of
    /// comma-separated `key=value` members.
    #[schema(min_length = 1, max_length = 512)]
    pub tracestate: Option<String>,
}

fn seconds(field: &'static str, value: f64) -> ApiResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        ApiError::unprocessable(field, format!("{value} is not a valid number of seconds"))
    })
}

/// A duration of at least a millisecond (what is shorter would round to nothing) and at most
/// `max` seconds.
pub(crate) fn seconds_between(field: &'static str, value: f64, max: f64) -> ApiResult<Duration> {
    if !(value.is_finite() && (0.001..=max).contains(&value)) {
        return Err(ApiError::unprocessable(
            field,
            format!("must be between 0.001 and {max} seconds"),
        ));
    }
    seconds(field, value)
}

impl DispatchRequest {
    /// The spec, validated. `steps` is how many tasks the call has, for dependencies on
    /// tasks of the same call (`POST /workflows`); 0 refuses them (`POST /dispatch`).
    pub(crate) fn into_spec(self, header_key: Option<String>, steps: usize) -> ApiResult<TaskSpec> {
        let mut spec = TaskSpec::new(self.core_id)
            .payload(self.payload)
            .metadata(self.metadata);
        if let Some(priority) = self.priority {
            spec = spec.priority(priority);
        }
        if let Some(timeout) = self.timeout {
            spec = spec.timeout(seconds_between("timeout", timeout, 604_800.0)?);
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
        // The body's key is checked even when the header's wins.
        if let Some(key) = &self.idempotency_key {
            orch_core::backend::check_name(
                "idempotency_key",
                key,
                orch_core::limits::MAX_IDEMPOTENCY_KEY_LEN,
            )?;
        }
        if let Some(key) = header_key.or(self.idempotency_key) {
            spec = spec.idempotency_key(key);
        }
        for lock in self.locks {
            if crate::routes::locks::is_reserved(&lock) {
                // The user store's guards and the webhook replay keys: a task holding one
                // would stop logins or webhooks for as long as it runs.
                return Err(ApiError::unprocessable(
                    "locks",
                    format!(
                        "resources starting with {:?} are reserved for orch",
                        crate::auth::users::RESERVED_LOCK_PREFIX
                    ),
                ));
            }
            spec = spec.lock(lock);
        }
        if self.depends_on.len() > orch_core::limits::MAX_DEPENDENCIES {
            return Err(ApiError::unprocessable(
                "depends_on",
                format!(
                    "at most {} dependencies per task",
                    orch_core::limits::MAX_DEPENDENCIES
                ),
            ));
        }
        for (index, dependency) in self.depends_on.iter().enumerate() {
            let parent = dependency.parent(&format!("depends_on[{index}]"), steps)?;
            spec = spec.after_with(parent, dependency.on_failure.unwrap_or_default());
        }
        spec.traceparent = self.traceparent;
        spec.tracestate = self.tracestate;
        spec.validate()?;
        Ok(spec)
    }
}

/// The W3C trace context of the `traceparent` and `tracestate` headers. As the W3C
/// recommendation asks, a malformed `traceparent` is ignored (the dispatch starts a trace of its
/// own) and a malformed `tracestate` is dropped; neither fails the request.
pub(crate) fn trace_headers(headers: &HeaderMap) -> Option<TraceContext> {
    let traceparent = headers.get("traceparent")?.to_str().ok()?.trim();
    let tracestate = headers
        .get_all("tracestate")
        .iter()
        .map(|value| value.to_str().map(str::trim))
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .map(|parts| parts.join(","))
        .filter(|state| orch_core::check_tracestate(state).is_ok());
    TraceContext::new(traceparent, tracestate).ok()
}

/// Opens the dispatch span ([`DISPATCH_SPAN`](orch_core::trace::DISPATCH_SPAN)) in the trace
/// `spec` continues (given in the body or the headers), and makes `spec` carry the span's own
/// context, so that the task's claim, wherever it happens, is the dispatch's child. Without a
/// trace propagator nothing is opened and the context is stored as given.
pub(crate) fn open_dispatch_span(
    orch: &Orchestrator,
    spec: &mut TaskSpec,
    headers: &HeaderMap,
) -> tracing::Span {
    let incoming = match &spec.traceparent {
        Some(traceparent) => TraceContext::new(traceparent.clone(), spec.tracestate.clone()).ok(),
        None => trace_headers(headers),
    };
    let (span, context) = dispatch_span(orch, &spec.engine, incoming);
    if let Some(context) = context {
        carry_trace(spec, context);
    }
    span
}

/// Makes `spec` carry `context`.
pub(crate) fn carry_trace(spec: &mut TaskSpec, context: TraceContext) {
    let (traceparent, tracestate) = context.into_parts();
    spec.traceparent = Some(traceparent);
    spec.tracestate = tracestate;
}

/// The dispatch span of `core_id` in the trace `incoming` continues (none without a trace
/// propagator), and the context a task dispatched under it carries: the span's own, or
/// `incoming` as given without a propagator.
pub(crate) fn dispatch_span(
    orch: &Orchestrator,
    core_id: &str,
    incoming: Option<TraceContext>,
) -> (tracing::Span, Option<TraceContext>) {
    let Some(propagator) = orch.trace_propagator() else {
        return (tracing::Span::none(), incoming);
    };
    let span = tracing::info_span!(
        target: "orch::trace",
        parent: None,
        "orch.dispatch",
        core_id = %core_id,
        task_id = tracing::field::Empty,
    );
    if let Some(context) = &incoming {
        propagator.continue_trace(&span, context);
    }
    let context = propagator.context_of(&span).or(incoming);
    (span, context)
}

pub(crate) fn idempotency_header(headers: &HeaderMap) -> ApiResult<Option<String>> {
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
/// is if it did not finish within the server's wait limit. A task naming existing tasks in
/// `depends_on` is `waiting` until they have finished; an unknown one is a 422.
#[utoipa::path(post, path = "/dispatch", tag = "tasks", request_body = DispatchRequest,
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 256,
        pattern = r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$",
        description = "1 to 256 visible ASCII characters; a dispatch with a key used before returns the earlier task")),
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
    let mut spec = body.into_spec(idempotency_header(&headers)?, 0)?;
    let span = open_dispatch_span(&orch, &mut spec, &headers);
    let wait_bound = spec
        .timeout
        .saturating_mul(spec.max_attempts.max(1))
        .saturating_add(Duration::from_secs(60))
        .min(dispatching.stay_max_wait);
    let created = if span.is_disabled() {
        dispatching.batcher.dispatch(spec).await?
    } else {
        let created = dispatching
            .batcher
            .dispatch(spec)
            .instrument(span.clone())
            .await?;
        span.record("task_id", tracing::field::display(created.task.id));
        created
    };
    drop(span);
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
    params(("id" = String, Path, pattern = r"^(task-)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description = "The task id, a UUID (`task-<uuid>` accepted)")),
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
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    /// Only this state.
    #[param(value_type = Option<crate::openapi::TaskState>)]
    pub status: Option<String>,
    /// Only this core (`core` also accepted).
    #[serde(alias = "core")]
    pub core_id: Option<String>,
    /// Page after this task id (`next_after` of the previous page).
    #[param(
        pattern = r"^(task-)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub after: Option<String>,
    /// Page size (default 100, at most 1000). A page also ends early once it holds 8 MiB of
    /// JSON (always at least one task): follow `next_after`.
    #[param(nullable = false, minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Only queued tasks that are due (`true`) or still wait for their run time, a delay or a
    /// retry's backoff (`false`, what the dashboard calls delayed).
    pub due: Option<bool>,
    /// `oldest` (the default) or `newest` first; `after` then goes on in that order.
    #[param(value_type = Option<JobsOrder>)]
    pub order: Option<String>,
    /// Only the task dispatched with this idempotency key (a page of at most one task; the
    /// other filters still apply).
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub idempotency_key: Option<String>,
}

/// The most bytes of JSON a page of tasks (`GET /jobs`) or a claim (`POST /jobs/claim`) holds,
/// unless its first task alone is larger: a page of 1,000 tasks of 1 MiB each would otherwise
/// be built in memory whole. 8 MiB.
pub const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// Tasks read per backend call while a page fills, before their size is known.
const FIRST_READ: usize = 32;

/// A JSON object `{"<field>":[<items>]<tail>}` written item by item, that stops taking items
/// at [`MAX_PAGE_BYTES`].
pub(crate) struct PageBody {
    bytes: Vec<u8>,
    items: usize,
}

impl PageBody {
    pub(crate) fn new(field: &str) -> Self {
        let mut bytes = Vec::with_capacity(4096);
        bytes.extend_from_slice(b"{\"");
        bytes.extend_from_slice(field.as_bytes());
        bytes.extend_from_slice(b"\":[");
        PageBody { bytes, items: 0 }
    }

    /// Appends `item` unless that would take the page past the budget (the first item is
    /// always taken); returns whether it was.
    pub(crate) fn push(&mut self, item: &impl Serialize) -> ApiResult<bool> {
        let start = self.bytes.len();
        if self.items > 0 {
            self.bytes.push(b',');
        }
        serde_json::to_writer(&mut self.bytes, item).map_err(|e| ApiError::internal("page", e))?;
        if self.items > 0 && self.bytes.len() > MAX_PAGE_BYTES - 64 {
            self.bytes.truncate(start);
            return Ok(false);
        }
        self.items += 1;
        Ok(true)
    }

    /// Appends `item` whatever the budget says (a claimed task must be handed out).
    fn force(&mut self, item: &impl Serialize) -> ApiResult<()> {
        if self.items > 0 {
            self.bytes.push(b',');
        }
        serde_json::to_writer(&mut self.bytes, item).map_err(|e| ApiError::internal("page", e))?;
        self.items += 1;
        Ok(())
    }

    /// Bytes left before the budget.
    fn room(&self) -> usize {
        MAX_PAGE_BYTES.saturating_sub(self.bytes.len() + 64)
    }

    /// The average size of an item so far (at least 1).
    fn average(&self) -> usize {
        (self.bytes.len() / self.items.max(1)).max(1)
    }

    /// Closes the array, adds `"<key>":<value>` pairs, and makes the response.
    pub(crate) fn finish(mut self, tail: &[(&str, serde_json::Value)]) -> Response {
        self.bytes.push(b']');
        for (key, value) in tail {
            self.bytes.extend_from_slice(b",\"");
            self.bytes.extend_from_slice(key.as_bytes());
            self.bytes.extend_from_slice(b"\":");
            self.bytes.extend_from_slice(value.to_string().as_bytes());
        }
        self.bytes.push(b'}');
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.bytes,
        )
            .into_response()
    }
}

/// The order of a page of tasks.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobsOrder {
    /// By creation, oldest first.
    Oldest,
    /// By creation, newest first.
    Newest,
}

/// A page of tasks.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobsPage {
    /// Tasks in id (creation) order.
    pub jobs: Vec<TaskView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

/// `GET /jobs`: filters `status`, `core_id`, `due` and `idempotency_key`, paging with `after`
/// and `limit`, oldest or newest first (`order`). A page ends at
/// `limit` tasks or [`MAX_PAGE_BYTES`] of JSON, whichever comes first; `next_after` is present
/// whenever it ended so.
#[utoipa::path(get, path = "/jobs", tag = "tasks", security(("bearer" = [])), params(JobsQuery),
    responses((status = 200, body = JobsPage)))]
pub async fn list_jobs(
    State(orch): State<Orchestrator>,
    _caller: Authed<AnyRole>,
    ApiQuery(query): ApiQuery<JobsQuery>,
) -> ApiResult<Response> {
    let status = query
        .status
        .as_deref()
        .map(|s| {
            s.parse::<TaskStatus>()
                .map_err(|e| ApiError::bad_request("status", e.to_string()))
        })
        .transpose()?;
    let mut after = query
        .after
        .as_deref()
        .map(|a| parse_task_id(a).map_err(|e| e.with_field("after")))
        .transpose()?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit", "must be between 1 and 1000"));
    }
    let newest_first = match query.order.as_deref() {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "order",
                "must be \"oldest\" or \"newest\"",
            ));
        }
    };
    if let Some(key) = &query.idempotency_key {
        let found = orch
            .find_by_idempotency_key(key)
            .await
            .map_err(|error| match error {
                orch_core::Error::Invalid {
                    field: "idempotency_key",
                    ..
                } => ApiError::bad_request("idempotency_key", error.to_string()),
                other => other.into(),
            })?
            .filter(|task| status.is_none_or(|status| task.status == status))
            .filter(|task| {
                query
                    .core_id
                    .as_ref()
                    .is_none_or(|core| &task.engine == core)
            })
            .filter(|task| {
                query.due.is_none_or(|due| {
                    task.status == TaskStatus::Queued && (task.run_at <= Utc::now()) == due
                })
            })
            .filter(|task| {
                after.is_none_or(|after| {
                    if newest_first {
                        task.id < after
                    } else {
                        task.id > after
                    }
                })
            });
        let mut page = PageBody::new("jobs");
        if let Some(task) = found {
            page.push(&TaskView::from(task))?;
        }
        return Ok(page.finish(&[("next_after", serde_json::Value::Null)]));
    }
    // Read in slices sized by what fits, so neither the page nor what is read for it grows
    // past the budget by more than one slice of tasks.
    let mut page = PageBody::new("jobs");
    let mut read = limit.min(FIRST_READ);
    let mut last = None;
    let mut ended_early = false;
    'pages: loop {
        let tasks = orch
            .list(TaskFilter {
                status,
                engine: query.core_id.clone(),
                after,
                limit: read,
                newest_first,
                due: query.due,
            })
            .await?;
        let got = tasks.len();
        for task in tasks {
            let id = task.id;
            if !page.push(&TaskView::from(task))? {
                ended_early = true;
                break 'pages;
            }
            last = Some(id);
            after = Some(id);
        }
        if got < read || page.items == limit {
            break;
        }
        if page.room() < page.average() {
            ended_early = true;
            break;
        }
        read = (page.room() / page.average()).clamp(1, limit - page.items);
    }
    let next_after = (ended_early || page.items == limit)
        .then(|| last.map(|id| id.to_string()))
        .flatten();
    Ok(page.finish(&[("next_after", serde_json::json!(next_after))]))
}

/// `POST /jobs/{id}/cancel`: 409 for a finished task. Its `task.cancelled` event names the
/// caller.
#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^(task-)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description = "The task id, a UUID (`task-<uuid>` accepted)")),
    responses((status = 200, body = TaskView), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub async fn cancel_job(
    State(orch): State<Orchestrator>,
    caller: Authed<Operators>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TaskView>> {
    let id = parse_task_id(&id)?;
    let actor = caller.principal().actor();
    Ok(Json(orch.cancel_by(id, &actor).await?.into()))
}

/// `DELETE /jobs/{id}`: deletes a finished task outside workflows that no task depends on (a
/// workflow's tasks are pruned with it); its events stay in the log (the event stream shows
/// them; `GET /jobs/{id}/events` no longer finds the task), and a `task.deleted` event names
/// the caller. Returns the task as it was. 409 saying why for a task that may not be deleted
/// (not finished: cancel it first).
#[utoipa::path(delete, path = "/jobs/{id}", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^(task-)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description = "The task id, a UUID (`task-<uuid>` accepted)")),
    responses((status = 200, body = TaskView), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub async fn delete_job(
    State(orch): State<Orchestrator>,
    caller: Authed<Operators>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TaskView>> {
    let id = parse_task_id(&id)?;
    let actor = caller.principal().actor();
    let task = orch.delete(id, &actor).await.map_err(refused_as_conflict)?;
    Ok(Json(task.into()))
}

/// A task the action may not touch as it stands (a workflow's, one others wait for, one not
/// finished): a conflict with its state, 409, saying why.
fn refused_as_conflict(error: orch_core::Error) -> ApiError {
    match error {
        orch_core::Error::Invalid {
            field: "task_id", ..
        } => ApiError::conflict(error.to_string()).with_field("task_id"),
        other => other.into(),
    }
}

/// `POST /jobs/{id}/retry`: retries a task that failed, was cancelled or timed out: `queued`
/// again at once, its attempts starting over; its events keep the earlier attempts, and its
/// `task.reopened` event names the caller. 409 for a task in another state, for a task of a
/// workflow (retry the workflow: `POST /workflows/{id}/retry`) and for a task with
/// dependencies (dispatch it again).
#[utoipa::path(post, path = "/jobs/{id}/retry", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^(task-)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description = "The task id, a UUID (`task-<uuid>` accepted)")),
    responses((status = 200, body = TaskView), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub async fn retry_job(
    State(orch): State<Orchestrator>,
    caller: Authed<Operators>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TaskView>> {
    let id = parse_task_id(&id)?;
    let actor = caller.principal().actor();
    let task = orch.retry(id, &actor).await.map_err(refused_as_conflict)?;
    Ok(Json(task.into()))
}

/// `POST /jobs/{id}/requeue`: runs now a queued task that waits for its delay, its `run_at` or
/// a retry's backoff (its attempts and priority kept); its `task.requeued` event names the
/// caller. 409 for a task that is not queued or is already due.
#[utoipa::path(post, path = "/jobs/{id}/requeue", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^(task-)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description = "The task id, a UUID (`task-<uuid>` accepted)")),
    responses((status = 200, body = TaskView), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub async fn requeue_job(
    State(orch): State<Orchestrator>,
    caller: Authed<Operators>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TaskView>> {
    let id = parse_task_id(&id)?;
    let actor = caller.principal().actor();
    let task = orch
        .requeue(id, &actor)
        .await
        .map_err(refused_as_conflict)?;
    Ok(Json(task.into()))
}

/// Events of one task.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobEvents {
    /// The task.
    #[schema(format = Uuid)]
    pub task_id: String,
    /// Its events in order.
    #[schema(value_type = Vec<crate::openapi::EventView>)]
    pub events: Vec<Event>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<u64>,
}

/// Paging of `GET /jobs/{id}/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobEventsQuery {
    /// Only events after this sequence number (`next_after` of the previous page).
    #[param(nullable = false, minimum = 0)]
    pub after: Option<u64>,
    /// Page size (default 1000, at most 1000).
    #[param(nullable = false, minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// `GET /jobs/{id}/events`: the task's events from the log, in order, read through the log's
/// index by task; a deleted or pruned task's too, while the log keeps them. 404 when neither
/// the task nor any event of it is known.
#[utoipa::path(get, path = "/jobs/{id}/events", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^(task-)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description = "The task id, a UUID (`task-<uuid>` accepted)"), JobEventsQuery),
    responses((status = 200, body = JobEvents), (status = 404, body = crate::error::ErrorBody)))]
pub async fn job_events(
    State(orch): State<Orchestrator>,
    _caller: Authed<AnyRole>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<JobEventsQuery>,
) -> ApiResult<Json<JobEvents>> {
    let id = parse_task_id(&id)?;
    let limit = query.limit.unwrap_or(1000);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit", "must be between 1 and 1000"));
    }
    let after = query.after.unwrap_or(0);
    let events = orch.events().task_events(id, after, limit).await?;
    // A deleted (or pruned) task's events stay in the log and are still read; 404 only when
    // neither the task nor any event of it is known.
    if events.is_empty() {
        match orch.get(id).await {
            Ok(_) => {}
            Err(orch_core::Error::TaskNotFound(_))
                if after == 0 || orch.events().task_events(id, 0, 1).await?.is_empty() =>
            {
                return Err(orch_core::Error::TaskNotFound(id).into());
            }
            Err(orch_core::Error::TaskNotFound(_)) => {}
            Err(other) => return Err(other.into()),
        }
    }
    let next_after = (events.len() == limit)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    Ok(Json(JobEvents {
        task_id: id.to_string(),
        events,
        next_after,
    }))
}

/// An external worker's report.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusUpdate {
    /// The lease token from `POST /jobs/claim`.
    #[schema(format = Uuid)]
    pub lease_token: String,
    /// `succeeded`, `failed` or `timed_out`.
    #[schema(value_type = crate::openapi::ReportedState)]
    pub status: String,
    /// The result (`succeeded`): any JSON value.
    #[serde(default)]
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
    security(("bearer" = [])), params(("id" = String, Path, pattern = r"^(task-)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description = "The task id, a UUID (`task-<uuid>` accepted)")),
    responses((status = 200, body = TaskView), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
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
    /// The core to take tasks of (`coreId` accepted): 1 to 128 characters, no control
    /// characters.
    #[serde(alias = "coreId")]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub core_id: String,
    /// Most tasks to take (1 to 100, default 1). Fewer are taken once the answer holds 8 MiB
    /// of JSON (always at least one): claim again for more.
    #[serde(default, deserialize_with = "crate::whole::optional")]
    #[schema(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
    /// Lease in seconds, from 0.001 to 86400 (default: the orchestrator's).
    #[schema(minimum = 0.001, maximum = 86400)]
    pub lease: Option<f64>,
}

/// One claimed task.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClaimedTask {
    /// The task, now running.
    pub task: TaskView,
    /// Present it to heartbeat and report.
    #[schema(format = Uuid)]
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
        .map(|v| seconds_between("lease", v, 86_400.0))
        .transpose()
}

/// `POST /jobs/claim`: leases up to `limit` queued tasks of a core to an external worker;
/// fewer once the answer holds [`MAX_PAGE_BYTES`] of JSON.
#[utoipa::path(post, path = "/jobs/claim", tag = "workers", request_body = ClaimRequest,
    security(("bearer" = [])), responses((status = 200, body = ClaimResponse)))]
pub async fn claim(
    State(orch): State<Orchestrator>,
    _caller: Authed<Workers>,
    ApiJson(body): ApiJson<ClaimRequest>,
) -> ApiResult<Response> {
    let limit = body.limit.unwrap_or(1);
    if limit == 0 || limit > 100 {
        return Err(ApiError::unprocessable(
            "limit",
            "must be between 1 and 100",
        ));
    }
    let lease = lease(body.lease)?;
    // Claimed in slices sized by what fits: a claimed task is leased and must be handed out,
    // so the next slice asks only for as many as the room left holds at the size seen so far.
    let mut page = PageBody::new("tasks");
    let mut want = limit.min(FIRST_READ / 4);
    loop {
        let claimed = match orch.claim(&body.core_id, want, lease).await {
            Ok(claimed) => claimed,
            // What earlier slices leased is this worker's: it is handed out, not dropped to
            // wait for its lease to run out.
            Err(error) if page.items > 0 => {
                tracing::warn!(%error, claimed = page.items, "claiming more tasks failed; answering with those claimed");
                break;
            }
            Err(error) => return Err(error.into()),
        };
        let got = claimed.len();
        for c in claimed {
            let item = ClaimedTask {
                lease_token: c.lease_token.to_string(),
                task: c.task.into(),
            };
            // Taken past the budget too: the lease is this worker's now.
            if !page.push(&item)? {
                page.force(&item)?;
            }
        }
        if got < want || page.items >= limit || page.room() < page.average() {
            break;
        }
        want = (page.room() / page.average()).clamp(1, limit - page.items);
    }
    Ok(page.finish(&[]))
}

/// A heartbeat.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The lease token.
    #[schema(format = Uuid)]
    pub lease_token: String,
    /// New lease in seconds, from 0.001 to 86400 (default: the orchestrator's).
    #[schema(minimum = 0.001, maximum = 86400)]
    pub lease: Option<f64>,
}

/// A renewed lease.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatResponse {
    /// The task.
    #[schema(format = Uuid)]
    pub task_id: String,
    /// The new expiry.
    pub lease_expires_at: DateTime<Utc>,
}

/// `POST /jobs/{id}/heartbeat`: extends a lease; 409 if it is no longer held.
#[utoipa::path(post, path = "/jobs/{id}/heartbeat", tag = "workers",
    request_body = HeartbeatRequest, security(("bearer" = [])), params(("id" = String, Path, pattern = r"^(task-)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description = "The task id, a UUID (`task-<uuid>` accepted)")),
    responses((status = 200, body = HeartbeatResponse), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
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

/// What `POST /jobs/bulk` does to each task it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    /// As `POST /jobs/{id}/retry`.
    Retry,
    /// As `POST /jobs/{id}/cancel`.
    Cancel,
    /// As `DELETE /jobs/{id}`.
    Delete,
}

/// An action on every task matching a filter.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// The action.
    pub action: BulkAction,
    /// Only tasks in this state (required: a bulk action names what it acts on).
    #[schema(value_type = crate::openapi::TaskState)]
    pub status: String,
    /// Only tasks of this core.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub core_id: Option<String>,
    /// Count the matching tasks and change nothing (default `false`).
    #[serde(default)]
    pub dry_run: bool,
    /// Most tasks acted on (default and maximum 10,000), oldest first.
    #[schema(minimum = 1, maximum = 10000)]
    #[serde(default, deserialize_with = "crate::whole::optional")]
    pub limit: Option<u64>,
    /// Start after this task id (`next_after` of the previous answer).
    #[schema(
        pattern = r"^(task-)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub after: Option<String>,
}

/// A task a bulk action could not change.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BulkRefusal {
    /// The task id.
    #[schema(format = Uuid)]
    pub task_id: String,
    /// Why (it changed state meanwhile, say).
    pub error: String,
}

/// What `POST /jobs/bulk` did.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BulkAnswer {
    /// The action.
    pub action: BulkAction,
    /// Whether it was a dry run (nothing changed).
    pub dry_run: bool,
    /// Tasks that matched the filter (up to `limit`).
    pub matched: u64,
    /// Tasks changed (0 on a dry run).
    pub changed: u64,
    /// The first 100 tasks that could not be changed, and why.
    pub refused: Vec<BulkRefusal>,
    /// Present when the action stopped before the last matching task (at `limit`, or after
    /// about 20 s of work): pass it as `after` to go on.
    pub next_after: Option<String>,
}

/// The most tasks one `POST /jobs/bulk` acts on.
const MAX_BULK: u64 = 10_000;

/// How long one `POST /jobs/bulk` works before it answers with where it stopped.
const BULK_BUDGET: Duration = Duration::from_secs(20);

/// `POST /jobs/bulk`: retries, cancels or deletes every task in one state (and of one core, if given),
/// oldest first, up to `limit` (and about 20 s of work: `next_after` says where to go on);
/// with `dry_run`, only counts them. The state must be one the action applies to (422
/// otherwise). Each task changes on its own (not all in one step): one the action may not
/// touch (a workflow's, one with dependencies, one that changed state meanwhile) is listed in
/// `refused`. The caller is named in each task's event.
#[utoipa::path(post, path = "/jobs/bulk", tag = "tasks", request_body = BulkRequest,
    security(("bearer" = [])),
    responses((status = 200, body = BulkAnswer), (status = 400, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)))]
pub async fn bulk_jobs(
    State(orch): State<Orchestrator>,
    caller: Authed<Operators>,
    ApiJson(body): ApiJson<BulkRequest>,
) -> ApiResult<Json<BulkAnswer>> {
    let status: TaskStatus = body
        .status
        .parse()
        .map_err(|e: orch_core::Error| ApiError::unprocessable("status", e.to_string()))?;
    if let Some(core) = &body.core_id {
        orch_core::backend::check_name("core_id", core, orch_core::limits::MAX_ENGINE_LEN)?;
    }
    let limit = body.limit.unwrap_or(MAX_BULK);
    if limit == 0 || limit > MAX_BULK {
        return Err(ApiError::unprocessable(
            "limit",
            format!("limit must be between 1 and {MAX_BULK}"),
        ));
    }
    let applies = match body.action {
        BulkAction::Retry => status.is_unsuccessful(),
        BulkAction::Cancel => !status.is_terminal(),
        BulkAction::Delete => status.is_terminal(),
    };
    if !applies {
        return Err(ApiError::unprocessable(
            "status",
            format!("{:?} does not apply to {status} tasks", body.action).to_lowercase(),
        ));
    }
    let mut after = body
        .after
        .as_deref()
        .map(|a| parse_task_id(a).map_err(|e| e.with_field("after")))
        .transpose()?;
    let started = std::time::Instant::now();
    let actor = caller.principal().actor();
    let mut answer = BulkAnswer {
        action: body.action,
        dry_run: body.dry_run,
        matched: 0,
        changed: 0,
        refused: Vec::new(),
        next_after: None,
    };
    let mut stopped_early = false;
    'pages: loop {
        let page = orch
            .list(TaskFilter {
                status: Some(status),
                engine: body.core_id.clone(),
                after,
                limit: 1000,
                newest_first: false,
                due: None,
            })
            .await?;
        let full = page.len() == 1000;
        for task in page {
            if answer.matched == limit || started.elapsed() > BULK_BUDGET {
                stopped_early = true;
                break 'pages;
            }
            answer.matched += 1;
            after = Some(task.id);
            if body.dry_run {
                continue;
            }
            let done = match body.action {
                BulkAction::Retry => orch.retry(task.id, &actor).await,
                BulkAction::Cancel => orch.cancel_by(task.id, &actor).await,
                BulkAction::Delete => orch.delete(task.id, &actor).await,
            };
            match done {
                Ok(_) => answer.changed += 1,
                Err(
                    error @ (orch_core::Error::IllegalTransition { .. }
                    | orch_core::Error::TaskNotFound(_)
                    | orch_core::Error::Invalid { .. }),
                ) => {
                    if answer.refused.len() < 100 {
                        answer.refused.push(BulkRefusal {
                            task_id: task.id.to_string(),
                            error: error.to_string(),
                        });
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
        if !full {
            break;
        }
    }
    if stopped_early {
        answer.next_after = after.map(|id| id.to_string());
    }
    Ok(Json(answer))
}
