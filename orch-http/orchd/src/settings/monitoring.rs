//! The monitor's part of [`Settings`](super::Settings): `monitoring:` (the monitor, its alert
//! thresholds, self-healing), `notifications:` (where alerts go) and what `database:`'s
//! `pool_size`/`timeout` become for each backend.

use std::sync::Arc;
use std::time::Duration;

use orch_core::monitor::{AlertRule, Delivery, MonitorConfig, Notifier};
use orch_core::{Autoscale, Healing, NodeHealthCheck};
use orch_http::config::{ConfigError, Secret};
use orch_storage::{PostgresOptions, SqliteOptions};
use serde::Deserialize;

use super::Settings;
use crate::notify::{EmailNotifier, SlackNotifier, WebhookNotifier};

/// `monitoring:` the monitor (readings, alert rules, self-healing) and the `/metrics` system
/// gauges; `enabled` / `ENABLE_MONITORING` turns both on (default on).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringSettings {
    /// Run the monitor and collect system gauges (default true).
    pub enabled: Option<bool>,
    /// Seconds between two monitor passes (sample, detect, repair, notify). Default 1.
    pub interval: Option<u64>,
    /// Refused at start-up: orchd keeps no history of its metrics (Prometheus keeps what it
    /// scrapes from `/metrics`, for its own retention).
    pub metrics_retention: Option<u64>,
    /// Thresholds of ORCH-Next's alert rules.
    pub alert_thresholds: AlertThresholds,
    /// Self-healing: the master switch (`ENABLE_SELF_HEALING` wins) and each action's.
    pub self_healing: SelfHealingSettings,
    /// When set, `GET /metrics` requires `Authorization: Bearer <token>`;
    /// `ORCH_METRICS_TOKEN` wins. Default none (open, cached and rate-limited per client).
    pub metrics_token: Option<String>,
}

/// `monitoring.alert_thresholds:` the thresholds of ORCH-Next's alert rules (each rule keeps its
/// duration: CPU 5 minutes, memory 2 minutes, error rate 10 minutes, the others at once).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertThresholds {
    /// CPU use of the machine, percent (default 90).
    pub cpu_percent: Option<f64>,
    /// Memory use of the machine, percent (default 95).
    pub memory_percent: Option<f64>,
    /// Use of the disk holding the data directory, percent (default 80).
    pub disk_usage_percent: Option<f64>,
    /// Tasks queued for one engine (default 100).
    pub queue_depth: Option<f64>,
    /// Failed engine calls per call of one engine over the last minute, percent (default 5).
    pub error_rate_percent: Option<f64>,
    /// 95th percentile of one engine's call duration, seconds (default 2).
    pub task_duration_p95_seconds: Option<f64>,
    /// Longest wait of a queued lock waiter, seconds (default 30).
    pub lock_wait_seconds: Option<f64>,
    /// Refused logins and tokens in the last minute (default 20).
    pub auth_failures_per_minute: Option<f64>,
}

/// `monitoring.self_healing:` which repairs orchd makes by itself. Off unless `enabled` (or
/// `ENABLE_SELF_HEALING`); with it on, each action defaults to on but `scale`, which needs
/// bounds.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelfHealingSettings {
    /// The master switch (default false); `ENABLE_SELF_HEALING` wins.
    pub enabled: Option<bool>,
    /// Restart a claim loop that panicked, with backoff (default true). Plugin children are
    /// restarted by their supervisor whatever this says.
    pub restart: Option<bool>,
    /// Quarantine an engine that keeps failing behind a circuit breaker: its tasks wait, it
    /// is probed after a cool-down (default true).
    pub isolate: Option<bool>,
    /// Roll an upgraded engine back to its previous version when the new one keeps failing
    /// (default true; needs `isolate`).
    pub rollback: Option<bool>,
    /// Take this node out of rotation (not ready, claims nothing) while its database probe
    /// fails or its disk is full (default true).
    pub node_health: Option<bool>,
    /// Disk use, percent, that takes the node out of rotation (default 98).
    pub disk_full_percent: Option<f64>,
    /// Record a summary event of the expired leases this node rescued (default true).
    pub report_rescues: Option<bool>,
    /// Scale each engine's concurrency to its queue within these bounds (default off).
    pub scale: Option<ScaleSettings>,
}

