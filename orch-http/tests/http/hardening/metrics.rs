//! Finding 9 (metrics cardinality, and `/metrics` open, unbounded and walking the file system
//! per call).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use orch_http::Secret;
use orch_http::config::{Limit, RateLimitConfig};
use orch_http::metrics::MAX_LABEL_VALUES;
use prometheus_parse::Scrape;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{self, Server};
use crate::instrumented::Instrumented;

async fn scrape(server: &Server) -> Scrape {
    let text = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// Distinct values of `label` in the samples of `metric`.
fn label_values(scrape: &Scrape, metric: &str, label: &str) -> HashSet<String> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter_map(|s| s.labels.get(label).map(str::to_owned))
        .collect()
}

/// Unauthenticated requests with made-up methods, and authenticated callers choosing core ids
/// and lock resources by the hundred, leave every label with a bounded set of values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_09_label_values_stay_bounded_whatever_callers_send() {
    let server = common::start().await;
    for n in 0..50 {
        let method = Method::from_bytes(format!("M{n}").as_bytes()).unwrap();
        let reply = server
            .http
            .request(method, server.url(&format!("/nowhere/{n}")))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::NOT_FOUND);
    }
    // A made-up method on a route that exists.
    let method = Method::from_bytes(b"BREW").unwrap();
    server
        .http
        .request(method, server.url("/jobs"))
        .send()
        .await
        .unwrap();
    let token = server.token("operator").await;
    let cores = MAX_LABEL_VALUES + 30;
    // Distinct cores and priorities, all left queued.
    let specs: Vec<_> = (0..cores)
        .map(|n| json!({"core_id": format!("core-{n}"), "priority": n}))
        .collect();
    for spec in specs {
        server
            .call(Method::POST, "/dispatch", Some(&token), Some(spec))
            .await;
    }
    for n in 0..cores {
        server
            .call(
                Method::POST,
                &format!("/locks/kind{n}:x/acquire"),
                Some(&token),
                Some(json!({"ttl": 60})),
            )
            .await;
    }
    // The task metrics follow the event log: give them a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scrape = scrape(&server).await;
    let methods = label_values(&scrape, "orch_http_requests_total", "method");
    assert!(
        methods.iter().all(|m| !m.starts_with('M') && m != "BREW"),
        "{methods:?}"
    );
    assert!(methods.contains("other"), "{methods:?}");
    let cores_seen = label_values(&scrape, "orch_tasks_total", "core_id");
    assert!(
        cores_seen.len() <= MAX_LABEL_VALUES + 1,
        "{}",
        cores_seen.len()
    );
    assert!(cores_seen.contains("other"));
    let priorities = label_values(&scrape, "orch_task_queue_depth", "priority");
    assert!(priorities.len() <= MAX_LABEL_VALUES, "{}", priorities.len());
    assert!(priorities.contains("other"));
    for metric in ["orch_lock_acquisition_total", "orch_locks_active"] {
        let kinds = label_values(&scrape, metric, "resource_type");
        assert!(
            kinds.len() <= MAX_LABEL_VALUES + 1,
            "{metric}: {}",
            kinds.len()
        );
        assert!(kinds.contains("other"), "{metric}");
    }
}

/// Scrapes are cached (40 at once: one rendering, one backend read), rate-limited per client
/// like any route, and can require a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_09_metrics_are_rendered_once_a_second_limited_and_can_require_a_token() {
    let backend = Arc::new(Instrumented::default());
    let mut config = common::config();
    config.disk_paths = vec![std::env::temp_dir()];
    let server = common::start_on(backend.clone(), config).await;
    let before = backend.count("queue_depth");
    join_all((0..40).map(|_| scrape(&server))).await;
    assert_eq!(backend.count("queue_depth") - before, 1);

    let limits = RateLimitConfig {
        per_ip: Limit::new(60, 5),
        ..RateLimitConfig::disabled()
    };
    let config = common::config()
        .with_rate_limit(limits)
        .with_metrics_token(Secret::new("a metrics token, long enough"));
    let server = common::start_with(config).await;
    let without = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), StatusCode::UNAUTHORIZED);
    let with = server
        .http
        .get(server.url("/metrics"))
        .bearer_auth("a metrics token, long enough")
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), StatusCode::OK);
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let reply = server
            .http
            .get(server.url("/metrics"))
            .bearer_auth("a metrics token, long enough")
            .send()
            .await
            .unwrap();
        statuses.push(reply.status());
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}
