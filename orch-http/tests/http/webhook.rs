//! `POST /webhook`: Stripe's scheme, tolerance both ways, rotation, replay, outcomes.

use std::time::Duration;

use orch_http::webhook::{SignatureError, parse_header, sign};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{self, OLD_WEBHOOK_SECRET, START_UNIX, Server, WEBHOOK_SECRET, assert_error};

#[test]
fn notes_test_vector() {
    assert_eq!(
        sign("whsec_test", 1_700_000_000, br#"{"a":1}"#),
        "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
    );
    let parsed = parse_header(
        "t=1,v0=zz,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789",
    )
    .unwrap();
    assert_eq!(parsed.signatures.len(), 1);
    for bad in [
        "",
        "t=1",
        "v1=00",
        "t=x,v1=00",
        "t=1,v1=zz",
        "t=1,t=2,v1=00",
        "garbage",
    ] {
        assert!(
            matches!(parse_header(bad), Err(SignatureError::Malformed(_))),
            "{bad}"
        );
    }
}

async fn post(server: &Server, header: Option<&str>, body: &[u8]) -> common::Reply {
    let mut request = server
        .http
        .post(server.url("/webhook"))
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    if let Some(header) = header {
        request = request.header("X-Signature", header);
    }
    common::reply(request.send().await.unwrap()).await
}

async fn external_task(server: &Server) -> String {
    let token = server.token("operator").await;
    let task = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&token),
            Some(json!({"core_id": "WORK_AI_01"})),
        )
        .await;
    task.body["task_id"].as_str().unwrap().to_owned()
}

fn completed(task_id: &str, status: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event": "task.completed", "task_id": task_id, "core_id": "WORK_AI_01",
        "status": status, "timestamp": START_UNIX,
        "data": {"duration": 123.45, "output": "Task completed successfully",
                 "metrics": {"cpu_usage": 45.2, "memory_usage": 67.8}}
    }))
    .unwrap()
}