/// `monitoring.self_healing.scale:` the bounds of every engine's concurrency.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleSettings {
    /// Lowest concurrency of an engine.
    pub min: usize,
    /// Highest concurrency of an engine.
    pub max: usize,
}

/// `notifications:` where the monitor's alerts go besides the event log: a signed JSON webhook,
/// Slack, email. A receiver whose address is empty (an unset `${VAR}`) is off.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationSettings {
    /// A JSON webhook.
    pub webhook: WebhookNotifySettings,
    /// A Slack incoming webhook.
    pub slack: SlackSettings,
    /// Email over SMTP.
    pub email: EmailSettings,
    /// Retries and timeouts of every receiver.
    pub delivery: DeliverySettings,
}

/// `notifications.webhook:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookNotifySettings {
    /// Where alerts are POSTed (`http://` or `https://`).
    pub url: Option<String>,
    /// The secret of the `X-Signature` header (default: the first webhook secret orchd itself
    /// verifies with).
    pub secret: Option<String>,
}

/// `notifications.slack:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackSettings {
    /// The incoming webhook's URL; `SLACK_WEBHOOK_URL` wins.
    pub webhook_url: Option<String>,
    /// The channel (default the webhook's own).
    pub channel: Option<String>,
}

/// `notifications.email:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailSettings {
    /// `host` or `host:port`; `SMTP_SERVER` wins.
    pub smtp_server: Option<String>,
    /// `starttls` (default), `tls` or `none`.
    pub security: crate::notify::SmtpSecurity,
    /// SMTP user name (with `password`).
    pub username: Option<String>,
    /// SMTP password.
    pub password: Option<String>,
    /// The sender.
    pub from_address: Option<String>,
    /// The recipients.
    pub to_addresses: Vec<String>,
}

/// `notifications.delivery:` how alerts are retried.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    /// Attempts per alert, the first included (default 5).
    pub attempts: Option<u32>,
    /// Seconds before the first retry, doubling after each (default 1).
    pub backoff: Option<u64>,
    /// Longest wait between retries, seconds (default 60).
    pub max_backoff: Option<u64>,
    /// Longest one delivery may take, seconds (default 10).
    pub timeout: Option<u64>,
}

fn check_http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => Ok(()),
        Ok(_) => Err(ConfigError::new(
            key,
            format!("{url:?} is not an http:// or https:// URL"),
        )),
        Err(e) => Err(ConfigError::new(key, format!("{url:?}: {e}"))),
    }
}

