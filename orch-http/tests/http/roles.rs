//! Each role's allowed and refused calls, endpoint by endpoint.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common;

const ROLES: [&str; 4] = ["admin", "operator", "viewer", "system"];

struct Case {
    method: Method,
    path: String,
    body: Option<Value>,
    allowed: &'static [&'static str],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_checks_the_role() {
    let server = common::start().await;
    let admin = server.token("admin").await;
    let task = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&admin),
            Some(json!({"core_id": "external", "delay": 3600})),
        )
        .await;
    let id = task.body["task_id"].as_str().unwrap().to_owned();
    let all: &[&str] = &ROLES;
    let dispatchers: &[&str] = &["admin", "operator", "system"];
    let cases = vec![
        Case {
            method: Method::GET,
            path: "/jobs".into(),
            body: None,
            allowed: all,
        },
        Case {
            method: Method::GET,
            path: format!("/jobs/{id}"),
            body: None,
            allowed: all,
        },
        Case {
            method: Method::GET,
            path: format!("/jobs/{id}/events"),
            body: None,
            allowed: all,
        },
        Case {
            method: Method::GET,
            path: "/plugins".into(),
            body: None,
            allowed: all,
        },
        Case {
            method: Method::GET,
            path: "/locks".into(),
            body: None,
            allowed: all,
        },
        Case {
            method: Method::GET,
            path: "/locks/free".into(),
            body: None,
            allowed: all,
        },
        Case {
            method: Method::POST,
            path: "/dispatch".into(),
            body: Some(json!({"core_id": "echo"})),
            allowed: dispatchers,
        },
        Case {
            method: Method::POST,
            path: "/locks/r/acquire".into(),
            body: Some(json!({})),
            allowed: dispatchers,
        },
        Case {
            method: Method::POST,
            path: "/locks/r/extend".into(),
            body: Some(json!({"fencing_token": 1})),
            allowed: dispatchers,
        },
        Case {
            method: Method::POST,
            path: "/locks/r/release".into(),
            body: Some(json!({"fencing_token": 1})),
            allowed: dispatchers,
        },
        Case {
            method: Method::POST,
            path: format!("/jobs/{id}/cancel"),
            body: None,
            allowed: &["admin", "operator"],
        },
        Case {
            method: Method::DELETE,
            path: format!("/jobs/{id}"),
            body: None,
            allowed: &["admin", "operator"],
        },
        Case {
            method: Method::POST,
            path: "/jobs/bulk".into(),
            body: Some(json!({"action": "retry", "status": "failed", "dry_run": true})),
            allowed: &["admin", "operator"],
        },
        Case {
            method: Method::POST,
            path: format!("/jobs/{id}/retry"),
            body: None,
            allowed: &["admin", "operator"],
        },
        Case {
            method: Method::POST,
            path: format!("/jobs/{id}/requeue"),
            body: None,
            allowed: &["admin", "operator"],
        },
        Case {
            method: Method::GET,
            path: "/stats".into(),
            body: None,
            allowed: all,
        },
        Case {
            method: Method::GET,
            path: "/auth/me".into(),
            body: None,
            allowed: all,
        },
        Case {
            method: Method::POST,
            path: "/jobs/claim".into(),
            body: Some(json!({"core_id": "nothing-here"})),
            allowed: &["admin", "system"],
        },
        Case {
            method: Method::POST,
            path: format!("/jobs/{id}/heartbeat"),
            body: Some(json!({"lease_token": "00000000-0000-0000-0000-000000000000"})),
            allowed: &["admin", "system"],
        },
        Case {
            method: Method::PUT,
            path: format!("/jobs/{id}/status"),
            body: Some(
                json!({"lease_token": "00000000-0000-0000-0000-000000000000", "status": "succeeded"}),
            ),
            allowed: &["admin", "system"],
        },
        Case {
            method: Method::GET,
            path: "/engines".into(),
            body: None,
            allowed: all,
        },
        Case {
            method: Method::GET,
            path: "/engines/echo".into(),
            body: None,
            allowed: all,
        },
        Case {
            method: Method::POST,
            path: "/engines/elsewhere/pause".into(),
            body: None,
            allowed: &["admin", "operator"],
        },
        Case {
            method: Method::POST,
            path: "/engines/elsewhere/resume".into(),
            body: None,
            allowed: &["admin", "operator"],
        },
        Case {
            method: Method::PUT,
            path: "/engines/echo/concurrency".into(),
            body: Some(json!({"limit": 8})),
            allowed: &["admin", "operator"],
        },
        Case {
            method: Method::DELETE,
            path: "/engines/echo/concurrency".into(),
            body: None,
            allowed: &["admin", "operator"],
        },
        Case {
            method: Method::POST,
            path: "/engines/echo/release".into(),
            body: None,
            allowed: &["admin", "operator"],
        },
        Case {
            method: Method::DELETE,
            path: "/locks/held-by-nobody".into(),
            body: None,
            allowed: &["admin"],
        },
        Case {
            method: Method::GET,
            path: "/users".into(),
            body: None,
            allowed: &["admin"],
        },
        Case {
            method: Method::POST,
            path: "/users".into(),
            body: Some(
                json!({"username": "u1", "password": "a long enough password", "role": "viewer"}),
            ),
            allowed: &["admin"],
        },
        Case {
            method: Method::POST,
            path: "/users/viewer/unlock".into(),
            body: None,
            allowed: &["admin"],
        },
    ];
    let mut tokens = Vec::new();
    for role in ROLES {
        tokens.push((role, server.token(role).await));
    }
    for case in &cases {
        for (role, token) in &tokens {
            let reply = server
                .call(
                    case.method.clone(),
                    &case.path,
                    Some(token),
                    case.body.clone(),
                )
                .await;
            let refused = reply.status == StatusCode::FORBIDDEN;
            let allowed = case.allowed.contains(role);
            assert_eq!(
                !refused, allowed,
                "{role} {} {}: {} {}",
                case.method, case.path, reply.status, reply.body
            );
            assert_ne!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{role} {}",
                case.path
            );
            assert!(
                reply.status.as_u16() < 500,
                "{role} {} {}: {}",
                case.method,
                case.path,
                reply.body
            );
            if refused {
                assert!(reply.body["error"].as_str().unwrap().contains(role));
            }
        }
    }
    // Without a token, every protected endpoint is 401; the public ones answer.
    for case in &cases {
        let reply = server
            .call(case.method.clone(), &case.path, None, case.body.clone())
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{} {}",
            case.method,
            case.path
        );
    }
    for path in ["/health", "/metrics", "/openapi.json"] {
        let response = server.http.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}
