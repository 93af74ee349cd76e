//! Two routers ("nodes") over one backend, as two orchd share one PostgreSQL: what one node
//! does to a lock is what the other sees (issue 11, finding 3).

use std::sync::Arc;
use std::time::Duration;

use orch_core::{MemoryBackend, SharedBackend};
use orch_http::{AppState, Clock};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::{self, Server, assert_error};

/// A second node over `backend`, whose users the first node created.
async fn second_node(backend: SharedBackend) -> Server {
    let orch = common::orchestrator(backend, common::orchestrator_config()).await;
    let clock = Clock::manual_at_unix(common::START_UNIX);
    let state =
        AppState::with_clock(orch.clone(), common::config(), clock.clone()).expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let server = tokio::spawn(orch_http::serve(
        listener,
        orch_http::router(state.clone()),
        stop.clone(),
    ));
    Server {
        base: format!("http://{addr}"),
        state,
        orch,
        clock,
        http: reqwest::Client::new(),
        stop,
        server,
    }
}

/// A lock taken through one node with a short TTL and extended through the other stays held
/// past its first expiry: the first node must not release it when its own record of the
/// expiry passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_extended_through_another_node_is_not_released_by_the_first() {
    let backend: SharedBackend = Arc::new(MemoryBackend::new());
    let first = common::start_on(backend.clone(), common::config()).await;
    let second = second_node(backend).await;
    let operator = first.token("operator").await;
    let system = first.token("system").await;
    let granted = first
        .call(
            Method::POST,
            "/locks/report:1/acquire",
            Some(&operator),
            Some(json!({"ttl": 1})),
        )
        .await;
    assert_eq!(granted.status, StatusCode::OK, "{}", granted.body);
    let token = granted.body["fencing_token"].as_u64().unwrap();
    let extended = second
        .call(
            Method::POST,
            "/locks/report:1/extend",
            Some(&operator),
            Some(json!({"fencing_token": token, "ttl": 60})),
        )
        .await;
    assert_eq!(extended.status, StatusCode::OK, "{}", extended.body);
    // Past the first TTL, the first node grants another lock (and looks at what it keeps).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let other = first
        .call(
            Method::POST,
            "/locks/report:2/acquire",
            Some(&operator),
            Some(json!({"ttl": 60})),
        )
        .await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.body);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Still held, by the same grant, and refused to anybody else.
    let info = second
        .call(Method::GET, "/locks/report:1", Some(&system), None)
        .await;
    assert_eq!(info.status, StatusCode::OK, "{}", info.body);
    assert_eq!(info.body["fencing_token"], token);
    let taken = first
        .call(
            Method::POST,
            "/locks/report:1/acquire",
            Some(&system),
            Some(json!({})),
        )
        .await;
    assert_error(&taken, StatusCode::CONFLICT);
    // The holder releases it through either node.
    let released = first
        .call(
            Method::POST,
            "/locks/report:1/release",
            Some(&operator),
            Some(json!({"fencing_token": token})),
        )
        .await;
    assert_eq!(released.status, StatusCode::OK, "{}", released.body);
}

/// A lock granted over HTTP and never released nor extended is free once its TTL has run out,
/// and nothing the node keeps for it outlives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_granted_over_http_expires_at_its_ttl() {
    let server = common::start().await;
    let operator = server.token("operator").await;
    let system = server.token("system").await;
    let granted = server
        .call(
            Method::POST,
            "/locks/batch:9/acquire",
            Some(&operator),
            Some(json!({"ttl": 0.3})),
        )
        .await;
    assert_eq!(granted.status, StatusCode::OK, "{}", granted.body);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let taken = server
        .call(
            Method::POST,
            "/locks/batch:9/acquire",
            Some(&system),
            Some(json!({"ttl": 60})),
        )
        .await;
    assert_eq!(taken.status, StatusCode::OK, "{}", taken.body);
    assert_eq!(taken.body["owner"], "system");
}
