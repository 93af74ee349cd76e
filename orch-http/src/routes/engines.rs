//! Engines: `GET /engines` and `GET /engines/{name}` (each engine's state on the node that
//! answers: running, paused, quarantined, its concurrency and what runs),
//! `POST /engines/{name}/pause` and `POST /engines/{name}/resume` (on every node sharing the
//! database), `PUT /engines/{name}/concurrency` and `DELETE /engines/{name}/concurrency` (the
//! answering node's limit, while it runs, and handing it back to the autoscaler), and
//! `POST /engines/{name}/release` (ends the answering node's quarantine of it). Every change
//! is an event naming the user who made it (`user:<name>`) and the reason given. Answers name
//! the node (`node`): behind a load balancer, per-node calls reach one node.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use orch_core::backend::check_name;
use orch_core::{EngineState, Orchestrator};
use serde::{Deserialize, Serialize};

use crate::auth::{AnyRole, Authed, Operators};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};

/// Who paused an engine, why and when.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PauseView {
    /// Who paused it (`user:alice`, `monitor`).
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The node that paused it.
    pub node: String,
}

/// An engine's quarantine by this node's circuit breaker.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuarantineView {
    /// When the breaker opened.
    pub since: DateTime<Utc>,
    /// When the next probe attempt may start; absent while one runs.
    pub probe_at: Option<DateTime<Utc>>,
    /// The last failure's error, if the engine returned one.
    pub last_error: Option<String>,
}

/// An engine's state on this node.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EngineView {
    /// The engine's name.
    pub engine: String,
    /// `running`, `paused` (on every node), `quarantined`, `probing`, `node_not_ready`,
    /// `stopped` or `not_registered` (not served here, listed because it is paused).
    #[schema(value_type = EngineStatusView)]
    pub status: String,
    /// Its concurrency limit on this node (0 when not registered here).
    pub limit: usize,
    /// The limit it was registered with.
    pub registered_limit: usize,
    /// Concurrency slots taken on this node: attempts running and claims under way.
    pub in_flight: usize,
    /// An operator set the limit: the autoscaler leaves it alone.
    pub limit_pinned: bool,
    /// The pause, when paused.
    pub pause: Option<PauseView>,
    /// The quarantine, when its breaker is open or probing.
    pub quarantine: Option<QuarantineView>,
    /// The version it runs, if known (a plugin's version).
    pub version: Option<String>,
    /// The version an upgrade left loaded to roll back to.
    pub previous_version: Option<String>,
}

/// What an engine does on this node.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EngineStatusView {
    /// Claiming and running its tasks.
    Running,
    /// Paused on every node: claims nothing; attempts already running finish.
    Paused,
    /// Quarantined by this node's circuit breaker until its cool-down ends.
    Quarantined,
    /// Quarantined, with one probe attempt allowed.
    Probing,
    /// This node is not ready (or is shutting down): it claims nothing.
    NodeNotReady,
    /// Its claim loop stopped after a panic.
    Stopped,
    /// Not registered on this node.
    NotRegistered,
}

impl From<EngineState> for EngineView {
    fn from(state: EngineState) -> Self {
        // The status as the core spells it in JSON (snake case).
        let status = serde_json::to_value(state.status)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned());
        EngineView {
            engine: state.engine,
            status,
            limit: state.limit,
            registered_limit: state.registered_limit,
            in_flight: state.in_flight,
            limit_pinned: state.limit_pinned,
            pause: state.pause.map(|pause| PauseView {
                actor: pause.actor,
                reason: pause.reason,
                at: pause.at,
                node: pause.node,
            }),
            quarantine: state.quarantine.map(|quarantine| QuarantineView {
                since: quarantine.since,
                probe_at: quarantine.probe_at,
                last_error: quarantine.last_error,
            }),
            version: state.version,
            previous_version: state.previous_version,
        }
    }
}

/// The engines of `GET /engines`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EngineList {
    /// The node that answered.
    pub node: String,
    /// Every engine registered on this node, and paused engines that are not, by name.
    pub engines: Vec<EngineView>,
}

/// Why an operator pauses or resumes an engine (or releases a lock).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ControlQuery {
    /// Why (kept with the pause and in the event), at most 256 characters, no control
    /// characters.
    #[param(
        nullable = false,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub reason: Option<String>,
}