impl Settings {
    /// The monitor's settings (`None` when `monitoring.enabled` is false): the interval and
    /// ORCH-Next's rules with `monitoring.alert_thresholds`. An error names a bad key.
    pub fn monitor_config(&self) -> Result<Option<MonitorConfig>, ConfigError> {
        let monitoring = &self.monitoring;
        if monitoring.metrics_retention.is_some() {
            return Err(ConfigError::new(
                "monitoring.metrics_retention",
                "not supported: orchd keeps no history of its metrics; Prometheus keeps what it \
                 scrapes from /metrics (set its --storage.tsdb.retention.time) - remove this key",
            ));
        }
        if !monitoring.enabled.unwrap_or(true) {
            return Ok(None);
        }
        let mut config = MonitorConfig::default();
        if let Some(seconds) = monitoring.interval {
            if seconds == 0 {
                return Err(ConfigError::new(
                    "monitoring.interval",
                    "must be at least 1 (seconds)",
                ));
            }
            config = config.with_interval(Duration::from_secs(seconds));
        }
        let thresholds = &monitoring.alert_thresholds;
        let mut rules = AlertRule::defaults();
        for (key, rule, value, scale, max) in [
            (
                "cpu_percent",
                "cpu_high",
                thresholds.cpu_percent,
                1.0,
                Some(100.0),
            ),
            (
                "memory_percent",
                "memory_high",
                thresholds.memory_percent,
                1.0,
                Some(100.0),
            ),
            (
                "disk_usage_percent",
                "disk_high",
                thresholds.disk_usage_percent,
                1.0,
                Some(100.0),
            ),
            (
                "queue_depth",
                "queue_deep",
                thresholds.queue_depth,
                1.0,
                None,
            ),
            (
                "error_rate_percent",
                "error_rate_high",
                thresholds.error_rate_percent,
                0.01,
                Some(100.0),
            ),
            (
                "task_duration_p95_seconds",
                "task_duration_p95_high",
                thresholds.task_duration_p95_seconds,
                1.0,
                None,
            ),
            (
                "lock_wait_seconds",
                "lock_wait_long",
                thresholds.lock_wait_seconds,
                1.0,
                None,
            ),
            (
                "auth_failures_per_minute",
                "auth_failures",
                thresholds.auth_failures_per_minute,
                1.0,
                None,
            ),
        ] {
            let Some(value) = value else { continue };
            if !value.is_finite() || value < 0.0 || max.is_some_and(|max| value > max) {
                let range = max.map_or_else(|| "0 or more".to_owned(), |max| format!("0 to {max}"));
                return Err(ConfigError::new(
                    format!("monitoring.alert_thresholds.{key}"),
                    format!("{value} is not a number from {range}"),
                ));
            }
            if let Some(rule) = rules.iter_mut().find(|r| r.name == rule) {
                rule.threshold = value * scale;
            }
        }
        config = config.with_rules(rules);
        let delivery = &self.notifications.delivery;
        let mut chosen = Delivery::default();
        if let Some(attempts) = delivery.attempts {
            if attempts == 0 {
                return Err(ConfigError::new(
                    "notifications.delivery.attempts",
                    "must be at least 1",
                ));
            }
            chosen = chosen.with_attempts(attempts);
        }
        let backoff = Duration::from_secs(delivery.backoff.unwrap_or(1));
        let max_backoff = Duration::from_secs(delivery.max_backoff.unwrap_or(60));
        if backoff.is_zero() || max_backoff < backoff {
            return Err(ConfigError::new(
                "notifications.delivery.backoff",
                "needs 1 <= backoff <= max_backoff (seconds)",
            ));
        }
        chosen = chosen.with_backoff(backoff, max_backoff);
        if let Some(seconds) = delivery.timeout {
            if seconds == 0 {
                return Err(ConfigError::new(
                    "notifications.delivery.timeout",
                    "must be at least 1 (seconds)",
                ));
            }
            chosen = chosen.with_timeout(Duration::from_secs(seconds));
        }
        config = config.with_delivery(chosen);
        config
            .validate()
            .map_err(|e| ConfigError::new("monitoring", e.to_string()))?;
        Ok(Some(config))
    }

    /// The receivers of alerts configured under `notifications:` (empty addresses are off);
    /// `webhook_secrets` are the secrets orchd verifies with, the first of which signs the
    /// webhook unless `notifications.webhook.secret` is set. An error names a bad key.
    pub fn notifiers(
        &self,
        webhook_secrets: &[Secret],
    ) -> Result<Vec<Arc<dyn Notifier>>, ConfigError> {
        let settings = &self.notifications;
        let mut notifiers: Vec<Arc<dyn Notifier>> = Vec::new();
        let set = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        if let Some(url) = set(&settings.webhook.url) {
            let key = "notifications.webhook.url";
            check_http_url(key, &url)?;
            let secret = set(&settings.webhook.secret)
                .or_else(|| webhook_secrets.first().map(|s| s.expose().to_owned()))
                .ok_or_else(|| {
                    ConfigError::new(
                        "notifications.webhook.secret",
                        "missing: nothing to sign with",
                    )
                })?;
            let notifier =
                WebhookNotifier::new(url, secret).map_err(|e| ConfigError::new(key, e))?;
            notifiers.push(Arc::new(notifier));
        }
        if let Some(url) = set(&settings.slack.webhook_url) {
            let key = "notifications.slack.webhook_url";
            check_http_url(key, &url)?;
            let channel = set(&settings.slack.channel);
            let notifier =
                SlackNotifier::new(url, channel).map_err(|e| ConfigError::new(key, e))?;
            notifiers.push(Arc::new(notifier));
        }
        let email = &settings.email;
        if let Some(server) = set(&email.smtp_server) {
            let from = set(&email.from_address).ok_or_else(|| {
                ConfigError::new(
                    "notifications.email.from_address",
                    "missing: who sends the alerts",
                )
            })?;
            if email.to_addresses.is_empty() {
                return Err(ConfigError::new(
                    "notifications.email.to_addresses",
                    "missing: who gets the alerts",
                ));
            }
            let credentials = match (set(&email.username), set(&email.password)) {
                (Some(user), Some(password)) => Some((user, password)),
                (None, None) => None,
                _ => {
                    return Err(ConfigError::new(
                        "notifications.email.username",
                        "username and password go together",
                    ));
                }
            };
            let notifier = EmailNotifier::new(
                &server,
                email.security,
                credentials,
                &from,
                &email.to_addresses,
            )
            .map_err(|e| ConfigError::new("notifications.email", e))?;
            notifiers.push(Arc::new(notifier));
        }
        if !notifiers.is_empty() && !self.monitoring.enabled.unwrap_or(true) {
            return Err(ConfigError::new(
                "notifications",
                "alerts come from the monitor: monitoring.enabled (ENABLE_MONITORING) is false",
            ));
        }
        Ok(notifiers)
    }

