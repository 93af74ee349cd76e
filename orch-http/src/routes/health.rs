//! `GET /health` in ORCH-Next's shape, each component as the monitor sees it, cached for
//! `health_cache` so probes and load balancers cost one backend round trip per second at most;
//! `GET /health/live` (the process answers) and `GET /health/ready` (this node should get
//! traffic and claims work) for load balancers and Kubernetes probes.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orch_core::Orchestrator;
use orch_core::monitor::{Alert, Metric};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics::Metrics;

/// The part of the state `/health` needs besides the orchestrator and the metrics: the cached
/// report, what it says about the server, and the shutdown signal. Cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct HealthCheck {
    inner: Arc<HealthInner>,
}

struct HealthInner {
    /// The last report and when it was made; reused for `cache_for`.
    cached: parking_lot::RwLock<Option<(Instant, HealthReport)>>,
    /// Held by the one request that refreshes the report; the others wait and reuse it.
    refresh: tokio::sync::Mutex<()>,
    cache_for: Duration,
    started: Instant,
    version: String,
    clock: Clock,
    /// Fired when the server begins to shut down: the report says `shutting_down`.
    shutdown: CancellationToken,
    /// The embedder's own readiness check (the daemon: the database schema is the one it
    /// runs), set once.
    ready_check: OnceLock<ReadyCheck>,
}

impl std::fmt::Debug for HealthInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthInner")
            .field("cache_for", &self.cache_for)
            .field("version", &self.version)
            .field("ready_check", &self.ready_check.get().is_some())
            .finish_non_exhaustive()
    }
}

/// An embedder's readiness check: `Err(reason)` when the node should not get traffic.
pub type ReadyCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

impl HealthCheck {
    pub(crate) fn new(
        version: String,
        cache_for: Duration,
        clock: Clock,
        shutdown: CancellationToken,
    ) -> Self {
        HealthCheck {
            inner: Arc::new(HealthInner {
                cached: parking_lot::RwLock::new(None),
                refresh: tokio::sync::Mutex::new(()),
                cache_for,
                started: Instant::now(),
                version,
                clock,
                shutdown,
                ready_check: OnceLock::new(),
            }),
        }
    }

    /// Adds a check `/health/ready` runs besides its own (a second call is ignored).
    pub(crate) fn set_ready_check(&self, check: ReadyCheck) {
        let _ = self.inner.ready_check.set(check);
    }
}

/// The health body, in ORCH-Next's shape.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HealthReport {
    /// `healthy`, `degraded` (alerts firing), `unhealthy` (a check failed) or `shutting_down`.
    pub status: String,
    /// RFC 3339.
    pub timestamp: String,
    /// Server version.
    pub version: String,
    /// `database`, `lock_manager`, `monitor`, `security`, `node`, `machine`, `engines`:
    /// `healthy`, `degraded` (an alert of the monitor fires on it), `unhealthy` (its check
    /// failed: the database or lock probe, the monitor's passes, the node's rotation) or
    /// `disabled` (`monitor` when the orchestrator runs no monitor).
    pub components: BTreeMap<String, String>,
    /// The monitor's alerts firing now.
    pub alerts: Vec<HealthAlert>,
    /// Counters.
    pub metrics: HealthMetrics,
}

/// One alert firing, as `/health` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HealthAlert {
    /// The rule's name (`cpu_high`).
    pub rule: String,
    /// `warning` or `critical`.
    pub severity: String,
    /// The engine of the series, for per-engine rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core_id: Option<String>,
    /// One line for people.
    pub summary: String,
}

/// The `/health/ready` body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReadyReport {
    /// Whether this node should get traffic and claims work.
    pub ready: bool,
    /// Each check: `ok`, or why it failed. `database` (reachable), `schema` (the one this
    /// build runs, when the embedder checks it), `shutdown` (not shutting down), `rotation`
    /// (not taken out of rotation by its health check).
    pub checks: BTreeMap<String, String>,
}

/// The `/health/live` body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LiveReport {
    /// Always `alive`: the process serves requests.
    pub status: String,
}

