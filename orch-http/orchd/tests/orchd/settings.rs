//! The YAML config and environment variables: ORCH-Next's layout, `${VAR}`, keys named in errors.

use std::path::Path;

use orch_http::{HttpConfig, Secret};
use orchd::settings::{LogFormat, PluginIsolation, Settings};

const ORCH_NEXT_YAML: &str = r##"
database:
  path: "data/orch.db"
  pool_size: 10
  timeout: 30

security:
  jwt_secret: "${JWT_SECRET}"
  jwt_expiry: 3600
  webhook_secret: "${WEBHOOK_SECRET}"
  rate_limit:
    requests_per_minute: 100
    burst_size: 20

monitoring:
  interval: 60
  metrics_retention: 2592000  # 30 days
  alert_thresholds:
    cpu_percent: 80
    memory_percent: 85
    disk_usage_percent: 90

notifications:
  slack:
    webhook_url: "${SLACK_WEBHOOK_URL}"
    channel: "#orch-alerts"
  email:
    smtp_server: "${SMTP_SERVER}"
    from_address: "orch@company.com"
"##;

fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

#[test]
fn orch_next_production_yaml_loads_with_its_environment() {
    let env = env(&[
        ("JWT_SECRET", "a-production-jwt-secret-of-32-bytes-or-more"),
        ("WEBHOOK_SECRET", "whsec_new,whsec_old"),
        ("ENABLE_MONITORING", "true"),
    ]);
    let settings = Settings::from_yaml(ORCH_NEXT_YAML, &env).unwrap();
    assert_eq!(
        settings.security.jwt_secret.as_deref(),
        Some("a-production-jwt-secret-of-32-bytes-or-more")
    );
    assert_eq!(settings.webhook_secrets(), ["whsec_new", "whsec_old"]);
    assert_eq!(settings.database.path.as_deref(), Some("data/orch.db"));
    let config: HttpConfig = settings
        .http_config(
            Secret::new(settings.security.jwt_secret.clone().unwrap()),
            settings
                .webhook_secrets()
                .into_iter()
                .map(Secret::new)
                .collect(),
            Path::new("data"),
        )
        .unwrap();
    assert_eq!(config.jwt.expiry.as_secs(), 3600);
    assert_eq!(config.rate_limit.per_user.requests_per_minute, 100);
    assert_eq!(config.rate_limit.per_user.burst_size, 20);
    assert_eq!(config.webhook_secrets.len(), 2);
    assert!(config.cors_origins.is_empty(), "CORS is off by default");
}

#[test]
fn invalid_config_names_the_key() {
    let none = |_: &str| None;
    let cases = [
        ("security:\n  jwt_expiry: soon\n", "security.jwt_expiry"),
        (
            "security:\n  rate_limit:\n    burst_size: -1\n",
            "security.rate_limit.burst_size",
        ),
        ("security:\n  jwt_exipry: 10\n", "jwt_exipry"),
        ("serverr:\n  listen: x\n", "serverr"),
        ("sse:\n  max_connections: many\n", "sse.max_connections"),
        ("logging:\n  format: xml\n", "logging.format"),
    ];
    for (yaml, key) in cases {
        let err = Settings::from_yaml(yaml, &none).unwrap_err();
        assert!(err.key.contains(key), "{yaml:?}: {err}");
        assert!(err.to_string().contains(key), "{err}");
    }
    // Choices are parsed once; the error names the key and the allowed values.
    for (yaml, key, allowed) in [
        (
            "logging:\n  format: xml\n",
            "logging.format",
            "`json` or `text`",
        ),
        (
            "plugins:\n  isolation: container\n",
            "plugins.isolation",
            "`in_process` or `process`",
        ),
    ] {
        let err = Settings::from_yaml(yaml, &none).unwrap_err();
        assert_eq!(err.key, key);
        assert!(err.to_string().contains(allowed), "{err}");
    }
    let chosen = Settings::from_yaml(
        "logging:\n  format: text\nplugins:\n  isolation: process\n",
        &none,
    )
    .unwrap();
    assert_eq!(chosen.logging.format, LogFormat::Text);
    assert_eq!(chosen.plugins.isolation, PluginIsolation::Process);
    let defaults = Settings::from_yaml("", &none).unwrap();
    assert_eq!(defaults.logging.format, LogFormat::Json);
    assert_eq!(defaults.plugins.isolation, PluginIsolation::InProcess);
    let bad_env = env(&[("ENABLE_MONITORING", "perhaps")]);
    assert_eq!(
        Settings::from_yaml("", &bad_env).unwrap_err().key,
        "ENABLE_MONITORING"
    );
    // Semantic checks name the key too.
    let settings = Settings::from_yaml("security:\n  jwt_expiry: 0\n", &none).unwrap();
    let err = settings
        .http_config(Secret::new("x".repeat(40)), vec![], Path::new("data"))
        .unwrap_err();
    assert_eq!(err.key, "security.jwt_expiry");
    let err = settings
        .http_config(Secret::new("short"), vec![], Path::new("data"))
        .unwrap_err();
    assert_eq!(err.key, "security.jwt_secret");
    let cors = Settings::from_yaml(
        "security:\n  cors:\n    origins: [\"not an origin\"]\n",
        &none,
    )
    .unwrap();
    let err = cors
        .http_config(Secret::new("x".repeat(40)), vec![], Path::new("data"))
        .unwrap_err();
    assert_eq!(err.key, "security.cors.origins");
}

