//! orchd's JSON log lines: every line logged while a request is served carries the request's
//! `correlation_id` at the top level, whichever span is innermost.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use orchd::logging::JsonLines;
use serde_json::Value;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::JsonFields;

use crate::daemon::{banner, orchd, stop, workdir};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Buffer {
        self.clone()
    }
}

#[test]
fn the_correlation_id_is_at_the_top_of_lines_logged_in_nested_spans() {
    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .fmt_fields(JsonFields::new())
        .event_format(JsonLines)
        .with_writer(buffer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let request = tracing::info_span!("request", method = "POST", correlation_id = "corr-7");
        let _request = request.enter();
        tracing::info!(answer = 42, "in the request span");
        let inner = tracing::info_span!("claim", core_id = "echo");
        let _inner = inner.enter();
        tracing::warn!("in a span inside it");
        drop(_inner);
        drop(_request);
        tracing::info!("outside any request");
    });
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0]["correlation_id"], "corr-7");
    assert_eq!(lines[0]["answer"], 42);
    assert_eq!(lines[0]["message"], "in the request span");
    assert_eq!(lines[0]["span"]["name"], "request");
    assert_eq!(lines[1]["correlation_id"], "corr-7", "{text}");
    assert_eq!(lines[1]["span"]["name"], "claim");
    assert_eq!(lines[1]["span"]["core_id"], "echo");
    assert_eq!(lines[1]["level"], "WARN");
    assert!(lines[2].get("correlation_id").is_none(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_orchd_logs_the_requests_correlation_id_at_the_top() {
    let dir = workdir();
    std::fs::write(
        dir.join("orchd.yaml"),
        "security:\n  password_hashing:\n    memory_kib: 1024\n    iterations: 1\n\
         logging:\n  level: info\n",
    )
    .unwrap();
    let log = dir.join("stderr.log");
    let child = orchd(&dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon = banner(child);
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/auth/login", daemon.url))
        .header("x-request-id", "corr-from-the-client")
        .json(&serde_json::json!({"username": "admin", "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    stop(daemon);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &Value| l.to_string().contains("corr-from-the-client"))
        .collect();
    assert!(!lines.is_empty(), "no line of the request:\n{text}");
    for line in &lines {
        assert_eq!(line["correlation_id"], "corr-from-the-client", "{line}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
