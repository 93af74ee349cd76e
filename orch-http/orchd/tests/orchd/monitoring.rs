//! The monitor in the daemon: its settings (`monitoring.*`, `ENABLE_SELF_HEALING`,
//! `database.pool_size`/`timeout`), the machine sampler, and the health endpoints of a running
//! orchd.

use std::time::Duration;

use orch_core::monitor::{Metric, Sampler};
use orchd::machine::MachineSampler;
use orchd::settings::Settings;
use serde_json::Value;

use crate::daemon::{start, stop, workdir};

fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

fn threshold(settings: &Settings, rule: &str) -> f64 {
    let config = settings.monitor_config().unwrap().unwrap();
    config
        .rules
        .iter()
        .find(|r| r.name == rule)
        .unwrap()
        .threshold
}

#[test]
fn monitoring_keys_set_the_monitor_and_its_rules() {
    let none = |_: &str| None;
    let yaml = "monitoring:\n  interval: 5\n  alert_thresholds:\n    cpu_percent: 80\n    \
                memory_percent: 85\n    disk_usage_percent: 90\n    queue_depth: 500\n    \
                error_rate_percent: 10\n    task_duration_p95_seconds: 4\n    \
                lock_wait_seconds: 60\n    auth_failures_per_minute: 50\n";
    let settings = Settings::from_yaml(yaml, &none).unwrap();
    let config = settings.monitor_config().unwrap().unwrap();
    assert_eq!(config.interval, Duration::from_secs(5));
    for (rule, value) in [
        ("cpu_high", 80.0),
        ("memory_high", 85.0),
        ("disk_high", 90.0),
        ("queue_deep", 500.0),
        ("error_rate_high", 0.1),
        ("task_duration_p95_high", 4.0),
        ("lock_wait_long", 60.0),
        ("auth_failures", 50.0),
    ] {
        assert!((threshold(&settings, rule) - value).abs() < 1e-9, "{rule}");
    }
    // The durations stay ORCH-Next's.
    let cpu = config.rules.iter().find(|r| r.name == "cpu_high").unwrap();
    assert_eq!(cpu.for_duration, Duration::from_secs(300));
    // Defaults: every second, ORCH-Next's thresholds.
    let defaults = Settings::from_yaml("", &none).unwrap();
    assert_eq!(
        defaults.monitor_config().unwrap().unwrap().interval,
        Duration::from_secs(1)
    );
    assert_eq!(threshold(&defaults, "cpu_high"), 90.0);
    // Off.
    let off = Settings::from_yaml("", &env(&[("ENABLE_MONITORING", "false")])).unwrap();
    assert!(off.monitor_config().unwrap().is_none());
}

#[test]
fn monitoring_keys_that_cannot_work_are_refused_naming_the_key() {
    let none = |_: &str| None;
    for (yaml, key) in [
        (
            "monitoring:\n  metrics_retention: 2592000\n",
            "monitoring.metrics_retention",
        ),
        ("monitoring:\n  interval: 0\n", "monitoring.interval"),
        (
            "monitoring:\n  alert_thresholds:\n    cpu_percent: 150\n",
            "monitoring.alert_thresholds.cpu_percent",
        ),
        (
            "monitoring:\n  alert_thresholds:\n    queue_depth: -1\n",
            "monitoring.alert_thresholds.queue_depth",
        ),
    ] {
        let settings = Settings::from_yaml(yaml, &none).unwrap();
        let err = settings.monitor_config().unwrap_err();
        assert_eq!(err.key, key, "{yaml}");
        assert!(err.to_string().contains(key), "{err}");
    }
    let err =
        Settings::from_yaml("monitoring:\n  alert_thresholds:\n    gpu: 1\n", &none).unwrap_err();
    assert!(err.key.contains("gpu"), "{err}");
    for (yaml, key) in [
        (
            "monitoring:\n  self_healing:\n    scale:\n      min: 4\n      max: 2\n",
            "monitoring.self_healing.scale",
        ),
        (
            "monitoring:\n  self_healing:\n    disk_full_percent: 0\n",
            "monitoring.self_healing.disk_full_percent",
        ),
        (
            "monitoring:\n  enabled: false\n  self_healing:\n    enabled: true\n",
            "monitoring.self_healing.enabled",
        ),
    ] {
        let settings = Settings::from_yaml(yaml, &none).unwrap();
        assert_eq!(settings.healing().unwrap_err().key, key, "{yaml}");
    }
    for (yaml, key) in [
        ("database:\n  pool_size: 0\n", "database.pool_size"),
        ("database:\n  timeout: 0\n", "database.timeout"),
    ] {
        let settings = Settings::from_yaml(yaml, &none).unwrap();
        assert_eq!(settings.postgres_options().unwrap_err().key, key);
        assert_eq!(settings.sqlite_options().unwrap_err().key, key);
    }
}

