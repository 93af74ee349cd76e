//! [`Settings`]: the YAML config file `orchd` reads (ORCH-Next's `config/production.yaml`
//! layout), with `${VAR}` expansion and ORCH-Next's environment variables on top. Unknown keys and bad values stop start-up with a message naming the key.
//!
//! ```
//! use orchd::settings::Settings;
//!
//! let yaml = "security:\n  jwt_expiry: 600\n  rate_limit:\n    requests_per_minute: 100\n    burst_size: 20\n";
//! let settings = Settings::from_yaml(yaml, &|_| None).unwrap();
//! assert_eq!(settings.security.jwt_expiry, Some(600));
//!
//! let err = Settings::from_yaml("security:\n  jwt_expiry: soon\n", &|_| None).unwrap_err();
//! assert_eq!(err.key, "security.jwt_expiry");
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use orch_core::monitor::{AlertRule, Delivery, MonitorConfig, Notifier};
use orch_core::{Autoscale, Healing, NodeHealthCheck};
use orch_http::config::{ConfigError, HttpConfig, IpNet, Limit, Secret};
use orch_http::server::ServerOptions;
use orch_storage::{PostgresOptions, SqliteOptions};

use crate::notify::{EmailNotifier, SlackNotifier, WebhookNotifier};

/// `server:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on (`127.0.0.1:8000`); `ORCH_LISTEN` wins.
    pub listen: Option<String>,
    /// Largest request body in bytes.
    pub max_body_bytes: Option<usize>,
    /// No longer accepted (it believed any client's `X-Forwarded-For`): list the proxies in
    /// `trusted_proxies` instead. `true` stops start-up naming that key.
    pub trust_forwarded_for: Option<bool>,
    /// Proxies (addresses or networks: `10.0.0.0/8`, `::1`) whose `X-Forwarded-For` is
    /// believed; `ORCH_TRUSTED_PROXIES` (comma-separated) wins. Default none.
    pub trusted_proxies: Vec<String>,
    /// Seconds in-flight requests get at shutdown (default 30).
    pub shutdown_grace: Option<u64>,
    /// Longest wait of a `stay: true` dispatch, in seconds.
    pub stay_max_wait: Option<u64>,
    /// Seconds a client has to send a request's headers (also how long an idle kept-alive
    /// connection and a TLS handshake may last). Default 10.
    pub header_read_timeout: Option<u64>,
    /// Seconds a request body has to arrive in full. Default 60.
    pub request_body_timeout: Option<u64>,
    /// Seconds a write to a client may make no progress before its connection is closed.
    /// Default 30.
    pub write_timeout: Option<u64>,
    /// Connections open at once (default 25,000, lowered to fit the open-file limit).
    pub max_connections: Option<usize>,
    /// HTTPS.
    pub tls: TlsSettings,
}

/// `server.tls:` HTTPS with a certificate and key in PEM files (both or neither);
/// `ORCH_TLS_CERT` and `ORCH_TLS_KEY` win.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The certificate chain, server certificate first.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// `database:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// SQLite file (relative to the working directory), e.g. `data/orch.db`.
    pub path: Option<String>,
    /// A `DATABASE_URL`-style URL (`sqlite://...`, `postgres://...`); `DATABASE_URL` wins.
    pub url: Option<String>,
    /// Connections: on PostgreSQL the pool's size (default 10); on SQLite the read-only
    /// connections beside the one writer (default 4).
    pub pool_size: Option<u32>,
    /// Seconds a call waits for the database: on PostgreSQL for a connection (opening one
    /// included; default 10), on SQLite for the write lock another process holds (default 10).
    pub timeout: Option<u64>,
}

/// A rate limit.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Sustained rate; 0 turns the limit off.
    pub requests_per_minute: Option<u32>,
    /// Burst.
    pub burst_size: Option<u32>,
}

/// `security.rate_limit:` (ORCH-Next's keys are the per-user limit).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Per user and endpoint, per minute.
    pub requests_per_minute: Option<u32>,
    /// Per user and endpoint, burst.
    pub burst_size: Option<u32>,
    /// Per client IP.
    pub per_ip: Option<LimitSettings>,
    /// Per client IP on login.
    pub login_per_ip: Option<LimitSettings>,
    /// Bits of an IPv6 address that key a client (default 64).
    pub ipv6_prefix_len: Option<u8>,
    /// Clients each limiter tracks at most (default 100,000).
    pub max_tracked_clients: Option<usize>,
}

