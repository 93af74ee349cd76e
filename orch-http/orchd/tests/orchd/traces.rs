//! Traces across processes: two daemons on one PostgreSQL export their spans to an OTLP/HTTP
//! receiver this test runs on real TCP. The daemon that takes `POST /dispatch` runs no engine;
//! the other claims the task and runs it. The dispatch span of the first and the claim, engine
//! and outcome spans of the second must form one trace, linked through the context the task
//! carries in the database.

use std::sync::Arc;

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use parking_lot::Mutex;
use prost::Message as _;
use serde_json::{Value, json};

use crate::daemon::{login, start_with, stop, workdir};
use crate::postgres_server::fresh_database;

const PASSWORD: &str = "traces password";

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// An OTLP/HTTP receiver on 127.0.0.1: decodes every protobuf export it is posted and keeps
/// its spans.
async fn receiver() -> anyhow::Result<(String, Arc<Mutex<Vec<Received>>>)> {
    let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                    return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                };
                let mut kept = kept.lock();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
                        .unwrap_or_default();
                    for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                        kept.push(Received {
                            service: service.clone(),
                            name: span.name,
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent_span_id: hex(&span.parent_span_id),
                            attributes: span
                                .attributes
                                .iter()
                                .filter_map(|a| {
                                    Some((a.key.clone(), text(a.value.as_ref()?.value.as_ref()?)?))
                                })
                                .collect(),
                        });
                    }
                }
                (axum::http::StatusCode::OK, Vec::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, spans))
}

