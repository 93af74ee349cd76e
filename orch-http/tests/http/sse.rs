//! `GET /sse/events`: delivery, resume with Last-Event-ID (no gap, no duplicate), filters,
//! keep-alive, the connection cap.

use std::time::Duration;

use orch_http::config::SseConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{self, Server, assert_error};

/// One parsed server-sent event (or a keep-alive comment).
#[derive(Debug, Clone)]
struct Frame {
    id: Option<u64>,
    event: Option<String>,
    data: Option<Value>,
    comment: bool,
}

struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    async fn open(server: &Server, token: &str, query: &str, last_event_id: Option<u64>) -> Stream {
        let mut request = server
            .http
            .get(server.url(&format!("/sse/events{query}")))
            .bearer_auth(token)
            .timeout(Duration::from_secs(60));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Stream {
            response,
            buffer: String::new(),
        }
    }

    async fn next(&mut self) -> Frame {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut frame = Frame {
                    id: None,
                    event: None,
                    data: None,
                    comment: false,
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        frame.id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        frame.event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        frame.data = serde_json::from_str(v.trim()).ok();
                    } else if line.starts_with(':') {
                        frame.comment = true;
                    }
                }
                return frame;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("an SSE frame within 10 s")
                .unwrap()
                .expect("stream still open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    async fn next_event(&mut self) -> Frame {
        loop {
            let frame = self.next().await;
            if !frame.comment {
                return frame;
            }
        }
    }
}