/// The answer to a pause, a resume, a release or an unpinning.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ControlAnswer {
    /// The node that answered.
    pub node: String,
    /// `false` when there was nothing to do (already paused, not paused, not quarantined, not
    /// pinned).
    pub changed: bool,
    /// The engine as it is now.
    pub engine: EngineView,
}

/// A new concurrency limit.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyRequest {
    /// Attempts of the engine at once on the node that answers, at least 1 (the node's global
    /// limit still caps all engines' attempts together). Lowering it stops no attempt
    /// running: new ones start once fewer than the limit run.
    #[schema(minimum = 1, maximum = 100000)]
    #[serde(deserialize_with = "crate::whole::number")]
    pub limit: u64,
    /// Why (kept in the event), at most 256 characters, no control characters.
    #[schema(max_length = 256, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub reason: Option<String>,
}

/// The answer to a change of concurrency.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConcurrencyAnswer {
    /// The node that answered.
    pub node: String,
    /// The limit before the change.
    pub previous: usize,
    /// The engine as it is now.
    pub engine: EngineView,
}

/// The highest concurrency limit the API sets.
const MAX_LIMIT: u64 = 100_000;

/// The longest reason the API takes, in characters.
const MAX_REASON: usize = 256;

/// The reason given, checked: at most [`MAX_REASON`] characters, none a control character
/// (it is shown in terminals and logs).
pub(crate) fn reason(reason: Option<String>) -> Result<String, ApiError> {
    let reason = reason.unwrap_or_default();
    if reason.chars().count() > MAX_REASON {
        return Err(ApiError::unprocessable(
            "reason",
            format!("reason must be at most {MAX_REASON} characters"),
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "reason",
            "reason must not contain control characters",
        ));
    }
    Ok(reason)
}

/// The node that answers.
fn node(orch: &Orchestrator) -> String {
    orch.config().node_id.clone()
}

/// The answer to a control of `engine` that `changed` it or not, with its state now. After a
/// change, an engine left neither registered here nor paused (a resume of one served
/// elsewhere) is shown as not registered; with no change, an engine unknown here is a 404.
fn control_answer(
    orch: &Orchestrator,
    engine: &str,
    changed: bool,
) -> ApiResult<Json<ControlAnswer>> {
    let engine = match orch.engine_state(engine) {
        Ok(state) => state.into(),
        Err(orch_core::Error::EngineNotFound(_)) if changed => EngineView {
            engine: engine.to_owned(),
            status: "not_registered".to_owned(),
            limit: 0,
            registered_limit: 0,
            in_flight: 0,
            limit_pinned: false,
            pause: None,
            quarantine: None,
            version: None,
            previous_version: None,
        },
        Err(error) => return Err(error.into()),
    };
    Ok(Json(ControlAnswer {
        node: node(orch),
        changed,
        engine,
    }))
}

/// `GET /engines`: every engine's state on this node.
#[utoipa::path(get, path = "/engines", tag = "engines", security(("bearer" = [])),
    responses((status = 200, body = EngineList)))]
pub async fn list_engines(
    State(orch): State<Orchestrator>,
    _caller: Authed<AnyRole>,
) -> ApiResult<Json<EngineList>> {
    Ok(Json(EngineList {
        node: node(&orch),
        engines: orch
            .engine_states()
            .into_iter()
            .map(EngineView::from)
            .collect(),
    }))
}

/// `GET /engines/{name}`: 404 when it is neither registered here nor paused.
#[utoipa::path(get, path = "/engines/{name}", tag = "engines", security(("bearer" = [])),
    params(("name" = String, Path, min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
        description = "The engine: 1 to 128 characters, no control characters")),
    responses((status = 200, body = EngineView), (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)))]
pub async fn get_engine(
    State(orch): State<Orchestrator>,
    _caller: Authed<AnyRole>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<EngineView>> {
    check_name("engine", &name, orch_core::limits::MAX_ENGINE_LEN)?;
    Ok(Json(orch.engine_state(&name)?.into()))
}

/// `POST /engines/{name}/pause`: pauses the engine on every node sharing the database (its
/// queued tasks wait; attempts running finish). The engine need not be registered here.
#[utoipa::path(post, path = "/engines/{name}/pause", tag = "engines", security(("bearer" = [])),
    params(("name" = String, Path, min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
        description = "The engine: 1 to 128 characters, no control characters"), ControlQuery),
    responses((status = 200, body = ControlAnswer), (status = 422, body = crate::error::ErrorBody)))]
