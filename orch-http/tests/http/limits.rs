//! Rate limits (429 with Retry-After >= 1) on the injected clock, and body limits.

use std::time::Duration;

use orch_http::config::{Limit, RateLimitConfig};
use reqwest::{Method, StatusCode};

use crate::common::{self, PASSWORD, assert_error};

fn retry_after(reply: &common::Reply) -> u64 {
    reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_and_endpoint_limit() {
    let limits = RateLimitConfig {
        per_user: Limit::new(60, 3),
        ..RateLimitConfig::disabled()
    };
    let server = common::start_with(common::config().with_rate_limit(limits)).await;
    let viewer = server.token("viewer").await;
    let operator = server.token("operator").await;
    for _ in 0..3 {
        assert_eq!(
            server
                .call(Method::GET, "/jobs", Some(&viewer), None)
                .await
                .status,
            StatusCode::OK
        );
    }
    let limited = server.call(Method::GET, "/jobs", Some(&viewer), None).await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&limited) >= 1);
    // Another endpoint and another user have their own buckets.
    assert_eq!(
        server
            .call(Method::GET, "/locks", Some(&viewer), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        server
            .call(Method::GET, "/jobs", Some(&operator), None)
            .await
            .status,
        StatusCode::OK
    );
    // 60/min: one more request a second.
    server.clock.advance(Duration::from_millis(1000));
    assert_eq!(
        server
            .call(Method::GET, "/jobs", Some(&viewer), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        server
            .call(Method::GET, "/jobs", Some(&viewer), None)
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_second_waits_round_up_to_one_second() {
    let limits = RateLimitConfig {
        per_user: Limit::new(600, 1),
        ..RateLimitConfig::disabled()
    };
    let server = common::start_with(common::config().with_rate_limit(limits)).await;
    let viewer = server.token("viewer").await;
    server.call(Method::GET, "/jobs", Some(&viewer), None).await;
    let limited = server.call(Method::GET, "/jobs", Some(&viewer), None).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&limited), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_and_login_limits() {
    let limits = RateLimitConfig {
        per_user: Limit::new(0, 0),
        per_ip: Limit::new(60, 20),
        login_per_ip: Limit::new(60, 2),
        ..RateLimitConfig::default()
    };
    let server = common::start_with(common::config().with_rate_limit(limits)).await;
    assert_eq!(
        server.login("viewer", PASSWORD).await.status,
        StatusCode::OK
    );
    assert_eq!(
        server.login("viewer", PASSWORD).await.status,
        StatusCode::OK
    );
    let limited = server.login("viewer", PASSWORD).await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&limited) >= 1);
    // Per IP: 20 in a burst in all (3 logins so far), /health exempt.
    for _ in 0..17 {
        let reply = server.call(Method::GET, "/plugins", None, None).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let limited = server.call(Method::GET, "/plugins", None, None).await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        server
            .http
            .get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    server.clock.advance(Duration::from_secs(1));
    assert_eq!(
        server
            .call(Method::GET, "/plugins", None, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

/// Sends the head of a request announcing `length` bytes of body, none of it, then reads the
/// answer: the server refuses by the announced length at once. (A client that kept writing the
/// whole body would race the server closing the connection after its refusal, and could see a
/// reset instead of the answer.)
async fn announce_oversized(
    server: &common::Server,
    path: &str,
    headers: &[(&str, &str)],
    length: usize,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body = serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_with_json() {
    let server = common::start().await;
    let token = server.token("operator").await;
    let bearer = format!("Bearer {token}");
    for (path, headers) in [
        ("/dispatch", vec![("Authorization", bearer.as_str())]),
        ("/webhook", vec![("X-Signature", "t=1,v1=00")]),
    ] {
        let (status, body) = announce_oversized(&server, path, &headers, 2 * 1024 * 1024).await;
        assert_eq!(status, 413, "{path}: {body}");
        assert!(
            body["error"].is_string(),
            "{path}: not a JSON error: {body}"
        );
    }
}
