//! Lock endpoints: acquire, extend, release, list, info, conflicts.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{self, assert_error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_extend_release_and_conflicts() {
    let server = common::start().await;
    let operator = server.token("operator").await;
    let system = server.token("system").await;
    let viewer = server.token("viewer").await;
    let granted = server
        .call(
            Method::POST,
            "/locks/invoices:42/acquire",
            Some(&operator),
            Some(json!({"ttl": 60})),
        )
        .await;
    assert_eq!(granted.status, StatusCode::OK, "{}", granted.body);
    assert_eq!(granted.body["owner"], "operator");
    let token = granted.body["fencing_token"].as_u64().unwrap();
    // Held: someone else is refused at once, or after a short wait.
    let held = server
        .call(
            Method::POST,
            "/locks/invoices:42/acquire",
            Some(&system),
            Some(json!({})),
        )
        .await;
    assert_error(&held, StatusCode::CONFLICT);
    let waited = server
        .call(
            Method::POST,
            "/locks/invoices:42/acquire",
            Some(&system),
            Some(json!({"wait": 0.05})),
        )
        .await;
    assert_error(&waited, StatusCode::CONFLICT);
    // Visible to readers.
    let list = server
        .call(Method::GET, "/locks", Some(&viewer), None)
        .await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    let info = server
        .call(Method::GET, "/locks/invoices:42", Some(&viewer), None)
        .await;
    assert_eq!(info.body["fencing_token"], token);
    // Extend and release need owner and token.
    let extended = server
        .call(
            Method::POST,
            "/locks/invoices:42/extend",
            Some(&operator),
            Some(json!({"fencing_token": token, "ttl": 120})),
        )
        .await;
    assert_eq!(extended.status, StatusCode::OK, "{}", extended.body);
    let wrong_owner = server
        .call(
            Method::POST,
            "/locks/invoices:42/release",
            Some(&system),
            Some(json!({"fencing_token": token})),
        )
        .await;
    assert_error(&wrong_owner, StatusCode::CONFLICT);
    let not_yours = server
        .call(
            Method::POST,
            "/locks/invoices:42/release",
            Some(&system),
            Some(json!({"fencing_token": token, "owner": "operator"})),
        )
        .await;
    assert_error(&not_yours, StatusCode::FORBIDDEN);
    assert_eq!(not_yours.body["field"], "owner");
    let released = server
        .call(
            Method::POST,
            "/locks/invoices:42/release",
            Some(&operator),
            Some(json!({"fencing_token": token})),
        )
        .await;
    assert_eq!(released.status, StatusCode::OK, "{}", released.body);
    let again = server
        .call(
            Method::POST,
            "/locks/invoices:42/release",
            Some(&operator),
            Some(json!({"fencing_token": token})),
        )
        .await;
    assert_error(&again, StatusCode::CONFLICT);
    assert_error(
        &server
            .call(Method::GET, "/locks/invoices:42", Some(&viewer), None)
            .await,
        StatusCode::NOT_FOUND,
    );
    // The next grant has a larger fencing token; sub-owners are allowed.
    let next = server
        .call(
            Method::POST,
            "/locks/invoices:42/acquire",
            Some(&system),
            Some(json!({"owner": "system/worker-1"})),
        )
        .await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.body);
    assert!(next.body["fencing_token"].as_u64().unwrap() > token);
    for (body, field) in [
        (json!({"ttl": -1}), "ttl"),
        (json!({"ttl": 0}), "ttl"),
        (json!({"wait": 99}), "wait"),
        (json!({"ttl": "x"}), "ttl"),
    ] {
        let reply = server
            .call(
                Method::POST,
                "/locks/other/acquire",
                Some(&operator),
                Some(body.clone()),
            )
            .await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reply.body["field"], field, "{body}");
    }
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("orch_locks_active{resource_type=\"invoices\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("orch_lock_acquisition_total{resource_type=\"invoices\",status=\"held\"} 1")
    );
}

