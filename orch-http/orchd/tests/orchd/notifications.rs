//! Alerts out of a running orchd, to real receivers: an HTTP listener that checks the
//! signature with orchd's own verifier, a Slack-shaped endpoint, and an SMTP server (Python's
//! `aiosmtpd`, started here; `ORCH_SMTP_PYTHON` names a Python that has it, and
//! `ORCH_REQUIRE_SMTP=1` makes its absence a failure). A receiver that never answers does not
//! hold up dispatch.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use orch_http::Secret;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::backups::workdir_without_limits;
use crate::daemon::{login, start_with, stop};

const PASSWORD: &str = "notifications password";
const SECRET: &str = "whsec_alerts_out";

/// What a receiver got: its headers and body.
type Received = (HeaderMap, Bytes);

/// An HTTP receiver on a free port: every POST is answered 200 and sent on.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Received>) {
    let (sender, received) = mpsc::unbounded_channel();
    async fn take(
        State(sender): State<mpsc::UnboundedSender<Received>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> &'static str {
        let _ = sender.send((headers, body));
        "ok"
    }
    let app = Router::new()
        .route("/{*path}", post(take))
        .with_state(sender);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// The first alert a receiver got whose body passes `pick`, within 30 s.
async fn first(
    received: &mut mpsc::UnboundedReceiver<Received>,
    pick: impl Fn(&Value) -> bool,
) -> (HeaderMap, Bytes, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (headers, body) = tokio::time::timeout_at(deadline, received.recv())
            .await
            .expect("no alert within 30 s")
            .expect("receiver closed");
        let json: Value = serde_json::from_slice(&body).unwrap();
        if pick(&json) {
            return (headers, body, json);
        }
    }
}

const SMTP_SERVER: &str = r#"
import sys, time
from aiosmtpd.controller import Controller

class Keep:
    async def handle_DATA(self, server, session, envelope):
        with open(sys.argv[2], "ab") as out:
            out.write(envelope.content + b"\n.\n")
        return "250 OK"

