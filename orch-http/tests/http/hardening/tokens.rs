//! Finding 16 (no revocation) and rotating JWT signing keys.

use std::sync::Arc;
use std::time::Duration;

use orch_core::{MemoryBackend, SharedBackend};
use orch_http::Secret;
use orch_http::server::ServerOptions;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{self, JWT_SECRET, PASSWORD, Server, assert_error};

async fn jobs(server: &Server, token: &str) -> StatusCode {
    server
        .call(Method::GET, "/jobs", Some(token), None)
        .await
        .status
}

async fn patch(server: &Server, admin: &str, user: &str, body: Value) -> common::Reply {
    server
        .call(
            Method::PATCH,
            &format!("/users/{user}"),
            Some(admin),
            Some(body),
        )
        .await
}

/// Disable, enable, a new role, a new password, delete: each stops the user's tokens at once,
/// and what it says of logins holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_16_a_token_stops_working_when_its_user_is_disabled_changed_or_deleted() {
    let server = common::start().await;
    let admin = server.token("admin").await;

    let token = server.token("operator").await;
    assert_eq!(jobs(&server, &token).await, StatusCode::OK);
    let disabled = patch(&server, &admin, "operator", json!({"disabled": true})).await;
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.body);
    assert_eq!(disabled.body["disabled"], true);
    let refused = server.call(Method::GET, "/jobs", Some(&token), None).await;
    assert_error(&refused, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.body["error"], "the token's user is disabled");
    assert_eq!(
        server.login("operator", PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Enabled again: the old token stays refused (it predates the change), a new login works.
    patch(&server, &admin, "operator", json!({"disabled": false})).await;
    assert_eq!(jobs(&server, &token).await, StatusCode::UNAUTHORIZED);
    let token = server.token("operator").await;
    assert_eq!(jobs(&server, &token).await, StatusCode::OK);

    // A new role: the old token (of the old role) is refused.
    let changed = patch(&server, &admin, "operator", json!({"role": "viewer"})).await;
    assert_eq!(changed.body["role"], "viewer");
    assert_eq!(jobs(&server, &token).await, StatusCode::UNAUTHORIZED);
    let token = server.token("operator").await;
    let dispatch = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&token),
            Some(json!({"core_id": "echo"})),
        )
        .await;
    assert_eq!(dispatch.status, StatusCode::FORBIDDEN, "a viewer now");

    // A new password: old token and old password refused.
    patch(
        &server,
        &admin,
        "operator",
        json!({"password": "a brand new password"}),
    )
    .await;
    assert_eq!(jobs(&server, &token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        server.login("operator", PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    let token = server.login("operator", "a brand new password").await.body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(jobs(&server, &token).await, StatusCode::OK);

    // Deleted.
    let deleted = server
        .call(Method::DELETE, "/users/operator", Some(&admin), None)
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    assert_eq!(jobs(&server, &token).await, StatusCode::UNAUTHORIZED);
    let gone = server
        .call(Method::DELETE, "/users/operator", Some(&admin), None)
        .await;
    assert_error(&gone, StatusCode::NOT_FOUND);

    // The last enabled admin cannot be disabled, demoted or deleted over the API.
    for body in [json!({"disabled": true}), json!({"role": "viewer"})] {
        let refused = patch(&server, &admin, "admin", body).await;
        assert_error(&refused, StatusCode::CONFLICT);
    }
    let refused = server
        .call(Method::DELETE, "/users/admin", Some(&admin), None)
        .await;
    assert_error(&refused, StatusCode::CONFLICT);
    assert_error(
        &patch(&server, &admin, "viewer", json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
}

/// Another node sees the change within `user_recheck`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_16_another_node_refuses_the_token_within_the_recheck_interval() {
    let backend: SharedBackend = Arc::new(MemoryBackend::new());
    let config = || common::config().with_user_recheck(Duration::from_millis(300));
    let a = common::start_on(backend.clone(), config()).await;
    let b = common::start_node(
        backend,
        common::orchestrator_config(),
        config(),
        ServerOptions::default(),
    )
    .await;
    let token = a.token("operator").await;
    assert_eq!(jobs(&b, &token).await, StatusCode::OK);
    let admin = a.token("admin").await;
    patch(&a, &admin, "operator", json!({"disabled": true})).await;
    assert_eq!(jobs(&a, &token).await, StatusCode::UNAUTHORIZED);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(jobs(&b, &token).await, StatusCode::UNAUTHORIZED);
}

/// An open event stream ends once its user is disabled (and once its token expires).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_16_an_event_stream_ends_when_its_token_is_no_longer_valid() {
    let config = common::config().with_user_recheck(Duration::from_millis(200));
    let server = common::start_with(config).await;
    let admin = server.token("admin").await;
    let ends_within = async |token: &str, change: &dyn Fn()| {
        let mut response = server
            .http
            .get(server.url("/sse/events"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        change();
        tokio::time::timeout(Duration::from_secs(5), async {
            while response.chunk().await.is_ok_and(|chunk| chunk.is_some()) {}
        })
        .await
        .is_ok()
    };
    // Disabled while the stream is open.
    let token = server.token("viewer").await;
    let state = server.state.clone();
    let disable = move || {
        let state = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            state
                .users()
                .update(
                    "viewer",
                    orch_http::auth::users::UserChange::default().disabled(true),
                )
                .await
                .unwrap();
        });
    };
    assert!(ends_within(&token, &disable).await, "the stream went on");
    // Expired while the stream is open (the injected clock moves past `exp`).
    let clock = server.clock.clone();
    let expire = move || clock.advance(Duration::from_secs(901));
    assert!(ends_within(&admin, &expire).await, "the stream went on");
}

/// Keys rotate: a token signed with the previous key still works; one from a key no longer
/// configured does not; new tokens name the current key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_signing_keys_rotate_like_webhook_secrets() {
    let backend: SharedBackend = Arc::new(MemoryBackend::new());
    let old = common::start_on(backend.clone(), common::config()).await;
    let old_token = old.token("operator").await;
    const NEW_SECRET: &str = "the-new-jwt-secret-0123456789abcdef0123";
    let rotated = common::config();
    let rotated = orch_http::HttpConfig {
        jwt: orch_http::config::JwtConfig {
            secret: Secret::new(NEW_SECRET),
            ..rotated.jwt.clone()
        },
        ..rotated
    }
    .with_previous_jwt_secret(Secret::new(JWT_SECRET));
    let new = common::start_node(
        backend.clone(),
        common::orchestrator_config(),
        rotated.clone(),
        ServerOptions::default(),
    )
    .await;
    assert_eq!(jobs(&new, &old_token).await, StatusCode::OK);
    let new_token = new.token("operator").await;
    assert_eq!(jobs(&new, &new_token).await, StatusCode::OK);
    let kid = |token: &str| -> String {
        use base64::Engine as _;
        let header = token.split('.').next().unwrap();
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap();
        serde_json::from_slice::<Value>(&header).unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_ne!(kid(&old_token), kid(&new_token));
    // The old node does not know the new key yet.
    assert_eq!(jobs(&old, &new_token).await, StatusCode::UNAUTHORIZED);
    // The old key retired.
    let retired = orch_http::HttpConfig {
        jwt: orch_http::config::JwtConfig {
            previous_secrets: Vec::new(),
            ..rotated.jwt.clone()
        },
        ..rotated
    };
    let last = common::start_node(
        backend,
        common::orchestrator_config(),
        retired,
        ServerOptions::default(),
    )
    .await;
    let refused = last
        .call(Method::GET, "/jobs", Some(&old_token), None)
        .await;
    assert_error(&refused, StatusCode::UNAUTHORIZED);
    assert!(
        refused.body["error"]
            .as_str()
            .unwrap()
            .contains("no longer accepted"),
        "{}",
        refused.body
    );
    assert_eq!(jobs(&last, &new_token).await, StatusCode::OK);
}
