//! Extractors whose rejections are [`ApiError`]s: a JSON body that names the field at fault, a
//! query string, and id parsers. No request data is ever unwrapped.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{StatusCode, header, request::Parts};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. Refuses a wrong content type (415), a body over the limit (413), bad JSON (400)
/// and a body of the wrong shape (422, naming the field).
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let mime = v
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                mime == "application/json" || mime.ends_with("+json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected Content-Type: application/json",
            )
            .with_field("Content-Type"));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejected)?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("body", "request body is empty"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, T>(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = inner.to_string();
        let field = if path == "." || path.is_empty() {
            missing_field_name(&message).unwrap_or_else(|| "body".to_owned())
        } else {
            path
        };
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request("body", format!("malformed JSON: {message}"))
        } else {
            ApiError::unprocessable(field, format!("invalid request body: {message}"))
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::bad_request("body", format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// `missing field `x`` / `unknown field `x`` -> `x`.
fn missing_field_name(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

/// A query string; a malformed one is a 400 naming the parameter when serde says which.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::bad_request("query", rejection.body_text()))
    }
}

/// Parses a task id from a path (`task-` prefix allowed); 400 naming `task_id` otherwise.
pub fn parse_task_id(raw: &str) -> Result<orch_core::TaskId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request("task_id", format!("{raw:?} is not a task id (UUID)")))
}

/// Path parameters; a bad one (invalid percent-encoding, wrong type) is a 400 naming `path`.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|rejection| ApiError::bad_request("path", rejection.body_text()))
    }
}

/// The raw body; over the size limit is a 413 JSON error.
#[derive(Debug, Clone)]
pub struct RawBody(pub Bytes);

impl<S> FromRequest<S> for RawBody
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|rejection| body_rejected(rejection).with_field("body"))
    }
}

/// The answer to a body that could not be read: 408 when it did not arrive within the server's
/// body timeout, else what axum says (413 for a body over the limit, 400 otherwise).
fn body_rejected(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
    while let Some(error) = source {
        if let Some(timed_out) = error.downcast_ref::<crate::server::BodyTimedOut>() {
            return ApiError::new(StatusCode::REQUEST_TIMEOUT, timed_out.to_string());
        }
        source = error.source();
    }
    ApiError::new(rejection.status(), rejection.body_text())
}
