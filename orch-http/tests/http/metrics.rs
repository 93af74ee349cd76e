//! `/metrics` is read back with an independent parser (prometheus-parse), and has every family
//! ORCH-Next names, with its labels.

use std::collections::{HashMap, HashSet};

use orch_http::webhook::sign;
use prometheus_parse::{Scrape, Value};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{self, START_UNIX, WEBHOOK_SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_carry_the_orch_next_names() {
    let mut config = common::config();
    config.disk_paths = vec![std::env::temp_dir()];
    let server = common::start_with(config).await;
    let token = server.token("admin").await;
    // Activity behind every family.
    server
        .call(
            Method::POST,
            "/dispatch",
            Some(&token),
            Some(json!({"coreId": "echo", "stay": true})),
        )
        .await;
    let queued = server
        .call(
            Method::POST,
            "/dispatch",
            Some(&token),
            Some(json!({"coreId": "WORK_AI_01", "priority": 2})),
        )
        .await;
    let body = serde_json::to_vec(&json!({"event": "task.completed",
        "task_id": queued.body["task_id"], "status": "success"}))
    .unwrap();
    server
        .http
        .post(server.url("/webhook"))
        .header("X-Signature", sign(WEBHOOK_SECRET, START_UNIX, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    server
        .call(
            Method::POST,
            "/dispatch",
            Some(&token),
            Some(json!({"coreId": "WORK_AI_01", "priority": 3})),
        )
        .await;
    server
        .call(
            Method::POST,
            "/locks/db:main/acquire",
            Some(&token),
            Some(json!({})),
        )
        .await;
    let _sse = server
        .http
        .get(server.url("/sse/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    // Task metrics follow the event log asynchronously.
    let mut text = String::new();
    for _ in 0..100 {
        let response = server
            .http
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        text = response.text().await.unwrap();
        if text.contains("orch_task_duration_seconds_count{core_id=\"echo\",status=\"succeeded\"}")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    let mut families: HashMap<String, Vec<&prometheus_parse::Sample>> = HashMap::new();
    for sample in &scrape.samples {
        families
            .entry(sample.metric.clone())
            .or_default()
            .push(sample);
    }
    let expect = |name: &str, labels: &[&str], histogram: bool| {
        let samples = families
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
        for sample in samples {
            let keys: HashSet<&str> = sample.labels.keys().map(String::as_str).collect();
            let wanted: HashSet<&str> = labels.iter().copied().collect();
            assert_eq!(keys, wanted, "labels of {name}");
            assert_eq!(
                matches!(sample.value, Value::Histogram(_)),
                histogram,
                "type of {name}"
            );
        }
        assert!(scrape.docs.contains_key(name), "HELP of {name}");
    };
    expect(
        "orch_http_requests_total",
        &["method", "status", "endpoint"],
        false,
    );
    expect(
        "orch_http_request_duration_seconds",
        &["method", "endpoint"],
        true,
    );
    expect("orch_task_duration_seconds", &["core_id", "status"], true);
    expect("orch_tasks_total", &["core_id", "status"], false);
    expect("orch_task_queue_depth", &["core_id", "priority"], false);
    expect("orch_sse_connections_active", &[], false);
    expect("orch_sse_messages_sent_total", &[], false);
    expect("orch_webhook_signatures_verified_total", &["status"], false);
    expect("orch_webhook_processing_duration_seconds", &[], true);
    expect("orch_locks_active", &["resource_type"], false);
    expect("orch_lock_wait_duration_seconds", &["resource_type"], true);
    expect(
        "orch_lock_acquisition_total",
        &["resource_type", "status"],
        false,
    );
    expect("orch_system_cpu_percent", &[], false);
    expect("orch_system_memory_percent", &[], false);
    expect("orch_system_disk_usage_bytes", &["path"], false);
    let value = |name: &str, label: (&str, &str)| {
        families[name]
            .iter()
            .find(|s| s.labels.get(label.0) == Some(label.1))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                other => panic!("{other:?}"),
            })
    };
    assert_eq!(value("orch_task_queue_depth", ("priority", "3")), Some(1.0));
    assert_eq!(
        value(
            "orch_webhook_signatures_verified_total",
            ("status", "valid")
        ),
        Some(1.0)
    );
    assert_eq!(
        value("orch_locks_active", ("resource_type", "db")),
        Some(1.0)
    );
    assert_eq!(
        families["orch_tasks_total"]
            .iter()
            .filter(|s| s.labels.get("core_id") == Some("echo")
                && matches!(s.value, Value::Counter(v) if v > 0.0))
            .count(),
        3,
        "queued, running, succeeded"
    );
    let dispatched = families["orch_http_requests_total"].iter().find(|s| {
        s.labels.get("endpoint") == Some("/dispatch") && s.labels.get("status") == Some("201")
    });
    assert!(dispatched.is_some());
}

/// When promtool is installed (Debian's `prometheus` package), it must parse the output too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_output_when_installed() {
    let Ok(status) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        return;
    };
    if !status.status.success() {
        return;
    }
    let server = common::start().await;
    let token = server.token("admin").await;
    server
        .call(
            Method::POST,
            "/dispatch",
            Some(&token),
            Some(json!({"coreId": "echo", "stay": true})),
        )
        .await;
    let text = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("error while linting"), "{stderr}");
}

/// Every family of a fresh router, present at the first scrape (zero-valued where nothing
/// happened yet), so dashboards and `absent()` alerts see them from the start.
pub(crate) const FAMILIES_FROM_START: &[&str] = &[
    "orch_http_requests_total",
    "orch_tasks_total",
    "orch_task_duration_seconds",
    "orch_task_queue_depth",
    "orch_sse_connections_active",
    "orch_sse_messages_sent_total",
    "orch_webhook_signatures_verified_total",
    "orch_webhook_processing_duration_seconds",
    "orch_system_cpu_percent",
    "orch_system_memory_percent",
    "orch_system_disk_percent",
    "orch_node_ready",
    "orch_node_engine_in_flight",
    "orch_node_engine_concurrency_limit",
    "orch_node_engine_quarantined",
    "orch_node_claim_loop_restarts_total",
    "orch_node_task_error_ratio",
    "orch_node_task_duration_p95_seconds",
    "orch_node_database_up",
    "orch_node_database_probe_seconds",
    "orch_node_lock_grants_total",
    "orch_node_lock_timeouts_total",
    "orch_node_lock_contended_total",
    "orch_node_lock_waits_total",
    "orch_node_lock_wait_seconds_total",
    "orch_lock_waiters",
    "orch_lock_wait_longest_seconds",
    "orch_alerts_firing",
    "orch_auth_failures_total",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_router_shows_every_family_and_says_whose_figures_they_are() {
    use orch_core::monitor::MonitorConfig;
    let server = common::start_full(
        std::sync::Arc::new(orch_core::MemoryBackend::new()),
        common::orchestrator_config().with_monitor(Some(MonitorConfig::default())),
        common::config(),
    )
    .await;
    server
        .state
        .orch()
        .monitor()
        .unwrap()
        .check_now()
        .await
        .unwrap();
    let text = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    for family in FAMILIES_FROM_START {
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.metric == *family || s.metric.strip_suffix("_count") == Some(family)),
            "{family} missing from a fresh scrape:\n{text}"
        );
        let help = scrape
            .docs
            .get(*family)
            .unwrap_or_else(|| panic!("HELP of {family}"));
        assert!(
            help.starts_with("Cluster-wide")
                || help.starts_with("This node")
                || !family.starts_with("orch_node_") && !family.starts_with("orch_task"),
            "{family}: {help}"
        );
    }
    // Zero series for the engines the node serves, and one per alert rule.
    let echo_queued = scrape.samples.iter().find(|s| {
        s.metric == "orch_tasks_total"
            && s.labels.get("core_id") == Some("echo")
            && s.labels.get("status") == Some("failed")
    });
    assert!(echo_queued.is_some(), "{text}");
    let rules = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "orch_alerts_firing")
        .count();
    assert_eq!(rules, MonitorConfig::default().rules.len());
    // The node is ready and its database answered the monitor's probe.
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match s.value {
                Value::Gauge(v) | Value::Counter(v) | Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(value("orch_node_ready"), Some(1.0));
    assert_eq!(value("orch_node_database_up"), Some(1.0));
}