/// `security.lockout:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockoutSettings {
    /// Failures that lock an account.
    pub max_failures: Option<u32>,
    /// Window failures are counted in, seconds.
    pub window: Option<u64>,
    /// Lock duration, seconds.
    pub duration: Option<u64>,
}

/// `security.cors:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsSettings {
    /// Allowed origins; empty: CORS off.
    pub origins: Vec<String>,
}

/// `security.password_hashing:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HashingSettings {
    /// Argon2 memory in KiB.
    pub memory_kib: Option<u32>,
    /// Argon2 passes.
    pub iterations: Option<u32>,
    /// Argon2 lanes.
    pub parallelism: Option<u32>,
    /// Hashes at once.
    pub max_concurrent: Option<usize>,
}

/// `security:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySettings {
    /// JWT HMAC key that signs (`JWT_SECRET` wins: comma-separated, the first signs, the
    /// others are previous keys); generated and kept in the data directory if absent.
    pub jwt_secret: Option<String>,
    /// Previous JWT keys whose tokens are still accepted (rotation).
    pub jwt_previous_secrets: Vec<String>,
    /// Seconds a user record read for a token check is reused: how soon a disabled, deleted
    /// or changed user's tokens stop working on the other nodes (default 2).
    pub user_recheck: Option<u64>,
    /// Seconds over which refused requests of one kind are summarised in one security event
    /// (default 10; 0 records each).
    pub refusal_event_interval: Option<u64>,
    /// Token lifetime in seconds.
    pub jwt_expiry: Option<u64>,
    /// Token issuer.
    pub jwt_issuer: Option<String>,
    /// Token audience.
    pub jwt_audience: Option<String>,
    /// Webhook secret (`WEBHOOK_SECRET` wins, comma-separated for rotation).
    pub webhook_secret: Option<String>,
    /// Further accepted webhook secrets (rotation).
    pub webhook_secrets: Vec<String>,
    /// Webhook timestamp tolerance in seconds (default 300).
    pub webhook_tolerance: Option<u64>,
    /// Rate limits.
    pub rate_limit: RateLimitSettings,
    /// Lockout.
    pub lockout: LockoutSettings,
    /// CORS.
    pub cors: CorsSettings,
    /// Argon2 cost.
    pub password_hashing: HashingSettings,
}

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

/// `sse:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SseSettings {
    /// Open streams at most.
    pub max_connections: Option<usize>,
    /// Open streams of one user at most.
    pub max_per_user: Option<usize>,
    /// Keep-alive interval in seconds.
    pub keep_alive: Option<u64>,
}

/// `plugins:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginSettings {
    /// Directory of plugin libraries (default `<data dir>/plugins`).
    pub directory: Option<PathBuf>,
    /// Where plugin code runs.
    pub isolation: PluginIsolation,
    /// Configuration handed to each plugin's `initialize`, by plugin name.
    pub config: std::collections::BTreeMap<String, serde_json::Value>,
}

/// `plugins.isolation:` where plugin code runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginIsolation {
    /// `in_process` (the default): on the plugin's own threads in the daemon; a plugin that
    /// crashes takes the daemon down.
    #[default]
    InProcess,
    /// `process`: each plugin in a child process, restarted when it crashes.
    Process,
}

impl From<PluginIsolation> for orch_plugins::Isolation {
    fn from(isolation: PluginIsolation) -> Self {
        match isolation {
            PluginIsolation::InProcess => orch_plugins::Isolation::InProcess,
            PluginIsolation::Process => orch_plugins::Isolation::Process,
        }
    }
}

/// `engines:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    /// Register the built-in `echo` and `sleep` engines (default true).
    pub builtin: Option<bool>,
}

/// `backup:` (ORCH-Next's backup procedure).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSettings {
    /// Scheduled backups (default true for SQLite).
    pub enabled: Option<bool>,
    /// Hours between backups (default 24).
    pub interval_hours: Option<u64>,
    /// Backups kept (default 7).
    pub retention: Option<usize>,
    /// Where (default `<data dir>/backups`).
    pub directory: Option<PathBuf>,
}