pub async fn pause_engine(
    State(orch): State<Orchestrator>,
    caller: Authed<Operators>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<ControlQuery>,
) -> ApiResult<Json<ControlAnswer>> {
    let reason = reason(query.reason)?;
    let changed = orch
        .pause_engine(&name, &caller.principal().actor(), &reason)
        .await?;
    control_answer(&orch, &name, changed)
}

/// `POST /engines/{name}/resume`: resumes a paused engine on every node; 404 when it is
/// neither registered here nor was paused.
#[utoipa::path(post, path = "/engines/{name}/resume", tag = "engines", security(("bearer" = [])),
    params(("name" = String, Path, min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
        description = "The engine: 1 to 128 characters, no control characters"), ControlQuery),
    responses((status = 200, body = ControlAnswer), (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)))]
pub async fn resume_engine(
    State(orch): State<Orchestrator>,
    caller: Authed<Operators>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<ControlQuery>,
) -> ApiResult<Json<ControlAnswer>> {
    let reason = reason(query.reason)?;
    let changed = orch
        .resume_engine(&name, &caller.principal().actor(), &reason)
        .await?;
    control_answer(&orch, &name, changed)
}

/// `PUT /engines/{name}/concurrency`: sets the engine's concurrency limit on this node while
/// it runs (pinned: the autoscaler leaves it alone); 404 when it is not registered here.
#[utoipa::path(put, path = "/engines/{name}/concurrency", tag = "engines",
    request_body = ConcurrencyRequest, security(("bearer" = [])),
    params(("name" = String, Path, min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
        description = "The engine: 1 to 128 characters, no control characters")),
    responses((status = 200, body = ConcurrencyAnswer), (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)))]
pub async fn set_concurrency(
    State(orch): State<Orchestrator>,
    caller: Authed<Operators>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ConcurrencyRequest>,
) -> ApiResult<Json<ConcurrencyAnswer>> {
    if body.limit == 0 || body.limit > MAX_LIMIT {
        return Err(ApiError::unprocessable(
            "limit",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let limit = usize::try_from(body.limit).unwrap_or(usize::MAX);
    let reason = reason(body.reason)?;
    let previous = orch
        .set_engine_concurrency(&name, limit, &caller.principal().actor(), &reason)
        .await?;
    Ok(Json(ConcurrencyAnswer {
        node: node(&orch),
        previous,
        engine: orch.engine_state(&name)?.into(),
    }))
}

/// `DELETE /engines/{name}/concurrency`: hands the engine's limit on the answering node back
/// to the autoscaler (a limit set through `PUT` is pinned until then). The limit in force
/// stays until the autoscaler changes it; `PUT` the registered limit to restore it. 404 when
/// the engine is not registered here.
#[utoipa::path(delete, path = "/engines/{name}/concurrency", tag = "engines", security(("bearer" = [])),
    params(("name" = String, Path, min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
        description = "The engine: 1 to 128 characters, no control characters")),
    responses((status = 200, body = ControlAnswer), (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)))]
pub async fn unpin_concurrency(
    State(orch): State<Orchestrator>,
    _caller: Authed<Operators>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<ControlAnswer>> {
    check_name("engine", &name, orch_core::limits::MAX_ENGINE_LEN)?;
    let changed = orch.unpin_engine_concurrency(&name)?;
    control_answer(&orch, &name, changed)
}

/// `POST /engines/{name}/release`: ends the answering node's quarantine of the engine (its
/// circuit breaker closes and counts failures afresh). 404 when the engine is not registered
/// here.
#[utoipa::path(post, path = "/engines/{name}/release", tag = "engines", security(("bearer" = [])),
    params(("name" = String, Path, min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
        description = "The engine: 1 to 128 characters, no control characters"), ControlQuery),
    responses((status = 200, body = ControlAnswer), (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)))]
pub async fn release_engine(
    State(orch): State<Orchestrator>,
    caller: Authed<Operators>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<ControlQuery>,
) -> ApiResult<Json<ControlAnswer>> {
    check_name("engine", &name, orch_core::limits::MAX_ENGINE_LEN)?;
    let reason = reason(query.reason)?;
    let changed = orch
        .release_engine(&name, &caller.principal().actor(), &reason)
        .await?;
    control_answer(&orch, &name, changed)
}