async fn dispatch(server: &Server, token: &str, core: &str, n: usize) {
    for i in 0..n {
        let reply = server
            .call(
                Method::POST,
                "/dispatch",
                Some(token),
                Some(json!({"core_id": core, "payload": i})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_with_their_sequence_and_resume_without_gap_or_duplicate() {
    let server = common::start().await;
    let admin = server.token("admin").await;
    let mut stream = Stream::open(&server, &admin, "", None).await;
    dispatch(&server, &admin, "external", 3).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let frame = stream.next_event().await;
        assert_eq!(frame.event.as_deref(), Some("task.queued"));
        let data = frame.data.clone().unwrap();
        assert_eq!(data["seq"].as_u64(), frame.id);
        seen.push(frame.id.unwrap());
    }
    drop(stream);
    // Events while disconnected, then resume after the last one seen.
    dispatch(&server, &admin, "external", 4).await;
    let last = *seen.last().unwrap();
    let mut resumed = Stream::open(&server, &admin, "", Some(last)).await;
    dispatch(&server, &admin, "external", 2).await;
    for _ in 0..6 {
        seen.push(resumed.next_event().await.id.unwrap());
    }
    // Consecutive sequences from the first: nothing missed, nothing twice.
    let first = seen[0];
    let expected: Vec<u64> = (first..first + seen.len() as u64).collect();
    assert_eq!(seen, expected);
    // The log agrees: the same events, in order.
    let log = server
        .orch
        .events()
        .replay(first - 1, seen.len())
        .await
        .unwrap();
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), expected);
    assert!(log.iter().all(|e| e.kind.as_str() == "task.queued"));
    // The query parameter works like the header.
    let mut by_query =
        Stream::open(&server, &admin, &format!("?last_event_id={first}"), None).await;
    assert_eq!(by_query.next_event().await.id, Some(first + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_by_task_and_core_and_hides_security_events_from_non_admins() {
    let server = common::start().await;
    let viewer = server.token("viewer").await;
    let operator = server.token("operator").await;
    let mut by_core = Stream::open(&server, &viewer, "?core_id=echo", None).await;
    dispatch(&server, &operator, "other-core", 2).await;
    server.login("admin", "wrong password!!").await;
    let task = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&operator),
            Some(json!({"core_id": "echo", "stay": true, "payload": "x"})),
        )
        .await;
    let id = task.body["task_id"].as_str().unwrap().to_owned();
    let kinds: Vec<String> = {
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let frame = by_core.next_event().await;
            assert_eq!(frame.data.as_ref().unwrap()["core_id"], "echo");
            kinds.push(frame.event.unwrap());
        }
        kinds
    };
    assert_eq!(kinds, ["task.queued", "task.started", "task.succeeded"]);
    // Replay by task from the start of the log: only that task's events.
    let mut by_task = Stream::open(
        &server,
        &viewer,
        &format!("?task_id={id}&last_event_id=0"),
        None,
    )
    .await;
    for expected in ["task.queued", "task.started", "task.succeeded"] {
        let frame = by_task.next_event().await;
        assert_eq!(frame.event.as_deref(), Some(expected));
        assert_eq!(frame.data.unwrap()["task_id"], id.as_str());
    }
    // A viewer replaying everything never sees auth.* events; an admin does. Engine
    // controls reach every role.
    let operator = server.token("operator").await;
    let paused = server
        .call(Method::POST, "/engines/echo/pause", Some(&operator), None)
        .await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.body);
    let mut viewer_all = Stream::open(&server, &viewer, "?last_event_id=0", None).await;
    let mut kinds = Vec::new();
    while !kinds.iter().any(|k: &String| k == "engine.paused") {
        let frame = viewer_all.next_event().await;
        let kind = frame.event.unwrap();
        assert!(!kind.starts_with("auth."), "{kind}");
        kinds.push(kind);
    }
    let admin = server.token("admin").await;
    let mut admin_auth = Stream::open(&server, &admin, "?last_event_id=0&kind=auth.*", None).await;
    let frame = admin_auth.next_event().await;
    assert!(frame.event.unwrap().starts_with("auth."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_connection_cap() {
    let config = common::config().with_sse(SseConfig {
        max_connections: 2,
        keep_alive: Duration::from_millis(100),
        ..SseConfig::default()
    });
    let server = common::start_with(config).await;
    let token = server.token("viewer").await;
    let mut first = Stream::open(&server, &token, "", None).await;
    let _second = Stream::open(&server, &token, "", None).await;
    let third = server
        .call(Method::GET, "/sse/events", Some(&token), None)
        .await;
    assert_error(&third, StatusCode::SERVICE_UNAVAILABLE);
    let retry: u64 = third.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    // An idle stream gets keep-alive comments.
    assert!(first.next().await.comment);
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
        metrics.contains("orch_sse_connections_active 2"),
        "{metrics}"
    );
    // Closing one frees a slot.
    drop(first);
    let mut reopened = None;
    for _ in 0..100 {
        let response = server
            .http
            .get(server.url("/sse/events"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            reopened = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reopened.is_some(), "a slot frees up once a client leaves");
    for bad in [
        "?last_event_id=abc",
        "?task_id=xyz",
        "?last_event_id=-1",
        "?nope=1",
    ] {
        let reply = server
            .call(
                Method::GET,
                &format!("/sse/events{bad}"),
                Some(&token),
                None,
            )
            .await;
        assert_error(&reply, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_lags_and_catches_up_from_the_log() {
    // A live buffer of 16 events per subscriber, and a client that reads nothing while
    // 20,000 events (several MB) are produced: its stream lags and must catch up from the log.
    let server = common::start_full(
        std::sync::Arc::new(orch_core::MemoryBackend::new()),
        {
            let config = common::orchestrator_config();
            let tuning = config.tuning.clone().with_event_buffer(16);
            config.with_tuning(tuning)
        },
        common::config(),
    )
    .await;
    let admin = server.token("admin").await;
    let mut stream = Stream::open(&server, &admin, "?kind=task.queued", None).await;
    let first_task = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&admin),
            Some(json!({"core_id": "slow-reader"})),
        )
        .await;
    assert_eq!(first_task.status, StatusCode::CREATED);
    let first = stream.next_event().await.id.unwrap();
    const N: usize = 20_000;
    for chunk in 0..(N / 1000) {
        let specs = (0..1000)
            .map(|i| {
                orch_core::TaskSpec::new("slow-reader")
                    .payload(json!({"n": chunk * 1000 + i, "pad": "x".repeat(200)}))
            })
            .collect();
        server.orch.dispatch_many(specs).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for expected in (first + 1..).take(N) {
        let frame = stream.next_event().await;
        assert_eq!(frame.id, Some(expected), "no gap, no duplicate");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_and_the_server_returns() {
    let mut server = common::start().await;
    let token = server.token("viewer").await;
    let mut stream = Stream::open(&server, &token, "", None).await;
    // orchd's order: the application's shutdown (streams end), then stop accepting.
    server.state.begin_shutdown();
    server.stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.response.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "an open stream ends at shutdown");
    let served = tokio::time::timeout(Duration::from_secs(10), &mut server.server)
        .await
        .expect("the server returns once its connections closed")
        .expect("server task");
    assert!(served.is_ok());
    let refused = server
        .http
        .get(server.url("/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(refused.is_err(), "no connection is accepted after shutdown");
}