/// `logging:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingSettings {
    /// `tracing` filter (`info`, `orch_http=debug`); `ORCH_LOG` wins.
    pub level: Option<String>,
    /// How log lines are written.
    pub format: LogFormat,
}

/// `logging.format:` how log lines are written on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `json` (the default): one JSON object per line, for log collectors.
    #[default]
    Json,
    /// `text`: human-readable lines.
    Text,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `server:`.
    pub server: ServerSettings,
    /// `database:`.
    pub database: DatabaseSettings,
    /// `security:`.
    pub security: SecuritySettings,
    /// `monitoring:`.
    pub monitoring: MonitoringSettings,
    /// `notifications:` where alerts are sent.
    pub notifications: NotificationSettings,
    /// `sse:`.
    pub sse: SseSettings,
    /// `plugins:`.
    pub plugins: PluginSettings,
    /// `engines:`.
    pub engines: EngineSettings,
    /// `backup:`.
    pub backup: BackupSettings,
    /// `logging:`.
    pub logging: LoggingSettings,
}

/// Replaces `${VAR}` in every string with the variable's value (empty when unset).
fn expand(value: &mut serde_json::Value, env: &dyn Fn(&str) -> Option<String>) {
    match value {
        serde_json::Value::String(s) if s.contains("${") => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                match after.find('}') {
                    Some(end) => {
                        out.push_str(&env(&after[..end]).unwrap_or_default());
                        rest = &after[end + 1..];
                    }
                    None => {
                        out.push_str(&rest[start..]);
                        rest = "";
                    }
                }
            }
            out.push_str(rest);
            *s = out;
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| expand(v, env)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| expand(v, env)),
        _ => {}
    }
}

fn truthy(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(ConfigError::new(
            key,
            format!("{other:?} is not true or false"),
        )),
    }
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

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

