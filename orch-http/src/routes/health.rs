//! `GET /health` in ORCH-Next's shape, cached for `health_cache` so probes and load balancers
//! cost one backend round trip per second at most.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orch_core::Orchestrator;
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

#[derive(Debug)]
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
}

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
            }),
        }
    }
}

/// The health body, in ORCH-Next's shape.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HealthReport {
    /// `healthy`, `unhealthy` or `shutting_down`.
    pub status: String,
    /// RFC 3339.
    pub timestamp: String,
    /// Server version.
    pub version: String,
    /// `database`, `lock_manager`, `monitor`, `security`: `healthy` or `unhealthy`.
    pub components: BTreeMap<String, String>,
    /// Counters.
    pub metrics: HealthMetrics,
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

async fn compute(check: &HealthInner, orch: &Orchestrator, metrics: &Metrics) -> HealthReport {
    const PROBE: Duration = Duration::from_secs(2);
    let database = tokio::time::timeout(PROBE, orch.backend().last_event_seq()).await;
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
    components.insert("monitor".to_owned(), verdict(true));
    components.insert("security".to_owned(), verdict(true));
    let all_ok = components.values().all(|v| v == "healthy");
    HealthReport {
        status: verdict(all_ok),
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

/// `GET /health`: 200 when every component is healthy, 503 otherwise or while shutting down.
#[utoipa::path(get, path = "/health", tag = "system",
    responses((status = 200, body = HealthReport), (status = 503, body = HealthReport)))]
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
    let status = if report.status == "healthy" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}
