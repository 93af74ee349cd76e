//! What one request may cost the server (issue 11, findings 6 and 7): a task's events are read
//! through the log's index by task, not by scanning the retained log; one user cannot hold
//! every event stream; task lists and claims stop at a byte budget instead of building a
//! response of any size.

use std::time::Duration;

use orch_core::TaskSpec;
use orch_http::config::SseConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{self, Server, assert_error};
use crate::wrapped::Wrapped;

/// Events in the log before the task under test: what a scan would read.
const BACKLOG: usize = 3000;

async fn backlog(server: &Server) {
    for _ in 0..BACKLOG / 500 {
        let specs = (0..500).map(|_| TaskSpec::new("nobody")).collect();
        server.orch.dispatch_many(specs).await.unwrap();
    }
}

async fn finished_echo(server: &Server, token: &str) -> String {
    let reply = server
        .call(
            Method::POST,
            "/dispatch",
            Some(token),
            Some(json!({"coreId": "echo", "stay": true, "payload": 1})),
        )
        .await;
    assert_eq!(reply.body["status"], "succeeded", "{}", reply.body);
    reply.body["task_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_events_are_read_by_task_without_scanning_the_log() {
    let backend = Wrapped::new(None);
    let server = common::start_on(backend.clone(), common::config()).await;
    let token = server.token("viewer").await;
    backlog(&server).await;
    let id = finished_echo(&server, &server.token("operator").await).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = backend.scanned();
    let reply = server
        .call(
            Method::GET,
            &format!("/jobs/{id}/events"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let kinds: Vec<&str> = reply.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["task.queued", "task.started", "task.succeeded"]);
    let scanned = backend.scanned() - before;
    assert!(
        scanned < 100,
        "GET /jobs/{{id}}/events read {scanned} events of the log for 3 of its own"
    );
    // Paging: `after` and `limit`, with `next_after` while there is more.
    let first_page = server
        .call(
            Method::GET,
            &format!("/jobs/{id}/events?limit=2"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(first_page.body["events"].as_array().unwrap().len(), 2);
    let after = first_page.body["next_after"].as_u64().expect("next_after");
    let rest = server
        .call(
            Method::GET,
            &format!("/jobs/{id}/events?after={after}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(rest.body["events"][0]["kind"], "task.succeeded");
    assert!(rest.body["next_after"].is_null(), "{}", rest.body);
}

/// Reads frames from an SSE response until `n` events arrived; returns their kinds.
async fn read_events(response: &mut reqwest::Response, n: usize) -> Vec<String> {
    let mut buffer = String::new();
    let mut kinds = Vec::new();
    while kinds.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("an SSE frame within 10 s")
            .unwrap()
            .expect("stream still open");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if let Some(kind) = block.lines().find_map(|l| l.strip_prefix("event:")) {
                kinds.push(kind.trim().to_owned());
            }
        }
    }
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_for_one_task_from_the_start_does_not_scan_the_log() {
    let backend = Wrapped::new(None);
    let server = common::start_on(backend.clone(), common::config()).await;
    let token = server.token("viewer").await;
    backlog(&server).await;
    let id = finished_echo(&server, &server.token("operator").await).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = backend.scanned();
    let mut response = server
        .http
        .get(server.url(&format!("/sse/events?task_id={id}&last_event_id=0")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let kinds = read_events(&mut response, 3).await;
    assert_eq!(kinds, ["task.queued", "task.started", "task.succeeded"]);
    let scanned = backend.scanned() - before;
    assert!(
        scanned < 100,
        "an SSE stream of one task read {scanned} events of the log"
    );
    // Live events of the task still follow the replay: none here, but another task's events
    // do not leak in.
    server.orch.dispatch(TaskSpec::new("nobody")).await.unwrap();
    let more = tokio::time::timeout(Duration::from_millis(300), response.chunk()).await;
    if let Ok(Ok(Some(chunk))) = more {
        let text = String::from_utf8_lossy(&chunk);
        assert!(!text.contains("event:"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_hold_every_event_stream() {
    let config = common::config().with_sse(SseConfig {
        max_connections: 4,
        max_per_user: 2,
        ..SseConfig::default()
    });
    let server = common::start_with(config).await;
    let viewer = server.token("viewer").await;
    let operator = server.token("operator").await;
    let open = |token: String| {
        let request = server
            .http
            .get(server.url("/sse/events"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(30));
        async move { request.send().await.unwrap() }
    };
    let first = open(viewer.clone()).await;
    let second = open(viewer.clone()).await;
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let third = open(viewer.clone()).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    let third = common::reply(third).await;
    assert_error(&third, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        third.body["error"].as_str().unwrap().contains("per user"),
        "{}",
        third.body
    );
    // Another user still gets a stream.
    let other = open(operator.clone()).await;
    assert_eq!(other.status(), StatusCode::OK);
    // A stream closed frees its slot for its user.
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        let response = open(viewer.clone()).await;
        if response.status() == StatusCode::OK {
            again = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the closed stream's slot came back");
    drop((second, other, again));
}

/// Payloads of about 900 KB: a page of 1,000 such tasks would be almost 1 GB.
fn big_payload(i: usize) -> Value {
    json!({"n": i, "blob": "x".repeat(900_000)})
}

async fn dispatch_big(server: &Server, token: &str, core: &str, n: usize) {
    for i in 0..n {
        let reply = server
            .call(
                Method::POST,
                "/dispatch",
                Some(token),
                Some(json!({"coreId": core, "payload": big_payload(i)})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
}

const PAGE_BYTES: usize = 8 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_tasks_stops_at_its_byte_budget() {
    let server = common::start().await;
    let token = server.token("operator").await;
    dispatch_big(&server, &token, "big", 12).await;
    let mut after: Option<String> = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(after) => format!("/jobs?core_id=big&limit=1000&after={after}"),
            None => "/jobs?core_id=big&limit=1000".to_owned(),
        };
        let response = server
            .http
            .get(server.url(&path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.bytes().await.unwrap();
        assert!(
            bytes.len() <= PAGE_BYTES,
            "a page of {} bytes, over the {PAGE_BYTES}-byte budget",
            bytes.len()
        );
        let page: Value = serde_json::from_slice(&bytes).unwrap();
        pages += 1;
        for job in page["jobs"].as_array().unwrap() {
            seen.push(job["payload"]["n"].as_u64().unwrap());
        }
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert!(pages >= 2, "12 tasks of 900 KB took {pages} page(s)");
    assert_eq!(seen, (0..12).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_stops_at_its_byte_budget() {
    let server = common::start().await;
    let token = server.token("operator").await;
    let system = server.token("system").await;
    dispatch_big(&server, &token, "big-claims", 12).await;
    let mut claimed = 0;
    let mut calls = 0;
    while claimed < 12 {
        let response = server
            .http
            .post(server.url("/jobs/claim"))
            .bearer_auth(&system)
            .json(&json!({"coreId": "big-claims", "limit": 100}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.bytes().await.unwrap();
        assert!(
            bytes.len() <= PAGE_BYTES,
            "a claim answer of {} bytes, over the {PAGE_BYTES}-byte budget",
            bytes.len()
        );
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        let tasks = body["tasks"].as_array().unwrap().len();
        assert!(tasks > 0, "queued tasks are left but none was claimed");
        claimed += tasks;
        calls += 1;
    }
    assert_eq!(claimed, 12);
    assert!(calls >= 2);
}