/// The `metrics` part of [`HealthReport`].
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HealthMetrics {
    /// Seconds since the router started.
    pub uptime_seconds: u64,
    /// Requests served.
    pub total_requests: u64,
    /// Tasks running (at most 1000 counted).
    pub active_tasks: u64,
    /// Locks held.
    pub active_locks: u64,
}

fn verdict(ok: bool) -> String {
    if ok { "healthy" } else { "unhealthy" }.to_owned()
}

/// How bad a component's state is, for the report's overall status.
fn rank(state: &str) -> u8 {
    match state {
        "unhealthy" => 2,
        "degraded" => 1,
        _ => 0,
    }
}

/// The component an alert is about.
fn component_of(alert: &Alert) -> &'static str {
    match alert.metric {
        Metric::DatabaseUp | Metric::DatabaseLatency | Metric::PoolInUse => "database",
        Metric::LockWaitSeconds
        | Metric::LockWaiters
        | Metric::LocksHeld
        | Metric::LockTimeouts => "lock_manager",
        Metric::AuthFailures => "security",
        Metric::CpuPercent
        | Metric::MemoryPercent
        | Metric::DiskPercent
        | Metric::NetworkReceived
        | Metric::NetworkSent => "machine",
        _ => "engines",
    }
}

async fn compute(check: &HealthInner, orch: &Orchestrator, metrics: &Metrics) -> HealthReport {
    const PROBE: Duration = Duration::from_secs(2);
    let database = tokio::time::timeout(PROBE, orch.backend().tail_start_seq()).await;
    let database_ok = matches!(database, Ok(Ok(_)));
    let running = tokio::time::timeout(
        PROBE,
        orch.list(orch_core::TaskFilter {
            status: Some(orch_core::TaskStatus::Running),
            limit: 1000,
            ..Default::default()
        }),
    )
    .await;
    let locks = tokio::time::timeout(PROBE, orch.locks().list()).await;
    let (locks_ok, active_locks) = match &locks {
        Ok(Ok(list)) => (true, list.len() as u64),
        _ => (false, 0),
    };
    let active_tasks = match &running {
        Ok(Ok(list)) => list.len() as u64,
        _ => 0,
    };
    let mut components = BTreeMap::new();
    components.insert("database".to_owned(), verdict(database_ok));
    components.insert("lock_manager".to_owned(), verdict(locks_ok));
    components.insert("security".to_owned(), verdict(true));
    components.insert("machine".to_owned(), verdict(true));
    components.insert("engines".to_owned(), verdict(true));
    let readiness = orch.readiness();
    components.insert(
        "node".to_owned(),
        verdict(readiness.ready || check.shutdown.is_cancelled()),
    );
    let mut alerts = Vec::new();
    match orch.monitor() {
        None => {
            components.insert("monitor".to_owned(), "disabled".to_owned());
        }
        Some(monitor) => {
            // Passing: its last pass is at most three intervals old (or it started lately).
            let interval = monitor.config().interval;
            let stale_after = chrono::Duration::from_std(interval * 3 + Duration::from_secs(5))
                .unwrap_or(chrono::Duration::MAX);
            let passing = match monitor.readings().at {
                Some(at) => check.clock.now_utc() - at <= stale_after,
                None => check.started.elapsed() <= interval * 3 + Duration::from_secs(5),
            };
            components.insert("monitor".to_owned(), verdict(passing));
            // An alert marks its component degraded; only a failed check makes one unhealthy
            // (and the answer 503): a flood of refused logins must not take a node out of a
            // load balancer's rotation.
            for alert in monitor.alerts() {
                if let Some(current) = components.get_mut(component_of(&alert))
                    && current == "healthy"
                {
                    *current = "degraded".to_owned();
                }
                alerts.push(HealthAlert {
                    rule: alert.rule,
                    severity: alert.severity.as_str().to_owned(),
                    core_id: alert.engine,
                    summary: alert.summary,
                });
            }
        }
    }
    let worst = components
        .values()
        .map(|v| v.as_str())
        .max_by_key(|v| rank(v))
        .unwrap_or("healthy");
    HealthReport {
        status: worst.to_owned(),
        alerts,
        timestamp: check
            .clock
            .now_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        version: check.version.clone(),
        components,
        metrics: HealthMetrics {
            uptime_seconds: check.started.elapsed().as_secs(),
            total_requests: metrics.total_requests.load(Ordering::Relaxed),
            active_tasks,
            active_locks,
        },
    }
}

