//! Browser sessions: the access token in an `HttpOnly`, `SameSite=Strict` cookie, so that a
//! page (and its `EventSource`, which cannot send an `Authorization` header) is signed in, and
//! the CSRF check that state-changing calls made with that cookie pass.
//!
//! `POST /auth/login` with `"cookie": true` sets two cookies: `orch_session` (the token; not
//! readable by scripts, and not in the answer's body either) and `orch_csrf` (readable by the
//! page's own scripts, which send it back as the `X-CSRF-Token` header). With
//! [`HttpConfig::secure_cookies`](crate::HttpConfig::secure_cookies) they are `Secure` and
//! named `__Host-orch_session` and `__Host-orch_csrf`: a browser then takes them only from
//! this host over HTTPS, so a sibling subdomain cannot plant a session of its own. A request
//! carrying two session cookies (one planted) is refused. The CSRF token is derived from the session token
//! (SHA-256), so the server keeps nothing and a token for one session is worthless for
//! another. A request authenticated by the cookie with a method other than `GET`, `HEAD` or
//! `OPTIONS` must carry the right `X-CSRF-Token`, and, when it has an `Origin` header, come
//! from the server's own origin. A request with an `Authorization` header is authenticated by
//! it alone: the cookie is not read, and there is no CSRF check (a browser never adds that
//! header to a cross-site request on its own).

use axum::http::{HeaderMap, HeaderValue, Method, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The cookie holding the access token (`HttpOnly`), without `Secure`.
pub const SESSION_COOKIE: &str = "orch_session";
/// The cookie holding the CSRF token, for the page's scripts to read, without `Secure`.
pub const CSRF_COOKIE: &str = "orch_csrf";
/// [`SESSION_COOKIE`] with `Secure`: host-only, HTTPS only.
pub const SECURE_SESSION_COOKIE: &str = "__Host-orch_session";
/// [`CSRF_COOKIE`] with `Secure`.
pub const SECURE_CSRF_COOKIE: &str = "__Host-orch_csrf";

/// The session and CSRF cookies' names.
pub fn names(secure: bool) -> (&'static str, &'static str) {
    if secure {
        (SECURE_SESSION_COOKIE, SECURE_CSRF_COOKIE)
    } else {
        (SESSION_COOKIE, CSRF_COOKIE)
    }
}
/// The header carrying the CSRF token on state-changing calls made with the session cookie.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The CSRF token of the session whose access token is `token`.
pub fn csrf_token(token: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(b"orch-csrf\0");
    digest.update(token.as_bytes());
    hex::encode(digest.finalize())
}

/// The `Set-Cookie` values that open a session for `token`, valid `max_age` seconds;
/// `secure` adds `Secure` (the server speaks HTTPS).
pub fn open(token: &str, max_age: u64, secure: bool) -> Result<[HeaderValue; 2], ApiError> {
    let (session_name, csrf_name) = names(secure);
    let secure = if secure { "; Secure" } else { "" };
    let session = format!(
        "{session_name}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    );
    let csrf = format!(
        "{csrf_name}={}; Path=/; Max-Age={max_age}; SameSite=Strict{secure}",
        csrf_token(token)
    );
    let value = |text: String| {
        HeaderValue::from_str(&text).map_err(|e| ApiError::internal("session cookie", e))
    };
    Ok([value(session)?, value(csrf)?])
}

/// The `Set-Cookie` values that end a session in the browser.
pub fn close(secure: bool) -> Result<[HeaderValue; 2], ApiError> {
    let (session_name, csrf_name) = names(secure);
    let secure = if secure { "; Secure" } else { "" };
    let value = |name: &str, http_only: &str| {
        HeaderValue::from_str(&format!(
            "{name}=; Path=/; Max-Age=0{http_only}; SameSite=Strict{secure}"
        ))
        .map_err(|e| ApiError::internal("session cookie", e))
    };
    Ok([value(session_name, "; HttpOnly")?, value(csrf_name, "")?])
}

/// The value of cookie `name` in the request's `Cookie` headers: `Ok(None)` without one, an
/// error (401) when there are several (a cookie planted beside the real one: which one the
/// browser meant cannot be told).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value.trim());
    let first = found.next();
    if found.next().is_some() {
        return Err(
            ApiError::unauthorized(format!("more than one {name} cookie: log in again"))
                .with_field("Cookie"),
        );
    }
    Ok(first.filter(|value| !value.is_empty()))
}

/// The CSRF check of a request authenticated by the session cookie holding `token`: safe
/// methods pass; others need `X-CSRF-Token` to match and, with an `Origin` header, the
/// server's own origin (the request's `Host`). 403 naming what is wrong otherwise.
pub fn check_csrf(method: &Method, headers: &HeaderMap, token: &str) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, rest)| rest.trim_end_matches('/'));
        if host.is_none() || origin_host != host {
            return Err(ApiError::forbidden(
                "a request signed in by the session cookie must come from this server's own \
                 origin",
            )
            .with_field("Origin"));
        }
    }
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let expected = csrf_token(token);
    if sent.is_empty() || !bool::from(sent.as_bytes().ct_eq(expected.as_bytes())) {
        return Err(ApiError::forbidden(
            "a request signed in by the session cookie must send the X-CSRF-Token header (the \
             orch_csrf cookie's value)",
        )
        .with_field("X-CSRF-Token"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; orch_session=tok.en; b=2"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE).unwrap(), Some("tok.en"));
        assert_eq!(cookie(&headers, CSRF_COOKIE).unwrap(), None);
        // A second one, planted: refused rather than guessed.
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("orch_session=other"),
        );
        assert!(cookie(&headers, SESSION_COOKIE).is_err());
    }

    #[test]
    fn state_changing_calls_need_the_token_and_the_origin() {
        let token = "header.payload.signature";
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8000"));
        assert!(check_csrf(&Method::GET, &headers, token).is_ok());
        assert!(check_csrf(&Method::POST, &headers, token).is_err());
        headers.insert(
            CSRF_HEADER,
            HeaderValue::from_str(&csrf_token(token)).unwrap(),
        );
        assert!(check_csrf(&Method::POST, &headers, token).is_ok());
        assert!(check_csrf(&Method::POST, &headers, "another.session.token").is_err());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(check_csrf(&Method::POST, &headers, token).is_err());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8000"),
        );
        assert!(check_csrf(&Method::POST, &headers, token).is_ok());
    }
}
