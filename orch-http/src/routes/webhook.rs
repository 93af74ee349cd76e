//! `POST /webhook`: an external system reports the outcome of a task it ran, signed with the
//! webhook secret (see [`crate::webhook`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use orch_core::{EventKind, NewEvent, Orchestrator, Resolution};
use serde_json::{Value, json};

use crate::auth::{Refusal, SecurityLog};
use crate::client_ip::ClientIp;
use crate::clock::Clock;
use crate::config::Secret;
use crate::error::{ApiError, ApiResult};
use crate::extract::{RawBody, parse_json, parse_task_id};
use crate::metrics::Metrics;
use crate::routes::jobs::TaskView;
use crate::webhook::{ReplayGuard, SignatureError, WebhookPayload, verify};

/// The part of the state `POST /webhook` needs besides the orchestrator and the metrics: the
/// secrets and tolerance, the deliveries already accepted (in the backend's lock table), the
/// clock, and where refusals are recorded. Cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct WebhookState {
    inner: Arc<WebhookInner>,
}

#[derive(Debug)]
struct WebhookInner {
    secrets: Vec<Secret>,
    tolerance: Duration,
    replays: ReplayGuard,
    clock: Clock,
    security: SecurityLog,
}

impl WebhookState {
    pub(crate) fn new(
        secrets: Vec<Secret>,
        tolerance: Duration,
        replays: ReplayGuard,
        clock: Clock,
        security: SecurityLog,
    ) -> Self {
        WebhookState {
            inner: Arc::new(WebhookInner {
                secrets,
                tolerance,
                replays,
                clock,
                security,
            }),
        }
    }
}

fn refusal_error(error: &SignatureError) -> ApiError {
    let status = match error {
        SignatureError::Malformed(_) => StatusCode::BAD_REQUEST,
        SignatureError::Replayed => StatusCode::CONFLICT,
        _ => StatusCode::UNAUTHORIZED,
    };
    ApiError::new(status, error.to_string()).with_field("X-Signature")
}

fn failure_message(payload: &WebhookPayload) -> String {
    payload
        .error
        .clone()
        .or_else(|| {
            let data = payload.data.as_ref()?;
            data.get("error")
                .or_else(|| data.get("message"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "reported as failed by webhook".to_owned())
}

/// `POST /webhook`: `task.completed` with `status` `success`/`failure` (or `task.succeeded`,
/// `task.failed`) finishes a queued or running task with `data` as its result; `task.cancelled`
/// cancels it; other events are recorded (202). 401 bad/stale/future signature, 409 replayed
/// signature or finished task.
#[utoipa::path(post, path = "/webhook", tag = "webhook", request_body = WebhookPayload,
    params(("X-Signature" = String, Header, description = "t=<unix>,v1=<hex>",
        pattern = r"^t=[0-9]{1,12}(,v1=[0-9a-f]{64}){1,16}$")),
    responses((status = 200, body = TaskView), (status = 202), (status = 401, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub async fn webhook(
    State(hooks): State<WebhookState>,
    State(orch): State<Orchestrator>,
    State(metrics): State<Arc<Metrics>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let started = Instant::now();
    let result = accept(&hooks.inner, &orch, &metrics, ip, &headers, &body).await;
    metrics
        .webhook_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Checks the signature, takes the delivery's key, then handles it; the key is kept unless
/// the handling failed on the server's side (so the sender's retry is accepted).
async fn accept(
    hooks: &WebhookInner,
    orch: &Orchestrator,
    metrics: &Metrics,
    ip: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<(StatusCode, Json<Value>)> {
    let delivery = match check(hooks, headers, body).await? {
        Ok(delivery) => delivery,
        Err(error) => {
            metrics
                .webhook_signatures
                .with_label_values(&[error.label()])
                .inc();
            let refusal = Refusal::new(error.label(), ip.map(|ip| ip.to_string()));
            hooks
                .security
                .refused("webhook.signature_refused", refusal)
                .await;
            return Err(refusal_error(&error));
        }
    };
    metrics
        .webhook_signatures
        .with_label_values(&["valid"])
        .inc();
    let result = handle(orch, body).await;
    match &result {
        Err(error) if error.status.is_server_error() => drop(delivery),
        _ => delivery.keep(),
    }
    result
}

/// The signature, then the delivery's key: `Ok(Err(_))` is a refusal.
async fn check(
    hooks: &WebhookInner,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Result<crate::webhook::Delivery, SignatureError>> {
    if hooks.secrets.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhooks are not configured (no webhook secret)",
        ));
    }
    let header = match headers.get("x-signature") {
        Some(value) => match value.to_str() {
            Ok(value) => Some(value),
            Err(_) => return Ok(Err(SignatureError::Malformed("header is not ASCII"))),
        },
        None => None,
    };
    let now = hooks.clock.unix_now();
    let timestamp = match verify(header, body, &hooks.secrets, now, hooks.tolerance) {
        Ok(timestamp) => timestamp,
        Err(error) => return Ok(Err(error)),
    };
    Ok(hooks
        .replays
        .accept(timestamp, body, now, hooks.tolerance)
        .await?)
}

async fn handle(orch: &Orchestrator, body: &[u8]) -> ApiResult<(StatusCode, Json<Value>)> {
    let payload: WebhookPayload = parse_json(body)?;
    let task_id = parse_task_id(&payload.task_id)?;
    let task = orch.get(task_id).await?;
    if let Some(core_id) = &payload.core_id
        && core_id != &task.engine
    {
        return Err(ApiError::unprocessable(
            "core_id",
            format!("task {task_id} belongs to core {:?}", task.engine),
        ));
    }
    let data = payload.data.clone().unwrap_or(Value::Null);
    let resolution = match payload.event.as_str() {
        "task.completed" => match payload.status.as_deref() {
            Some("success" | "succeeded" | "ok") => Resolution::Succeeded(data),
            Some("failure" | "failed" | "error") => Resolution::Failed(failure_message(&payload)),
            Some(other) => {
                return Err(ApiError::unprocessable(
                    "status",
                    format!("{other:?} is not success or failure"),
                ));
            }
            None => {
                return Err(ApiError::unprocessable(
                    "status",
                    "missing for task.completed",
                ));
            }
        },
        "task.succeeded" => Resolution::Succeeded(data),
        "task.failed" => Resolution::Failed(failure_message(&payload)),
        "task.cancelled" => {
            let task = orch.cancel(task_id).await?;
            return Ok((StatusCode::OK, Json(json!(TaskView::from(task)))));
        }
        other => {
            let kind: EventKind = format!("webhook.{other}")
                .parse()
                .map_err(|e: orch_core::Error| ApiError::unprocessable("event", e.to_string()))?;
            let event = NewEvent::for_task(kind, task_id, &task.engine, data);
            let event = orch.backend().append_event(event).await?;
            return Ok((
                StatusCode::ACCEPTED,
                Json(json!({"accepted": true, "task_id": task_id.to_string(), "seq": event.seq})),
            ));
        }
    };
    let task = orch.resolve(task_id, resolution).await?;
    Ok((StatusCode::OK, Json(json!(TaskView::from(task)))))
}
