//! `GET /sse/events`: the event log as server-sent events. Each event's `id:` is its sequence;
//! `Last-Event-ID` (or `?last_event_id=`) resumes exactly after that event, replaying from the
//! log; filters by task and core; keep-alive comments; a cap on open streams. A slow client
//! lags and catches up from the log ([`orch_core::Subscription`] does it). Security events
//! (every kind outside `task.*`) reach admins only. A stream ends when its token stops being
//! valid (expired, or its user deleted, disabled or changed: [`Session::still_valid`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use orch_core::{Event, Orchestrator, Subscription, TaskId};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::auth::{AnyRole, Authed, Role, Session};
use crate::config::SseConfig;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, parse_task_id};
use crate::metrics::Metrics;

/// The part of the state `GET /sse/events` needs besides the orchestrator and the metrics: the
/// count of open streams against the cap, the keep-alive interval, and the shutdown signal that
/// ends every stream (so the graceful drain does not wait on them forever).
#[derive(Debug, Clone)]
pub struct SseStreams {
    /// Streams open now, shared by every clone.
    open: Arc<AtomicUsize>,
    config: SseConfig,
    shutdown: CancellationToken,
}

impl SseStreams {
    pub(crate) fn new(config: &SseConfig, shutdown: CancellationToken) -> Self {
        SseStreams {
            open: Arc::new(AtomicUsize::new(0)),
            config: *config,
            shutdown,
        }
    }
}

/// Filters of `GET /sse/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SseQuery {
    /// Only events of this task.
    pub task_id: Option<String>,
    /// Only events of this core.
    pub core_id: Option<String>,
    /// Only kinds matching this pattern (`task.*`, `task.succeeded`).
    pub kind: Option<String>,
    /// Resume after this sequence (the `Last-Event-ID` header wins).
    pub last_event_id: Option<String>,
}

/// Counts an open stream; the drop closes it in the gauge and the cap.
struct OpenStream {
    streams: SseStreams,
    metrics: Arc<Metrics>,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.streams.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.sse_active.dec();
    }
}

struct Filter {
    task_id: Option<TaskId>,
    core_id: Option<String>,
    kind: Option<String>,
    admin: bool,
}

impl Filter {
    fn accepts(&self, event: &Event) -> bool {
        if !self.admin && !event.kind.as_str().starts_with("task.") {
            return false;
        }
        if let Some(task_id) = self.task_id
            && event.task_id != Some(task_id)
        {
            return false;
        }
        if let Some(core_id) = &self.core_id
            && event.engine.as_deref() != Some(core_id.as_str())
        {
            return false;
        }
        if let Some(kind) = &self.kind
            && !event.kind.matches(kind)
        {
            return false;
        }
        true
    }
}

fn parse_last_event_id(raw: &str, field: &'static str) -> ApiResult<u64> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > 20 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(
            field,
            "must be an event sequence number",
        ));
    }
    raw.parse()
        .map_err(|_| ApiError::bad_request(field, "must be an event sequence number"))
}

fn to_sse(event: &Event) -> SseEvent {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
    SseEvent::default()
        .id(event.seq.to_string())
        .event(event.kind.as_str())
        .data(data)
}

fn stream(
    subscription: Subscription,
    filter: Filter,
    open: OpenStream,
    session: Session,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    // The token is re-checked on the stream's own timer (no task of its own: 10,000 streams
    // would hold 10,000 tasks).
    let every = session.recheck_every();
    let recheck = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    futures_util::stream::unfold(
        (subscription, filter, open, session, recheck),
        |(mut subscription, filter, open, session, mut recheck)| async move {
            let shutdown = open.streams.shutdown.clone();
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = recheck.tick() => {
                        if !session.still_valid().await {
                            return None;
                        }
                        continue;
                    }
                    next = subscription.next() => next,
                };
                match next {
                    None => return None,
                    Some(Err(error)) => {
                        tracing::warn!(%error, "sse: catching up from the log failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Some(Ok(event)) => {
                        if filter.accepts(&event) {
                            open.metrics.sse_sent.inc();
                            let item = to_sse(&event);
                            return Some((
                                Ok(item),
                                (subscription, filter, open, session, recheck),
                            ));
                        }
                    }
                }
            }
        },
    )
}

/// `GET /sse/events`.
#[utoipa::path(get, path = "/sse/events", tag = "events", security(("bearer" = [])),
    params(SseQuery, ("Last-Event-ID" = Option<String>, Header)),
    responses((status = 200, content_type = "text/event-stream"),
        (status = 503, body = crate::error::ErrorBody)))]
pub async fn events(
    State(orch): State<Orchestrator>,
    State(streams): State<SseStreams>,
    State(metrics): State<Arc<Metrics>>,
    caller: Authed<AnyRole>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<SseQuery>,
) -> ApiResult<Response> {
    let resume = match headers.get("last-event-id") {
        Some(value) => Some(parse_last_event_id(
            value.to_str().unwrap_or(""),
            "Last-Event-ID",
        )?),
        None => query
            .last_event_id
            .as_deref()
            .map(|v| parse_last_event_id(v, "last_event_id"))
            .transpose()?,
    };
    let filter = Filter {
        task_id: query.task_id.as_deref().map(parse_task_id).transpose()?,
        core_id: query.core_id,
        kind: query.kind,
        admin: caller.principal().role == Role::Admin,
    };
    if streams.shutdown.is_cancelled() {
        return Err(
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down").with_retry_after(5),
        );
    }
    let max = streams.config.max_connections;
    let open = streams.open.fetch_add(1, Ordering::AcqRel);
    if open >= max {
        streams.open.fetch_sub(1, Ordering::AcqRel);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many event streams open (limit {max})"),
        )
        .with_retry_after(5));
    }
    metrics.sse_active.inc();
    let keep_alive = KeepAlive::new().interval(streams.config.keep_alive);
    let guard = OpenStream { streams, metrics };
    let subscription = match resume {
        Some(seq) => orch.events().subscribe_from(seq),
        None => orch.events().subscribe().await?,
    };
    let session = caller.session().clone();
    Ok(Sse::new(stream(subscription, filter, guard, session))
        .keep_alive(keep_alive)
        .into_response())
}
