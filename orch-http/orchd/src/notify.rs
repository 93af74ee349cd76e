//! Where orchd sends the monitor's alerts: a JSON webhook signed like the webhooks orchd
//! verifies ([`WebhookNotifier`]), a Slack incoming webhook ([`SlackNotifier`]) and email over
//! SMTP ([`EmailNotifier`]). Each is an [`orch_core::monitor::Notifier`]: the monitor queues
//! alerts for it and a task of its own delivers them, retrying with backoff, so a slow or
//! unreachable receiver never holds up the monitor or dispatch.
//!
//! What counts as worth retrying: no connection, a timeout, HTTP 408, 429 or 5xx, an SMTP
//! transient (4xx) reply. Anything else (HTTP 4xx, an SMTP permanent reply, an address that
//! does not parse) is given up at once.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use orch_core::monitor::{Alert, AlertState, Notifier, NotifyError, Severity};
use serde_json::{Value, json};

/// How long one HTTP delivery may take (the monitor's delivery timeout also applies).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// The event name of an alert: `alert.fired` or `alert.resolved`.
fn event_of(alert: &Alert) -> &'static str {
    match alert.state {
        AlertState::Firing => orch_core::event_kinds::ALERT_FIRED,
        AlertState::Resolved => orch_core::event_kinds::ALERT_RESOLVED,
    }
}

/// Sends `body` to `url` and sorts the outcome into delivered, retryable or permanent.
/// `scheme://host[:port]` of `url`, for messages (never its path or query).
fn receiver(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => match (parsed.host_str(), parsed.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", parsed.scheme()),
            (Some(host), None) => format!("{}://{host}", parsed.scheme()),
            _ => format!("{}://", parsed.scheme()),
        },
        Err(_) => "the receiver".to_owned(),
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    signature: Option<String>,
) -> Result<(), NotifyError> {
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(signature) = signature {
        request = request.header("X-Signature", signature);
    }
    // A webhook URL is often its own secret (Slack's carries its token in the path): errors,
    // which are logged, name the receiver by scheme and host only.
    let shown = receiver(url);
    let response = request
        .send()
        .await
        .map_err(|e| NotifyError::retryable(format!("POST {shown}: {}", e.without_url())))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let message = format!("POST {shown}: HTTP {status}");
    if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
        Err(NotifyError::retryable(message))
    } else {
        Err(NotifyError::permanent(message))
    }
}

/// POSTs each alert as JSON (`{"event": "alert.fired", "alert": {...}}`) with an
/// `X-Signature: t=<unix>,v1=<hex>` header: HMAC-SHA256 of `"{t}.{body}"` keyed with the
/// secret, the scheme orchd's own `/webhook` verifies
/// ([`orch_http::webhook::verify`]).
pub struct WebhookNotifier {
    url: String,
    secret: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl WebhookNotifier {
    /// A notifier posting to `url`, signing with `secret`.
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Result<Self, String> {
        Ok(WebhookNotifier {
            url: url.into(),
            secret: secret.into(),
            client: http_client()?,
        })
    }

    /// The body sent for `alert`.
    pub fn body(alert: &Alert) -> Value {
        json!({ "event": event_of(alert), "alert": alert })
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    fn name(&self) -> &str {
        "webhook"
    }

    async fn notify(&self, alert: &Alert) -> Result<(), NotifyError> {
        let body = serde_json::to_vec(&Self::body(alert))
            .map_err(|e| NotifyError::permanent(format!("cannot encode the alert: {e}")))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = orch_http::webhook::sign(&self.secret, now, &body);
        post(&self.client, &self.url, body, Some(signature)).await
    }
}

/// POSTs each alert to a Slack incoming webhook (`SLACK_WEBHOOK_URL`): a `text` line for
/// notifications and an attachment coloured by severity with the alert's fields.
pub struct SlackNotifier {
    url: String,
    channel: Option<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for SlackNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackNotifier")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl SlackNotifier {
    /// A notifier posting to the incoming webhook `url`, to `channel` if given (else the
    /// webhook's own).
    pub fn new(url: impl Into<String>, channel: Option<String>) -> Result<Self, String> {
        Ok(SlackNotifier {
            url: url.into(),
            channel,
            client: http_client()?,
        })
    }

    /// The Slack message for `alert`.
    pub fn payload(&self, alert: &Alert) -> Value {
        let (verb, color) = match (alert.state, alert.severity) {
            (AlertState::Resolved, _) => ("resolved", "good"),
            (AlertState::Firing, Severity::Critical) => ("FIRING", "danger"),
            (AlertState::Firing, Severity::Warning) => ("firing", "warning"),
        };
        let mut fields = vec![
            json!({"title": "severity", "value": alert.severity.as_str(), "short": true}),
            json!({"title": "node", "value": alert.node, "short": true}),
        ];
        if let Some(engine) = &alert.engine {
            fields.push(json!({"title": "core_id", "value": engine, "short": true}));
        }
        if let Some(value) = alert.value {
            fields.push(json!({"title": "value", "value": format!("{value}"), "short": true}));
        }
        let mut payload = json!({
            "text": format!("[{}] {} {verb}: {}", alert.severity.as_str(), alert.rule, alert.summary),
            "attachments": [{
                "color": color,
                "title": alert.rule,
                "text": alert.summary,
                "fields": fields,
                "ts": alert.fired_at.timestamp(),
            }],
        });
        if let Some(channel) = &self.channel {
            payload["channel"] = json!(channel);
        }
        payload
    }
}

#[async_trait]
impl Notifier for SlackNotifier {
    fn name(&self) -> &str {
        "slack"
    }

    async fn notify(&self, alert: &Alert) -> Result<(), NotifyError> {
        let body = serde_json::to_vec(&self.payload(alert))
            .map_err(|e| NotifyError::permanent(format!("cannot encode the alert: {e}")))?;
        post(&self.client, &self.url, body, None).await
    }
}

/// How [`EmailNotifier`] secures its SMTP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// `starttls` (the default, port 587): plain connection upgraded to TLS, required.
    #[default]
    Starttls,
    /// `tls` (port 465): TLS from the start.
    Tls,
    /// `none` (port 25): no encryption, for a relay on the same host or network.
    None,
}

/// Sends each alert as a plain-text email over SMTP (`SMTP_SERVER`).
pub struct EmailNotifier {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl std::fmt::Debug for EmailNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailNotifier")
            .field("from", &self.from.to_string())
            .field("to", &self.to.len())
            .finish_non_exhaustive()
    }
}

