//! [`SecurityLog`]: security events in the orchestrator's event log, beside the task events,
//! where admins see them over SSE.
//!
//! What an authenticated caller does (a login, a user created) is recorded as it happens. A
//! refused unauthenticated request (a bad token, a bad webhook signature, a failed login) costs
//! its sender nothing, so recording each would let anyone make the database write at will:
//! refusals are recorded at most once per [`HttpConfig::refusal_event_interval`] per kind,
//! the first at once and the rest as one summary at the end of the interval (counts by reason,
//! and a bounded sample of addresses, usernames and paths).
//!
//! [`HttpConfig::refusal_event_interval`]: crate::HttpConfig::refusal_event_interval

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use orch_core::{EventKind, NewEvent, SharedBackend};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::time::Instant;

/// Distinct values a summary keeps of each field.
const SAMPLE: usize = 16;

/// One refused request, for [`SecurityLog::refused`].
#[derive(Debug, Clone, Default)]
pub struct Refusal {
    /// Why (`unknown_user`, `invalid`, `stale`, ...).
    pub reason: String,
    /// The client address.
    pub ip: Option<String>,
    /// The username tried, if any.
    pub username: Option<String>,
    /// The path requested, if it matters.
    pub path: Option<String>,
}

impl Refusal {
    /// A refusal for `reason` from `ip`.
    pub fn new(reason: impl Into<String>, ip: Option<String>) -> Self {
        Refusal {
            reason: reason.into(),
            ip,
            ..Refusal::default()
        }
    }

    /// With the username tried.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// With the path requested.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    fn event_data(&self) -> Value {
        let mut data = json!({"reason": self.reason, "ip": self.ip, "count": 1});
        if let Some(username) = &self.username {
            data["username"] = json!(username);
        }
        if let Some(path) = &self.path {
            data["path"] = json!(path);
        }
        data
    }
}

/// Refusals of one kind since its last event.
#[derive(Debug, Default)]
struct Summary {
    count: u64,
    reasons: BTreeMap<String, u64>,
    ips: BTreeSet<String>,
    usernames: BTreeSet<String>,
    paths: BTreeSet<String>,
}

fn sample(set: &mut BTreeSet<String>, value: Option<&String>) {
    if let Some(value) = value
        && set.len() < SAMPLE
    {
        set.insert(value.clone());
    }
}

impl Summary {
    fn add(&mut self, refusal: &Refusal) {
        self.count += 1;
        let reason = if self.reasons.len() < SAMPLE || self.reasons.contains_key(&refusal.reason) {
            refusal.reason.clone()
        } else {
            "other".to_owned()
        };
        *self.reasons.entry(reason).or_default() += 1;
        sample(&mut self.ips, refusal.ip.as_ref());
        sample(&mut self.usernames, refusal.username.as_ref());
        sample(&mut self.paths, refusal.path.as_ref());
    }

    fn event_data(&self, interval: Duration) -> Value {
        json!({
            "summary": true,
            "count": self.count,
            "interval_seconds": interval.as_secs_f64(),
            "reasons": self.reasons,
            "ips": self.ips,
            "usernames": self.usernames,
            "paths": self.paths,
        })
    }
}

#[derive(Debug, Default)]
struct Window {
    /// When an event of this kind was last written.
    written_at: Option<Instant>,
    /// Refusals since, to be summarised when the interval ends (a flush is scheduled).
    pending: Option<Summary>,
}

struct Inner {
    backend: SharedBackend,
    interval: Duration,
    windows: Mutex<HashMap<&'static str, Window>>,
    /// Where refusals of `auth.*` kinds are counted, if anywhere.
    auth_failures: std::sync::OnceLock<crate::auth::AuthFailures>,
}

/// Appends security events (`auth.login_failed`, `webhook.signature_refused`, ...) to the
/// orchestrator's event log. Cheap to clone.
#[derive(Clone)]
pub struct SecurityLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SecurityLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityLog")
            .field("interval", &self.inner.interval)
            .finish_non_exhaustive()
    }
}

impl SecurityLog {
    /// A log appending to `backend`'s event log that records every refusal.
    pub fn new(backend: SharedBackend) -> Self {
        Self::with_refusal_interval(backend, Duration::ZERO)
    }

    /// A log that records refusals of each kind at most once per `interval` (zero: every
    /// one). Call inside a tokio runtime: summaries are written by a task of their own.
    pub fn with_refusal_interval(backend: SharedBackend, interval: Duration) -> Self {
        SecurityLog {
            inner: Arc::new(Inner {
                backend,
                interval,
                windows: Mutex::new(HashMap::new()),
                auth_failures: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Counts every refusal of an `auth.*` kind (refused logins and tokens) in `failures`
    /// from now on; a second call is ignored.
    pub fn count_auth_failures_in(&self, failures: crate::auth::AuthFailures) {
        let _ = self.inner.auth_failures.set(failures);
    }

    /// Appends an event of `kind` with `data` now; a failure is logged, never returned.
    pub async fn record(&self, kind: &str, data: Value) {
        tracing::warn!(kind, %data, "security event");
        append(&self.inner.backend, kind, data).await;
    }

    /// Records a refused unauthenticated request of `kind`: at once if no event of this kind
    /// was written within the interval, else into the summary written when it ends.
    pub async fn refused(&self, kind: &'static str, refusal: Refusal) {
        tracing::debug!(kind, reason = %refusal.reason, ip = ?refusal.ip, "refused");
        if kind.starts_with("auth.")
            && let Some(failures) = self.inner.auth_failures.get()
        {
            failures.add();
        }
        let interval = self.inner.interval;
        let now = Instant::now();
        /// What to do with one refusal.
        enum Then {
            WriteNow,
            Summarise,
            SummariseAndFlushAt(Instant),
        }
        let then = {
            let mut windows = self.inner.windows.lock();
            let window = windows.entry(kind).or_default();
            let quiet = window
                .written_at
                .is_none_or(|at| now.duration_since(at) >= interval);
            if interval.is_zero() || (quiet && window.pending.is_none()) {
                window.written_at = Some(now);
                Then::WriteNow
            } else {
                let first = window.pending.is_none();
                window
                    .pending
                    .get_or_insert_with(Summary::default)
                    .add(&refusal);
                // A summary is pending only after an event was written, so `written_at` is
                // set.
                let due = window.written_at.map_or(now, |at| at + interval);
                if first {
                    Then::SummariseAndFlushAt(due)
                } else {
                    Then::Summarise
                }
            }
        };
        match then {
            Then::WriteNow => self.record(kind, refusal.event_data()).await,
            Then::Summarise => {}
            Then::SummariseAndFlushAt(due) => {
                let inner = self.inner.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(due).await;
                    let summary = {
                        let mut windows = inner.windows.lock();
                        let window = windows.entry(kind).or_default();
                        window.written_at = Some(Instant::now());
                        window.pending.take()
                    };
                    if let Some(summary) = summary {
                        let data = summary.event_data(inner.interval);
                        tracing::warn!(kind, %data, "security events (summary)");
                        append(&inner.backend, kind, data).await;
                    }
                });
            }
        }
    }
}

async fn append(backend: &SharedBackend, kind: &str, data: Value) {
    let event = NewEvent::new(EventKind::Custom(kind.to_owned())).with_data(data);
    if let Err(error) = backend.append_event(event).await {
        tracing::error!(%error, kind, "could not record a security event");
    }
}
