//! `tracing:` where orchd sends its spans (OpenTelemetry over OTLP/HTTP), turned into a
//! validated [`TraceExport`]; `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL, as the
//! OpenTelemetry specification has it), `OTEL_EXPORTER_OTLP_ENDPOINT` and
//! `OTEL_SERVICE_NAME` win.

use orch_http::config::ConfigError;
use serde::Deserialize;

use super::Settings;

/// The service name spans carry unless `tracing.service_name` or `OTEL_SERVICE_NAME` say
/// otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "orchd";

/// The path OTLP/HTTP receivers take spans on, appended to an endpoint that does not name it.
pub const TRACES_PATH: &str = "/v1/traces";

/// `tracing:` OpenTelemetry spans over OTLP/HTTP (protobuf). Without an endpoint nothing is
/// exported and no span is opened.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingSettings {
    /// The receiver's base URL (`http://collector:4318`; `/v1/traces` is appended unless the
    /// URL ends with it). `OTEL_EXPORTER_OTLP_ENDPOINT` wins, and
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` over both.
    pub otlp_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the full URL spans are posted to, used as it is
    /// (nothing appended). Read from the environment only.
    #[serde(skip)]
    pub traces_endpoint: Option<String>,
    /// The `service.name` of every span (default `orchd`). `OTEL_SERVICE_NAME` wins.
    pub service_name: Option<String>,
    /// The share of new traces recorded, from 0 to 1 (default 1). A trace that arrives with
    /// a caller's context follows the caller's decision.
    pub sample_ratio: Option<f64>,
}

/// Where and how spans are exported: [`Settings::trace_export`]'s answer.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceExport {
    /// The full URL spans are posted to: the configured endpoint with `/v1/traces`, or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is.
    pub traces_url: String,
    /// `service.name`.
    pub service_name: String,
    /// From 0 to 1.
    pub sample_ratio: f64,
}

impl TraceExport {
    /// [`traces_url`](Self::traces_url) as it may be shown (in the start-up banner, in logs):
    /// without the user name and password it may carry.
    pub fn shown_url(&self) -> String {
        reqwest::Url::parse(&self.traces_url)
            .map(|url| shown_url(&url))
            .unwrap_or_else(|_| "(unreadable URL)".to_owned())
    }
}

/// `url` without its user name and password.
fn shown_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    if !shown.username().is_empty() || shown.password().is_some() {
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
    }
    shown.to_string()
}

impl Settings {
    /// The span export, if an endpoint is configured; an error names the key.
    ///
    /// ```
    /// use orchd::settings::Settings;
    ///
    /// let yaml = "tracing:\n  otlp_endpoint: http://127.0.0.1:4318\n  sample_ratio: 0.5\n";
    /// let settings = Settings::from_yaml(yaml, &|_| None).unwrap();
    /// let export = settings.trace_export().unwrap().unwrap();
    /// assert_eq!(export.traces_url, "http://127.0.0.1:4318/v1/traces");
    /// assert_eq!(export.service_name, "orchd");
    ///
    /// let secret = "tracing:\n  otlp_endpoint: https://user:token@collector:4318\n";
    /// let export = Settings::from_yaml(secret, &|_| None).unwrap().trace_export().unwrap().unwrap();
    /// assert_eq!(export.shown_url(), "https://collector:4318/v1/traces");
    ///
    /// let bad = Settings::from_yaml("tracing:\n  otlp_endpoint: collector\n", &|_| None).unwrap();
    /// assert_eq!(bad.trace_export().unwrap_err().key, "tracing.otlp_endpoint");
    /// ```
    pub fn trace_export(&self) -> Result<Option<TraceExport>, ConfigError> {
        let tracing = &self.tracing;
        let sample_ratio = tracing.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err(ConfigError::new(
                "tracing.sample_ratio",
                format!("{sample_ratio} is not between 0 and 1"),
            ));
        }
        let service_name = tracing
            .service_name
            .clone()
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
        if service_name.trim().is_empty() || service_name.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "tracing.service_name",
                "must be a non-empty name without control characters",
            ));
        }
        let (endpoint, key, as_is) = match (&tracing.traces_endpoint, &tracing.otlp_endpoint) {
            (Some(url), _) => (url.as_str(), "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", true),
            (None, Some(url)) => (url.as_str(), "tracing.otlp_endpoint", false),
            (None, None) => return Ok(None),
        };
        let refuse = |reason: String| ConfigError::new(key, reason);
        // Never quoted whole: a URL may carry credentials.
        let url = reqwest::Url::parse(endpoint.trim())
            .map_err(|e| refuse(format!("the value is not a URL ({e})")))?;
        let shown = shown_url(&url);
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(refuse(format!(
                "{shown:?} must be an http:// or https:// URL with a host"
            )));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(refuse(format!(
                "{shown:?} must not have a query or a fragment"
            )));
        }
        let base = url.as_str().trim_end_matches('/');
        let traces_url = if as_is {
            url.as_str().to_owned()
        } else if base.ends_with(TRACES_PATH) {
            base.to_owned()
        } else {
            format!("{base}{TRACES_PATH}")
        };
        Ok(Some(TraceExport {
            traces_url,
            service_name,
            sample_ratio,
        }))
    }

    pub(super) fn apply_tracing_env(&mut self, env: &dyn Fn(&str) -> Option<String>) {
        if let Some(endpoint) =
            env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|v| !v.trim().is_empty())
        {
            self.tracing.traces_endpoint = Some(endpoint);
        }
        if let Some(endpoint) = env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|v| !v.trim().is_empty())
        {
            self.tracing.otlp_endpoint = Some(endpoint);
        }
        if let Some(name) = env("OTEL_SERVICE_NAME").filter(|v| !v.trim().is_empty()) {
            self.tracing.service_name = Some(name);
        }
    }
}
