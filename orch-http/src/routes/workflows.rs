//! Workflows: `POST /workflows` (a graph of tasks in one atomic step), `GET /workflows/{id}`
//! (its status and its tasks in topological order), `POST /workflows/{id}/cancel` and
//! `POST /workflows/{id}/retry`. A single task may also wait for existing tasks through
//! `POST /dispatch` (`depends_on`, in [`jobs`](super::jobs)).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use orch_core::backend::NewDependency;
use orch_core::{Orchestrator, Workflow, WorkflowId, WorkflowInfo, WorkflowTask};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use crate::auth::{AnyRole, Authed, Dispatchers, Operators};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::routes::jobs::{
    DispatchRequest, PageBody, TaskView, carry_trace, dispatch_span, idempotency_header,
    trace_headers,
};

/// Most tasks one `POST /workflows` may dispatch.
pub const MAX_WORKFLOW_TASKS: usize = 10_000;

/// A workflow's status and counts, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowView {
    /// The workflow id (a UUID).
    #[schema(format = Uuid)]
    pub workflow_id: String,
    /// `running`, `succeeded`, `failed` (every task finished, none succeeded) or `partly`.
    #[schema(value_type = crate::openapi::WorkflowState)]
    pub status: String,
    /// Its idempotency key, if given.
    pub idempotency_key: Option<String>,
    /// How many tasks it has.
    pub task_count: u32,
    /// How many of them have not finished.
    pub unfinished: u32,
    /// How many of them succeeded.
    pub succeeded: u32,
    /// When it was dispatched.
    pub created_at: DateTime<Utc>,
    /// When its last task finished (cleared by a retry).
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<WorkflowInfo> for WorkflowView {
    fn from(info: WorkflowInfo) -> Self {
        WorkflowView {
            workflow_id: info.id.to_string(),
            status: info.status.as_str().to_owned(),
            idempotency_key: info.idempotency_key,
            task_count: info.tasks,
            unfinished: info.unfinished,
            succeeded: info.succeeded,
            created_at: info.created_at,
            finished_at: info.finished_at,
        }
    }
}

/// A graph of tasks dispatched as one workflow.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRequest {
    /// The tasks, as `POST /dispatch` takes them (without `stay`), 1 to 10,000. A task names
    /// the tasks it waits for in `depends_on`: `{"step": i}` for the task at index `i` of this
    /// list, `{"task": "<id>"}` for an existing task. A cycle, a step out of range or an
    /// unknown task is refused (422 naming the task), and nothing is stored.
    #[schema(min_items = 1, max_items = 10000)]
    pub tasks: Vec<DispatchRequest>,
    /// Same as the `Idempotency-Key` header (the header wins): a second dispatch with the
    /// key returns the first workflow. 1 to 256 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub idempotency_key: Option<String>,
}

/// A task of a new workflow.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedStep {
    /// Its index in the request's `tasks`.
    pub step: usize,
    /// The task id.
    #[schema(format = Uuid)]
    pub task_id: String,
    /// `waiting` or `queued` (or, when its idempotency key matched an earlier task, that
    /// task's state).
    #[schema(value_type = crate::openapi::TaskState)]
    pub status: String,
}

/// A dispatched workflow.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowCreated {
    /// The workflow.
    pub workflow: WorkflowView,
    /// Its tasks in step order (empty when the idempotency key returned an earlier workflow:
    /// read it with `GET /workflows/{id}`).
    pub tasks: Vec<CreatedStep>,
}

/// `POST /workflows`: dispatches a graph of tasks in one atomic step. 201 with the workflow
/// and its task ids; 200 with the earlier workflow when its idempotency key was used before.
#[utoipa::path(post, path = "/workflows", tag = "workflows", request_body = WorkflowRequest,
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 256,
        pattern = r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$",
        description = "1 to 256 visible ASCII characters; a dispatch with a key used before returns the earlier workflow")),
    responses((status = 201, body = WorkflowCreated), (status = 200, body = WorkflowCreated),
        (status = 422, body = crate::error::ErrorBody)))]