fn text(value: &AnyValue) -> Option<String> {
    match value {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn config(endpoint: &str, service: &str, builtin_engines: bool) -> String {
    format!(
        "security:\n  password_hashing:\n    memory_kib: 1024\n    iterations: 1\n\
         logging:\n  level: warn\n\
         engines:\n  builtin: {builtin_engines}\n\
         tracing:\n  otlp_endpoint: {endpoint}\n  service_name: {service}\n"
    )
}

fn env(url: &str) -> [(&str, &str); 3] {
    [
        ("DATABASE_URL", url),
        ("JWT_SECRET", "a-jwt-secret-shared-by-both-nodes-0123"),
        ("ORCH_ADMIN_PASSWORD", PASSWORD),
    ]
}

/// Dispatches an echo task through `front` and waits for it to finish; returns the task.
async fn dispatch(
    http: &reqwest::Client,
    front: &str,
    token: &str,
    traceparent: Option<&str>,
) -> anyhow::Result<Value> {
    let mut request = http
        .post(format!("{front}/dispatch"))
        .bearer_auth(token)
        .json(&json!({"core_id": "echo", "payload": {"hello": "trace"}, "stay": true}));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().await?;
    let status = response.status();
    let task: Value = response.json().await?;
    anyhow::ensure!(status == 200, "dispatch answered {status}: {task}");
    anyhow::ensure!(task["status"] == "succeeded", "{task}");
    Ok(task)
}

/// The four spans of `task_id`'s one attempt, checked to form one trace: the dispatch on the
/// front (`orchd-a`), the claim, engine call and outcome on the worker (`orchd-b`). Returns
/// the dispatch span.
fn one_trace(spans: &[Received], task_id: &str) -> anyhow::Result<Received> {
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name && s.attribute("task_id") == Some(task_id))
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no {name} span of {task_id} in {spans:#?}"))
    };
    let dispatch = find("orch.dispatch")?;
    let claim = find("orch.claim")?;
    let engine = find("orch.engine")?;
    let outcome = find("orch.outcome")?;
    anyhow::ensure!(dispatch.service == "orchd-a", "{dispatch:?}");
    for span in [&claim, &engine, &outcome] {
        anyhow::ensure!(span.service == "orchd-b", "ran on the front: {span:?}");
        anyhow::ensure!(
            span.trace_id == dispatch.trace_id,
            "{} left the dispatch's trace {}: {span:?}",
            span.name,
            dispatch.trace_id
        );
    }
    anyhow::ensure!(
        claim.parent_span_id == dispatch.span_id,
        "the claim is not the dispatch's child: {claim:?} {dispatch:?}"
    );
    anyhow::ensure!(
        engine.parent_span_id == claim.span_id && outcome.parent_span_id == claim.span_id,
        "the engine call and the outcome are not the claim's children: {engine:?} {outcome:?}"
    );
    anyhow::ensure!(claim.attribute("core_id") == Some("echo"), "{claim:?}");
    anyhow::ensure!(claim.attribute("attempt") == Some("1"), "{claim:?}");
    anyhow::ensure!(
        outcome.attribute("status") == Some("succeeded"),
        "{outcome:?}"
    );
    Ok(dispatch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_spans_the_dispatching_and_the_claiming_daemon() -> anyhow::Result<()> {
    let Some(url) = fresh_database().await? else {
        return Ok(());
    };
    let (endpoint, spans) = receiver().await?;
    let (front_dir, worker_dir) = (workdir(), workdir());
    std::fs::write(
        front_dir.join("orchd.yaml"),
        config(&endpoint, "orchd-a", false),
    )?;
    std::fs::write(
        worker_dir.join("orchd.yaml"),
        config(&endpoint, "orchd-b", true),
    )?;
    let front = start_with(&front_dir, &env(&url));
    let worker = start_with(&worker_dir, &env(&url));
    let http = reqwest::Client::new();
    let token = login(&http, &front.url, PASSWORD).await;

    // A dispatch that starts its trace, and one that continues a caller's.
    let fresh = dispatch(&http, &front.url, &token, None).await?;
    let caller_trace = "5b8efff798038103d269b633813fc60c";
    let caller_span = "eee19b7ec3c1b174";
    let continued = dispatch(
        &http,
        &front.url,
        &token,
        Some(&format!("00-{caller_trace}-{caller_span}-01")),
    )
    .await?;
    // Spans still in the daemons' batches are sent when they stop.
    stop(front);
    stop(worker);
    let spans = spans.lock().clone();

    for task in [&fresh, &continued] {
        let task_id = task["task_id"].as_str().unwrap_or_default();
        let dispatch = one_trace(&spans, task_id)?;
        // The task carries the dispatch span's own context: that is what the claim continued.
        anyhow::ensure!(
            task["traceparent"]
                == format!("00-{}-{}-01", dispatch.trace_id, dispatch.span_id).as_str(),
            "the task carries {} for dispatch span {dispatch:?}",
            task["traceparent"]
        );
    }
    let continued_dispatch = one_trace(&spans, continued["task_id"].as_str().unwrap_or(""))?;
    anyhow::ensure!(
        continued_dispatch.trace_id == caller_trace
            && continued_dispatch.parent_span_id == caller_span,
        "the dispatch did not continue the caller's trace: {continued_dispatch:?}"
    );
    let fresh_dispatch = one_trace(&spans, fresh["task_id"].as_str().unwrap_or(""))?;
    anyhow::ensure!(
        fresh_dispatch.trace_id != caller_trace && fresh_dispatch.parent_span_id.is_empty(),
        "a dispatch without a caller's context starts its own trace: {fresh_dispatch:?}"
    );
    let _ = std::fs::remove_dir_all(front_dir);
    let _ = std::fs::remove_dir_all(worker_dir);
    Ok(())
}

#[test]
fn a_bad_tracing_key_stops_start_up_naming_it() -> anyhow::Result<()> {
    let dir = workdir();
    for (yaml, key) in [
        (
            "tracing:\n  otlp_endpoint: collector:4318\n",
            "tracing.otlp_endpoint",
        ),
        ("tracing:\n  sample_ratio: 2\n", "tracing.sample_ratio"),
        ("tracing:\n  endpoint: http://127.0.0.1:4318\n", "endpoint"),
    ] {
        std::fs::write(dir.join("orchd.yaml"), yaml)?;
        let output = crate::daemon::orchd(&dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::ensure!(!output.status.success(), "{yaml} started");
        anyhow::ensure!(stderr.contains(key), "{yaml}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
