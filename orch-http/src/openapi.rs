//! The OpenAPI document, generated from the router itself: [`crate::router`] declares each
//! route once, as a handler with its `#[utoipa::path]` attribute (utoipa-axum's `routes!`), and
//! the same declaration yields both the axum route and the document's operation, so the two
//! cannot drift. This module adds what is common to every operation (the bearer scheme, the
//! error answers every handler may give) and the schemas that only describe the wire (states,
//! names, events).

use std::sync::OnceLock;

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::error::ErrorBody;

/// The document's frame: title, description, the bearer scheme, and the error answers; the
/// router adds the paths.
#[derive(OpenApi)]
#[openapi(
    info(title = "orch", description = "The HTTP API of the orch task orchestrator"),
    components(schemas(
        ErrorBody,
        TaskState,
        ReportedState,
        EventView,
        StorableJson,
        ParentFailure,
        WorkflowState,
        crate::routes::jobs::JobsOrder
    )),
    modifiers(&BearerAuth)
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        // Browser sessions (`POST /auth/login` with `"cookie": true`), read by every operation
        // that takes the bearer token when there is no Authorization header.
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::auth::session::SESSION_COOKIE,
                "A browser session (POST /auth/login with \"cookie\": true), read when there is \
                 no Authorization header; a call that changes something must then also send \
                 X-CSRF-Token (the orch_csrf cookie's value) from the server's own origin, else \
                 403. Named __Host-orch_session when the server sets Secure cookies.",
            ))),
        );
    }
}

/// Adds to every operation the error answers the shared layers and extractors give, where the
/// handler did not document them itself: 400 (a malformed path, query or body), 429 (rate
/// limits), 503 (shutting down); with a bearer scheme 401 and 403; with a body 413, 415 and 422.
fn add_common_errors(openapi: &mut utoipa::openapi::OpenApi) {
    for item in openapi.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            add_errors(operation);
        }
    }
}

fn add_errors(operation: &mut Operation) {
    // OpenAPI requires a description on every response.
    for (status, response) in operation.responses.responses.iter_mut() {
        if let utoipa::openapi::RefOr::T(response) = response
            && response.description.is_empty()
        {
            response.description = status
                .parse::<u16>()
                .ok()
                .and_then(|code| axum::http::StatusCode::from_u16(code).ok())
                .and_then(|code| code.canonical_reason())
                .unwrap_or("Response")
                .to_owned();
        }
    }
    let secured = operation
        .security
        .as_ref()
        .is_some_and(|requirements| !requirements.is_empty());
    let has_body = operation.request_body.is_some();
    let mut statuses = vec![
        ("400", "The path, the query or the body is malformed"),
        ("429", "Rate limited; see `Retry-After`"),
        ("503", "Shutting down, or the database is unavailable"),
    ];
    if secured {
        statuses.push(("401", "No valid bearer token"));
        statuses.push(("403", "The token's role may not call this"));
    }
    if has_body {
        statuses.push(("413", "The body is over the size limit"));
        statuses.push(("415", "The body is not `application/json`"));
        statuses.push(("422", "A field of the body is invalid (named in `field`)"));
    }
    for (status, description) in statuses {
        if operation.responses.responses.contains_key(status) {
            continue;
        }
        let response = ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        operation
            .responses
            .responses
            .insert(status.to_owned(), response.into());
    }
}

/// The OpenAPI 3.1 document of the API: the operations of [`crate::router`]'s routes, built
/// once.
pub fn document() -> utoipa::openapi::OpenApi {
    static DOCUMENT: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            let mut document = crate::router::api_routes().split_for_parts().1;
            add_common_errors(&mut document);
            document
        })
        .clone()
}

/// The state of a task (wire names).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(
    dead_code,
    reason = "describes the wire only: `TaskView.status` is a string"
)]
pub(crate) enum TaskState {
    /// Waiting for the tasks it depends on to finish (never claimed).
    Waiting,
    /// Waiting to run.
    Queued,
    /// An attempt holds a lease.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Cancelled by a caller.
    Cancelled,
    /// The last attempt ran past its timeout.
    TimedOut,
}