impl Settings {
    /// Parses YAML text, expands `${VAR}`, then applies the environment variables
    /// (`JWT_SECRET`, `WEBHOOK_SECRET`, `DATABASE_URL`, `ENABLE_MONITORING`,
    /// `ENABLE_SELF_HEALING`, `SLACK_WEBHOOK_URL`, `SMTP_SERVER`, `ORCH_LISTEN`,
    /// `ORCH_LOG`, `DEBUG_MODE`, `ORCH_TRUSTED_PROXIES`, `ORCH_TLS_CERT`, `ORCH_TLS_KEY`,
    /// `ORCH_METRICS_TOKEN`). `env` looks a variable up.
    pub fn from_yaml(
        yaml: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let mut value: serde_json::Value = if yaml.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_norway::from_str(yaml).map_err(|e| {
                ConfigError::new(
                    e.location()
                        .map_or_else(|| "file".to_owned(), |l| format!("line {}", l.line())),
                    e.to_string(),
                )
            })?
        };
        if value.is_null() {
            value = serde_json::Value::Object(Default::default());
        }
        expand(&mut value, env);
        let mut settings: Settings = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            let key = if path == "." {
                message
                    .split('`')
                    .nth(1)
                    .map_or_else(|| "file".to_owned(), str::to_owned)
            } else {
                path
            };
            ConfigError::new(key, message)
        })?;
        settings.apply_env(env)?;
        Ok(settings)
    }

    /// Reads `path` if given (a missing file is an error), else defaults; then
    /// [`Settings::from_yaml`]'s expansion and environment.
    pub fn load(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
            })?,
            None => String::new(),
        };
        Self::from_yaml(&text, env)
    }

    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(secrets) = non_empty(env("JWT_SECRET")) {
            let mut list = secrets.split(',').map(|s| s.trim().to_owned());
            self.security.jwt_secret = list.next();
            self.security.jwt_previous_secrets = list.filter(|s| !s.is_empty()).collect();
        }
        if let Some(proxies) = env("ORCH_TRUSTED_PROXIES") {
            self.server.trusted_proxies = proxies
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(cert) = non_empty(env("ORCH_TLS_CERT")) {
            self.server.tls.cert_file = Some(cert.into());
        }
        if let Some(key) = non_empty(env("ORCH_TLS_KEY")) {
            self.server.tls.key_file = Some(key.into());
        }
        if let Some(token) = non_empty(env("ORCH_METRICS_TOKEN")) {
            self.monitoring.metrics_token = Some(token);
        }
        if let Some(secrets) = non_empty(env("WEBHOOK_SECRET")) {
            let mut list = secrets.split(',').map(|s| s.trim().to_owned());
            self.security.webhook_secret = list.next();
            self.security.webhook_secrets = list.filter(|s| !s.is_empty()).collect();
        }
        if let Some(url) = non_empty(env("DATABASE_URL")) {
            self.database.url = Some(url);
        }
        if let Some(flag) = env("ENABLE_MONITORING") {
            self.monitoring.enabled = Some(truthy("ENABLE_MONITORING", &flag)?);
        }
        if let Some(url) = env("SLACK_WEBHOOK_URL") {
            self.notifications.slack.webhook_url = Some(url);
        }
        if let Some(server) = env("SMTP_SERVER") {
            self.notifications.email.smtp_server = Some(server);
        }
        if let Some(flag) = env("ENABLE_SELF_HEALING") {
            self.monitoring.self_healing.enabled = Some(truthy("ENABLE_SELF_HEALING", &flag)?);
        }
        if let Some(listen) = non_empty(env("ORCH_LISTEN")) {
            self.server.listen = Some(listen);
        }
        if let Some(level) = non_empty(env("ORCH_LOG")) {
            self.logging.level = Some(level);
        }
        if let Some(flag) = env("DEBUG_MODE")
            && truthy("DEBUG_MODE", &flag)?
            && self.logging.level.is_none()
        {
            self.logging.level = Some("debug".to_owned());
        }
        Ok(())
    }

    /// The webhook secrets in force (primary first).
    pub fn webhook_secrets(&self) -> Vec<String> {
        self.security
            .webhook_secret
            .iter()
            .chain(self.security.webhook_secrets.iter())
            .filter(|s| !s.is_empty())
            .cloned()
            .collect()
    }

    /// The server's limits (`server.header_read_timeout`, ...), validated.
    pub fn server_options(&self) -> Result<ServerOptions, ConfigError> {
        let server = &self.server;
        let mut options = ServerOptions::default();
        if let Some(secs) = server.header_read_timeout {
            options = options.with_header_read_timeout(Duration::from_secs(secs));
        }
        if let Some(secs) = server.request_body_timeout {
            options = options.with_request_body_timeout(Duration::from_secs(secs));
        }
        if let Some(secs) = server.write_timeout {
            options = options.with_write_timeout(Duration::from_secs(secs));
        }
        if let Some(max) = server.max_connections {
            options = options.with_max_connections(max);
        }
        options.validate()?;
        Ok(options)
    }

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

    /// The TLS certificate and key files, if HTTPS is configured; an error names the key
    /// given without its partner.
    pub fn tls_files(&self) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
        match (&self.server.tls.cert_file, &self.server.tls.key_file) {
            (Some(cert), Some(key)) => Ok(Some((cert.clone(), key.clone()))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(ConfigError::new(
                "server.tls.key_file",
                "missing: server.tls.cert_file (ORCH_TLS_CERT) needs its key (ORCH_TLS_KEY)",
            )),
            (None, Some(_)) => Err(ConfigError::new(
                "server.tls.cert_file",
                "missing: server.tls.key_file (ORCH_TLS_KEY) needs its certificate (ORCH_TLS_CERT)",
            )),
        }
    }

    /// The router configuration: `jwt_secret` and `webhook_secrets` are the ones in force
    /// (given or generated; previous JWT keys are taken from `security.jwt_previous_secrets`
    /// and added to those of `jwt_secret`'s source by the caller), `data_dir` is reported by
    /// the disk gauge when monitoring is on.
    pub fn http_config(
        &self,
        jwt_secret: Secret,
        webhook_secrets: Vec<Secret>,
        data_dir: &Path,
    ) -> Result<HttpConfig, ConfigError> {
        let mut config = HttpConfig::new(jwt_secret);
        let security = &self.security;
        config.webhook_secrets = webhook_secrets;
        config.jwt.previous_secrets = security
            .jwt_previous_secrets
            .iter()
            .filter(|s| !s.is_empty())
            .map(Secret::new)
            .collect();
        if let Some(secs) = security.user_recheck {
            config.user_recheck = Duration::from_secs(secs);
        }
        if let Some(secs) = security.refusal_event_interval {
            config.refusal_event_interval = Duration::from_secs(secs);
        }
        if let Some(expiry) = security.jwt_expiry {
            config.jwt.expiry = Duration::from_secs(expiry);
        }
        if let Some(issuer) = &security.jwt_issuer {
            config.jwt.issuer = issuer.clone();
        }
        if let Some(audience) = &security.jwt_audience {
            config.jwt.audience = audience.clone();
        }
        if let Some(tolerance) = security.webhook_tolerance {
            config.webhook_tolerance = Duration::from_secs(tolerance);
        }
        let rl = &security.rate_limit;
        let merge = |limit: Limit, settings: Option<&LimitSettings>| match settings {
            None => limit,
            Some(s) => Limit::new(
                s.requests_per_minute.unwrap_or(limit.requests_per_minute),
                s.burst_size.unwrap_or(limit.burst_size),
            ),
        };
        config.rate_limit.per_user = Limit::new(
            rl.requests_per_minute
                .unwrap_or(config.rate_limit.per_user.requests_per_minute),
            rl.burst_size
                .unwrap_or(config.rate_limit.per_user.burst_size),
        );
        config.rate_limit.per_ip = merge(config.rate_limit.per_ip, rl.per_ip.as_ref());
        config.rate_limit.login_per_ip =
            merge(config.rate_limit.login_per_ip, rl.login_per_ip.as_ref());
        if let Some(bits) = rl.ipv6_prefix_len {
            config.rate_limit.ipv6_prefix_len = bits;
        }
        if let Some(max) = rl.max_tracked_clients {
            config.rate_limit.max_tracked_clients = max;
        }
        let lockout = &security.lockout;
        if let Some(n) = lockout.max_failures {
            config.lockout.max_failures = n;
        }
        if let Some(s) = lockout.window {
            config.lockout.window = Duration::from_secs(s);
        }
        if let Some(s) = lockout.duration {
            config.lockout.duration = Duration::from_secs(s);
        }
        config.cors_origins = security.cors.origins.clone();
        let hashing = &security.password_hashing;
        if let Some(v) = hashing.memory_kib {
            config.password_hashing.memory_kib = v;
        }
        if let Some(v) = hashing.iterations {
            config.password_hashing.iterations = v;
        }
        if let Some(v) = hashing.parallelism {
            config.password_hashing.parallelism = v;
        }
        if let Some(v) = hashing.max_concurrent {
            config.password_hashing.max_concurrent = v;
        }
        if let Some(v) = self.sse.max_connections {
            config.sse.max_connections = v;
        }
        if let Some(v) = self.sse.max_per_user {
            config.sse.max_per_user = v;
        }
        if let Some(v) = self.sse.keep_alive {
            config.sse.keep_alive = Duration::from_secs(v);
        }
        if let Some(v) = self.server.max_body_bytes {
            config.max_body_bytes = v;
        }
        if self.server.trust_forwarded_for == Some(true) {
            return Err(ConfigError::new(
                "server.trust_forwarded_for",
                "no longer accepted: it believed any client's X-Forwarded-For; list your proxies \
                 in server.trusted_proxies (ORCH_TRUSTED_PROXIES) instead",
            ));
        }
        config.trusted_proxies = self
            .server
            .trusted_proxies
            .iter()
            .map(|proxy| {
                proxy
                    .parse::<IpNet>()
                    .map_err(|reason| ConfigError::new("server.trusted_proxies", reason))
            })
            .collect::<Result<_, _>>()?;
        if let Some(token) = &self.monitoring.metrics_token {
            config.metrics_token = Some(Secret::new(token.clone()));
        }
        if let Some(v) = self.server.stay_max_wait {
            config.stay_max_wait = Duration::from_secs(v);
        }
        if self.monitoring.enabled.unwrap_or(true) {
            config.disk_paths = vec![data_dir.to_path_buf()];
        }
        config.validate()?;
        Ok(config)
    }
}