#[test]
fn self_healing_follows_its_switches() {
    let none = |_: &str| None;
    let off = Settings::from_yaml("", &none).unwrap().healing().unwrap();
    assert!(!off.enabled);
    let on = Settings::from_yaml("", &env(&[("ENABLE_SELF_HEALING", "1")]))
        .unwrap()
        .healing()
        .unwrap();
    assert!(on.enabled);
    assert!(on.restart().is_some() && on.breaker().is_some() && on.node_health().is_some());
    assert!(on.rolls_back() && on.reports_rescues());
    assert!(on.scale().is_none(), "scaling needs bounds");
    let yaml = "monitoring:\n  self_healing:\n    enabled: true\n    restart: false\n    \
                isolate: false\n    node_health: false\n    report_rescues: false\n    \
                scale:\n      min: 1\n      max: 8\n";
    let some = Settings::from_yaml(yaml, &none).unwrap().healing().unwrap();
    assert!(some.restart().is_none() && some.breaker().is_none());
    assert!(some.node_health().is_none() && !some.reports_rescues());
    assert!(!some.rolls_back(), "rollback needs isolation");
    let scale = some.scale().unwrap();
    assert_eq!((scale.min, scale.max), (1, 8));
    // The variable wins over the file.
    let vetoed = Settings::from_yaml(yaml, &env(&[("ENABLE_SELF_HEALING", "false")]))
        .unwrap()
        .healing()
        .unwrap();
    assert!(!vetoed.enabled);
    assert_eq!(
        Settings::from_yaml("", &env(&[("ENABLE_SELF_HEALING", "sometimes")]))
            .unwrap_err()
            .key,
        "ENABLE_SELF_HEALING"
    );
}

#[test]
fn database_pool_size_and_timeout_reach_both_backends() {
    let settings =
        Settings::from_yaml("database:\n  pool_size: 7\n  timeout: 3\n", &|_: &str| None).unwrap();
    let postgres = settings.postgres_options().unwrap();
    assert_eq!(postgres.pool_size, 7);
    assert_eq!(postgres.acquire_timeout, Duration::from_secs(3));
    let sqlite = settings.sqlite_options().unwrap();
    assert_eq!(sqlite.readers, 7);
    assert_eq!(sqlite.busy_timeout, Duration::from_secs(3));
}