fn metric(text: &str, status: &str) -> f64 {
    let line = format!("orch_webhook_signatures_verified_total{{status=\"{status}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_completion_finishes_the_task_once() {
    let server = common::start().await;
    let id = external_task(&server).await;
    let body = completed(&id, "success");
    let header = sign(WEBHOOK_SECRET, START_UNIX, &body);
    let good = post(&server, Some(&header), &body).await;
    assert_eq!(good.status, StatusCode::OK, "{}", good.body);
    assert_eq!(good.body["status"], "succeeded");
    assert_eq!(good.body["result"]["output"], "Task completed successfully");
    // The same request again is a replay.
    let replayed = post(&server, Some(&header), &body).await;
    assert_error(&replayed, StatusCode::CONFLICT);
    assert_eq!(replayed.body["field"], "X-Signature");
    // A fresh signature for a finished task: 409 from the state machine.
    server.clock.advance(Duration::from_secs(1));
    let again = post(
        &server,
        Some(&sign(WEBHOOK_SECRET, START_UNIX + 1, &body)),
        &body,
    )
    .await;
    assert_error(&again, StatusCode::CONFLICT);
    let text = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&text, "valid"), 2.0);
    assert_eq!(metric(&text, "replayed"), 1.0);
    assert_eq!(server.events_of("webhook.signature_refused").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_status_fails_the_task_with_data() {
    let server = common::start().await;
    let id = external_task(&server).await;
    let body = serde_json::to_vec(&json!({
        "event": "task.completed", "task_id": format!("task-{id}"), "status": "failure",
        "data": {"error": "GPU on fire"}
    }))
    .unwrap();
    let reply = post(
        &server,
        Some(&sign(WEBHOOK_SECRET, START_UNIX, &body)),
        &body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "failed");
    assert_eq!(reply.body["error"], "GPU on fire");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_stale_future_and_malformed_signatures_are_refused() {
    let server = common::start().await;
    let id = external_task(&server).await;
    let body = completed(&id, "success");
    let header = sign(WEBHOOK_SECRET, START_UNIX, &body);
    // Tampered body.
    let mut tampered = body.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    let reply = post(&server, Some(&header), &tampered).await;
    assert_error(&reply, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.body["error"], "signature does not match");
    // Tampered signature, tampered timestamp.
    let flipped = header
        .replace("v1=", "v1=0")
        .chars()
        .take(header.len())
        .collect::<String>();
    assert_error(
        &post(&server, Some(&flipped), &body).await,
        StatusCode::UNAUTHORIZED,
    );
    let shifted = header.replace(&format!("t={START_UNIX}"), &format!("t={}", START_UNIX + 1));
    assert_error(
        &post(&server, Some(&shifted), &body).await,
        StatusCode::UNAUTHORIZED,
    );
    // Stale: 301 s old; future: 301 s ahead. 300 s either way is still accepted.
    let stale = post(
        &server,
        Some(&sign(WEBHOOK_SECRET, START_UNIX - 301, &body)),
        &body,
    )
    .await;
    assert_error(&stale, StatusCode::UNAUTHORIZED);
    assert_eq!(stale.body["error"], "signature timestamp is too old");
    let future = post(
        &server,
        Some(&sign(WEBHOOK_SECRET, START_UNIX + 301, &body)),
        &body,
    )
    .await;
    assert_error(&future, StatusCode::UNAUTHORIZED);
    assert_eq!(future.body["error"], "signature timestamp is in the future");
    // Missing and malformed headers.
    let missing = post(&server, None, &body).await;
    assert_error(&missing, StatusCode::UNAUTHORIZED);
    for bad in ["t=abc,v1=00", "v1=deadbeef", "t=1", "sha256=abc", ""] {
        let reply = post(&server, Some(bad), &body).await;
        assert!(
            reply.status == StatusCode::BAD_REQUEST || reply.status == StatusCode::UNAUTHORIZED,
            "{bad}: {}",
            reply.status
        );
        assert_eq!(reply.body["field"], "X-Signature", "{bad}");
    }
    // The task is untouched; an edge-of-window signature still works.
    let edge = post(
        &server,
        Some(&sign(WEBHOOK_SECRET, START_UNIX - 300, &body)),
        &body,
    )
    .await;
    assert_eq!(edge.status, StatusCode::OK, "{}", edge.body);
    let refused = server.events_of("webhook.signature_refused").await;
    assert!(refused.len() >= 8, "{}", refused.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_accepts_the_old_secret_and_several_v1_values() {
    let server = common::start().await;
    let first = external_task(&server).await;
    let body = completed(&first, "success");
    let old = post(
        &server,
        Some(&sign(OLD_WEBHOOK_SECRET, START_UNIX, &body)),
        &body,
    )
    .await;
    assert_eq!(old.status, StatusCode::OK, "{}", old.body);
    let second = external_task(&server).await;
    let body = completed(&second, "success");
    let wrong = sign("whsec_unknown_secret", START_UNIX, &body);
    let right = sign(WEBHOOK_SECRET, START_UNIX, &body);
    let both = format!("{wrong},{}", right.split_once(',').unwrap().1);
    let reply = post(&server, Some(&both), &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let only_unknown = post(
        &server,
        Some(&sign("whsec_unknown_secret", START_UNIX, &body)),
        &body,
    )
    .await;
    assert_error(&only_unknown, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_events_are_recorded_and_bad_payloads_named() {
    let server = common::start().await;
    let id = external_task(&server).await;
    let progress =
        serde_json::to_vec(&json!({"event": "task.progress", "task_id": id, "data": {"pct": 50}}))
            .unwrap();
    let reply = post(
        &server,
        Some(&sign(WEBHOOK_SECRET, START_UNIX, &progress)),
        &progress,
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(server.events_of("webhook.task.progress").await.len(), 1);
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"event": "task.completed", "task_id": id, "status": "maybe"}),
            "status",
        ),
        (json!({"event": "task.completed", "task_id": id}), "status"),
        (
            json!({"event": "task.completed", "task_id": "nope", "status": "success"}),
            "task_id",
        ),
        (
            json!({"event": "task.completed", "task_id": id, "core_id": "OTHER", "status": "success"}),
            "core_id",
        ),
        (json!({"task_id": id}), "event"),
    ];
    for (i, (payload, field)) in cases.into_iter().enumerate() {
        let body = serde_json::to_vec(&payload).unwrap();
        let t = START_UNIX - i as u64;
        let reply = post(&server, Some(&sign(WEBHOOK_SECRET, t, &body)), &body).await;
        assert!(
            reply.status.is_client_error(),
            "{payload}: {}",
            reply.status
        );
        assert_eq!(reply.body["field"], field, "{payload}: {}", reply.body);
    }
    let missing = uuid::Uuid::now_v7().to_string();
    let body = completed(&missing, "success");
    let reply = post(
        &server,
        Some(&sign(WEBHOOK_SECRET, START_UNIX, &body)),
        &body,
    )
    .await;
    assert_error(&reply, StatusCode::NOT_FOUND);
}