/// The keys of issue 11 (trusted proxies, server limits, TLS, key rotation, revocation,
/// refusal summaries, the metrics token): from the file and the environment, and each bad
/// value named.
#[test]
fn network_hardening_keys_load_and_bad_values_are_named() {
    let yaml = r#"
server:
  trusted_proxies: ["10.0.0.0/8", "::1"]
  header_read_timeout: 5
  request_body_timeout: 20
  write_timeout: 15
  max_connections: 1000
  tls:
    cert_file: /etc/orchd/cert.pem
    key_file: /etc/orchd/key.pem
security:
  jwt_previous_secrets: ["an-older-jwt-secret-of-32-bytes-or-more"]
  user_recheck: 1
  refusal_event_interval: 30
  rate_limit:
    ipv6_prefix_len: 56
    max_tracked_clients: 5000
monitoring:
  metrics_token: a-metrics-token-for-prometheus
"#;
    let none = |_: &str| None;
    let settings = Settings::from_yaml(yaml, &none).unwrap();
    let config = settings
        .http_config(Secret::new("x".repeat(40)), vec![], Path::new("data"))
        .unwrap();
    assert_eq!(config.trusted_proxies.len(), 2);
    assert_eq!(config.jwt.previous_secrets.len(), 1);
    assert_eq!(config.user_recheck.as_secs(), 1);
    assert_eq!(config.refusal_event_interval.as_secs(), 30);
    assert_eq!(config.rate_limit.ipv6_prefix_len, 56);
    assert_eq!(config.rate_limit.max_tracked_clients, 5000);
    assert!(config.metrics_token.is_some());
    let options = settings.server_options().unwrap();
    assert_eq!(options.header_read_timeout.as_secs(), 5);
    assert_eq!(options.request_body_timeout.as_secs(), 20);
    assert_eq!(options.write_timeout.as_secs(), 15);
    assert_eq!(options.max_connections, 1000);
    assert!(settings.tls_files().unwrap().is_some());

    // The environment: a rotating JWT_SECRET, proxies, TLS files, the metrics token.
    let env = env(&[
        (
            "JWT_SECRET",
            "the-current-jwt-secret-of-32-bytes-or-more,an-older-jwt-secret-of-32-bytes-or-more",
        ),
        ("ORCH_TRUSTED_PROXIES", "192.168.0.0/16, 127.0.0.1"),
        ("ORCH_TLS_CERT", "/run/cert.pem"),
        ("ORCH_TLS_KEY", "/run/key.pem"),
        ("ORCH_METRICS_TOKEN", "another-metrics-token"),
    ]);
    let settings = Settings::from_yaml("", &env).unwrap();
    assert_eq!(
        settings.security.jwt_secret.as_deref(),
        Some("the-current-jwt-secret-of-32-bytes-or-more")
    );
    assert_eq!(settings.security.jwt_previous_secrets.len(), 1);
    assert_eq!(settings.server.trusted_proxies.len(), 2);
    assert_eq!(
        settings.tls_files().unwrap().unwrap().0,
        Path::new("/run/cert.pem")
    );

    let config_error = |yaml: &str| {
        Settings::from_yaml(yaml, &none)
            .unwrap()
            .http_config(Secret::new("x".repeat(40)), vec![], Path::new("data"))
            .unwrap_err()
    };
    for (yaml, key) in [
        (
            "server:\n  trusted_proxies: [\"proxy.example\"]\n",
            "server.trusted_proxies",
        ),
        // Believing any client's X-Forwarded-For is no longer offered.
        (
            "server:\n  trust_forwarded_for: true\n",
            "server.trust_forwarded_for",
        ),
        (
            "security:\n  jwt_previous_secrets: [\"short\"]\n",
            "security.jwt_previous_secrets",
        ),
        (
            "security:\n  rate_limit:\n    ipv6_prefix_len: 8\n",
            "security.rate_limit.ipv6_prefix_len",
        ),
        (
            "monitoring:\n  metrics_token: short\n",
            "monitoring.metrics_token",
        ),
    ] {
        assert_eq!(config_error(yaml).key, key, "{yaml}");
    }
    let err = config_error("server:\n  trust_forwarded_for: true\n");
    assert!(err.to_string().contains("server.trusted_proxies"), "{err}");
    for (yaml, key) in [
        (
            "server:\n  header_read_timeout: 0\n",
            "server.header_read_timeout",
        ),
        ("server:\n  max_connections: 0\n", "server.max_connections"),
    ] {
        let err = Settings::from_yaml(yaml, &none)
            .unwrap()
            .server_options()
            .unwrap_err();
        assert_eq!(err.key, key);
    }
    let half = Settings::from_yaml("server:\n  tls:\n    cert_file: /x.pem\n", &none).unwrap();
    assert_eq!(half.tls_files().unwrap_err().key, "server.tls.key_file");
}