impl EmailNotifier {
    /// A notifier sending from `from` to each of `to` through `server` (`host` or
    /// `host:port`; the port defaults to 587, 465 or 25 by `security`). An error says which
    /// value is wrong.
    pub fn new(
        server: &str,
        security: SmtpSecurity,
        credentials: Option<(String, String)>,
        from: &str,
        to: &[String],
    ) -> Result<Self, String> {
        let (host, port) = match server.rsplit_once(':') {
            Some((host, port)) => (
                host,
                Some(
                    port.parse::<u16>()
                        .map_err(|_| format!("{server:?}: the port is not a number"))?,
                ),
            ),
            None => (server, None),
        };
        if host.is_empty() {
            return Err(format!("{server:?}: no host"));
        }
        let builder = match security {
            SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .map_err(|e| format!("{host:?}: {e}"))?,
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                .map_err(|e| format!("{host:?}: {e}"))?,
            SmtpSecurity::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        };
        let port = port.unwrap_or(match security {
            SmtpSecurity::Starttls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::None => 25,
        });
        let mut builder = builder.port(port).timeout(Some(HTTP_TIMEOUT));
        if let Some((user, password)) = credentials {
            builder = builder.credentials(Credentials::new(user, password));
        }
        let from: Mailbox = from
            .parse()
            .map_err(|e| format!("from address {from:?}: {e}"))?;
        if to.is_empty() {
            return Err("no recipient".to_owned());
        }
        let to = to
            .iter()
            .map(|address| {
                address
                    .parse::<Mailbox>()
                    .map_err(|e| format!("recipient {address:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EmailNotifier {
            transport: builder.build(),
            from,
            to,
        })
    }

    fn message(&self, alert: &Alert) -> Result<Message, NotifyError> {
        let state = match alert.state {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        };
        let subject = format!(
            "[orch {}] {} {state}: {}",
            alert.severity.as_str(),
            alert.rule,
            alert.summary
        );
        let details = serde_json::to_string_pretty(alert).unwrap_or_default();
        let body = format!("{subject}\n\nnode: {}\n\n{details}\n", alert.node);
        let mut message = Message::builder().from(self.from.clone()).subject(subject);
        for to in &self.to {
            message = message.to(to.clone());
        }
        message
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| NotifyError::permanent(format!("cannot build the email: {e}")))
    }
}

#[async_trait]
impl Notifier for EmailNotifier {
    fn name(&self) -> &str {
        "email"
    }

    async fn notify(&self, alert: &Alert) -> Result<(), NotifyError> {
        let message = self.message(alert)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_permanent() => {
                Err(NotifyError::permanent(format!("SMTP: {error}")))
            }
            Err(error) => Err(NotifyError::retryable(format!("SMTP: {error}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver that cannot be reached: the error, which the monitor logs, names its host
    /// but not the secret its URL carries.
    #[tokio::test]
    async fn delivery_errors_do_not_show_the_receivers_secret_path() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address").port()
        };
        let url = format!("http://127.0.0.1:{port}/services/T000/B000/secret-token?key=abc");
        let error = post(&reqwest::Client::new(), &url, b"{}".to_vec(), None)
            .await
            .expect_err("nobody listens");
        let text = error.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(
            !text.contains("secret-token") && !text.contains("key=abc"),
            "{text}"
        );
    }
}
