//! Finding 12 (no server timeouts or connection caps): slow headers, idle connections, slow
//! bodies, too many connections, an event stream nobody reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_core::MemoryBackend;
use orch_http::server::ServerOptions;
use orch_http::webhook::sign;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::{self, START_UNIX, Server, WEBHOOK_SECRET};

async fn start(options: ServerOptions) -> Server {
    let server = common::start_node(
        Arc::new(MemoryBackend::new()),
        common::orchestrator_config(),
        common::config(),
        options,
    )
    .await;
    server
        .state
        .users()
        .create(
            "admin",
            common::PASSWORD,
            orch_http::Role::Admin,
            START_UNIX,
        )
        .await
        .unwrap();
    server
}

/// Reads until the server closes the connection (or `limit` passes); how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(limit, async {
        while stream.read(&mut buffer).await.is_ok_and(|n| n > 0) {}
    })
    .await
    .ok()
    .map(|()| started.elapsed())
}

/// Headers trickled a byte at a time (slowloris) are cut off at the header timeout; so is a
/// kept-alive connection that sends nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_12_slow_headers_and_idle_connections_are_closed_at_the_header_timeout() {
    let options = ServerOptions::default().with_header_read_timeout(Duration::from_millis(800));
    let server = start(options).await;
    let mut slow = TcpStream::connect(server.addr()).await.unwrap();
    let trickle = async {
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if slow.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let started = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(5), trickle).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "a trickling client was served for {took:?}"
    );
    // Kept alive after one request, then silent.
    let mut idle = TcpStream::connect(server.addr()).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let took = closed_within(&mut idle, Duration::from_secs(5)).await;
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(3)),
        "idle connection still open: {took:?}"
    );
    // A connection that never says anything.
    let mut silent = TcpStream::connect(server.addr()).await.unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5))
            .await
            .is_some()
    );
}

/// A body trickled slower than the body timeout allows gets 408, not a held connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_12_a_body_that_does_not_arrive_in_time_is_refused() {
    let options = ServerOptions::default().with_request_body_timeout(Duration::from_millis(700));
    let server = start(options).await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream
        .write_all(
            b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buffer = [0u8; 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 5 s");
    assert!(started.elapsed() < Duration::from_secs(3));
    let head = String::from_utf8_lossy(&answer);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
}

/// At the connection limit the server stops accepting: a new client waits until one of the
/// open connections closes, then is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_12_connections_beyond_the_limit_wait_for_a_free_slot() {
    let options = ServerOptions::default()
        .with_max_connections(4)
        .with_header_read_timeout(Duration::from_secs(30));
    let server = start(options).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(server.addr()).await.unwrap());
    }
    // Let the server accept them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    assert!(
        client.get(server.url("/health")).send().await.is_err(),
        "a fifth connection was served"
    );
    drop(held.pop());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let reply = client.get(server.url("/health")).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
}

/// An event stream whose client stopped reading is closed after the write timeout, and its
/// slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_12_an_event_stream_nobody_reads_is_closed_after_the_write_timeout() {
    let options = ServerOptions::default().with_write_timeout(Duration::from_millis(500));
    let server = start(options).await;
    let token = server.token("admin").await;
    // A client with a tiny receive window that reads nothing after the headers.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr()).await.unwrap();
    stream
        .write_all(
            format!("GET /sse/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let open = || server.state.metrics().sse_active.get();
    let deadline = Instant::now() + Duration::from_secs(5);
    while open() != 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open(), 1);
    // Events far larger than every buffer on the way: recorded progress reports of 256 KiB.
    let operator = server.token("admin").await;
    let task = server
        .call(
            reqwest::Method::POST,
            "/dispatch",
            Some(&operator),
            Some(json!({"core_id": "WORK_AI_01"})),
        )
        .await;
    let filler = "x".repeat(256 * 1024);
    let started = Instant::now();
    for n in 0..64 {
        let body = serde_json::to_vec(&json!({
            "event": "task.progress", "task_id": task.body["task_id"],
            "data": {"n": n, "filler": filler},
        }))
        .unwrap();
        server
            .http
            .post(server.url("/webhook"))
            .header("X-Signature", sign(WEBHOOK_SECRET, START_UNIX, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        if open() == 0 {
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while open() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        open(),
        0,
        "the stream is still open {:?} after its client stopped reading",
        started.elapsed()
    );
    drop(stream);
}