#[test]
fn session_cookies_are_secure_under_tls_or_behind_proxies_unless_told() {
    let none = env(&[]);
    let secure = |yaml: &str| {
        Settings::from_yaml(yaml, &none)
            .unwrap()
            .http_config(Secret::new("x".repeat(40)), vec![], Path::new("data"))
            .unwrap()
            .secure_cookies
    };
    assert!(!secure(""));
    assert!(secure("server:\n  trusted_proxies: [\"10.0.0.5\"]\n"));
    assert!(!secure(
        "server:\n  trusted_proxies: [\"10.0.0.5\"]\n  secure_cookies: false\n"
    ));
    assert!(secure("server:\n  secure_cookies: true\n"));
}

#[test]
fn the_traces_endpoint_variable_is_the_full_url_and_wins() {
    let yaml = "tracing:\n  otlp_endpoint: http://from-file:4318\n";
    let export = |pairs: &'static [(&'static str, &'static str)]| {
        Settings::from_yaml(yaml, &env(pairs))
            .unwrap()
            .trace_export()
            .map(|export| export.map(|e| e.traces_url))
    };
    // The file's base URL gets the traces path; the general variable wins over the file.
    assert_eq!(
        export(&[]).unwrap().as_deref(),
        Some("http://from-file:4318/v1/traces")
    );
    assert_eq!(
        export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4318")])
            .unwrap()
            .as_deref(),
        Some("http://general:4318/v1/traces")
    );
    // The traces variable is used as it is, over both.
    assert_eq!(
        export(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://traces:8443/ingest/spans"
            ),
        ])
        .unwrap()
        .as_deref(),
        Some("https://traces:8443/ingest/spans")
    );
    // Alone, it turns export on.
    let alone = Settings::from_yaml(
        "",
        &env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://traces:4318/v1/traces",
        )]),
    )
    .unwrap()
    .trace_export()
    .unwrap()
    .map(|e| e.traces_url);
    assert_eq!(alone.as_deref(), Some("http://traces:4318/v1/traces"));
    // A bad one is named by its variable.
    let err = export(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "traces:4318")]).unwrap_err();
    assert_eq!(err.key, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
}
