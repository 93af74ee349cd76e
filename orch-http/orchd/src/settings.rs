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
use std::time::Duration;

use serde::Deserialize;

use orch_http::config::{ConfigError, HttpConfig, IpNet, Limit, Secret};
use orch_http::server::ServerOptions;

mod monitoring;
mod traces;

pub use monitoring::{
    AlertThresholds, DeliverySettings, EmailSettings, MonitoringSettings, NotificationSettings,
    ScaleSettings, SelfHealingSettings, SlackSettings, WebhookNotifySettings,
};
pub use traces::{DEFAULT_SERVICE_NAME, TRACES_PATH, TraceExport, TracingSettings};

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
    /// Browser session cookies are `Secure` (sent over HTTPS only) and `__Host-` prefixed.
    /// Default on when orchd speaks HTTPS itself (`tls`) or sits behind proxies
    /// (`trusted_proxies`, which usually end HTTPS for it); off otherwise.
    pub secure_cookies: Option<bool>,
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
    /// `tracing:` OpenTelemetry spans over OTLP.
    pub tracing: TracingSettings,
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

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

impl Settings {
    /// Parses YAML text, expands `${VAR}`, then applies the environment variables
    /// (`JWT_SECRET`, `WEBHOOK_SECRET`, `DATABASE_URL`, `ENABLE_MONITORING`,
    /// `ENABLE_SELF_HEALING`, `SLACK_WEBHOOK_URL`, `SMTP_SERVER`, `ORCH_LISTEN`,
    /// `ORCH_LOG`, `DEBUG_MODE`, `ORCH_TRUSTED_PROXIES`, `ORCH_TLS_CERT`, `ORCH_TLS_KEY`,
    /// `ORCH_METRICS_TOKEN`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
    /// `OTEL_SERVICE_NAME`). `env` looks a variable up.
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
        self.apply_tracing_env(env);
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
        // Over HTTPS (here or at a proxy in front), session cookies never travel in the clear.
        config.secure_cookies = self
            .server
            .secure_cookies
            .unwrap_or(self.tls_files()?.is_some() || !config.trusted_proxies.is_empty());
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
