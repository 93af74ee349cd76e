//! `/health`, `/openapi.json`, `/plugins`, CORS, request ids, JSON 404/405.

use std::sync::Arc;

use async_trait::async_trait;
use orch_core::{Capability, Plugin, TaskContext, TaskError};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{self, assert_error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_has_the_orch_next_shape_and_says_when_shutting_down() {
    let server = common::start().await;
    let reply = server.call(Method::GET, "/health", None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = &reply.body;
    assert_eq!(body["status"], "healthy");
    assert!(
        body["timestamp"]
            .as_str()
            .unwrap()
            .starts_with("2023-11-14T22:13:20")
    );
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    for component in [
        "database",
        "lock_manager",
        "security",
        "node",
        "machine",
        "engines",
    ] {
        assert_eq!(body["components"][component], "healthy", "{component}");
    }
    // This orchestrator runs no monitor.
    assert_eq!(body["components"]["monitor"], "disabled");
    assert_eq!(body["alerts"], json!([]));
    for metric in [
        "uptime_seconds",
        "total_requests",
        "active_tasks",
        "active_locks",
    ] {
        assert!(body["metrics"][metric].is_u64(), "{metric}");
    }
    let ready = server.call(Method::GET, "/health/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    assert_eq!(ready.body["ready"], true);
    server.state.begin_shutdown();
    let reply = server.call(Method::GET, "/health", None, None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body["status"], "shutting_down");
    let ready = server.call(Method::GET, "/health/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["ready"], false);
    assert_eq!(ready.body["checks"]["shutdown"], "shutting down");
    let live = server.call(Method::GET, "/health/live", None, None).await;
    assert_eq!(live.status, StatusCode::OK);
    assert_eq!(live.body["status"], "alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_shows_the_monitors_alerts_on_their_components() {
    use orch_core::monitor::{AlertRule, Metric, MonitorConfig, Severity};
    let monitor = MonitorConfig::default().with_anomaly(None).with_rules(vec![
        // Both hold at the first pass: the database is up (1 < 2), no lock is held (0 > -1).
        AlertRule::below("database_check", Metric::DatabaseUp, 2.0).severity(Severity::Critical),
        AlertRule::above("locks_check", Metric::LocksHeld, -1.0),
    ]);
    let server = common::start_full(
        Arc::new(orch_core::MemoryBackend::new()),
        common::orchestrator_config().with_monitor(Some(monitor)),
        common::config(),
    )
    .await;
    server
        .state
        .orch()
        .monitor()
        .expect("configured")
        .check_now()
        .await
        .unwrap();
    // Alerts mark their components degraded, whatever their severity; the node still serves
    // (only a failed check makes a component unhealthy).
    let reply = server.call(Method::GET, "/health", None, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let body = &reply.body;
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["components"]["database"], "degraded");
    assert_eq!(body["components"]["lock_manager"], "degraded");
    assert_eq!(body["components"]["monitor"], "healthy");
    assert_eq!(body["components"]["security"], "healthy");
    let rules: Vec<&str> = body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["database_check", "locks_check"]);
    // Readiness is about taking traffic, not about alerts.
    let ready = server.call(Method::GET, "/health/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_endpoint() {
    let server = common::start().await;
    let doc = server.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc.body["paths"].as_object().unwrap();
    for path in [
        "/health",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/auth/login",
        "/dispatch",
        "/jobs",
        "/jobs/{id}",
        "/jobs/{id}/cancel",
        "/jobs/{id}/retry",
        "/jobs/bulk",
        "/jobs/{id}/events",
        "/jobs/{id}/status",
        "/jobs/claim",
        "/jobs/{id}/heartbeat",
        "/webhook",
        "/sse/events",
        "/locks",
        "/locks/{resource}",
        "/locks/{resource}/acquire",
        "/locks/{resource}/extend",
        "/locks/{resource}/release",
        "/plugins",
        "/users",
        "/users/{username}/unlock",
        "/engines",
        "/engines/{name}",
        "/engines/{name}/pause",
        "/engines/{name}/resume",
        "/engines/{name}/concurrency",
        "/engines/{name}/release",
    ] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    assert!(doc.body["components"]["schemas"]["DispatchRequest"].is_object());
    assert!(doc.body["components"]["securitySchemes"]["bearer"].is_object());
}

struct Hello;

#[async_trait]
impl Plugin for Hello {
    fn name(&self) -> &str {
        "hello"
    }
    fn version(&self) -> &str {
        "1.2.3"
    }
    fn description(&self) -> &str {
        "says hello"
    }
    async fn initialize(&self, _config: Value) -> orch_core::Result<()> {
        Ok(())
    }
    async fn execute(&self, _ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        Ok(json!({"hello": input}))
    }
    async fn cleanup(&self) -> orch_core::Result<()> {
        Ok(())
    }
    fn capabilities(&self) -> Vec<Capability> {
        vec![Capability::engine("greeter")]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_and_engines_are_listed() {
    let server = common::start().await;
    server
        .orch
        .register_plugin(Arc::new(Hello), Value::Null)
        .await
        .unwrap();
    let token = server.token("viewer").await;
    let reply = server
        .call(Method::GET, "/plugins", Some(&token), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["plugins"][0]["name"], "hello");
    assert_eq!(reply.body["plugins"][0]["version"], "1.2.3");
    assert_eq!(reply.body["engines"], json!(["echo", "greeter", "sleep"]));
    let operator = server.token("operator").await;
    let ran = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&operator),
            Some(json!({"core_id": "greeter", "stay": true, "payload": "you"})),
        )
        .await;
    assert_eq!(ran.body["result"], json!({"hello": "you"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_by_default_and_on_for_configured_origins() {
    let server = common::start().await;
    let response = server
        .http
        .get(server.url("/health"))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let server = common::start_with(
        common::config().with_cors_origins(vec!["https://ops.example.com".into()]),
    )
    .await;
    let preflight = server
        .http
        .request(Method::OPTIONS, server.url("/dispatch"))
        .header("Origin", "https://ops.example.com")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://ops.example.com"
    );
    let other = server
        .http
        .get(server.url("/health"))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_honoured_or_generated_and_errors_are_json() {
    let server = common::start().await;
    let response = server
        .http
        .get(server.url("/health"))
        .header("X-Request-Id", "req-123e4567")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-123e4567");
    let response = server.http.get(server.url("/health")).send().await.unwrap();
    let generated = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36);
    let missing = server.call(Method::GET, "/no/such/route", None, None).await;
    assert_error(&missing, StatusCode::NOT_FOUND);
    let wrong_method = server.call(Method::DELETE, "/dispatch", None, None).await;
    assert_error(&wrong_method, StatusCode::METHOD_NOT_ALLOWED);
}

/// The readiness probe answers anyone: while the database fails, it says "unreachable" and
/// keeps the driver's text (hosts, users, why a login failed) for the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_does_not_show_the_databases_error_text() {
    let backend = crate::wrapped::Wrapped::new(None);
    let server = common::start_on(backend.clone(), common::config()).await;
    backend
        .unreachable
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let ready = server.call(Method::GET, "/health/ready", None, None).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.body
    );
    assert_eq!(
        ready.body["checks"]["database"], "unreachable",
        "{}",
        ready.body
    );
    assert!(
        !ready.body.to_string().contains("connection refused"),
        "{}",
        ready.body
    );
}