/// `GET /health`: 200 when no component is unhealthy (`healthy`, or `degraded` while alerts
/// fire), 503 when a check failed or while shutting down.
#[utoipa::path(get, path = "/health", tag = "system",
    responses(
        (status = 200, description = "No check failed (alerts may fire: `degraded`)", body = HealthReport),
        (status = 503, description = "A component is unhealthy, or the server is shutting down", body = HealthReport)))]
pub async fn health(
    State(check): State<HealthCheck>,
    State(orch): State<Orchestrator>,
    State(metrics): State<Arc<Metrics>>,
) -> Response {
    let check = &*check.inner;
    let fresh = |cached: &Option<(Instant, HealthReport)>| match cached {
        Some((at, report)) if at.elapsed() < check.cache_for => Some(report.clone()),
        _ => None,
    };
    let cached = fresh(&check.cached.read());
    let report = match cached {
        Some(report) => report,
        None => {
            // One refresh at a time; the others wait and reuse it.
            let _refresh = check.refresh.lock().await;
            let cached = fresh(&check.cached.read());
            match cached {
                Some(report) => report,
                None => {
                    let report = compute(check, &orch, &metrics).await;
                    *check.cached.write() = Some((Instant::now(), report.clone()));
                    report
                }
            }
        }
    };
    let mut report = report;
    report.metrics.total_requests = metrics.total_requests.load(Ordering::Relaxed);
    if check.shutdown.is_cancelled() {
        report.status = "shutting_down".to_owned();
    }
    let status = if rank(&report.status) < 2 && report.status != "shutting_down" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

/// `GET /health/live`: 200 while the process serves requests (a liveness probe: restart the
/// process when it fails).
#[utoipa::path(get, path = "/health/live", tag = "system",
    responses((status = 200, description = "The process serves requests", body = LiveReport)))]
pub async fn live() -> Json<LiveReport> {
    Json(LiveReport {
        status: "alive".to_owned(),
    })
}

/// `GET /health/ready`: 200 when this node should get traffic: its database answers, its
/// schema is current (when the embedder checks it), it is not shutting down and its health
/// check has not taken it out of rotation; 503 otherwise, saying which check failed. Not
/// cached.
#[utoipa::path(get, path = "/health/ready", tag = "system",
    responses(
        (status = 200, description = "Ready for traffic", body = ReadyReport),
        (status = 503, description = "Not ready: `checks` says why", body = ReadyReport)))]
pub async fn ready(State(check): State<HealthCheck>, State(orch): State<Orchestrator>) -> Response {
    const PROBE: Duration = Duration::from_secs(2);
    let check = &*check.inner;
    let mut checks = BTreeMap::new();
    let database = match tokio::time::timeout(PROBE, orch.backend().tail_start_seq()).await {
        Ok(Ok(_)) => "ok".to_owned(),
        Ok(Err(error)) => {
            // The driver's text (hosts, users, why a login failed) goes to the log, not to
            // whoever can reach the probe.
            tracing::warn!(%error, "readiness: the database did not answer");
            "unreachable".to_owned()
        }
        Err(_) => format!("no answer within {} s", PROBE.as_secs()),
    };
    checks.insert("database".to_owned(), database);
    if let Some(extra) = check.ready_check.get() {
        let schema = match tokio::time::timeout(PROBE, extra()).await {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(reason)) => reason,
            Err(_) => format!("no answer within {} s", PROBE.as_secs()),
        };
        checks.insert("schema".to_owned(), schema);
    }
    let shutdown = if check.shutdown.is_cancelled() {
        "shutting down".to_owned()
    } else {
        "ok".to_owned()
    };
    checks.insert("shutdown".to_owned(), shutdown);
    let readiness = orch.readiness();
    let rotation = match (readiness.ready, readiness.reason) {
        (true, _) => "ok".to_owned(),
        (false, reason) => format!(
            "out of rotation: {}",
            reason.unwrap_or_else(|| "not ready".to_owned())
        ),
    };
    checks.insert("rotation".to_owned(), rotation);
    let ready = checks.values().all(|v| v == "ok");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(ReadyReport { ready, checks })).into_response()
}