pub async fn dispatch_workflow(
    State(orch): State<Orchestrator>,
    _caller: Authed<Dispatchers>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<WorkflowRequest>,
) -> ApiResult<(StatusCode, Json<WorkflowCreated>)> {
    let count = body.tasks.len();
    if count == 0 || count > MAX_WORKFLOW_TASKS {
        return Err(ApiError::unprocessable(
            "tasks",
            format!("must hold 1 to {MAX_WORKFLOW_TASKS} tasks, not {count}"),
        ));
    }
    if let Some(key) = &body.idempotency_key {
        orch_core::backend::check_name(
            "idempotency_key",
            key,
            orch_core::limits::MAX_IDEMPOTENCY_KEY_LEN,
        )?;
    }
    let mut flow = Workflow::new();
    if let Some(key) = idempotency_header(&headers)?.or(body.idempotency_key) {
        flow = flow.idempotency_key(key);
    }
    // One dispatch span for the workflow, in the trace of the request's `traceparent` header:
    // each task without a `traceparent` of its own carries it, so their claims are its
    // children.
    let (span, context) = dispatch_span(&orch, "workflow", trace_headers(&headers));
    for (index, task) in body.tasks.into_iter().enumerate() {
        let at = |error: ApiError| {
            let field = match &error.field {
                Some(field) => format!("tasks[{index}].{field}"),
                None => format!("tasks[{index}]"),
            };
            error.with_field(field)
        };
        if task.stay {
            return Err(at(ApiError::unprocessable(
                "stay",
                "a workflow's tasks cannot stay: POST /workflows answers at once (read the \
                 workflow with GET /workflows/{id})",
            )));
        }
        let mut spec = task.into_spec(None, count).map_err(at)?;
        if spec.traceparent.is_none()
            && let Some(context) = &context
        {
            carry_trace(&mut spec, context.clone());
        }
        flow.add(spec);
    }
    let created = orch.dispatch_workflow(flow).instrument(span).await?;
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    // An earlier workflow's tasks are not listed: steps of it stood in for by earlier tasks
    // (matched by their idempotency keys) are not among them, so the list could not say
    // which step each task is.
    let tasks = if created.created {
        created
            .tasks
            .into_iter()
            .enumerate()
            .map(|(step, task)| CreatedStep {
                step,
                task_id: task.task.id.to_string(),
                status: task.task.status.as_str().to_owned(),
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok((
        status,
        Json(WorkflowCreated {
            workflow: created.workflow.into(),
            tasks,
        }),
    ))
}

/// A dependency as stored: the parent's id and what its failure does.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DependencyView {
    /// The parent task.
    #[schema(format = Uuid)]
    pub task: String,
    /// `fail`, `cancel` or `run_anyway`.
    #[schema(value_type = crate::openapi::ParentFailure)]
    pub on_failure: String,
}

impl From<NewDependency> for DependencyView {
    fn from(dependency: NewDependency) -> Self {
        DependencyView {
            task: dependency.parent.to_string(),
            on_failure: dependency.on_failure.as_str().to_owned(),
        }
    }
}

/// A task of a workflow with what it depends on.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowTaskView {
    /// The step it was dispatched as.
    pub step: usize,
    /// The task.
    pub task: TaskView,
    /// The tasks it waits for, in the order named.
    pub depends_on: Vec<DependencyView>,
}

impl From<WorkflowTask> for WorkflowTaskView {
    fn from(task: WorkflowTask) -> Self {
        WorkflowTaskView {
            step: task.step,
            task: task.task.into(),
            depends_on: task.parents.into_iter().map(Into::into).collect(),
        }
    }
}

/// A workflow with a page of its tasks.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowDetail {
    /// The workflow.
    pub workflow: WorkflowView,
    /// Its tasks in topological order (every task after the tasks it depends on, ties in
    /// step order), from `offset`.
    pub tasks: Vec<WorkflowTaskView>,
    /// Pass as `offset` for the next page; absent on the last page.
    pub next_offset: Option<usize>,
}

/// Paging of `GET /workflows/{id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WorkflowQuery {
    /// Skip this many tasks of the topological order (`next_offset` of the previous page).
    #[param(nullable = false, minimum = 0)]
    pub offset: Option<usize>,
    /// Page size (default 100, at most 1000). A page also ends early once it holds 8 MiB of
    /// JSON (always at least one task): follow `next_offset`.
    #[param(nullable = false, minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

fn parse_workflow_id(raw: &str) -> ApiResult<WorkflowId> {
    raw.parse().map_err(|_| {
        ApiError::bad_request(
            "workflow_id",
            format!("{raw:?} is not a workflow id (UUID)"),
        )
    })
}

/// `GET /workflows/{id}`: the workflow's status and counts, and a page of its tasks in
/// topological order with their dependencies.
#[utoipa::path(get, path = "/workflows/{id}", tag = "workflows", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description = "The workflow id, a UUID"), WorkflowQuery),
    responses((status = 200, body = WorkflowDetail), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_workflow(
    State(orch): State<Orchestrator>,
    _caller: Authed<AnyRole>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<WorkflowQuery>,
) -> ApiResult<Response> {
    let id = parse_workflow_id(&id)?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit", "must be between 1 and 1000"));
    }
    let offset = query.offset.unwrap_or(0);
    // The tasks first: a workflow read after them is at least as new.
    let tasks = orch.workflow_tasks(id).await?;
    let workflow = WorkflowView::from(orch.workflow(id).await?);
    let total = tasks.len();
    let mut page = PageBody::new("tasks");
    let mut next = offset;
    for task in tasks.into_iter().skip(offset).take(limit) {
        if !page.push(&WorkflowTaskView::from(task))? {
            break;
        }
        next += 1;
    }
    let next_offset = (next < total).then_some(next);
    let workflow = serde_json::to_value(workflow).map_err(|e| ApiError::internal("page", e))?;
    Ok(page.finish(&[
        ("workflow", workflow),
        ("next_offset", serde_json::json!(next_offset)),
    ]))
}

/// `POST /workflows/{id}/cancel`: cancels every task of the workflow that has not run (queued
/// or waiting) in one atomic step; tasks running go on, and the workflow ends once they have.
/// Returns the workflow as it is now.
#[utoipa::path(post, path = "/workflows/{id}/cancel", tag = "workflows", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description = "The workflow id, a UUID")),
    responses((status = 200, body = WorkflowView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn cancel_workflow(
    State(orch): State<Orchestrator>,
    _caller: Authed<Operators>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<WorkflowView>> {
    let id = parse_workflow_id(&id)?;
    Ok(Json(orch.cancel_workflow(id).await?.into()))
}

/// `POST /workflows/{id}/retry`: reopens every task of the workflow that failed, was cancelled
/// or timed out (attempts renewed; queued, or waiting for the reopened tasks it depends on);
/// tasks that succeeded keep their results. Returns the workflow, running again (unchanged
/// when nothing had failed).
#[utoipa::path(post, path = "/workflows/{id}/retry", tag = "workflows", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description = "The workflow id, a UUID")),
    responses((status = 200, body = WorkflowView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn retry_workflow(
    State(orch): State<Orchestrator>,
    _caller: Authed<Operators>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<WorkflowView>> {
    let id = parse_workflow_id(&id)?;
    Ok(Json(orch.retry_workflow(id).await?.into()))
}
