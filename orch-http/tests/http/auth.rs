//! Login, tokens, lockout and unlock.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{self, JWT_SECRET, PASSWORD, START_UNIX, assert_error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_returns_a_bearer_token_that_works() {
    let server = common::start().await;
    let reply = server.login("operator", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["token_type"], "Bearer");
    assert_eq!(reply.body["expires_in"], 900);
    let token = reply.body["access_token"].as_str().unwrap();
    let jobs = server.call(Method::GET, "/jobs", Some(token), None).await;
    assert_eq!(jobs.status, StatusCode::OK);
    // Another implementation reads it as an HS256 token with our issuer and audience.
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&["orch"]);
    validation.set_audience(&["orch-api"]);
    validation.validate_exp = false;
    let decoded = jsonwebtoken::decode::<serde_json::Value>(
        token,
        &DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &validation,
    )
    .unwrap();
    assert_eq!(decoded.claims["sub"], "operator");
    assert_eq!(decoded.claims["role"], "operator");
    assert_eq!(server.events_of("auth.login_succeeded").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_wrong_password_and_locked_account_look_the_same() {
    let server = common::start().await;
    let unknown = server.login("nobody", PASSWORD).await;
    let wrong = server.login("viewer", "not the password").await;
    assert_error(&unknown, StatusCode::UNAUTHORIZED);
    assert_error(&wrong, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.body, wrong.body);
    for _ in 0..4 {
        server.login("viewer", "not the password").await;
    }
    let locked = server.login("viewer", PASSWORD).await;
    assert_error(&locked, StatusCode::UNAUTHORIZED);
    assert_eq!(locked.body, unknown.body);
    let failed = server.events_of("auth.login_failed").await;
    assert_eq!(failed.len(), 7);
    assert_eq!(failed[0].data["reason"], "unknown_user");
    assert_eq!(failed[6].data["reason"], "account_locked");
    assert_eq!(server.events_of("auth.account_locked").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_ends_after_its_duration_or_by_admin_unlock() {
    let server = common::start().await;
    for _ in 0..5 {
        server.login("operator", "wrong password!").await;
    }
    assert_eq!(
        server.login("operator", PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    // An admin unlocks.
    let admin = server.token("admin").await;
    let users = server.call(Method::GET, "/users", Some(&admin), None).await;
    let operator = users
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "operator")
        .unwrap()
        .clone();
    assert_eq!(operator["locked_until"], START_UNIX + 900);
    let unlock = server
        .call(Method::POST, "/users/operator/unlock", Some(&admin), None)
        .await;
    assert_eq!(unlock.status, StatusCode::OK, "{}", unlock.body);
    assert_eq!(
        server.login("operator", PASSWORD).await.status,
        StatusCode::OK
    );
    // Locked again, then the lock runs out (15 min on the injected clock).
    for _ in 0..5 {
        server.login("operator", "wrong password!").await;
    }
    assert_eq!(
        server.login("operator", PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    server.clock.advance(Duration::from_secs(15 * 60 + 1));
    assert_eq!(
        server.login("operator", PASSWORD).await.status,
        StatusCode::OK
    );
    let admin = server.token("admin").await;
    let unknown = server
        .call(Method::POST, "/users/ghost/unlock", Some(&admin), None)
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_outside_the_window_do_not_count() {
    let server = common::start().await;
    for _ in 0..4 {
        server.login("viewer", "wrong password!").await;
    }
    server.clock.advance(Duration::from_secs(15 * 60 + 1));
    server.login("viewer", "wrong password!").await;
    assert_eq!(
        server.login("viewer", PASSWORD).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_on_the_injected_clock() {
    let server = common::start().await;
    let token = server.token("viewer").await;
    server.clock.advance(Duration::from_secs(899));
    assert_eq!(
        server
            .call(Method::GET, "/jobs", Some(&token), None)
            .await
            .status,
        StatusCode::OK
    );
    server.clock.advance(Duration::from_secs(1));
    let expired = server.call(Method::GET, "/jobs", Some(&token), None).await;
    assert_error(&expired, StatusCode::UNAUTHORIZED);
    assert_eq!(expired.body["error"], "token expired");
    assert!(expired.headers.contains_key("www-authenticate"));
    let refused = server.events_of("auth.token_refused").await;
    assert_eq!(refused.len(), 1);
}

fn forge(claims: serde_json::Value, secret: &str, alg: Algorithm) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_tokens_are_refused() {
    let server = common::start().await;
    let now = START_UNIX;
    // A token carries its user's revision (a change of the user refuses it).
    let admin = server.state.users().get("admin").await.unwrap().unwrap();
    let good = json!({"sub": "admin", "role": "admin", "iss": "orch", "aud": "orch-api",
        "iat": now, "exp": now + 60, "jti": "x", "rev": admin.revision});
    // The same claims signed properly work: the cases below differ in one thing each.
    let ok = forge(good.clone(), JWT_SECRET, Algorithm::HS256);
    assert_eq!(
        server
            .call(Method::GET, "/users", Some(&ok), None)
            .await
            .status,
        StatusCode::OK
    );
    let mut cases = vec![
        (
            "wrong key",
            forge(
                good.clone(),
                "another-secret-0123456789abcdef0123",
                Algorithm::HS256,
            ),
        ),
        (
            "other algorithm",
            forge(good.clone(), JWT_SECRET, Algorithm::HS512),
        ),
        ("garbage", "not.a.token".to_owned()),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(&good.to_string())
            ),
        ),
    ];
    for (claim, value) in [
        ("iss", json!("someone-else")),
        ("aud", json!("other-api")),
        ("exp", json!(now - 1)),
        ("iat", json!(now + 3600)),
        ("role", json!("root")),
    ] {
        let mut claims = good.clone();
        claims[claim] = value;
        cases.push((claim, forge(claims, JWT_SECRET, Algorithm::HS256)));
    }
    for missing in ["exp", "iat", "iss", "aud", "sub"] {
        let mut claims = good.clone();
        claims.as_object_mut().unwrap().remove(missing);
        cases.push((missing, forge(claims, JWT_SECRET, Algorithm::HS256)));
    }
    for (what, token) in cases {
        let reply = server.call(Method::GET, "/users", Some(&token), None).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            reply.body
        );
        assert!(reply.body["error"].is_string(), "{what}");
    }
    for header in ["Basic abc", "Bearer", "Bearer    ", "token"] {
        let response = server
            .http
            .get(server.url("/jobs"))
            .header("Authorization", header)
            .send()
            .await
            .unwrap();
        let reply = common::reply(response).await;
        assert_error(&reply, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.body["field"], "Authorization");
    }
    let none = server.call(Method::GET, "/jobs", None, None).await;
    assert_error(&none, StatusCode::UNAUTHORIZED);
}

fn b64(text: &str) -> String {
    const TABLE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_create_users_with_strong_passwords() {
    let server = common::start().await;
    let admin = server.token("admin").await;
    let created = server
        .call(Method::POST, "/users", Some(&admin),
            Some(json!({"username": "carol", "password": "a long enough password", "role": "viewer"})))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["role"], "viewer");
    assert!(created.body.get("password_hash").is_none());
    assert_eq!(
        server.login("carol", "a long enough password").await.status,
        StatusCode::OK
    );
    let again = server
        .call(Method::POST, "/users", Some(&admin),
            Some(json!({"username": "carol", "password": "a long enough password", "role": "viewer"})))
        .await;
    assert_error(&again, StatusCode::CONFLICT);
    assert_eq!(again.body["field"], "username");
    assert_eq!(again.body["error"], "user \"carol\" already exists");
    let bad_name = server
        .call(
            Method::POST,
            "/users",
            Some(&admin),
            Some(json!({"username": "no spaces", "password": "a long enough password", "role": "viewer"})),
        )
        .await;
    assert_error(&bad_name, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_name.body["field"], "username");
    let weak = server
        .call(
            Method::POST,
            "/users",
            Some(&admin),
            Some(json!({"username": "dave", "password": "short", "role": "viewer"})),
        )
        .await;
    assert_error(&weak, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(weak.body["field"], "password");
    let bad_role = server
        .call(
            Method::POST,
            "/users",
            Some(&admin),
            Some(json!({"username": "erin", "password": "a long enough password", "role": "root"})),
        )
        .await;
    assert_error(&bad_role, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_role.body["field"], "role");
    // The hash is Argon2id.
    let stored = server.state.users().get("carol").await.unwrap().unwrap();
    assert!(
        stored.password_hash.starts_with("$argon2id$"),
        "{}",
        stored.password_hash
    );
}