controller = Controller(Keep(), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"#;

/// An SMTP server (aiosmtpd) writing what it receives to `mailbox`, and its port; `None`
/// when no Python has aiosmtpd and it is not required.
fn smtp_server(mailbox: &std::path::Path) -> Option<(Child, u16)> {
    let python = std::env::var("ORCH_SMTP_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let has_it = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_it {
        assert!(
            std::env::var("ORCH_REQUIRE_SMTP").as_deref() != Ok("1"),
            "ORCH_REQUIRE_SMTP=1 but {python} has no aiosmtpd (set ORCH_SMTP_PYTHON)"
        );
        println!("skipped the email receiver: {python} has no aiosmtpd");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(&python)
        .args(["-c", SMTP_SERVER, &port.to_string()])
        .arg(mailbox)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "aiosmtpd did not start");
    Some((child, port))
}

async fn dispatch(http: &reqwest::Client, node: &str, token: &str, body: Value) -> Value {
    let response = http
        .post(format!("{node}/dispatch"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// The daemon's config: only `queue_deep` can fire (the machine's rules cannot: this machine's
/// disk may well be 80% full), and above no tasks at all.
fn config(extra: &str) -> String {
    format!(
        "security:\n  password_hashing:\n    memory_kib: 1024\n    iterations: 1\n  \
         rate_limit:\n    requests_per_minute: 0\n    per_ip:\n      requests_per_minute: 0\n    \
         login_per_ip:\n      requests_per_minute: 0\nlogging:\n  level: warn\n\
         monitoring:\n  alert_thresholds:\n    queue_depth: 0\n    cpu_percent: 100\n    \
         memory_percent: 100\n    disk_usage_percent: 100\n{extra}"
    )
}

fn env() -> [(&'static str, &'static str); 2] {
    [
        ("ORCH_ADMIN_PASSWORD", PASSWORD),
        ("WEBHOOK_SECRET", "whsec_inbound_only"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_reaches_a_signed_webhook_slack_and_email() {
    let (webhook_url, mut webhook) = receiver().await;
    let (slack_url, mut slack) = receiver().await;
    let dir = workdir_without_limits();
    let mailbox = dir.join("mailbox");
    let smtp = smtp_server(&mailbox);
    let email = match &smtp {
        Some((_, port)) => format!(
            "  email:\n    smtp_server: 127.0.0.1:{port}\n    security: none\n    \
             from_address: orch@example.com\n    to_addresses: [ops@example.com]\n"
        ),
        None => String::new(),
    };
    std::fs::write(
        dir.join("orchd.yaml"),
        config(&format!(
            "notifications:\n  webhook:\n    url: {webhook_url}/alerts\n    secret: {SECRET}\n  \
             slack:\n    webhook_url: {slack_url}/slack\n    channel: \"#orch-alerts\"\n{email}"
        )),
    )
    .unwrap();
    let daemon = start_with(&dir, &env());
    let http = reqwest::Client::new();
    let token = login(&http, &daemon.url, PASSWORD).await;
    // A task for an engine no node serves stays queued: the queue is deeper than 0.
    dispatch(&http, &daemon.url, &token, json!({"coreId": "nobody"})).await;

    let fired =
        |alert: &Value| alert["event"] == "alert.fired" && alert["alert"]["rule"] == "queue_deep";
    let (headers, body, alert) = first(&mut webhook, fired).await;
    assert_eq!(alert["alert"]["core_id"], "nobody", "{alert}");
    assert_eq!(alert["alert"]["state"], "firing");
    // orchd's own verifier accepts the signature (and refuses it for a changed body).
    let signature = headers.get("x-signature").unwrap().to_str().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let secrets = [Secret::new(SECRET)];
    orch_http::webhook::verify(
        Some(signature),
        &body,
        &secrets,
        now,
        Duration::from_secs(300),
    )
    .expect("signature verified");
    let mut tampered = body.to_vec();
    tampered.push(b' ');
    assert!(
        orch_http::webhook::verify(
            Some(signature),
            &tampered,
            &secrets,
            now,
            Duration::from_secs(300)
        )
        .is_err()
    );

    let (_, _, message) = first(&mut slack, |m| {
        m["text"].as_str().is_some_and(|t| t.contains("queue_deep"))
    })
    .await;
    assert_eq!(message["channel"], "#orch-alerts");
    let attachment = &message["attachments"][0];
    assert_eq!(attachment["title"], "queue_deep");
    assert_eq!(attachment["color"], "warning");
    assert!(
        attachment["fields"].as_array().unwrap().len() >= 3,
        "{message}"
    );

    if let Some((mut child, _)) = smtp {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut mail = String::new();
        while !mail.contains("queue_deep") && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            mail = std::fs::read_to_string(&mailbox).unwrap_or_default();
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            mail.contains("Subject: [orch warning] queue_deep firing"),
            "{mail}"
        );
        assert!(mail.contains("To: ops@example.com"), "{mail}");
        assert!(mail.contains("From: orch@example.com"), "{mail}");
    }
    stop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_holds_up_no_dispatch() {
    // Accepts connections and reads nothing: every delivery to it hangs until its timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/alerts", silent.local_addr().unwrap());
    let held = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let (accepted_tx, mut accepted) = mpsc::unbounded_channel();
    {
        let held = held.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = silent.accept().await {
                held.lock().await.push(socket);
                let _ = accepted_tx.send(());
            }
        });
    }
    // Refuses connections: every delivery to it fails at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}/slack", closed.local_addr().unwrap());
    drop(closed);
    let dir = workdir_without_limits();
    std::fs::write(
        dir.join("orchd.yaml"),
        config(&format!(
            "notifications:\n  webhook:\n    url: {silent_url}\n    secret: {SECRET}\n  \
             slack:\n    webhook_url: {closed_url}\n  \
             delivery:\n    timeout: 3600\n    attempts: 2\n    backoff: 1\n    max_backoff: 1\n"
        )),
    )
    .unwrap();
    let daemon = start_with(&dir, &env());
    let http = reqwest::Client::new();
    let token = login(&http, &daemon.url, PASSWORD).await;
    dispatch(&http, &daemon.url, &token, json!({"coreId": "nobody"})).await;
    // The alert's delivery has begun, and hangs.
    tokio::time::timeout(Duration::from_secs(30), accepted.recv())
        .await
        .expect("the alert was never sent")
        .unwrap();
    // Meanwhile tasks are dispatched and run to the end.
    for i in 0..20 {
        let task = dispatch(
            &http,
            &daemon.url,
            &token,
            json!({"coreId": "echo", "payload": {"n": i}, "stay": true}),
        )
        .await;
        assert_eq!(task["status"], "succeeded", "{task}");
    }
    // The delivery is still hanging: it was never given an answer.
    assert_eq!(held.lock().await.len(), 1);
    // The refused deliveries are counted: two attempts, then given up.
    let counted = |text: &str, outcome: &str, n: u32| {
        text.lines().any(|line| {
            line.starts_with("orch_notifications_total{")
                && line.contains("notifier=\"slack\"")
                && line.contains(&format!("outcome=\"{outcome}\""))
                && line.ends_with(&format!(" {n}"))
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while !counted(&text, "given_up", 1) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        text = http
            .get(format!("{}/metrics", daemon.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    assert!(counted(&text, "given_up", 1), "{text}");
    assert!(counted(&text, "failed_attempt", 2), "{text}");
    assert!(counted(&text, "delivered", 0), "{text}");
    stop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}
