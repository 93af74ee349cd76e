//! [`router`]: the handlers of [`routes`](crate::routes) put together with the middleware
//! stack, over an [`AppState`].

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, Request, header};
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::routes::{auth, engines, health, jobs, locks, misc, overview, sse, webhook, workflows};
use crate::state::AppState;

/// Refuses a request whose `Content-Length` announces more than `max` bytes before reading any
/// of its body, so a client that is still sending reads the answer instead of a reset
/// connection. (A body without a length is cut at `max` as it is read.)
async fn refuse_announced_oversize(
    axum::extract::State(max): axum::extract::State<usize>,
    request: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if announced.is_some_and(|length| length > max as u64) {
        return ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {max} bytes"),
        )
        .into_response();
    }
    next.run(request).await
}

/// Every route of the API, each declared once with its handler: the handler's
/// `#[utoipa::path]` gives both the axum route (path and methods) and its operation in the
/// OpenAPI document ([`crate::openapi::document`] is built from this too).
pub(crate) fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(misc::metrics))
        .routes(routes!(misc::openapi))
        .routes(routes!(misc::plugins))
        .routes(routes!(overview::stats))
        .routes(routes!(auth::login))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::me))
        .routes(routes!(auth::create_user, auth::list_users))
        .routes(routes!(auth::update_user, auth::delete_user))
        .routes(routes!(auth::unlock_user))
        .routes(routes!(jobs::dispatch))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::claim))
        .routes(routes!(jobs::get_job, jobs::delete_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(jobs::retry_job))
        .routes(routes!(jobs::requeue_job))
        .routes(routes!(jobs::bulk_jobs))
        .routes(routes!(jobs::job_events))
        .routes(routes!(jobs::update_status))
        .routes(routes!(jobs::heartbeat))
        .routes(routes!(workflows::dispatch_workflow))
        .routes(routes!(workflows::get_workflow))
        .routes(routes!(workflows::cancel_workflow))
        .routes(routes!(workflows::retry_workflow))
        .routes(routes!(webhook::webhook))
        .routes(routes!(sse::events))
        .routes(routes!(engines::list_engines))
        .routes(routes!(engines::get_engine))
        .routes(routes!(engines::pause_engine))
        .routes(routes!(engines::resume_engine))
        .routes(routes!(
            engines::set_concurrency,
            engines::unpin_concurrency
        ))
        .routes(routes!(engines::release_engine))
        .routes(routes!(locks::list_locks))
        .routes(routes!(locks::get_lock, locks::force_release))
        .routes(routes!(locks::acquire))
        .routes(routes!(locks::extend))
        .routes(routes!(locks::release))
}

/// The API as an axum [`Router`] over `state`: mount it, nest it, or serve it. Serve it with
/// [`crate::serve`] (what `orchd` runs), or with
/// `into_make_service_with_connect_info::<SocketAddr>()`, so per-IP limits and security events
/// see the client address.
pub fn router(state: AppState) -> Router {
    let config = state.config().clone();
    let (routes, _document) = api_routes().split_for_parts();
    let routes = routes
        .merge(crate::routes::ui::routes())
        .route_layer(from_fn_with_state(state.clone(), crate::metrics::track))
        .fallback(misc::not_found)
        .method_not_allowed_fallback(misc::method_not_allowed)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            config.max_body_bytes,
            refuse_announced_oversize,
        ))
        .layer(from_fn_with_state(state.clone(), crate::ratelimit::per_ip));
    let routes = if config.cors_origins.is_empty() {
        routes
    } else {
        let origins: Vec<HeaderValue> = config
            .cors_origins
            .iter()
            .filter_map(|o| o.parse().ok())
            .collect();
        routes.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                ])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("idempotency-key"),
                    HeaderName::from_static("last-event-id"),
                    HeaderName::from_static("x-request-id"),
                ])
                .expose_headers([HeaderName::from_static("x-request-id"), header::RETRY_AFTER]),
        )
    };
    let request_id = HeaderName::from_static("x-request-id");
    routes
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                tracing::error!("a handler panicked");
                ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error",
                )
                .into_response()
            },
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        path = %request.uri().path(),
                        correlation_id = %id,
                    )
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}
