//! `deploy/`: every metric the Prometheus alert rules and the Grafana dashboard query is one a
//! running orchd exports (scraped from its `/metrics`), from its first scrape on.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

use crate::daemon::{start, stop, workdir};

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// The `orch_*` metric names in a PromQL expression.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(found) = expr[i..].find("orch_") {
        let start = i + found;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            into.insert(expr[start..end].to_owned());
        }
        i = end;
    }
}

/// Every `expr` string anywhere in `value`.
fn exprs(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => into.push(expr.clone()),
                    _ => exprs(value, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| exprs(item, into)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_and_the_dashboard_name_only_metrics_orchd_exports() {
    let rules: Value = serde_norway::from_str(
        &std::fs::read_to_string(deploy_dir().join("prometheus/orch-alerts.yml")).unwrap(),
    )
    .unwrap();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("grafana/orch-dashboard.json")).unwrap(),
    )
    .unwrap();
    // With a receiver of alerts configured, as where the rules on deliveries apply (nothing
    // listens there: nothing fires either).
    let dir = workdir();
    let yaml = std::fs::read_to_string(dir.join("orchd.yaml")).unwrap();
    std::fs::write(
        dir.join("orchd.yaml"),
        format!(
            "{yaml}notifications:\n  webhook:\n    url: http://127.0.0.1:9/alerts\n    \
             secret: whsec_unused\n"
        ),
    )
    .unwrap();
    let daemon = start(&dir);
    let text = reqwest::get(format!("{}/metrics", daemon.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    stop(daemon);
    let _ = std::fs::remove_dir_all(dir);
    // Families and, for histograms, their series' names.
    let mut exported = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            exported.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_count", "_sum"] {
                    exported.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    for (what, document) in [("alert rules", &rules), ("dashboard", &dashboard)] {
        let mut found = Vec::new();
        exprs(document, &mut found);
        assert!(found.len() >= 10, "{what}: {} expressions", found.len());
        let mut names = BTreeSet::new();
        for expr in &found {
            metric_names(expr, &mut names);
        }
        let missing: Vec<&String> = names.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "{what} query metrics a fresh orchd does not export: {missing:?}\nexported: {exported:?}"
        );
    }
    // The rules mirror the monitor's: each of ORCH-Next's conditions is there.
    let mut rule_exprs = Vec::new();
    exprs(&rules, &mut rule_exprs);
    let all = rule_exprs.join("\n");
    for needle in [
        "orch_system_cpu_percent > 90",
        "orch_system_memory_percent > 95",
        "orch_task_queue_depth)) > 100",
        "orch_node_task_error_ratio > 0.05",
        "orch_node_task_duration_p95_seconds > 2",
        "orch_system_disk_percent > 80",
        "orch_lock_wait_longest_seconds) > 30",
        "orch_node_database_up == 0",
        "orch_auth_failures_total[1m]) > 20",
    ] {
        assert!(all.contains(needle), "no rule with {needle:?}");
    }
}

#[test]
fn metric_names_are_found_whole() {
    let mut names = BTreeSet::new();
    metric_names(
        "max by (core_id) (sum without (priority) (orch_task_queue_depth)) > 100 and my_orch_x",
        &mut names,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["orch_task_queue_depth"]
    );
}