/// What a parent's failure (failed, cancelled or timed out) does to a task waiting for it
/// (wire names).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(
    dead_code,
    reason = "describes the wire only: `DependencyRequest.on_failure` is orch-core's `OnParentFailure`"
)]
pub(crate) enum ParentFailure {
    /// The task fails too, without running (the default).
    Fail,
    /// The task is cancelled, without running.
    Cancel,
    /// The task runs once its other parents have finished (a clean-up step).
    RunAnyway,
}

/// How a workflow is doing (wire names).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(
    dead_code,
    reason = "describes the wire only: `WorkflowView.status` is a string"
)]
pub(crate) enum WorkflowState {
    /// Some of its tasks have not finished.
    Running,
    /// Every task succeeded.
    Succeeded,
    /// Every task finished and none succeeded.
    Failed,
    /// Every task finished, some succeeded and some did not.
    Partly,
}

/// What an external worker may report (`PUT /jobs/{id}/status`).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(
    dead_code,
    reason = "describes the wire only: `StatusUpdate.status` is a string"
)]
pub(crate) enum ReportedState {
    /// With a `result`.
    Succeeded,
    /// With an `error` (retried while attempts are left, unless `retryable` is false).
    Failed,
    /// The worker ran out of time.
    TimedOut,
}

/// A lock resource name: 1 to 256 characters, no control characters.
#[derive(ToSchema)]
#[schema(
    min_length = 1,
    max_length = 256,
    pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
)]
#[allow(dead_code, reason = "describes the wire only")]
pub(crate) struct ResourceName(String);

/// An event of the log, as `GET /jobs/{id}/events` and the event stream show it.
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "describes the wire only: events are orch-core's `Event`"
)]
pub(crate) struct EventView {
    /// Sequence number: strictly increasing along the log.
    seq: u64,
    /// What happened (`task.queued`, `task.succeeded`, `auth.login_failed`, ...).
    kind: String,
    /// When, by the backend's clock.
    at: chrono::DateTime<chrono::Utc>,
    /// The task concerned, if any.
    #[schema(format = Uuid)]
    task_id: Option<String>,
    /// The core concerned, if any.
    core_id: Option<String>,
    /// The task's attempt number at the time, for task events.
    #[schema(nullable = false)]
    attempt: Option<u32>,
    /// Details: any JSON value (`null` when there are none).
    data: serde_json::Value,
}

/// Any JSON value whose strings and object keys do not hold the character U+0000 (which
/// PostgreSQL cannot store): what a dispatch's `payload` and `metadata` may be. Recursive:
/// arrays and objects hold the same.
pub(crate) struct StorableJson;

impl StorableJson {
    /// No U+0000 in a string.
    const NO_NUL: &str = r"^[^\u0000]*$";
}

impl utoipa::PartialSchema for StorableJson {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            AnyOfBuilder, ArrayBuilder, ObjectBuilder, SchemaType, Type,
        };
        let itself = || Ref::from_schema_name("StorableJson");
        let text = || {
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::String))
                .pattern(Some(Self::NO_NUL))
        };
        AnyOfBuilder::new()
            .description(Some(
                "Any JSON value; its strings and object keys must not contain the character \
                 U+0000",
            ))
            .item(ObjectBuilder::new().schema_type(SchemaType::Array(vec![
                Type::Null,
                Type::Boolean,
                Type::Number,
            ])))
            .item(text())
            .item(ArrayBuilder::new().items(itself()))
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::Object))
                    .additional_properties(Some(itself()))
                    .property_names(Some(text())),
            )
            .into()
    }
}

impl ToSchema for StorableJson {
    fn name() -> std::borrow::Cow<'static, str> {
        "StorableJson".into()
    }
}