#[tokio::test]
async fn the_machine_sampler_reads_this_machine() {
    let dir = workdir();
    let sampler = MachineSampler::new(&dir);
    // CPU use needs two refreshes apart.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let readings = sampler.sample().await.unwrap();
    let value = |metric: Metric| {
        readings
            .iter()
            .find(|r| r.metric == metric)
            .unwrap_or_else(|| panic!("no {metric} in {readings:?}"))
            .value
    };
    for metric in [
        Metric::CpuPercent,
        Metric::MemoryPercent,
        Metric::DiskPercent,
    ] {
        let percent = value(metric.clone());
        assert!((0.0..=100.0).contains(&percent), "{metric}: {percent}");
    }
    assert!(value(Metric::MemoryPercent) > 0.0, "some memory is in use");
    assert!(
        value(Metric::DiskPercent) > 0.0,
        "the data directory's disk holds files"
    );
    assert!(value(Metric::NetworkReceived) >= 0.0);
    assert!(value(Metric::NetworkSent) >= 0.0);
    let _ = std::fs::remove_dir_all(dir);
}

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_orchd_reports_live_ready_and_its_monitor() {
    let dir = workdir();
    let daemon = start(&dir);
    let http = reqwest::Client::new();
    let (status, live) = get(&http, format!("{}/health/live", daemon.url)).await;
    assert_eq!((status, live["status"].as_str()), (200, Some("alive")));
    let (status, ready) = get(&http, format!("{}/health/ready", daemon.url)).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["ready"], true);
    for check in ["database", "schema", "shutdown", "rotation"] {
        assert_eq!(ready["checks"][check], "ok", "{check}: {ready}");
    }
    // The daemon runs the monitor: /health says so once it has passed.
    let mut health = Value::Null;
    for _ in 0..50 {
        let (_, body) = get(&http, format!("{}/health", daemon.url)).await;
        health = body;
        if health["components"]["monitor"] == "healthy" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(health["components"]["monitor"], "healthy", "{health}");
    assert!(health["alerts"].is_array(), "{health}");
    stop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn notification_keys_make_receivers_or_name_what_is_wrong() {
    let secrets = [orch_http::Secret::new("whsec_inbound")];
    let none = |_: &str| None;
    // Empty addresses (unset variables) are off.
    let yaml = "notifications:\n  slack:\n    webhook_url: \"${SLACK_WEBHOOK_URL}\"\n  email:\n    \
                smtp_server: \"${SMTP_SERVER}\"\n    from_address: orch@example.com\n";
    let settings = Settings::from_yaml(yaml, &none).unwrap();
    assert!(settings.notifiers(&secrets).unwrap().is_empty());
    // The variables turn them on.
    let settings = Settings::from_yaml(
        "notifications:\n  email:\n    from_address: orch@example.com\n    to_addresses: [ops@example.com]\n  webhook:\n    url: https://alerts.example.com/in\n",
        &env(&[
            ("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T/B/X"),
            ("SMTP_SERVER", "smtp.example.com:2525"),
        ]),
    )
    .unwrap();
    let names: Vec<String> = settings
        .notifiers(&secrets)
        .unwrap()
        .iter()
        .map(|n| n.name().to_owned())
        .collect();
    assert_eq!(names, ["webhook", "slack", "email"]);
    for (yaml, key) in [
        (
            "notifications:\n  email:\n    smtp_server: mail\n    from_address: a@b.c\n",
            "notifications.email.to_addresses",
        ),
        (
            "notifications:\n  email:\n    smtp_server: mail\n    to_addresses: [a@b.c]\n",
            "notifications.email.from_address",
        ),
        (
            "notifications:\n  email:\n    smtp_server: mail:port\n    from_address: a@b.c\n    to_addresses: [a@b.c]\n",
            "notifications.email",
        ),
        (
            "notifications:\n  email:\n    smtp_server: mail\n    from_address: a@b.c\n    to_addresses: [nobody]\n",
            "notifications.email",
        ),
        (
            "notifications:\n  slack:\n    webhook_url: ftp://x\n",
            "notifications.slack.webhook_url",
        ),
        (
            "notifications:\n  webhook:\n    url: not a url\n",
            "notifications.webhook.url",
        ),
        (
            "monitoring:\n  enabled: false\nnotifications:\n  webhook:\n    url: http://x\n",
            "notifications",
        ),
    ] {
        let settings = Settings::from_yaml(yaml, &none).unwrap();
        let Err(err) = settings.notifiers(&secrets) else {
            panic!("{yaml}: accepted");
        };
        assert_eq!(err.key, key, "{yaml}: {err}");
    }
    let settings =
        Settings::from_yaml("notifications:\n  webhook:\n    url: http://x\n", &none).unwrap();
    let Err(err) = settings.notifiers(&[]) else {
        panic!("a webhook without a secret was accepted");
    };
    assert_eq!(err.key, "notifications.webhook.secret");
    let settings =
        Settings::from_yaml("notifications:\n  delivery:\n    attempts: 0\n", &none).unwrap();
    assert_eq!(
        settings.monitor_config().unwrap_err().key,
        "notifications.delivery.attempts"
    );
}
