//! `GET /sse/events`: the event log as server-sent events. Each event's `id:` is its sequence;
//! `Last-Event-ID` (or `?last_event_id=`) resumes exactly after that event, replaying from the
//! log; filters by task and core; keep-alive comments; a cap on open streams, and one per
//! user so that one user cannot take every slot. A slow client lags and catches up from the
//! log ([`orch_core::Subscription`] does it). Orch's operational events (tasks, workflows,
//! engines, locks, alerts, nodes, plugins, rescues: [`OPERATIONAL_KINDS`]) reach every role;
//! everything else (security events `auth.*`, an application's own kinds) reaches admins
//! only. A stream ends when its token stops being valid (expired, or its user deleted,
//! disabled or changed: [`Session::still_valid`]).
//!
//! A stream of one task that resumes from a sequence number replays that task's events through
//! the log's index by task, then follows the live log: it never scans the retained log, however
//! far back it resumes.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use orch_core::{Event, EventLog, Orchestrator, Subscription, TaskId};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::auth::{AnyRole, Authed, Role, Session};
use crate::config::SseConfig;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, parse_task_id};
use crate::metrics::Metrics;

/// The part of the state `GET /sse/events` needs besides the orchestrator and the metrics: the
/// count of open streams against the cap (in all and per user), the keep-alive interval, and
/// the shutdown signal that ends every stream (so the graceful drain does not wait on them
/// forever).
#[derive(Debug, Clone)]
pub struct SseStreams {
    /// Streams open now, shared by every clone.
    open: Arc<AtomicUsize>,
    /// Streams open now per user (users with none are not kept).
    per_user: Arc<Mutex<HashMap<String, usize>>>,
    config: SseConfig,
    shutdown: CancellationToken,
}

impl SseStreams {
    pub(crate) fn new(config: &SseConfig, shutdown: CancellationToken) -> Self {
        SseStreams {
            open: Arc::new(AtomicUsize::new(0)),
            per_user: Arc::new(Mutex::new(HashMap::new())),
            config: *config,
            shutdown,
        }
    }
}

/// Filters of `GET /sse/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SseQuery {
    /// Only events of this task (a UUID, `task-<uuid>` accepted).
    #[param(
        pattern = r"^(task-)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub task_id: Option<String>,
    /// Only events of this core.
    #[param(nullable = false)]
    pub core_id: Option<String>,
    /// Only kinds matching this pattern (`task.*`, `task.succeeded`).
    #[param(nullable = false)]
    pub kind: Option<String>,
    /// Resume after this sequence (the `Last-Event-ID` header wins).
    #[param(nullable = false, pattern = r"^[0-9]{1,19}$")]
    pub last_event_id: Option<String>,
}

/// Counts an open stream; the drop closes it in the gauge and the caps.
struct OpenStream {
    streams: SseStreams,
    user: String,
    metrics: Arc<Metrics>,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.streams.open.fetch_sub(1, Ordering::AcqRel);
        let mut per_user = self.streams.per_user.lock();
        if let Some(open) = per_user.get_mut(&self.user) {
            *open -= 1;
            if *open == 0 {
                per_user.remove(&self.user);
            }
        }
        drop(per_user);
        self.metrics.sse_active.dec();
    }
}

/// The kinds every role's stream carries: what an operator or a viewer watches orch do.
pub const OPERATIONAL_KINDS: &[&str] = &[
    "task.",
    "workflow.",
    "engine.",
    "lock.",
    "alert.",
    "node.",
    "plugin.",
    "rescue.",
];

struct Filter {
    task_id: Option<TaskId>,
    core_id: Option<String>,
    kind: Option<String>,
    admin: bool,
}