    /// The self-healing actions in force (`monitoring.self_healing`, `ENABLE_SELF_HEALING`).
    pub fn healing(&self) -> Result<Healing, ConfigError> {
        let settings = &self.monitoring.self_healing;
        let on = |flag: Option<bool>| flag.unwrap_or(true);
        let mut healing = Healing::default().with_enabled(settings.enabled.unwrap_or(false));
        if !on(settings.restart) {
            healing = healing.with_restart(None);
        }
        if !on(settings.isolate) {
            healing = healing.with_isolate(None);
        }
        healing = healing
            .with_rollback(on(settings.rollback))
            .with_report_rescues(on(settings.report_rescues));
        if !on(settings.node_health) {
            healing = healing.with_node_health(None);
        } else if let Some(percent) = settings.disk_full_percent {
            if !(percent.is_finite() && percent > 0.0 && percent <= 100.0) {
                return Err(ConfigError::new(
                    "monitoring.self_healing.disk_full_percent",
                    format!("{percent} is not a percentage above 0 and at most 100"),
                ));
            }
            let check = NodeHealthCheck::default().with_disk_full_percent(Some(percent));
            healing = healing.with_node_health(Some(check));
        }
        if let Some(scale) = &settings.scale {
            if scale.min == 0 || scale.max < scale.min {
                return Err(ConfigError::new(
                    "monitoring.self_healing.scale",
                    format!(
                        "min {} and max {}: needs 1 <= min <= max",
                        scale.min, scale.max
                    ),
                ));
            }
            healing = healing.with_scale(Some(Autoscale::new(scale.min, scale.max)));
        }
        if self.monitoring.enabled == Some(false) && healing.enabled {
            return Err(ConfigError::new(
                "monitoring.self_healing.enabled",
                "self-healing needs the monitor: monitoring.enabled (ENABLE_MONITORING) is false",
            ));
        }
        Ok(healing)
    }

    /// `database.pool_size` and `database.timeout` for a PostgreSQL database.
    pub fn postgres_options(&self) -> Result<PostgresOptions, ConfigError> {
        let mut options = PostgresOptions::default();
        if let Some(size) = self.database.pool_size {
            if size == 0 {
                return Err(ConfigError::new("database.pool_size", "must be at least 1"));
            }
            options = options.with_pool_size(size);
        }
        if let Some(seconds) = self.database.timeout {
            if seconds == 0 {
                return Err(ConfigError::new(
                    "database.timeout",
                    "must be at least 1 (seconds)",
                ));
            }
            options = options.with_acquire_timeout(Duration::from_secs(seconds));
        }
        Ok(options)
    }

    /// `database.pool_size` and `database.timeout` for a SQLite database.
    pub fn sqlite_options(&self) -> Result<SqliteOptions, ConfigError> {
        let mut options = SqliteOptions::default();
        if let Some(size) = self.database.pool_size {
            if size == 0 {
                return Err(ConfigError::new("database.pool_size", "must be at least 1"));
            }
            options = options.with_readers(size);
        }
        if let Some(seconds) = self.database.timeout {
            if seconds == 0 {
                return Err(ConfigError::new(
                    "database.timeout",
                    "must be at least 1 (seconds)",
                ));
            }
            options = options.with_busy_timeout(Duration::from_secs(seconds));
        }
        Ok(options)
    }
}
