//! `GET /plugins`, `GET /metrics`, `GET /openapi.json`, and the JSON 404/405 fallbacks.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use orch_core::{Orchestrator, PluginRegistry};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::auth::{AnyRole, Authed};
use crate::config::Secret;
use crate::error::ApiError;
use crate::metrics::{Metrics, method_label};

/// Who may scrape `GET /metrics`: anyone, or the holders of a token
/// ([`HttpConfig::metrics_token`](crate::HttpConfig::metrics_token)).
#[derive(Debug, Clone, Default)]
pub struct MetricsAccess {
    token: Option<Arc<Secret>>,
}

impl MetricsAccess {
    pub(crate) fn new(token: Option<Secret>) -> Self {
        MetricsAccess {
            token: token.map(Arc::new),
        }
    }

    fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        match presented {
            Some(presented)
                if bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes())) =>
            {
                Ok(())
            }
            _ => Err(
                ApiError::unauthorized("metrics need Authorization: Bearer <metrics token>")
                    .with_field("Authorization"),
            ),
        }
    }
}

/// A registered plugin.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginView {
    /// Unique name.
    pub name: String,
    /// Version.
    pub version: String,
    /// What it does.
    pub description: String,
    /// Capabilities (`engine` with the `core_id` it serves, ...).
    #[schema(value_type = Vec<Object>)]
    pub capabilities: Vec<orch_core::Capability>,
}

/// Plugins and engines.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginsResponse {
    /// Registered plugins, by name.
    pub plugins: Vec<PluginView>,
    /// `core_id`s with an in-process engine (built-in or plugin).
    pub engines: Vec<String>,
}

/// `GET /plugins`.
#[utoipa::path(get, path = "/plugins", tag = "system", security(("bearer" = [])),
    responses((status = 200, body = PluginsResponse)))]
pub async fn plugins(
    State(orch): State<Orchestrator>,
    _caller: Authed<AnyRole>,
) -> Json<PluginsResponse> {
    let plugins = orch
        .plugins()
        .list()
        .into_iter()
        .map(|p| PluginView {
            name: p.name().to_owned(),
            version: p.version().to_owned(),
            description: p.description().to_owned(),
            capabilities: p.capabilities(),
        })
        .collect();
    Json(PluginsResponse {
        plugins,
        engines: orch.engines(),
    })
}

/// `GET /metrics`: Prometheus classic text format (0.0.4), rendered at most once a second;
/// with a metrics token configured, 401 without it.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, content_type = "text/plain; version=0.0.4"),
        (status = 401, body = crate::error::ErrorBody)))]
pub async fn metrics(
    State(metrics): State<Arc<Metrics>>,
    State(orch): State<Orchestrator>,
    State(access): State<MetricsAccess>,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = access.check(&headers) {
        return error.into_response();
    }
    let body = metrics.render(&orch).await.as_str().to_owned();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "system",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi() -> Response {
    Json(crate::openapi::document()).into_response()
}

/// JSON 404 for unknown routes (counted with a bounded `method` label: see
/// [`method_label`]).
pub async fn not_found(State(metrics): State<Arc<Metrics>>, method: Method, uri: Uri) -> ApiError {
    metrics
        .http_requests
        .with_label_values(&[method_label(&method), "404", "unmatched"])
        .inc();
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

/// JSON 405 for a known route with the wrong method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