impl Filter {
    fn accepts(&self, event: &Event) -> bool {
        if !self.admin
            && !OPERATIONAL_KINDS
                .iter()
                .any(|prefix| event.kind.as_str().starts_with(prefix))
        {
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
    if raw.is_empty() || raw.len() > 19 || !raw.bytes().all(|b| b.is_ascii_digit()) {
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

/// The events of one task from the log's index by task, from a sequence number up to where
/// the live subscription starts: what a stream of one task resuming from `after` replays
/// before following the live log.
struct TaskReplay {
    log: EventLog,
    task_id: TaskId,
    /// The last sequence replayed (or the resume point).
    after: u64,
    /// Where the live subscription takes over: replayed events are at most this.
    until: u64,
    buffered: VecDeque<Event>,
    done: bool,
}

impl TaskReplay {
    const PAGE: usize = 256;

    /// The next replayed event, or `None` once the replay has reached `until`.
    async fn next(&mut self) -> orch_core::Result<Option<Event>> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                self.after = event.seq;
                return Ok(Some(event));
            }
            if self.done {
                return Ok(None);
            }
            let page = self
                .log
                .task_events(self.task_id, self.after, Self::PAGE)
                .await?;
            self.done = page.len() < Self::PAGE;
            let before = page.len();
            self.buffered
                .extend(page.into_iter().take_while(|e| e.seq <= self.until));
            if self.buffered.len() < before {
                self.done = true;
            }
        }
    }
}

struct StreamState {
    replay: Option<TaskReplay>,
    subscription: Subscription,
    /// Events at or before this were sent (or skipped) already.
    sent: u64,
    filter: Filter,
    open: OpenStream,
    session: Session,
    /// When the token is checked again (the stream's own timer: no task per stream, so
    /// 10,000 streams do not hold 10,000 tasks).
    recheck: tokio::time::Interval,
}

/// What a stream waits for next.
enum Next {
    Replayed(orch_core::Result<Option<Event>>),
    Live(Option<orch_core::Result<Arc<Event>>>),
    Recheck,
}

fn stream(
    replay: Option<TaskReplay>,
    subscription: Subscription,
    sent: u64,
    filter: Filter,
    open: OpenStream,
    session: Session,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    let every = session.recheck_every();
    let state = StreamState {
        replay,
        subscription,
        sent,
        filter,
        open,
        session,
        recheck: tokio::time::interval_at(tokio::time::Instant::now() + every, every),
    };
    futures_util::stream::unfold(state, |mut state| async move {
        let shutdown = state.open.streams.shutdown.clone();
        loop {
            let next = match &mut state.replay {
                Some(replay) => tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = state.recheck.tick() => Next::Recheck,
                    next = replay.next() => Next::Replayed(next),
                },
                None => tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = state.recheck.tick() => Next::Recheck,
                    next = state.subscription.next() => Next::Live(next),
                },
            };
            match next {
                Next::Recheck => {
                    if !state.session.still_valid().await {
                        return None;
                    }
                }
                Next::Replayed(Ok(Some(event))) => {
                    state.sent = state.sent.max(event.seq);
                    if state.filter.accepts(&event) {
                        state.open.metrics.sse_sent.inc();
                        let item = to_sse(&event);
                        return Some((Ok(item), state));
                    }
                }
                Next::Replayed(Ok(None)) => state.replay = None,
                Next::Replayed(Err(error)) => {
                    tracing::warn!(%error, "sse: replaying a task's events failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Next::Live(None) => return None,
                Next::Live(Some(Err(error))) => {
                    tracing::warn!(%error, "sse: catching up from the log failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Next::Live(Some(Ok(event))) => {
                    if event.seq > state.sent && state.filter.accepts(&event) {
                        state.open.metrics.sse_sent.inc();
                        let item = to_sse(&event);
                        return Some((Ok(item), state));
                    }
                }
            }
        }
    })
}

/// `GET /sse/events`.
#[utoipa::path(get, path = "/sse/events", tag = "events", security(("bearer" = [])),
    params(SseQuery, ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = r"^[0-9]{1,19}$",
        description = "Resume after this event's sequence number")),
    responses((status = 200, description = "Server-sent events, each with its sequence as `id`",
            content_type = "text/event-stream"),
        (status = 429, description = "Too many streams open for this user",
            body = crate::error::ErrorBody),
        (status = 503, description = "Too many streams open, or shutting down",
            body = crate::error::ErrorBody)))]
pub async fn events(
    State(orch): State<Orchestrator>,
    State(streams): State<SseStreams>,
    State(metrics): State<Arc<Metrics>>,
    caller: Authed<AnyRole>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<SseQuery>,
) -> ApiResult<Response> {
    // Both are checked; the header wins.
    let from_query = query
        .last_event_id
        .as_deref()
        .map(|v| parse_last_event_id(v, "last_event_id"))
        .transpose()?;
    let resume = match headers.get("last-event-id") {
        Some(value) => Some(parse_last_event_id(
            value.to_str().unwrap_or(""),
            "Last-Event-ID",
        )?),
        None => from_query,
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
    let user = caller.principal().username.clone();
    {
        let per_user_max = streams.config.max_per_user;
        let mut per_user = streams.per_user.lock();
        let held = per_user.entry(user.clone()).or_insert(0);
        if *held >= per_user_max {
            if *held == 0 {
                per_user.remove(&user);
            }
            drop(per_user);
            streams.open.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many event streams open for this user (limit {per_user_max} per user)"
                ),
            )
            .with_retry_after(5));
        }
        *held += 1;
    }
    metrics.sse_active.inc();
    let keep_alive = KeepAlive::new().interval(streams.config.keep_alive);
    let guard = OpenStream {
        streams,
        user,
        metrics,
    };
    let session = caller.session().clone();
    let (replay, subscription, sent) = match (resume, filter.task_id) {
        // One task from a point in the past: its events through the index by task, then live
        // from where the subscription starts.
        (Some(after), Some(task_id)) => {
            let subscription = orch.events().subscribe().await?;
            let until = subscription.cursor();
            let replay = TaskReplay {
                log: orch.events().clone(),
                task_id,
                after,
                until,
                buffered: VecDeque::new(),
                done: after >= until,
            };
            (Some(replay), subscription, after)
        }
        (Some(after), None) => (None, orch.events().subscribe_from(after), after),
        (None, _) => {
            let subscription = orch.events().subscribe().await?;
            let sent = subscription.cursor();
            (None, subscription, sent)
        }
    };
    Ok(
        Sse::new(stream(replay, subscription, sent, filter, guard, session))
            .keep_alive(keep_alive)
            .into_response(),
    )
}