/// Orch's own locks (the user store's guards, the webhook replay keys) are out of every
/// caller's reach: a task cannot name one (it would stop logins while it runs), the lock API
/// cannot take, extend or release one, and nobody is shown one (who is logging in right now
/// is nobody's business).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_reserved_for_orch_cannot_be_named_taken_released_or_seen() {
    let server = common::start().await;
    let admin = server.token("admin").await;
    let operator = server.token("operator").await;
    let dispatched = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&operator),
            Some(json!({"core_id": "echo", "locks": ["orch-http/users/admin"]})),
        )
        .await;
    assert_error(&dispatched, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(dispatched.body["field"], "locks", "{}", dispatched.body);
    // Held the way a login holds its user's guard.
    let guard = server
        .orch
        .locks()
        .try_acquire(
            "orch-http/users/admin",
            "orch-http-users/node",
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
    let token = guard.fencing_token().0;
    for caller in [&admin, &operator] {
        for (action, body) in [
            ("acquire", json!({})),
            (
                "extend",
                json!({"fencing_token": token, "owner": "orch-http-users/node"}),
            ),
            (
                "release",
                json!({"fencing_token": token, "owner": "orch-http-users/node"}),
            ),
        ] {
            let reply = server
                .call(
                    Method::POST,
                    &format!("/locks/orch-http%2Fusers%2Fadmin/{action}"),
                    Some(caller),
                    Some(body),
                )
                .await;
            assert_error(&reply, StatusCode::FORBIDDEN);
        }
        let list = server.call(Method::GET, "/locks", Some(caller), None).await;
        assert_eq!(list.body, json!([]), "{}", list.body);
        let info = server
            .call(
                Method::GET,
                "/locks/orch-http%2Fusers%2Fadmin",
                Some(caller),
                None,
            )
            .await;
        assert_error(&info, StatusCode::NOT_FOUND);
    }
    // Still held by its owner.
    assert!(
        server
            .orch
            .locks()
            .info("orch-http/users/admin")
            .await
            .unwrap()
            .is_some()
    );
    guard.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_releases_a_lock_its_holder_keeps() {
    let server = common::start().await;
    let operator = server.token("operator").await;
    let admin = server.token("admin").await;
    let granted = server
        .call(
            Method::POST,
            "/locks/stuck/acquire",
            Some(&operator),
            Some(json!({"ttl": 3600})),
        )
        .await;
    assert_eq!(granted.status, StatusCode::OK, "{}", granted.body);
    let token = granted.body["fencing_token"].as_u64().unwrap();
    let released = server
        .call(
            Method::DELETE,
            "/locks/stuck?reason=holder%20crashed",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(released.status, StatusCode::OK, "{}", released.body);
    assert_eq!(released.body["released"]["owner"], "operator");
    assert_eq!(released.body["released"]["fencing_token"], token);
    let free = server
        .call(Method::GET, "/locks/stuck", Some(&admin), None)
        .await;
    assert_error(&free, StatusCode::NOT_FOUND);
    // The holder's own release now finds nothing of its grant.
    let late = server
        .call(
            Method::POST,
            "/locks/stuck/release",
            Some(&operator),
            Some(json!({"fencing_token": token})),
        )
        .await;
    assert_error(&late, StatusCode::CONFLICT);
    let events = server.events_of("lock.released").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].data["actor"], "user:admin");
    assert_eq!(events[0].data["reason"], "holder crashed");
    assert_eq!(events[0].data["resource"], "stuck");
    assert_eq!(events[0].data["owner"], "operator");
    // Free: nothing to release. Orch's own locks are not the admin's to release.
    let again = server
        .call(Method::DELETE, "/locks/stuck", Some(&admin), None)
        .await;
    assert_error(&again, StatusCode::NOT_FOUND);
    let reserved = server
        .call(
            Method::DELETE,
            "/locks/orch-http%2Fanything",
            Some(&admin),
            None,
        )
        .await;
    assert_error(&reserved, StatusCode::FORBIDDEN);
    // Only an admin may.
    let refused = server
        .call(Method::DELETE, "/locks/stuck", Some(&operator), None)
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN);
}
